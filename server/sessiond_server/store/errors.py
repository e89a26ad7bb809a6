"""Domain errors raised by every store implementation.

The store speaks in these, never in gRPC status codes; the API layer maps
each class to exactly one status code (see ``api/errors.py``). Each error
carries a stable UPPER_SNAKE_CASE ``reason`` that clients can branch on.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class: ``reason`` is stable, ``message`` is for humans."""

    reason = "STORE_ERROR"

    def __init__(self, message: str, *, reason: str | None = None,
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})


class NotFound(StoreError):
    """The session does not exist, or is outside the caller's scope."""

    reason = "SESSION_NOT_FOUND"


class AlreadyExists(StoreError):
    """A client-chosen id is taken by something different."""

    reason = "SESSION_EXISTS"


class FailedPrecondition(StoreError):
    """The session is in a state that forbids the operation."""

    reason = "FAILED_PRECONDITION"


class Aborted(StoreError):
    """An optimistic-concurrency guard (etag, expected seq) did not hold."""

    reason = "ETAG_MISMATCH"


class InvalidArgument(StoreError):
    """Input the store can only judge against stored state (e.g. up_to_seq)."""

    reason = "BAD_REQUEST"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Compacted(StoreError):
    """A watch asked for revisions the change log no longer holds."""

    reason = "REVISION_COMPACTED"

    def __init__(self, compacted_revision: int) -> None:
        super().__init__(
            f"revisions up to {compacted_revision} were compacted; list again and "
            f"watch from the listed revision + 1",
            metadata={"compacted_revision": str(compacted_revision)},
        )
        self.compacted_revision = compacted_revision


class Unavailable(StoreError):
    """The database cannot serve the request now (closed, disk full, locked)."""

    reason = "STORAGE_UNAVAILABLE"
