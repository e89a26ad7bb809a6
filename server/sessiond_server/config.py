"""Server settings: one frozen dataclass, so every limit and interval is injectable.

Defaults here are the documented defaults; the CLI maps flags onto these
fields. Tests build their own ``ServerConfig`` with small limits and short
intervals instead of waiting for real time.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import platformdirs

DEFAULT_ADDRESS = "127.0.0.1:50051"


def wall_clock_micros() -> int:
    """The server's clock: integer microseconds since the epoch, UTC."""
    return time.time_ns() // 1000


def default_database_path() -> Path:
    """The default SQLite file, under the user's data directory."""
    return Path(platformdirs.user_data_dir("sessiond")) / "sessiond.db"


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Size bounds enforced on every request (the API layer checks them)."""

    max_message_bytes: int = 1 << 20
    max_messages_per_append: int = 100
    max_labels: int = 64
    max_label_key_bytes: int = 63
    max_label_value_bytes: int = 256
    max_id_bytes: int = 256
    max_text_field_bytes: int = 64 << 10
    max_page_size: int = 500
    default_page_size: int = 50
    max_message_page_size: int = 1000
    default_message_page_size: int = 100
    # A ListMessages, SearchMessages or ListSessions page takes messages (or
    # sessions) while the bytes of those before stay under this, so a page
    # holds at most this plus one; it always holds one.
    max_page_bytes: int = 2 << 20
    max_filter_values: int = 100
    max_query_bytes: int = 256
    max_request_bytes: int = 8 << 20
    max_watchers: int = 1000
    max_watchers_per_caller: int = 100
    # Requests per second each caller (API key, or peer host without
    # authentication) may make, sustained; 0 turns the limit off. Up to
    # rate_limit_burst requests may come at once (0 means one second's worth).
    rate_limit_per_second: float = 0.0
    rate_limit_burst: int = 0
    # Connections: at most max_connections open at once (more are closed as
    # they are accepted; the server also lowers this to fit its file
    # descriptor limit), each must finish its HTTP/2 handshake within
    # handshake_timeout_seconds, and one with no call open for
    # connection_idle_seconds is closed (clients reconnect by themselves;
    # 0 keeps idle connections open).
    max_connections: int = 10_000
    handshake_timeout_seconds: float = 10.0
    connection_idle_seconds: float = 600.0


@dataclasses.dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything the server needs to start."""

    # The store: a SQLite file (a path, or "sqlite:///path"), or a PostgreSQL
    # URL ("postgresql://user@host:port/db") shared by several replicas.
    database: Path | str = dataclasses.field(default_factory=default_database_path)
    address: str = DEFAULT_ADDRESS
    # Active sessions idle longer than this read as ABANDONED.
    abandoned_after_seconds: float = 30 * 60
    # Durability: "full" survives power loss, "normal" survives a process crash.
    durability: str = "full"
    # Group commit: the writer takes at most this many queued writes per
    # transaction, and waits at most this long for more once one is queued.
    max_batch_writes: int = 256
    # Change log compaction: the newest keep_revisions revisions are kept
    # (so a subscriber can fall that far behind), and older ones are dropped
    # once they are older than max_age seconds; beside both, the log never
    # keeps more than max_bytes of events: the oldest revisions go first,
    # whatever the count and age say, but the newest revision always stays.
    # 0 disables a bound.
    changelog_keep_revisions: int = 100_000
    changelog_max_age_seconds: float = 7 * 24 * 3600
    changelog_max_bytes: int = 1 << 30
    compaction_interval_seconds: float = 60.0
    # Retention: remove sessions idle longer than ttl (0 = never) and keep at
    # most max_sessions (0 = no cap), checked every retention_interval.
    retention_ttl_seconds: float = 0.0
    retention_max_sessions: int = 0
    retention_interval_seconds: float = 300.0
    # Watch memory, in bytes of encoded events. The hub buffers the newest
    # revisions within watch_buffer_bytes for streams that keep up (0: none;
    # the others read the change log). A WatchSessions response carries at
    # most watch_response_bytes of events (a larger revision goes in
    # fragments; keep it well under the clients' 4 MiB receive limit). A
    # stream reads about watch_read_ahead_bytes ahead of what its client has
    # taken (a larger revision a piece at a time).
    watch_buffer_bytes: int = 16 << 20
    watch_response_bytes: int = 1 << 20
    watch_read_ahead_bytes: int = 1 << 20
    # Number of read-only connections.
    readers: int = 4
    # Server processes on one address (SO_REUSEPORT), each a replica of the
    # database, under one supervisor; 0 means one per core, at most 8.
    workers: int = 1
    # Page tokens are signed with this key; empty means a key kept in the
    # database (created on first start), so tokens survive restarts.
    page_token_key: bytes = b""
    # Seconds in-flight calls get to finish on shutdown.
    shutdown_grace_seconds: float = 10.0
    # Readiness: the database is probed every health_check_interval_seconds;
    # health turns NOT_SERVING after health_check_failures probes in a row
    # fail (or find no answer within the interval), and SERVING again at the
    # first probe that succeeds.
    health_check_interval_seconds: float = 5.0
    health_check_failures: int = 2
    limits: Limits = dataclasses.field(default_factory=Limits)
    # Serve the gRPC reflection service.
    reflection: bool = True
    # The clock every stored time comes from (epoch microseconds); tests
    # inject a controllable one instead of sleeping.
    clock: Callable[[], int] = wall_clock_micros
    # Prometheus metrics over HTTP on this host:port; empty turns them off.
    # A bare port (":9464" or "9464") listens on loopback only.
    metrics_address: str = ""
    # Log lines as "text" (human) or "json" (one object per line).
    log_format: str = "text"
    # The lowest level logged: debug (one line per RPC), info, warning, error.
    log_level: str = "info"
    # Authentication: a TOML or JSON file mapping API key hashes to principals
    # (see SECURITY.md); None turns authentication off (loopback only).
    api_keys_file: Path | None = None
    # TLS: certificate chain and private key (PEM); with client_ca, clients
    # must present a certificate signed by it (mutual TLS).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    # Listen beyond loopback without API keys and TLS (logged loudly).
    insecure: bool = False
    # PostgreSQL only: connections per replica (the writer, the change feed's
    # catch-up reads and RPC reads share them), the longest a statement may
    # run, and how often the change feed polls the change log besides
    # waking on NOTIFY (so a lost notification delays delivery by at most this).
    postgres_pool_min_size: int = 2
    postgres_pool_max_size: int = 10
    postgres_statement_timeout_seconds: float = 30.0
    postgres_poll_interval_seconds: float = 1.0
    # The event loop: "asyncio" (the default) or "uvloop" (the `fast` extra).
    # uvloop served about 20% more reads and 5-10% more appends per second in
    # bench runs here; it stays opt-in until it has run as long as asyncio has.
    event_loop: str = "asyncio"
