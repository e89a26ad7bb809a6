"""The SQLite schema, as forward-only migrations keyed by ``PRAGMA user_version``.

Times are integer epoch microseconds (UTC); 0 means "not set". Money is
integer micro-dollars. Each list order has its own index beginning with the
tenant, so every page is a bounded index range whatever the history size.
Message fields that are never filtered on live in ``body`` as serialised
``sessiond.v1.Message`` bytes; content stays a column for full-text search.
"""

from __future__ import annotations

import sqlite3

from .search import has_runs, spaced_runs

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE sessions (
    pk                 INTEGER PRIMARY KEY,
    tenant             TEXT    NOT NULL,
    id                 TEXT    NOT NULL,
    kind               INTEGER NOT NULL,
    channel            TEXT    NOT NULL DEFAULT '',
    room_id            TEXT    NOT NULL DEFAULT '',
    sender_id          TEXT    NOT NULL DEFAULT '',
    agent              TEXT    NOT NULL DEFAULT '',
    model              TEXT    NOT NULL DEFAULT '',
    display_name       TEXT    NOT NULL DEFAULT '',
    goal               TEXT    NOT NULL DEFAULT '',
    owner_id           TEXT    NOT NULL DEFAULT '',
    dataset_id         TEXT    NOT NULL DEFAULT '',
    labels             TEXT    NOT NULL DEFAULT '{}',
    runtime_instance   TEXT    NOT NULL DEFAULT '',
    parent_id          TEXT    NOT NULL DEFAULT '',
    fork_seq           INTEGER NOT NULL DEFAULT 0,
    status             INTEGER NOT NULL,
    end_reason         TEXT    NOT NULL DEFAULT '',
    runtime_state      INTEGER NOT NULL,
    current_turn_id    TEXT    NOT NULL DEFAULT '',
    turn_started_at    INTEGER NOT NULL DEFAULT 0,
    started_at         INTEGER NOT NULL,
    last_activity_at   INTEGER NOT NULL,
    ended_at           INTEGER NOT NULL DEFAULT 0,
    updated_at         INTEGER NOT NULL,
    message_count      INTEGER NOT NULL DEFAULT 0,
    turn_count         INTEGER NOT NULL DEFAULT 0,
    tool_call_count    INTEGER NOT NULL DEFAULT 0,
    last_seq           INTEGER NOT NULL DEFAULT 0,
    prompt_tokens      INTEGER NOT NULL DEFAULT 0,
    completion_tokens  INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens   INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens  INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    cost_micros        INTEGER NOT NULL DEFAULT 0,
    request_count      INTEGER NOT NULL DEFAULT 0,
    error_count        INTEGER NOT NULL DEFAULT 0,
    total_tokens       INTEGER NOT NULL DEFAULT 0,
    budget_micros      INTEGER NOT NULL DEFAULT 0,
    revision           INTEGER NOT NULL,
    UNIQUE (tenant, id)
);
CREATE INDEX sessions_by_last_activity ON sessions (tenant, last_activity_at, id);
CREATE INDEX sessions_by_started ON sessions (tenant, started_at, id);
CREATE INDEX sessions_by_ended ON sessions (tenant, ended_at, id);
CREATE INDEX sessions_by_cost ON sessions (tenant, cost_micros, id);
CREATE INDEX sessions_by_tokens ON sessions (tenant, total_tokens, id);
CREATE INDEX sessions_by_status ON sessions (tenant, status, last_activity_at);
CREATE INDEX sessions_by_runtime ON sessions (tenant, runtime_instance, status);
CREATE INDEX sessions_by_parent ON sessions (tenant, parent_id) WHERE parent_id <> '';

CREATE TABLE messages (
    rowid        INTEGER PRIMARY KEY,
    session_pk   INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    message_id   TEXT,
    role         INTEGER NOT NULL,
    content      TEXT    NOT NULL,
    is_turn      INTEGER NOT NULL,
    tool_calls   INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    body         BLOB    NOT NULL
);
CREATE UNIQUE INDEX messages_by_seq ON messages (session_pk, seq);
CREATE UNIQUE INDEX messages_by_id ON messages (session_pk, message_id)
    WHERE message_id IS NOT NULL;
CREATE INDEX messages_user_turns ON messages (session_pk, seq) WHERE role = 2;

CREATE TABLE session_usage (
    session_pk         INTEGER NOT NULL,
    model              TEXT    NOT NULL,
    prompt_tokens      INTEGER NOT NULL DEFAULT 0,
    completion_tokens  INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens   INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens  INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    cost_micros        INTEGER NOT NULL DEFAULT 0,
    request_count      INTEGER NOT NULL DEFAULT 0,
    error_count        INTEGER NOT NULL DEFAULT 0,
    total_tokens       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_pk, model)
) WITHOUT ROWID;

CREATE TABLE usage_requests (
    session_pk  INTEGER NOT NULL,
    request_id  TEXT    NOT NULL,
    response    BLOB    NOT NULL,
    PRIMARY KEY (session_pk, request_id)
) WITHOUT ROWID;

CREATE TABLE changes (
    revision    INTEGER NOT NULL,
    idx         INTEGER NOT NULL,
    tenant      TEXT    NOT NULL,
    owner_id    TEXT    NOT NULL,
    dataset_id  TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    event       BLOB    NOT NULL,
    PRIMARY KEY (revision, idx)
) WITHOUT ROWID;
""",
    ),
    (
        2,
        """
CREATE VIRTUAL TABLE messages_fts USING fts5(
    content, content='messages', content_rowid='rowid', tokenize='unicode61'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content) VALUES (new.rowid, new.content);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content)
        VALUES ('delete', old.rowid, old.content);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content)
        VALUES ('delete', old.rowid, old.content);
    INSERT INTO messages_fts(rowid, content) VALUES (new.rowid, new.content);
END;
INSERT INTO messages_fts(messages_fts) VALUES ('rebuild');
""",
    ),
]


# Version 3: the stats rollups and an agent index. GetStats over a whole
# tenant (or a window of whole days) sums rollup rows instead of every
# session: one row per tenant, UTC day of started_at, status, owner and
# dataset, kept by triggers in the same transaction as the session row, so
# every write path (create, append, usage, end, delete, purge, fork, import)
# keeps it exact. The migration's text is built from the names below: once
# released, they are frozen with it.
DAY_MICROS = 86_400_000_000
ROLLUP_SUMS = (
    "message_count", "prompt_tokens", "completion_tokens", "reasoning_tokens",
    "cache_read_tokens", "cache_write_tokens", "cost_micros", "request_count",
    "error_count", "total_tokens",
)
ROLLUP_KEY = ("tenant", "day", "status", "owner_id", "dataset_id")


def _floor(value: str, unit: int) -> str:
    # Floor division, as Python's //, also for times before 1970.
    return f"(CASE WHEN {value} >= 0 THEN {value} / {unit} ELSE ({value} + 1) / {unit} - 1 END)"


def _day(row: str) -> str:
    return _floor(f"{row}.started_at", DAY_MICROS)


def _contribution(row: str) -> list[str]:
    """What one session row adds to its rollup row, in column order."""
    return [
        "1",
        f"({row}.status IN (1, 5) AND {row}.runtime_state = 2)",
        f"(CASE WHEN {row}.ended_at > 0 THEN {row}.ended_at ELSE {row}.last_activity_at END"
        f" - {row}.started_at)",
        *(f"{row}.{name}" for name in ROLLUP_SUMS),
    ]


_ROLLUP_VALUES = ("session_count", "running_count", "duration_micros", *ROLLUP_SUMS)


def _add(row: str) -> str:
    key = (f"{row}.tenant", _day(row), f"{row}.status", f"{row}.owner_id", f"{row}.dataset_id")
    return (
        f"INSERT INTO session_rollup ({', '.join(ROLLUP_KEY + _ROLLUP_VALUES)})"
        f" VALUES ({', '.join(key + tuple(_contribution(row)))})"
        f" ON CONFLICT ({', '.join(ROLLUP_KEY)}) DO UPDATE SET "
        + ", ".join(f"{name} = {name} + excluded.{name}" for name in _ROLLUP_VALUES)
        + ";"
    )


def _remove(row: str) -> str:
    match = (f"tenant = {row}.tenant AND day = {_day(row)} AND status = {row}.status"
             f" AND owner_id = {row}.owner_id AND dataset_id = {row}.dataset_id")
    sets = ", ".join(f"{name} = {name} - {value}"
                     for name, value in zip(_ROLLUP_VALUES, _contribution(row), strict=True))
    return (f"UPDATE session_rollup SET {sets} WHERE {match};\n"
            f"    DELETE FROM session_rollup WHERE {match} AND session_count = 0;")


_ROLLUP_COLUMNS = ",\n    ".join(
    [f"{name} TEXT NOT NULL" if name in ("tenant", "owner_id", "dataset_id")
     else f"{name} INTEGER NOT NULL" for name in ROLLUP_KEY]
    + ["session_count INTEGER NOT NULL", "running_count INTEGER NOT NULL",
       # REAL: a sum of durations must never fail a write by overflowing.
       "duration_micros REAL NOT NULL"]
    + [f"{name} INTEGER NOT NULL" for name in ROLLUP_SUMS])

# The rollup as the sessions table says it should be (the backfill of version
# 3, and the consistency check's recount). total(), not sum(): a sum past
# 2^63 must not stop a migration; it becomes a REAL, as the triggers' "+" does.
ROLLUP_RECOUNT_SQL = f"""
    SELECT s.tenant, {_day("s")}, s.status, s.owner_id, s.dataset_id, count(*),
           sum(s.status IN (1, 5) AND s.runtime_state = 2),
           total(CASE WHEN s.ended_at > 0 THEN s.ended_at ELSE s.last_activity_at END
                 - s.started_at),
           {', '.join(f"total(s.{name})" for name in ROLLUP_SUMS)}
    FROM sessions s GROUP BY 1, 2, 3, 4, 5"""

# The per-model rollup, for CostByModel: one row per tenant, day, owner,
# dataset and model, summing session_usage rows. A usage row finds its key in
# its session; when the session goes (or its key changes) the session's
# triggers move its usage rows, so either delete order keeps the sums exact.
USAGE_ROLLUP_KEY = ("tenant", "day", "owner_id", "dataset_id", "model")
USAGE_SUMS = ROLLUP_SUMS[1:]
_USAGE_VALUES = ("session_count", *USAGE_SUMS)
_USAGE_UPSERT = (
    f" ON CONFLICT ({', '.join(USAGE_ROLLUP_KEY)}) DO UPDATE SET "
    + ", ".join(f"{name} = {name} + excluded.{name}" for name in _USAGE_VALUES) + ";")
_USAGE_INSERT = f"INSERT INTO usage_rollup ({', '.join(USAGE_ROLLUP_KEY + _USAGE_VALUES)})"


def _usage_key_of(session: str) -> str:
    return f"{session}.tenant, {_day(session)}, {session}.owner_id, {session}.dataset_id"


def _add_usage_row(u: str) -> str:
    """Add usage row ``u`` under its session's key (nothing if the session is gone)."""
    return (f"{_USAGE_INSERT} SELECT {_usage_key_of('s')}, {u}.model, 1,"
            f" {', '.join(f'{u}.{name}' for name in USAGE_SUMS)}"
            f" FROM sessions s WHERE s.pk = {u}.session_pk{_USAGE_UPSERT}")


def _remove_usage_row(u: str) -> str:
    match = (f"model = {u}.model AND (tenant, day, owner_id, dataset_id) ="
             f" (SELECT {_usage_key_of('s')} FROM sessions s WHERE s.pk = {u}.session_pk)")
    sets = ", ".join(f"{name} = {name} - {u}.{name}" for name in USAGE_SUMS)
    return (f"UPDATE usage_rollup SET session_count = session_count - 1, {sets}"
            f" WHERE {match};\n"
            f"    DELETE FROM usage_rollup WHERE {match} AND session_count = 0;")


def _add_session_usage(session: str) -> str:
    """Add every usage row of ``session`` under its key."""
    return (f"{_USAGE_INSERT} SELECT {_usage_key_of(session)}, u.model, 1,"
            f" {', '.join(f'u.{name}' for name in USAGE_SUMS)}"
            f" FROM session_usage u WHERE u.session_pk = {session}.pk{_USAGE_UPSERT}")


def _remove_session_usage(session: str) -> str:
    """Take every usage row of ``session`` away from its key."""
    key = (f"usage_rollup.tenant = {session}.tenant AND usage_rollup.day = {_day(session)}"
           f" AND usage_rollup.owner_id = {session}.owner_id"
           f" AND usage_rollup.dataset_id = {session}.dataset_id")
    sets = ", ".join(f"{name} = usage_rollup.{name} - u.{name}" for name in USAGE_SUMS)
    return (f"UPDATE usage_rollup SET session_count = usage_rollup.session_count - 1, {sets}"
            f" FROM session_usage u WHERE u.session_pk = {session}.pk"
            f" AND usage_rollup.model = u.model AND {key};\n"
            f"    DELETE FROM usage_rollup WHERE {key.replace('usage_rollup.', '')}"
            f" AND session_count = 0;")


USAGE_ROLLUP_RECOUNT_SQL = f"""
    SELECT {_usage_key_of("s")}, u.model, count(*),
           {', '.join(f"total(u.{name})" for name in USAGE_SUMS)}
    FROM session_usage u JOIN sessions s ON s.pk = u.session_pk GROUP BY 1, 2, 3, 4, 5"""

_USAGE_ROLLUP_COLUMNS = ",\n    ".join(
    [f"{name} INTEGER NOT NULL" if name == "day" else f"{name} TEXT NOT NULL"
     for name in USAGE_ROLLUP_KEY]
    + [f"{name} INTEGER NOT NULL" for name in _USAGE_VALUES])
_KEY_CHANGED = (f"old.tenant IS NOT new.tenant OR old.owner_id IS NOT new.owner_id"
                f" OR old.dataset_id IS NOT new.dataset_id OR {_day('old')} <> {_day('new')}")

MIGRATIONS.append((
    3,
    f"""
CREATE TABLE session_rollup (
    {_ROLLUP_COLUMNS},
    PRIMARY KEY ({', '.join(ROLLUP_KEY)})
) WITHOUT ROWID;
CREATE TRIGGER sessions_rollup_insert AFTER INSERT ON sessions BEGIN
    {_add("new")}
END;
CREATE TRIGGER sessions_rollup_delete AFTER DELETE ON sessions BEGIN
    {_remove("old")}
END;
CREATE TRIGGER sessions_rollup_update AFTER UPDATE ON sessions BEGIN
    {_remove("old")}
    {_add("new")}
END;
INSERT INTO session_rollup ({', '.join(ROLLUP_KEY + _ROLLUP_VALUES)}){ROLLUP_RECOUNT_SQL};

CREATE TABLE usage_rollup (
    {_USAGE_ROLLUP_COLUMNS},
    PRIMARY KEY ({', '.join(USAGE_ROLLUP_KEY)})
) WITHOUT ROWID;
CREATE TRIGGER usage_rollup_insert AFTER INSERT ON session_usage BEGIN
    {_add_usage_row("new")}
END;
CREATE TRIGGER usage_rollup_delete AFTER DELETE ON session_usage BEGIN
    {_remove_usage_row("old")}
END;
CREATE TRIGGER usage_rollup_update AFTER UPDATE ON session_usage BEGIN
    {_remove_usage_row("old")}
    {_add_usage_row("new")}
END;
CREATE TRIGGER usage_rollup_session_delete AFTER DELETE ON sessions BEGIN
    {_remove_session_usage("old")}
END;
CREATE TRIGGER usage_rollup_session_move AFTER UPDATE OF tenant, owner_id, dataset_id,
    started_at ON sessions WHEN {_KEY_CHANGED} BEGIN
    {_remove_session_usage("old")}
    {_add_session_usage("new")}
END;
{_USAGE_INSERT}{USAGE_ROLLUP_RECOUNT_SQL};

-- Counting a listing filtered by agent (total_size, stats) reads this
-- index instead of every session of the tenant.
CREATE INDEX sessions_by_agent ON sessions (tenant, agent);
""",
))

# Version 4: the run index (store/search.py). Messages that hold a run character (CJK,
# Thai, emoji, ...) are indexed a second time, over their text with every run character
# standing alone, so a run query is a phrase of its characters. The index holds no content
# of its own (content=''); the triggers give it the spaced text through two functions every
# writing connection registers (register_search_functions), and only for such messages.
MIGRATIONS.append((
    4,
    """
CREATE VIRTUAL TABLE messages_runs USING fts5(
    content, content='', tokenize="unicode61 categories 'L* N* Co M* S*'"
);
CREATE TRIGGER messages_runs_insert AFTER INSERT ON messages
    WHEN sessiond_has_runs(new.content) BEGIN
    INSERT INTO messages_runs(rowid, content)
        VALUES (new.rowid, sessiond_spaced_runs(new.content));
END;
CREATE TRIGGER messages_runs_delete AFTER DELETE ON messages
    WHEN sessiond_has_runs(old.content) BEGIN
    INSERT INTO messages_runs(messages_runs, rowid, content)
        VALUES ('delete', old.rowid, sessiond_spaced_runs(old.content));
END;
CREATE TRIGGER messages_runs_update AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_runs(messages_runs, rowid, content)
        SELECT 'delete', old.rowid, sessiond_spaced_runs(old.content)
        WHERE sessiond_has_runs(old.content);
    INSERT INTO messages_runs(rowid, content)
        SELECT new.rowid, sessiond_spaced_runs(new.content)
        WHERE sessiond_has_runs(new.content);
END;
INSERT INTO messages_runs(rowid, content)
    SELECT rowid, sessiond_spaced_runs(content) FROM messages WHERE sessiond_has_runs(content);
""",
))


# Version 5: state and event time. Each session's state (a JSON object as canonical
# text, see store/state.py); each message's client-set event time (NULL when the client
# set none: after_time reads compare created_at then); and the state shared by an
# application's sessions or by one user's (tenant, app, user_id; user_id '' for the
# application's own), whose version is its etag.
MIGRATIONS.append((
    5,
    """
ALTER TABLE sessions ADD COLUMN state TEXT NOT NULL DEFAULT '{}';
ALTER TABLE messages ADD COLUMN event_at INTEGER;
CREATE TABLE shared_state (
    tenant     TEXT    NOT NULL,
    app        TEXT    NOT NULL,
    user_id    TEXT    NOT NULL,
    state      TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, app, user_id)
) WITHOUT ROWID;
""",
))


# Version 6: the active rollup. A session is abandoned when its last activity is older
# than a threshold, so the split of ACTIVE sessions into active and abandoned moves with
# the clock and the day rollup cannot hold it. This table counts ACTIVE sessions by the
# UTC minute of their last activity (and the day rollup's key, so the same filters apply):
# GetStats sums the buckets after the cutoff's minute and counts the sessions of that one
# minute exactly, whatever the number of active sessions. The triggers write only when a
# session's bucket changes (status, minute or key), so most appends within a minute write
# nothing here.
MINUTE_MICROS = 60_000_000
ACTIVE_ROLLUP_KEY = ("tenant", "minute", "day", "owner_id", "dataset_id")


def _minute(row: str) -> str:
    return _floor(f"{row}.last_activity_at", MINUTE_MICROS)


def _active_key(row: str) -> str:
    return f"{row}.tenant, {_minute(row)}, {_day(row)}, {row}.owner_id, {row}.dataset_id"


def _add_active(row: str) -> str:
    return (f"INSERT INTO active_rollup ({', '.join(ACTIVE_ROLLUP_KEY)}, session_count)"
            f" SELECT {_active_key(row)}, 1 WHERE {row}.status = 1"
            f" ON CONFLICT ({', '.join(ACTIVE_ROLLUP_KEY)})"
            f" DO UPDATE SET session_count = session_count + 1;")


def _remove_active(row: str) -> str:
    match = (f"{row}.status = 1 AND ({', '.join(ACTIVE_ROLLUP_KEY)}) = ({_active_key(row)})")
    return (f"UPDATE active_rollup SET session_count = session_count - 1 WHERE {match};\n"
            f"    DELETE FROM active_rollup WHERE {match} AND session_count = 0;")


ACTIVE_ROLLUP_RECOUNT_SQL = f"""
    SELECT {_active_key("s")}, count(*) FROM sessions s WHERE s.status = 1
    GROUP BY 1, 2, 3, 4, 5"""
_ACTIVE_MOVED = (f"(old.status = 1 OR new.status = 1) AND (old.status <> new.status"
                 f" OR {_minute('old')} <> {_minute('new')} OR {_KEY_CHANGED})")

MIGRATIONS.append((
    6,
    f"""
CREATE TABLE active_rollup (
    tenant        TEXT    NOT NULL,
    minute        INTEGER NOT NULL,
    day           INTEGER NOT NULL,
    owner_id      TEXT    NOT NULL,
    dataset_id    TEXT    NOT NULL,
    session_count INTEGER NOT NULL,
    PRIMARY KEY ({', '.join(ACTIVE_ROLLUP_KEY)})
) WITHOUT ROWID;
CREATE TRIGGER active_rollup_insert AFTER INSERT ON sessions WHEN new.status = 1 BEGIN
    {_add_active("new")}
END;
CREATE TRIGGER active_rollup_delete AFTER DELETE ON sessions WHEN old.status = 1 BEGIN
    {_remove_active("old")}
END;
CREATE TRIGGER active_rollup_update AFTER UPDATE OF status, last_activity_at, tenant,
    owner_id, dataset_id, started_at ON sessions WHEN {_ACTIVE_MOVED} BEGIN
    {_remove_active("old")}
    {_add_active("new")}
END;
INSERT INTO active_rollup ({', '.join(ACTIVE_ROLLUP_KEY)}, session_count)
{ACTIVE_ROLLUP_RECOUNT_SQL};
""",
))


# Session.last_event_at: when the newest message happened (its event time, else its
# created_at; 0 with no messages), derived from the messages and set by every write
# that changes them (logic.LAST_EVENT_AT); existing sessions get it recomputed here.
MIGRATIONS.append((
    7,
    """
ALTER TABLE sessions ADD COLUMN last_event_at INTEGER NOT NULL DEFAULT 0;
UPDATE sessions SET last_event_at = COALESCE((SELECT COALESCE(m.event_at, m.created_at)
    FROM messages m WHERE m.session_pk = sessions.pk ORDER BY m.seq DESC LIMIT 1), 0)
WHERE message_count > 0;
""",
))


def register_search_functions(conn: sqlite3.Connection) -> None:
    """The functions the run index's triggers call; every connection that writes needs them."""
    conn.create_function("sessiond_has_runs", 1, has_runs, deterministic=True)
    conn.create_function("sessiond_spaced_runs", 1, spaced_runs, deterministic=True)


SCHEMA_VERSION = MIGRATIONS[-1][0]
