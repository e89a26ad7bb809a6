"""Storage: the SessionStore protocol, its errors, and the SQLite backend."""

from .errors import (
    Aborted,
    AlreadyExists,
    Compacted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StoreError,
    Unavailable,
)
from .interface import Change, MessageQuery, Scope, SessionStore
from .sqlite import SchemaTooNew, SQLiteStore

__all__ = [
    "Aborted", "AlreadyExists", "Change", "Compacted", "FailedPrecondition", "InvalidArgument",
    "MessageQuery", "NotFound", "SQLiteStore", "SchemaTooNew", "Scope", "SessionStore",
    "StoreError", "Unavailable",
]
