"""One gRPC status per situation, with google.rpc details.

Every error leaves as a google.rpc.Status carrying an ErrorInfo (domain
``sessiond.v1``, an UPPER_SNAKE_CASE reason) and, for bad input, a
BadRequest naming each offending field. Internal causes (SQL, tracebacks)
are logged, never sent.

Every status sent is bounded in bytes (``rich_status``, the one place a
status is built). gRPC carries it in the trailers, and a client drops
trailers over its metadata limit (grpc-core: some above 8 KiB, all above
16 KiB), so an unbounded status would reach the caller as RESOURCE_EXHAUSTED
"Stream removed" instead of the error naming the field. The message is cut to
MAX_MESSAGE_BYTES, each field path and description to MAX_FIELD_BYTES and
MAX_DESCRIPTION_BYTES, each ErrorInfo metadata value to MAX_METADATA_BYTES;
a cut text ends with "…". A BadRequest lists the first MAX_LISTED_VIOLATIONS
violations, fewer when they would pass MAX_VIOLATION_BYTES, and then one more
whose field is "…" and whose description says how many were left out. A value
from the request quoted in a message goes through ``echo``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..store import errors as store_errors

log = logging.getLogger(__name__)

DOMAIN = "sessiond.v1"

MAX_MESSAGE_BYTES = 512
MAX_FIELD_BYTES = 128
MAX_DESCRIPTION_BYTES = 256
MAX_METADATA_BYTES = 256
MAX_LISTED_VIOLATIONS = 20
MAX_VIOLATION_BYTES = 3072
MAX_ECHO_BYTES = 64
ELLIPSIS = "\u2026"
#: The field of the last violation when some were left out.
OMITTED_FIELD = ELLIPSIS


def clip(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes, ending in "…" when cut."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    # errors="ignore" drops a character the cut split in two.
    return data[:max_bytes - len(ELLIPSIS.encode())].decode(errors="ignore") + ELLIPSIS


def echo(value: str, max_bytes: int = MAX_ECHO_BYTES) -> str:
    """A caller's value quoted for an error message, cut to ``max_bytes`` first."""
    return repr(clip(value, max_bytes))


def listed_violations(violations: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The violations a status carries: the first ones, cut, and a count of the rest."""
    listed: list[tuple[str, str]] = []
    size = 0
    for field, description in violations[:MAX_LISTED_VIOLATIONS]:
        field, description = clip(field, MAX_FIELD_BYTES), clip(description, MAX_DESCRIPTION_BYTES)
        size += len(field.encode()) + len(description.encode())
        if size > MAX_VIOLATION_BYTES:
            break
        listed.append((field, description))
    omitted = len(violations) - len(listed)
    if omitted:
        listed.append((OMITTED_FIELD, f"{omitted} more field violation"
                       f"{'s' if omitted > 1 else ''} not listed"))
    return listed


def violations_message(violations: Sequence[tuple[str, str]]) -> str:
    """The status message of a BadRequest: "field: description; ...", saying how many
    violations there are when not all of them fit."""
    text = "; ".join(f"{f}: {d}" for f, d in violations[:MAX_LISTED_VIOLATIONS])
    if len(violations) == 1 or (len(violations) <= MAX_LISTED_VIOLATIONS
                                and len(text.encode()) <= MAX_MESSAGE_BYTES):
        return clip(text, MAX_MESSAGE_BYTES)
    tail = f" ({len(violations)} field violations in all)"
    return clip(text, MAX_MESSAGE_BYTES - len(tail.encode())) + tail


class BadRequest(Exception):
    """Input that fails validation: one or more (field, description) pairs."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        super().__init__(violations_message(violations))
        self.violations = violations


class RpcError(Exception):
    """An error raised by the API layer itself with a chosen code and reason."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str,
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = metadata or {}


STORE_CODES: dict[type[store_errors.StoreError], grpc.StatusCode] = {
    store_errors.NotFound: grpc.StatusCode.NOT_FOUND,
    store_errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    store_errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    store_errors.Aborted: grpc.StatusCode.ABORTED,
    store_errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    store_errors.Compacted: grpc.StatusCode.FAILED_PRECONDITION,
    store_errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def rich_status(code: grpc.StatusCode, message: str, reason: str,
                metadata: dict[str, str] | None = None,
                violations: Sequence[tuple[str, str]] | None = None) -> grpc.Status:
    """The status an error is sent as, bounded in bytes (see the module docstring)."""
    details = [_pack(error_details_pb2.ErrorInfo(
        reason=reason, domain=DOMAIN,
        metadata={k: clip(v, MAX_METADATA_BYTES) for k, v in (metadata or {}).items()}))]
    if violations:
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
            for f, d in listed_violations(violations)])))
    status = status_pb2.Status(code=getattr(code_pb2, code.name),
                               message=clip(message, MAX_MESSAGE_BYTES), details=details)
    return rpc_status.to_status(status)


def status_for(exc: BaseException) -> grpc.Status | None:
    """The status an exception maps to; None for exceptions that are not ours."""
    if isinstance(exc, BadRequest):
        return rich_status(grpc.StatusCode.INVALID_ARGUMENT, str(exc), "BAD_REQUEST",
                           violations=exc.violations)
    if isinstance(exc, RpcError):
        return rich_status(exc.code, exc.message, exc.reason, exc.metadata)
    if isinstance(exc, store_errors.StoreError):
        code = STORE_CODES.get(type(exc), grpc.StatusCode.INTERNAL)
        violations = ([(exc.field, exc.message)]
                      if isinstance(exc, store_errors.InvalidArgument) else None)
        if isinstance(exc, store_errors.Unavailable):
            log.error("storage unavailable: %s", exc.message)
            return rich_status(code, "storage is unavailable, retry later", exc.reason)
        return rich_status(code, exc.message, exc.reason, exc.metadata, violations)
    return None


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    status = status_for(exc)
    if status is None:
        log.exception("unexpected error", exc_info=exc)
        status = rich_status(grpc.StatusCode.INTERNAL, "internal error", "INTERNAL")
    # grpc.aio has abort_with_status; the type stubs predate it.
    await context.abort_with_status(status)  # type: ignore[attr-defined]
    raise AssertionError("abort_with_status returned")  # pragma: no cover


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]


def unary(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Map our exceptions to rich statuses for a unary handler."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
                      ) -> Resp:
        try:
            return await method(self, request, context)
        except (BadRequest, RpcError, store_errors.StoreError) as exc:
            await abort(context, exc)

    return wrapper


StreamHandler = Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]]


def streaming(method: StreamHandler[Req, Resp]) -> StreamHandler[Req, Resp]:
    """Map our exceptions to rich statuses for a server-streaming handler."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
                      ) -> AsyncIterator[Resp]:
        try:
            async for response in method(self, request, context):
                yield response
        except (BadRequest, RpcError, store_errors.StoreError) as exc:
            await abort(context, exc)

    return wrapper
