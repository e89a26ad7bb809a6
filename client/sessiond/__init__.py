"""sessiond: the Python client of the sessiond gRPC session service.

``AsyncClient`` (asyncio) and ``Client`` (blocking) wrap every RPC of
SessionService, MessageService and StatsService with deadlines, safe
retries, page walking and a watch that resumes by itself. Failures raise
the ``SessiondError`` family from ``sessiond.errors``. The generated
messages live in ``sessiond.v1``.
"""

from sessiond.aio import AsyncClient
from sessiond.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RelistRequired,
    ResourceExhausted,
    SessiondError,
    Unauthenticated,
    Unavailable,
)
from sessiond.sync import Client
from sessiond.watching import Backoff

__all__ = [
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "Backoff",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "RelistRequired",
    "ResourceExhausted",
    "SessiondError",
    "Unauthenticated",
    "Unavailable",
]
