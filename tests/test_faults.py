"""Storage faults: a full disk, a locked database, a read-only file system.

Each must answer UNAVAILABLE (reason STORAGE_UNAVAILABLE) with the cause in the server log,
leave the file consistent (integrity check, counters equal recounts, no change-log gap), and
heal by itself once the cause is gone. The full disk is a small tmpfs and the read-only file
system a read-only bind mount, so those two need root (they are skipped otherwise); the lock
is another connection holding SQLite's write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from harness import append, create_session, decode_failure, list_all_messages, user
from sessiond.v1 import session_service_pb2

ss = session_service_pb2

pytestmark = pytest.mark.parametrize("make_server", ["sqlite"], indirect=True)


@contextlib.contextmanager
def mounted(*args: str) -> Iterator[None]:
    target = args[-1]
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount ({result.stderr.strip()}); needs root")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", target], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)):
        yield disk


def fill(directory: Path) -> Path:
    """Write a ballast file until the file system is full; return it."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return ballast


async def test_a_full_disk_answers_unavailable_and_heals_when_space_returns(
        make_server: Any, small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    server = await make_server(database=small_disk / "sessiond.db")
    sid = (await create_session(server.sessions, "full")).id
    await append(server.messages, sid, user("before the disk filled"))
    ballast = fill(small_disk)
    failures = []
    for i in range(200):
        try:
            await append(server.messages, sid, user(f"{i} " + "x" * 60_000))
        except grpc.RpcError as err:
            failures.append(decode_failure(err))
            if len(failures) >= 3:
                break
    assert failures, "the disk never filled"
    assert {(f.code, f.reason) for f in failures} == {
        (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")}
    assert "full" in caplog.text  # "database or disk is full", logged, not sent
    assert all("full" not in f.message for f in failures)
    # Reads still work while the disk is full.
    stored_while_full = await list_all_messages(server.messages, sid)
    ballast.unlink()
    await append(server.messages, sid, user("after space returned"))
    stored = await list_all_messages(server.messages, sid)
    assert stored[:len(stored_while_full)] == stored_while_full
    assert stored[-1].content == "after space returned"
    assert await server.check_consistency() == []


async def test_a_locked_database_answers_unavailable_and_heals_when_released(
        make_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    server = await make_server()
    sid = (await create_session(server.sessions, "locked")).id
    intruder = sqlite3.connect(server.database, isolation_level=None)
    try:
        intruder.execute("BEGIN IMMEDIATE")  # holds the write lock
        try:
            await append(server.messages, sid, user("blocked"))
        except grpc.RpcError as err:
            failure = decode_failure(err)
        else:
            raise AssertionError("a write succeeded while another connection held the lock")
        assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE,
                                                  "STORAGE_UNAVAILABLE")
        assert "locked" in caplog.text
        # Reads are not blocked by a writer in WAL mode.
        await server.sessions.GetSession(ss.GetSessionRequest(session_id=sid))
        intruder.execute("ROLLBACK")
    finally:
        intruder.close()
    await append(server.messages, sid, user("after the lock was released"))
    assert [m.content for m in await list_all_messages(server.messages, sid)] == [
        "after the lock was released"]
    assert await server.check_consistency() == []


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.is_file()}


async def test_a_read_only_file_system_refuses_to_start_untouched_and_starts_once_writable(
        make_server: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    first = await make_server(database=data / "sessiond.db")
    sid = (await create_session(first.sessions, "kept")).id
    await append(first.messages, sid, user("written before"))
    await first.close()
    view = tmp_path / "view"
    view.mkdir()
    before = digest(data)
    with mounted("--bind", str(data), str(view)):
        remounted = await asyncio.to_thread(
            subprocess.run, ["mount", "-o", "remount,bind,ro", str(view)],
            capture_output=True, check=False)
        if remounted.returncode != 0:
            pytest.skip("cannot remount read-only")
        with pytest.raises(OSError) as refused:
            await make_server(database=view / "sessiond.db")
        assert refused.value.errno == errno.EROFS or "read-only" in str(refused.value).lower()
        assert digest(data) == before
        await asyncio.to_thread(subprocess.run, ["mount", "-o", "remount,bind,rw", str(view)],
                                check=True)
        again = await make_server(database=view / "sessiond.db")
        assert [m.content for m in await list_all_messages(again.messages, sid)] == [
            "written before"]
        assert await again.check_consistency() == []
        await again.close()
