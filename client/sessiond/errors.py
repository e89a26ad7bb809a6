"""What a failed sessiond call means, and whether it may be tried again.

The server answers every failure with a ``google.rpc.Status`` carrying an
``ErrorInfo`` (domain ``sessiond.v1``, reason in UPPER_SNAKE_CASE) and, for
bad input, a ``BadRequest`` naming each offending field. This module turns
that rich status into one exception class per status code, so callers catch
``NotFound`` or ``Aborted`` instead of inspecting raw ``grpc.RpcError``
objects, and read ``reason``, ``metadata`` and ``field_violations`` as plain
attributes.

It also holds the one rule both clients use to decide whether a call that
failed with UNAVAILABLE may be sent again: only when repeating it cannot
apply a change twice (see ``retry_is_safe``).
"""

from __future__ import annotations

from typing import cast

import grpc
import grpc.aio
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from sessiond.v1 import (
    message_service_pb2,
    session_service_pb2,
    stats_service_pb2,
)

ERROR_DOMAIN = "sessiond.v1"
"""ERROR_DOMAIN is the ErrorInfo domain of errors raised by sessiond itself."""

REASON_REVISION_COMPACTED = "REVISION_COMPACTED"
"""The ErrorInfo reason of a watch whose start revision left the change log."""


class SessiondError(Exception):
    """A sessiond call failed.

    code is the gRPC status code; message the status message; reason the
    ErrorInfo reason ("" when the server sent none, for example when the
    connection failed before reaching it); metadata the ErrorInfo metadata;
    field_violations the (field, description) pairs of a BadRequest.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}" if message else code.name)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: list[tuple[str, str]] = list(field_violations or [])


class InvalidArgument(SessiondError):
    """INVALID_ARGUMENT: the request is malformed; see field_violations."""


class NotFound(SessiondError):
    """NOT_FOUND: the session does not exist or is outside the caller's scope."""


class AlreadyExists(SessiondError):
    """ALREADY_EXISTS: an id is taken by something with different content."""


class FailedPrecondition(SessiondError):
    """FAILED_PRECONDITION: the target's state forbids the call (ended, empty)."""


class RelistRequired(FailedPrecondition):
    """A watch asked for revisions the server no longer keeps.

    compacted_revision is the highest revision removed from the change log;
    list again and watch from the list's revision + 1.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(
            code, message, reason=reason, metadata=metadata, field_violations=field_violations
        )
        try:
            self.compacted_revision = int(self.metadata.get("compacted_revision", "0"))
        except ValueError:
            self.compacted_revision = 0


class Aborted(SessiondError):
    """ABORTED: an optimistic-concurrency guard (etag, expected seq) failed."""


class ResourceExhausted(SessiondError):
    """RESOURCE_EXHAUSTED: a server limit (watches, message size) was reached."""


class Unavailable(SessiondError):
    """UNAVAILABLE: the server could not be reached or is shutting down."""


class Unauthenticated(SessiondError):
    """UNAUTHENTICATED: the token is missing or not accepted."""


class PermissionDenied(SessiondError):
    """PERMISSION_DENIED: the token does not allow the call."""


class DeadlineExceeded(SessiondError):
    """DEADLINE_EXCEEDED: the call did not finish within its timeout."""


_CLASS_BY_CODE: dict[grpc.StatusCode, type[SessiondError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def _rich_status(call: grpc.Call | grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The google.rpc.Status the server attached to the error, if any."""
    try:
        # AioRpcError has the same synchronous code(), details() and
        # trailing_metadata() accessors that from_call reads.
        status = rpc_status.from_call(cast(grpc.Call, call))
    except (ValueError, AttributeError, TypeError):
        # A status whose code disagrees with the call's is not trusted; an
        # error object without trailing metadata has nothing to parse.
        return None
    return status if isinstance(status, status_pb2.Status) else None


def error_from_rpc_error(error: grpc.RpcError) -> SessiondError:
    """Convert a grpc error (sync or asyncio) into the matching SessiondError."""
    status = None
    if isinstance(error, grpc.aio.AioRpcError | grpc.Call):
        code = error.code()
        message = error.details() or ""
        status = _rich_status(error)
    else:  # an RpcError that is not a call: nothing but its text to go on
        code, message = grpc.StatusCode.UNKNOWN, str(error)
    reason = ""
    metadata: dict[str, str] = {}
    violations: list[tuple[str, str]] = []
    if status is not None:
        message = status.message or message
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
                metadata = dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations.extend(
                    (violation.field, violation.description)
                    for violation in bad_request.field_violations
                )
    cls = _CLASS_BY_CODE.get(code, SessiondError)
    if code is grpc.StatusCode.FAILED_PRECONDITION and reason == REASON_REVISION_COMPACTED:
        cls = RelistRequired
    return cls(code, message, reason=reason, metadata=metadata, field_violations=violations)


def retry_is_safe(request: Message) -> bool:
    """Whether sending this request a second time cannot apply a change twice.

    Reads are always safe. Writes are safe when the server recognises a
    repeat: a client-chosen id (session, fork, message ids, usage
    request_id), a target state that is the same on every attempt (end,
    runtime state, a state delta, a history deleted up to a seq or replaced
    by messages that all carry ids), or an etag that a first success would have made stale.
    Anything else (appends without ids, pops, clears, deletes, purges)
    could act twice, so it is never retried.
    """
    match request:
        case (
            session_service_pb2.GetSessionRequest()
            | session_service_pb2.ListSessionsRequest()
            | message_service_pb2.ListMessagesRequest()
            | message_service_pb2.SearchMessagesRequest()
            | stats_service_pb2.GetStatsRequest()
            | stats_service_pb2.CostByModelRequest()
            | session_service_pb2.TouchSessionRequest()
            | session_service_pb2.EndSessionRequest()
            | session_service_pb2.SetRuntimeStateRequest()
            | message_service_pb2.DeleteMessagesRequest()
            | session_service_pb2.GetSharedStateRequest()
            | session_service_pb2.UpdateSharedStateRequest()
        ):
            return True
        case session_service_pb2.CreateSessionRequest():
            return bool(request.session.id)
        case session_service_pb2.ForkSessionRequest():
            return bool(request.new_session_id)
        case session_service_pb2.UpdateSessionRequest():
            return bool(request.etag)
        case message_service_pb2.AppendMessagesRequest():
            return bool(request.messages) and all(message.id for message in request.messages)
        case message_service_pb2.ReplaceMessagesRequest():
            return all(message.id for message in request.messages)
        case stats_service_pb2.RecordUsageRequest():
            return bool(request.request_id)
        case _:
            return False
