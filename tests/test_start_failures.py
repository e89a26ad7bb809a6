"""A failed start of ``sessiond serve`` is one line that names the fix, a non-zero exit, and
nothing left behind.

Each case runs the real command in its own process group and waits for it with a generous
timeout: a start that hangs (a listener or the store's writer thread keeping the process
alive) fails the test by timing out, not by a measured duration. Afterwards the process
group is gone and the database's server lock is free again.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SESSIOND = str(Path(sys.executable).parent / "sessiond")
PROCESS_TIMEOUT = 60  # seconds: generous on a busy machine; a hang fails, a slow start does not


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another process (here: a listening socket) already holds."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``sessiond serve ARGS`` to its end; assert its process group is gone."""
    process = subprocess.Popen([SESSIOND, "serve", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=PROCESS_TIMEOUT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
            process.wait()
    with pytest.raises(ProcessLookupError):  # nothing of the group keeps running
        os.killpg(process.pid, 0)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def assert_one_error_line(result: subprocess.CompletedProcess[str], *fragments: str,
                          code: int = 1) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("sessiond: error:")]
    assert len(errors) == 1, result.stderr
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def assert_lock_free(database: Path) -> None:
    from sessiond_server.maintenance import DatabaseLock

    with DatabaseLock(database):  # raises DatabaseInUse if the failed start still held it
        pass


def test_a_taken_port_is_named_and_the_database_is_released(tmp_path: Path,
                                                            held_port: int) -> None:
    database = tmp_path / "s.db"
    result = serve("--database", str(database), "--address", f"127.0.0.1:{held_port}")
    assert_one_error_line(result, f"127.0.0.1:{held_port}", "already in use",
                          "choose another --address")
    assert "Failed to bind" not in result.stderr  # grpc's own wording says nothing useful
    assert_lock_free(database)


def test_a_taken_metrics_port_stops_the_start_after_the_store_opened(
        tmp_path: Path, held_port: int) -> None:
    database = tmp_path / "s.db"
    result = serve("--database", str(database), "--address", f"127.0.0.1:{free_port()}",
                   "--metrics-address", f"127.0.0.1:{held_port}")
    assert_one_error_line(result, f"metrics on 127.0.0.1:{held_port}",
                          "--metrics-address")
    assert_lock_free(database)


def test_an_address_that_is_not_this_machines_is_refused(tmp_path: Path) -> None:
    # 192.0.2.0/24 is reserved for documentation: never an address of a test machine.
    result = serve("--database", str(tmp_path / "s.db"), "--address", "192.0.2.1:50051",
                   "--insecure")
    assert_one_error_line(result, "192.0.2.1:50051", "not an address of this machine")


def test_a_non_loopback_address_without_keys_and_tls_is_refused(tmp_path: Path) -> None:
    database = tmp_path / "s.db"
    result = serve("--database", str(database), "--address", f"0.0.0.0:{free_port()}")
    assert_one_error_line(result, "beyond loopback", "--insecure")
    assert not database.exists()  # refused before the database was touched


@pytest.mark.parametrize(("flags", "named"), [
    (("--api-keys-file", "{missing}"), "API key file"),
    (("--tls-cert-file", "{missing}", "--tls-key-file", "{missing}"), "TLS"),
], ids=["api-keys-file", "tls-files"])
def test_a_missing_key_or_tls_file_is_named(tmp_path: Path, flags: tuple[str, ...],
                                           named: str) -> None:
    missing = str(tmp_path / "absent.pem")
    result = serve("--database", str(tmp_path / "s.db"), "--address",
                   f"127.0.0.1:{free_port()}", *(f.format(missing=missing) for f in flags))
    assert_one_error_line(result, named, missing, "--api-keys-file / --tls-*")


def test_an_unreachable_postgresql_is_named_with_its_url(tmp_path: Path) -> None:
    pytest.importorskip("asyncpg")
    url = f"postgresql://sessiond@127.0.0.1:{free_port()}/sessiond"  # nothing listens there
    result = serve("--database", url, "--address", f"127.0.0.1:{free_port()}")
    assert_one_error_line(result, "cannot connect to PostgreSQL", "127.0.0.1",
                          "check that PostgreSQL is running")


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    database = tmp_path / "notes.db"
    database.write_text("not a database\n" * 100)
    result = serve("--database", str(database), "--address", f"127.0.0.1:{free_port()}")
    assert_one_error_line(result, "not a database", "restore a backup")
    assert database.read_text() == "not a database\n" * 100
    assert_lock_free(database)


def test_a_database_from_a_newer_sessiond_is_refused_untouched(tmp_path: Path) -> None:
    database = tmp_path / "future.db"
    conn = sqlite3.connect(database)
    conn.execute("PRAGMA user_version = 9999")
    conn.close()
    before = database.read_bytes()
    result = serve("--database", str(database), "--address", f"127.0.0.1:{free_port()}")
    assert_one_error_line(result, "schema version 9999", "newer sessiond")
    assert database.read_bytes() == before
    assert_lock_free(database)


def test_a_database_in_a_directory_that_cannot_exist_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = serve("--database", str(blocker / "s.db"), "--address",
                   f"127.0.0.1:{free_port()}")
    assert_one_error_line(result, str(blocker), "--database")


def test_a_database_another_server_holds_is_refused(tmp_path: Path) -> None:
    from sessiond_server.maintenance import DatabaseLock

    database = tmp_path / "s.db"
    with DatabaseLock(database):
        result = serve("--database", str(database), "--address", f"127.0.0.1:{free_port()}")
    assert_one_error_line(result, "in use", "stop that sessiond first")


def test_a_bad_configuration_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    config = tmp_path / "sessiond.toml"
    config.write_text('durability = "sometimes"\nno_such_setting = 1\n')
    result = serve("--config", str(config), "--address", f"127.0.0.1:{free_port()}")
    line = assert_one_error_line(result, "invalid configuration", code=2)
    assert "durability" in line and "no_such_setting" in line


def test_debug_level_adds_the_traceback_to_the_same_line(tmp_path: Path) -> None:
    database = tmp_path / "notes.db"
    database.write_text("not a database\n" * 100)
    result = serve("--database", str(database), "--address", f"127.0.0.1:{free_port()}",
                   "--log-level", "debug")
    assert "Traceback (most recent call last)" in result.stderr
    assert "sqlite3.DatabaseError" in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("sessiond: error:")]
    assert len(errors) == 1 and "not a database" in errors[0]
    assert result.returncode == 1
