"""One gRPC status per situation, with google.rpc details.

Every error leaves as a google.rpc.Status carrying an ErrorInfo (domain
``sessiond.v1``, an UPPER_SNAKE_CASE reason) and, for bad input, a
BadRequest naming each offending field. Internal causes (SQL, tracebacks)
are logged, never sent.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..store import errors as store_errors

log = logging.getLogger(__name__)

DOMAIN = "sessiond.v1"


class BadRequest(Exception):
    """Input that fails validation: one or more (field, description) pairs."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {d}" for f, d in violations))
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
                violations: list[tuple[str, str]] | None = None) -> grpc.Status:
    details = [_pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN,
                                                 metadata=metadata or {}))]
    if violations:
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
            for f, d in violations])))
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message,
                               details=details)
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
