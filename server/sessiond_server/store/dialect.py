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
from .postgres_schema import RUN_PREDICATE, RUN_TEXT, TSVECTOR
from .search import SearchTerms, fts5_strings, like_pattern, spaced_runs


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


@dataclasses.dataclass(frozen=True)
class Dialect:
    """The SQL snippets of one database."""

    name: str
    placeholder_prefix: str
    #: The message column that orders search results newest first.
    message_key: str
    #: Whether the session_rollup and usage_rollup tables exist.
    rollups: bool
    #: Appended to a write's SELECT of the session rows it will rely on: locks them to
    #: COMMIT where other writers run at the same time (PostgreSQL replicas).
    lock_rows: str = ""
    #: The first statement of a write that chooses sessions by other sessions (purge):
    #: keeps every other writer off the sessions table to COMMIT ("" where one writes).
    lock_sessions: str = ""

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

    def message_match(self, p: Params, terms: SearchTerms) -> str:
        """The condition on messages ``m`` matching every word and run of a keyword search
        (the rules are in search.py; ``terms`` is not empty)."""
        raise NotImplementedError

    def index_hint(self, index: str) -> str:
        """Text after a table alias that pins the index, where the planner needs it."""
        return ""

    def rows_source(self, p: Params, values: Sequence[Sequence[Any]],
                    types: Sequence[str]) -> str | None:
        """A SELECT of ``values`` (rows of columns of ``types``) in a fixed number of
        parameters, which an INSERT can take its rows from inside a larger statement;
        None where the dialect cannot (the rows then go by executemany)."""
        return None

    def byte_length(self, expression: str) -> str:
        """The length in bytes of a text or blob expression."""
        raise NotImplementedError

    @property
    def message_bytes(self) -> str:
        """A stored message's bytes (content and body) of messages ``m``."""
        return f"{self.byte_length('m.content')} + {self.byte_length('m.body')}"

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

    def message_match(self, p: Params, terms: SearchTerms) -> str:
        # Words in the word index; each run as a phrase of its characters in the run index.
        selects = []
        if terms.words:
            selects.append("SELECT rowid FROM messages_fts"
                           f" WHERE messages_fts MATCH {p(fts5_strings(terms.words))}")
        if terms.runs:
            phrases = fts5_strings(tuple(spaced_runs(run) for run in terms.runs))
            selects.append("SELECT rowid FROM messages_runs"
                           f" WHERE messages_runs MATCH {p(phrases)}")
        return f"m.rowid IN ({' INTERSECT '.join(selects)})"

    def index_hint(self, index: str) -> str:
        return f" INDEXED BY {index}"

    def byte_length(self, expression: str) -> str:
        # length() of TEXT counts characters; of a BLOB, bytes.
        return f"length(CAST({expression} AS BLOB))"

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

    def message_match(self, p: Params, terms: SearchTerms) -> str:
        # Words in the tsvector index; each run as a case-insensitive substring, which the
        # pg_trgm index over the messages holding a run character serves (the condition
        # repeats the index's expression and predicate).
        clauses = []
        if terms.words:
            clauses.append(f"{TSVECTOR} @@ plainto_tsquery('simple', {p(' '.join(terms.words))})")
        clauses.extend(f"{RUN_TEXT} LIKE {p(like_pattern(run))} AND {RUN_PREDICATE}"
                       for run in terms.runs)
        return " AND ".join(clauses)

    def rows_source(self, p: Params, values: Sequence[Sequence[Any]],
                    types: Sequence[str]) -> str | None:
        # One array per column: the statement's text (so its prepared plan) is the same
        # whatever the number of rows.
        columns = ", ".join(f"{p([row[i] for row in values])}::{kind}[]"
                            for i, kind in enumerate(types))
        return f"SELECT * FROM unnest({columns})"

    def byte_length(self, expression: str) -> str:
        return f"octet_length({expression})"

    def total(self, expression: str) -> str:
        # sum() of BIGINT is NUMERIC: exact, and saturated in Python (records.int64).
        return f"coalesce(sum({expression}), 0)"


SQLITE = SQLiteDialect(name="sqlite", placeholder_prefix="?", message_key="rowid", rollups=True)
POSTGRES = PostgresDialect(name="postgres", placeholder_prefix="$", message_key="row_id",
                           rollups=False, lock_rows=" FOR UPDATE",
                           lock_sessions="LOCK TABLE sessions IN EXCLUSIVE MODE")
