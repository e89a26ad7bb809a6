"""The SQLite schema, as forward-only migrations keyed by ``PRAGMA user_version``.

Times are integer epoch microseconds (UTC); 0 means "not set". Money is
integer micro-dollars. Each list order has its own index beginning with the
tenant, so every page is a bounded index range whatever the history size.
Message fields that are never filtered on live in ``body`` as serialised
``sessiond.v1.Message`` bytes; content stays a column for full-text search.
"""

from __future__ import annotations

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

SCHEMA_VERSION = MIGRATIONS[-1][0]
