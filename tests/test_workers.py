"""Several server processes on one SQLite file: ``sessiond serve --workers N`` and replicas.

Real processes on a real file. Every process is a replica of the store: a
watch on one sees the writes made through another, in revision order and
whole (the validators of ``watch_validator``); the two-replica SIGKILL test
and the crash-resume test run here with ``--workers 2``; concurrent writers
through several workers leave every acknowledged write stored once, counters
equal to recounts and no change-log gap; a killed worker is restarted;
SIGTERM drains every worker; a worker that cannot start fails the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import ServerProcess
from harness import OWN_SUBCHANNELS
from sessiond.v1 import (
    message_pb2,
    message_service_pb2,
    message_service_pb2_grpc,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
)
from sessiond_server.store import SQLiteStore
from sessiond_server.store.interface import Change, Scope
from test_postgres_replicas import two_replicas_deliver_every_event_once_in_order_across_a_kill
from test_shutdown import reason_of
from test_watch_crash import (
    test_resume_after_kill_delivers_each_committed_event_once as resume_after_kill,
)
from watch_validator import (
    ChangeLog,
    WatchRecorder,
    WatchValidator,
    assert_same_events,
    user_message,
    watch_until,
)

SESSIOND = str(Path(sys.executable).parent / "sessiond")
WAIT_SECONDS = 60.0


class ReplicaProcess(ServerProcess):
    """One more replica of a database, on its own port, without the server lock."""

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "sessiond_server.supervisor", "--database",
                str(self.database), "--address", self.address, *self.extra_args]


class WorkersProcess(ServerProcess):
    """``sessiond serve --workers N``; ``kill`` is a crash of the whole: supervisor and
    workers (one process group) SIGKILLed at once."""

    def kill(self) -> None:
        if self.running:
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def worker_pids(self) -> list[int]:
        found = re.findall(r"supervising \d+ workers on \S+ database=\S+ pids=([\d,]+)",
                           self.log_path.read_text())
        assert found, self.log_tail()
        return [int(p) for p in found[-1].split(",")]


@pytest.fixture
def processes(tmp_path: Path) -> Any:
    started: list[ServerProcess] = []
    count = iter(range(1, 100))

    def make(kind: type[ServerProcess], database: Path, *extra_args: str) -> ServerProcess:
        n = next(count)
        process = kind(database, tmp_path / f"process-{n}.log", extra_args)
        started.append(process)
        process.start()
        return process

    yield make
    for process in started:
        process.cleanup()


def session_stub(channel: grpc.aio.Channel) -> session_service_pb2_grpc.SessionServiceStub:
    return session_service_pb2_grpc.SessionServiceStub(channel)


async def test_a_watch_on_one_replica_sees_writes_through_another_in_revision_order(
        tmp_path: Path, processes: Any) -> None:
    database = tmp_path / "shared.db"
    a = processes(ReplicaProcess, database)
    b = processes(ReplicaProcess, database)
    async with grpc.aio.insecure_channel(a.address) as a_channel, \
            grpc.aio.insecure_channel(b.address) as b_channel:
        a_stub, b_stub = session_stub(a_channel), session_stub(b_channel)
        b_messages = message_service_pb2_grpc.MessageServiceStub(b_channel)
        first = await a_stub.CreateSession(session_service_pb2.CreateSessionRequest(
            session=session_pb2.Session(id="first")))
        async with WatchRecorder(a_stub, name="on-a", start_revision=first.revision + 1) as on_a:
            await on_a.wait_created()

            async def write(w: int) -> int:
                last = 0
                for i in range(10):
                    sid = f"b{w}-{i}"
                    await b_stub.CreateSession(session_service_pb2.CreateSessionRequest(
                        session=session_pb2.Session(id=sid)))
                    appended = await b_messages.AppendMessages(
                        message_service_pb2.AppendMessagesRequest(
                            session_id=sid, messages=[user_message(f"from b {w} {i}")]))
                    last = max(last, appended.revision)
                return last

            last = max(await asyncio.gather(*(write(w) for w in range(4))))
            await on_a.wait_covered(last)
        truth = await watch_until(b_stub, last, name="truth-from-b",
                                  start_revision=first.revision + 1)
    assert {e.session_id for e in on_a.stream.events} >= {f"b{w}-{i}" for w in range(4)
                                                          for i in range(10)}
    expected = ChangeLog.from_events(truth.events)
    WatchValidator(expected).validate(on_a.stream)
    assert_same_events(on_a.stream.events, truth.events, "live on a vs replay on b")
    assert sorted({e.revision for e in truth.events}) == list(
        range(first.revision + 1, last + 1))


async def test_two_replicas_one_of_them_two_workers_across_a_kill(
        tmp_path: Path, processes: Any) -> None:
    database = tmp_path / "shared.db"
    await two_replicas_deliver_every_event_once_in_order_across_a_kill(
        processes(ReplicaProcess, database),
        processes(WorkersProcess, database, "--workers", "2"))


async def test_watch_resumes_across_a_kill_of_every_worker(
        tmp_path: Path, processes: Any) -> None:
    def server_process() -> ServerProcess:
        return processes(WorkersProcess, tmp_path / "crash.db", "--workers", "2")  # type: ignore[no-any-return]

    await resume_after_kill(server_process)


def stored_state(database: Path) -> tuple[list[str], list[str]]:
    """Every stored message id, and the store's consistency problems."""
    async def check() -> list[str]:
        store = SQLiteStore(database, clock=lambda: time.time_ns() // 1000)
        await store.open()
        try:
            return await store.check_consistency()
        finally:
            await store.close()

    problems = asyncio.run(check())
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        ids = [r[0] for r in db.execute("SELECT message_id FROM messages")]
    finally:
        db.close()
    return ids, problems


def test_concurrent_writers_through_several_workers_store_each_write_once(
        tmp_path: Path, processes: Any) -> None:
    database = tmp_path / "busy.db"
    server = processes(WorkersProcess, database, "--workers", "3")
    acknowledged: list[str] = []

    async def writer(w: int) -> None:
        # Each writer its own connection, so the kernel spreads them over the workers.
        async with grpc.aio.insecure_channel(server.address, options=OWN_SUBCHANNELS) as ch:
            sessions = session_stub(ch)
            messages = message_service_pb2_grpc.MessageServiceStub(ch)
            for sid in (f"own-{w}", "shared"):
                try:
                    await sessions.CreateSession(session_service_pb2.CreateSessionRequest(
                        session=session_pb2.Session(id=sid)))
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
            for i in range(25):
                for sid in (f"own-{w}", "shared"):
                    message_id = f"{sid}-w{w}-{i}"
                    message = user_message(f"{w} {i}")
                    message.id = message_id
                    await messages.AppendMessages(message_service_pb2.AppendMessagesRequest(
                        session_id=sid, messages=[message]))
                    acknowledged.append(message_id)

    async def run() -> None:
        await asyncio.gather(*(writer(w) for w in range(8)))

    asyncio.run(run())
    assert server.terminate(timeout=WAIT_SECONDS) == 0
    ids, problems = stored_state(database)
    assert problems == []
    assert len(ids) == len(set(ids))
    assert set(acknowledged) <= set(ids)
    assert len(acknowledged) == 8 * 25 * 2
    log = server.log_path.read_text()
    assert log.count("stopped: revision=") == 3  # each worker drained and stopped


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not yet reaped) counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_killed_worker_is_restarted_and_sigterm_drains_them_all(
        tmp_path: Path, processes: Any) -> None:
    database = tmp_path / "restart.db"
    server = processes(WorkersProcess, database, "--workers", "2")
    pids = server.worker_pids()
    os.kill(pids[1], signal.SIGKILL)
    wait_until(lambda: "worker 1 serving again" in server.log_path.read_text(),
               "the killed worker was not restarted")
    log = server.log_path.read_text()
    assert "worker 1 exited (signal 9); restarting it in" in log
    new_pid = int(re.findall(r"worker 1 serving again \(pid (\d+)\)", log)[-1])
    assert new_pid not in pids and alive(new_pid) and alive(pids[0])

    async def writes() -> None:
        for n in range(6):  # new connections land on either worker
            async with grpc.aio.insecure_channel(server.address, options=OWN_SUBCHANNELS) as ch:
                await session_stub(ch).CreateSession(session_service_pb2.CreateSessionRequest(
                    session=session_pb2.Session(id=f"after-restart-{n}")))

    asyncio.run(writes())
    assert server.terminate(timeout=WAIT_SECONDS) == 0
    assert not alive(new_pid) and not alive(pids[0])
    log = server.log_path.read_text()
    assert log.count("stopped: revision=") >= 2
    wal = Path(f"{database}-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # the last to close checkpointed
    _, problems = stored_state(database)
    assert problems == []


def test_a_sigterm_to_the_process_group_drains_every_worker_and_exits_0(
        tmp_path: Path, processes: Any) -> None:
    # systemd's KillMode=control-group and a terminal's Ctrl-C signal the whole group:
    # each worker gets SIGTERM from the sender and again from the supervisor.
    database = tmp_path / "group.db"
    server = processes(WorkersProcess, database, "--workers", "2")
    pids = server.worker_pids()
    channels = [grpc.insecure_channel(server.address, options=OWN_SUBCHANNELS)
                for _ in range(4)]  # own connections: the kernel spreads them over the workers
    first = session_service_pb2_grpc.SessionServiceStub(channels[0])
    first.CreateSession(session_service_pb2.CreateSessionRequest(
        session=session_pb2.Session(id="s")))
    watches = [session_service_pb2_grpc.SessionServiceStub(ch).WatchSessions(
        session_service_pb2.WatchSessionsRequest()) for ch in channels]
    for watch in watches:
        assert next(watch).type == session_service_pb2.WATCH_RESPONSE_TYPE_CREATED
    acknowledged: list[str] = []
    outcomes: list[grpc.StatusCode] = []

    def writer(w: int) -> None:
        messages = message_service_pb2_grpc.MessageServiceStub(channels[w])
        for i in range(100_000):
            message = user_message(f"{w} {i}")
            message.id = f"w{w}-{i}"
            try:
                messages.AppendMessages(message_service_pb2.AppendMessagesRequest(
                    session_id="s", messages=[message]), timeout=WAIT_SECONDS)
            except grpc.RpcError as err:
                outcomes.append(err.code())  # type: ignore[attr-defined]
                return
            acknowledged.append(message.id)
            outcomes.append(grpc.StatusCode.OK)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(len(channels))]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(acknowledged) >= 40, "the writers did not get going")
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGTERM)
    for watch in watches:  # each ended by its worker's drain, not cut by an exit
        with pytest.raises(grpc.RpcError) as ended:
            for _ in watch:
                pass
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert reason_of(ended.value) == "SHUTTING_DOWN"
    for thread in threads:
        thread.join(timeout=WAIT_SECONDS)
    for channel in channels:
        channel.close()
    assert server.process.wait(timeout=WAIT_SECONDS) == 0
    assert set(outcomes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, outcomes
    assert not any(alive(pid) for pid in pids)
    log = server.log_path.read_text()
    assert log.count("shutting down (grace") == 2, log  # each worker drained, once
    assert log.count("stopped: revision=") == 2, log  # and closed its store
    assert "second signal" not in log, log
    wal = Path(f"{database}-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # the last to close checkpointed
    ids, problems = stored_state(database)
    assert problems == []
    assert set(acknowledged) <= set(ids) and len(ids) == len(set(ids))


@contextlib.contextmanager
def a_write_held_in_a_worker(server: WorkersProcess) -> Iterator[None]:
    """A CreateSession waiting in a worker for SQLite's write lock, which another
    connection holds until the block ends; it holds that worker's drain open (with a
    long shutdown grace) so signals can be sent to a worker still draining."""
    channel = grpc.insecure_channel(server.address)
    sessions = session_service_pb2_grpc.SessionServiceStub(channel)
    sessions.CreateSession(session_service_pb2.CreateSessionRequest(
        session=session_pb2.Session(id="s")))
    intruder = sqlite3.connect(server.database, isolation_level=None)
    intruder.execute("BEGIN IMMEDIATE")
    held = sessions.CreateSession.future(session_service_pb2.CreateSessionRequest(
        session=session_pb2.Session(id="t")), timeout=WAIT_SECONDS)
    try:
        yield
    finally:
        intruder.execute("ROLLBACK")
        intruder.close()
        with contextlib.suppress(grpc.RpcError):
            held.result()
        channel.close()


def sigterm_the_group_and_wait_for_both_drains(server: WorkersProcess) -> None:
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGTERM)
    wait_until(lambda: server.log_path.read_text().count("shutting down (grace") == 2,
               "the workers did not start draining")


def test_a_draining_worker_keeps_draining_through_more_sigterms(
        tmp_path: Path, processes: Any) -> None:
    # The copies of a group SIGTERM may reach a worker apart (the kernel merges them only
    # while one is pending); here they come apart for certain, while a worker drains.
    database = tmp_path / "more.db"
    server = processes(WorkersProcess, database, "--workers", "2",
                       "--shutdown-grace-seconds", "600")
    pids = server.worker_pids()
    with a_write_held_in_a_worker(server):
        sigterm_the_group_and_wait_for_both_drains(server)
        for pid in pids * 3:  # the one holding the write drains on (until the block ends
            with contextlib.suppress(ProcessLookupError):  # or its 5 s busy wait does)
                os.kill(pid, signal.SIGTERM)
    assert server.process is not None
    assert server.process.wait(timeout=WAIT_SECONDS) == 0
    log = server.log_path.read_text()
    assert "second signal" not in log, log
    assert log.count("stopped: revision=") == 2, log
    wal = Path(f"{database}-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    _, problems = stored_state(database)
    assert problems == []


def test_a_second_sigterm_to_the_process_group_kills_the_draining_workers(
        tmp_path: Path, processes: Any) -> None:
    # Ctrl-C twice in a terminal: the supervisor escalates, not the workers.
    server = processes(WorkersProcess, tmp_path / "twice.db", "--workers", "2",
                       "--shutdown-grace-seconds", "600")
    pids = server.worker_pids()
    with a_write_held_in_a_worker(server):
        sigterm_the_group_and_wait_for_both_drains(server)
        # The second signal only once the supervisor took the first: two that reach
        # it before its handler runs are one to Python (one flag per signal number).
        wait_until(lambda: "supervisor: stopping" in server.log_path.read_text(),
                   "the supervisor did not take the first signal")
        assert server.process is not None
        os.killpg(server.process.pid, signal.SIGTERM)
        assert server.process.wait(timeout=WAIT_SECONDS) == 1
    wait_until(lambda: not any(alive(pid) for pid in pids), "a worker outlived the kill")
    log = server.log_path.read_text()
    assert "second signal: killing the workers" in log, log  # the supervisor's line
    assert "second signal: exiting now" not in log, log  # no worker's own


def test_a_worker_that_does_not_stop_in_time_is_killed_by_the_supervisor(
        tmp_path: Path, processes: Any) -> None:
    server = processes(WorkersProcess, tmp_path / "late.db", "--workers", "2",
                       "--shutdown-grace-seconds", "0.5")
    pids = server.worker_pids()
    os.kill(pids[1], signal.SIGSTOP)  # it cannot drain: only SIGKILL ends it
    try:
        assert server.terminate(timeout=WAIT_SECONDS) == 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids[1], signal.SIGCONT)
    wait_until(lambda: not any(alive(pid) for pid in pids), "a worker outlived the kill")
    log = server.log_path.read_text()
    assert "worker 1 did not stop within 6.0s; killing it" in log, log
    assert log.count("stopped: revision=") == 1, log  # worker 0 drained in time


def test_the_supervisor_holds_the_server_lock_and_workers_die_with_it(
        tmp_path: Path, processes: Any) -> None:
    database = tmp_path / "locked.db"
    server = processes(WorkersProcess, database, "--workers", "2")
    pids = server.worker_pids()
    backup = subprocess.run([SESSIOND, "backup", str(tmp_path / "copy.db"), "--database",
                             str(database)], capture_output=True, text=True,
                            timeout=WAIT_SECONDS)
    assert backup.returncode == 0, backup.stderr  # a live backup beside the workers
    restore = subprocess.run([SESSIOND, "restore", str(tmp_path / "copy.db"), "--database",
                              str(database), "--force"], capture_output=True, text=True,
                             timeout=WAIT_SECONDS)
    assert restore.returncode != 0 and "in use" in restore.stderr, restore.stderr
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)  # the supervisor alone
    server.process.wait(timeout=10)
    wait_until(lambda: not any(alive(p) for p in pids), "workers outlived the supervisor")


def test_a_worker_that_cannot_start_fails_the_whole_start(tmp_path: Path) -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        metrics = held.getsockname()[1]
        process = subprocess.Popen(
            [SESSIOND, "serve", "--database", str(tmp_path / "s.db"), "--address",
             "127.0.0.1:0", "--workers", "2", "--metrics-address", f"127.0.0.1:{metrics}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, err = process.communicate(timeout=WAIT_SECONDS)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    errors = [line for line in err.splitlines() if line.startswith("sessiond: error:")]
    assert len(errors) == 1 and f"127.0.0.1:{metrics}" in errors[0], err
    assert process.returncode == 1
    with pytest.raises(ProcessLookupError):  # no worker is left behind
        os.killpg(process.pid, 0)


def test_port_0_is_chosen_once_for_all_workers_and_each_serves_its_own_metrics(
        tmp_path: Path) -> None:
    import socket
    import urllib.request

    from conftest import free_port

    metrics = free_port()
    while True:  # two free ports in a row: P for worker 0, P + 1 for worker 1
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", metrics + 1))
                break
            except OSError:
                metrics = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [SESSIOND, "serve", "--database", str(tmp_path / "s.db"), "--address",
             "127.0.0.1:0", "--workers", "2", "--metrics-address", f"127.0.0.1:{metrics}"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: "supervising 2 workers" in log.read_text(), "no supervisor line")
        address = re.findall(r"supervising 2 workers on (\S+)", log.read_text())[0]
        assert not address.endswith(":0")
        serving = re.findall(r"serving on (\S+) ", log.read_text())
        assert serving == [address, address]  # both workers on the port the supervisor chose
        for port in (metrics, metrics + 1):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
                assert b"sessiond_" in page.read()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT_SECONDS) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()



async def test_a_replica_far_behind_catches_up_in_steps_bounded_in_bytes(
        tmp_path: Path) -> None:
    database = tmp_path / "s.db"

    def micros() -> int:
        return time.time_ns() // 1000

    writer = SQLiteStore(database, clock=micros)
    follower = SQLiteStore(database, clock=micros, poll_interval_seconds=3600.0)
    await writer.open()
    await follower.open()
    try:
        await far_behind_replica_catches_up_in_bounded_steps(writer, follower)
    finally:
        await follower.close()
        await writer.close()


async def far_behind_replica_catches_up_in_bounded_steps(writer: Any, follower: Any) -> None:
    """The change feed reads the log in whole revisions of about ``catch_up_bytes``
    at a time; a revision larger than that comes alone, whole, and in order.
    (``writer`` and ``follower``: two open stores, replicas of one database.)"""
    scope = Scope()
    deliveries: list[list[Change]] = []
    follower.add_listener(deliveries.append)
    budget = 20_000
    follower.catch_up_bytes = budget
    await writer.create_session(scope, session_pb2.Session(id="far"))
    async with follower._deliver_lock:  # the follower is busy: it falls behind
        for i in range(40):
            if i == 17:  # an event of about 60 KB: a session with a large state
                await writer.create_session(scope, session_pb2.Session(
                    id="large", state_json=json.dumps({"k": "x" * 60_000})))
            await writer.append_messages(scope, "far", [message_pb2.Message(
                role=message_pb2.ROLE_USER, content=f"{i}:" + "x" * 3_000)], None)
    head = writer.revision
    for _ in range(400):
        if follower.revision >= head:
            break
        await asyncio.sleep(0.05)
    assert follower.revision == head
    expected = await writer.read_changes(1, head)
    delivered = [c for step in deliveries for c in step]
    assert [(c.revision, c.event) for c in delivered] == [
        (c.revision, c.event) for c in expected]
    largest = max(len(c.event.SerializeToString()) for c in expected)
    assert largest > budget
    for step in deliveries:
        revisions = {c.revision for c in step}
        step_bytes = sum(len(c.event.SerializeToString()) for c in step)
        assert len(revisions) == 1 or step_bytes < budget + largest
    assert len(deliveries) > 5  # the 40 revisions did not come in one read
