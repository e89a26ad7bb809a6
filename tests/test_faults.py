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
from watch_validator import watch_until

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


async def test_a_disk_error_mid_batch_fails_the_whole_batch_and_the_next_batch_works(
        make_server: Any, small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SQLite rolls the whole transaction back on SQLITE_FULL and drops its savepoints: the
    batch must then fail whole (nothing of it stored, every caller UNAVAILABLE, no revision
    taken), and the next batch must commit without a restart."""
    caplog.set_level(logging.ERROR)
    server = await make_server(database=small_disk / "sessiond.db")
    sid = (await create_session(server.sessions, "batched")).id
    before = await append(server.messages, sid, user("before the disk filled"))
    ballast = fill(small_disk)
    # Room for about one large message: the batch's later writes spill the page cache
    # onto a full disk in the middle of the transaction.
    os.truncate(ballast, max(0, ballast.stat().st_size - 600_000))
    big = "y" * 900_000
    # Another connection holds the write lock, so the appends below queue up behind the
    # first one and the writer takes them as one batch when the lock is released.
    intruder = sqlite3.connect(server.database, isolation_level=None)
    intruder.execute("BEGIN IMMEDIATE")
    # The first write of the batch fails on the full disk; the small ones after it would
    # fit, and must not be stored outside the transaction that SQLite rolled back.
    # The writer takes the first call alone and waits for the lock with it; the next
    # ones queue up behind it as one batch.
    calls = [asyncio.ensure_future(append(server.messages, sid, user("0 plug")))]
    await asyncio.sleep(0.3)  # lets each call reach the writer's queue (not an assertion)
    # Larger than the page cache: it spills onto the disk in the middle of the statement.
    calls.append(asyncio.ensure_future(append(server.messages, sid, *(
        user(f"1 {big}") for _ in range(3)))))
    await asyncio.sleep(0.3)
    calls.extend(asyncio.ensure_future(append(server.messages, sid, user(f"{i} small")))
                 for i in range(2, 5))
    await asyncio.sleep(0.3)
    intruder.execute("ROLLBACK")
    intruder.close()
    answers = await asyncio.gather(*calls, return_exceptions=True)
    failures = [decode_failure(a) for a in answers if isinstance(a, grpc.RpcError)]
    stored_ok = [a for a in answers if not isinstance(a, BaseException)]
    assert failures, "the disk never filled"
    assert {(f.code, f.reason) for f in failures} == {
        (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")}
    while_full = await list_all_messages(server.messages, sid)
    # Exactly the acknowledged writes are stored: nothing of a failed batch.
    assert sorted(m.content.split(" ")[0] for m in while_full[1:]) == sorted(
        a.messages[0].content.split(" ")[0] for a in stored_ok)
    ballast.unlink()
    after = await append(server.messages, sid, user("after space returned"))
    # The revisions of the failed batch were given back: no hole, no reuse.
    assert after.revision == before.revision + len(stored_ok) + 1
    stored = await list_all_messages(server.messages, sid)
    assert stored[-1].content == "after space returned"
    assert len(stored) == len(while_full) + 1
    assert await server.check_consistency() == []
    # The change log holds one event per acknowledged write, in revision order.
    stream = await watch_until(server.sessions, after.revision,
                               start_revision=before.revision)
    assert sorted(set(stream.event_revisions)) == sorted(
        [before.revision, after.revision, *(a.revision for a in stored_ok)])
