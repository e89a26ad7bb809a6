"""What differs between the SQL dialects, and nothing else.

The store logic (``logic.py``) is written once and builds its SQL from the
snippets here: placeholders, membership in a list, the label and keyword
matches, JSON parameters, index hints and sums that must not overflow. A
dialect is plain data plus small functions; how statements are sent (sqlite3
on the writer thread, aiosqlite readers, asyncpg) lives with each backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from . import records as rows
from .postgres_schema import TSVECTOR


class Params:
    """Collects parameter values; calling it with a value returns its numbered placeholder.

    Both dialects number their placeholders (SQLite ``?N``, PostgreSQL ``$N``),
    so the values bind by number whatever order the SQL text names them in.
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"{self._prefix}{len(self.values)}"


def fts_query(text: str) -> str:
    """Every word of ``text`` as a quoted FTS5 string: no query syntax survives."""
    # NUL ends an FTS5 query string early ("unterminated string"): it separates words.
    words = [w for w in text.replace("\x00", " ").split() if any(ch.isalnum() for ch in w)]
    return " ".join('"' + w.replace('"', '""') + '"' for w in words)


def has_words(text: str) -> bool:
    """Whether a keyword query has anything to look for: a letter or digit somewhere."""
    return any(ch.isalnum() for ch in text)


@dataclasses.dataclass(frozen=True)
class Dialect:
    """The SQL snippets of one database."""

    name: str
    placeholder_prefix: str
    #: The message column that orders search results newest first.
    message_key: str
    #: Whether the session_rollup and usage_rollup tables exist.
    rollups: bool

    def params(self) -> Params:
        return Params(self.placeholder_prefix)

    def placeholders(self, count: int, first: int = 1) -> str:
        return ", ".join(f"{self.placeholder_prefix}{i}" for i in range(first, first + count))

    @property
    def message_columns(self) -> str:
        return ", ".join(f"m.{name}" for name in (self.message_key, *rows.MESSAGE_FIELDS[1:]))

    def any_of(self, column: str, values: Sequence[Any], p: Params, kind: str = "text") -> str:
        """``column`` equals one of ``values`` (not empty)."""
        raise NotImplementedError

    def json_value(self, p: Params, text: str) -> str:
        """A JSON document parameter (labels)."""
        raise NotImplementedError

    def labels_match(self, p: Params, labels: Mapping[str, str], alias: str = "s") -> str:
        """The session carries every one of ``labels``."""
        raise NotImplementedError

    def match_argument(self, text: str) -> str | None:
        """The bound value of a keyword search; None when the text has no words."""
        raise NotImplementedError

    def message_match(self, p: Params, argument: str) -> tuple[str, str]:
        """(FROM clause over ``messages m``, condition) of a keyword search."""
        raise NotImplementedError

    def index_hint(self, index: str) -> str:
        """Text after a table alias that pins the index, where the planner needs it."""
        return ""

    def total(self, expression: str) -> str:
        """A sum that is 0 over no rows and never fails by overflowing."""
        raise NotImplementedError


class SQLiteDialect(Dialect):
    def any_of(self, column: str, values: Sequence[Any], p: Params, kind: str = "text") -> str:
        return f"{column} IN ({', '.join(p(v) for v in values)})"

    def json_value(self, p: Params, text: str) -> str:
        return p(text)

    def labels_match(self, p: Params, labels: Mapping[str, str], alias: str = "s") -> str:
        return " AND ".join(
            f"EXISTS (SELECT 1 FROM json_each({alias}.labels) j"
            f" WHERE j.key = {p(key)} AND j.value = {p(value)})"
            for key, value in sorted(labels.items()))

    def match_argument(self, text: str) -> str | None:
        return fts_query(text) or None

    def message_match(self, p: Params, argument: str) -> tuple[str, str]:
        return ("messages_fts JOIN messages m ON m.rowid = messages_fts.rowid",
                f"messages_fts MATCH {p(argument)}")

    def index_hint(self, index: str) -> str:
        return f" INDEXED BY {index}"

    def total(self, expression: str) -> str:
        # total() is a REAL: past 2^63 it saturates later instead of failing the read.
        return f"total({expression})"


class PostgresDialect(Dialect):
    def any_of(self, column: str, values: Sequence[Any], p: Params, kind: str = "text") -> str:
        return f"{column} = ANY({p(list(values))}::{kind}[])"

    def json_value(self, p: Params, text: str) -> str:
        return f"{p(text)}::jsonb"

    def labels_match(self, p: Params, labels: Mapping[str, str], alias: str = "s") -> str:
        return f"{alias}.labels @> {p(rows.labels_json(labels))}::jsonb"

    def match_argument(self, text: str) -> str | None:
        return text if has_words(text) else None

    def message_match(self, p: Params, argument: str) -> tuple[str, str]:
        return "messages m", f"{TSVECTOR} @@ plainto_tsquery('simple', {p(argument)})"

    def total(self, expression: str) -> str:
        # sum() of BIGINT is NUMERIC: exact, and saturated in Python (records.int64).
        return f"coalesce(sum({expression}), 0)"


SQLITE = SQLiteDialect(name="sqlite", placeholder_prefix="?", message_key="rowid", rollups=True)
POSTGRES = PostgresDialect(name="postgres", placeholder_prefix="$", message_key="row_id",
                           rollups=False)
