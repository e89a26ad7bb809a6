"""What scales writes: SQLite workers and PostgreSQL replicas, with and without a round trip.

Two levels, in one run (``make bench-replicas`` starts a throwaway PostgreSQL):

* Store level (no gRPC): appends/s of one SQLiteStore and of one
  PostgresStore, the storage's own rates (``pg1_vs_sqlite``).
* Process level: real ``sessiond serve`` processes over gRPC. SQLite with
  ``--workers`` 1, 2 and 4 on one file; PostgreSQL with 1, 2 and 4 replica
  processes, each also behind a delaying TCP proxy (``--rtt-ms``, default 0.5
  ms round trip) between sessiond and PostgreSQL. Load: ``--writers``
  concurrent appenders, each on its own connection and session, from
  ``--loaders`` processes; plus one watch (on another connection) whose
  events' commit times give the watch delay. Beside each rate: server CPU
  seconds per 1,000 appends (summed over every server process, supervisor
  and workers, from /proc), and for SQLite the share of each append's time
  spent holding the cross-process write lock (each worker logs its totals
  when it stops).

Each run makes a fresh database (a temp SQLite file with durability "full",
or a new database on $SESSIOND_TEST_POSTGRES_URL). The last line is

    RESULT_SCALE pg1_vs_sqlite=<r> pg2_vs_pg1_rtt=<r> pg4_vs_pg1_rtt=<r>
    workers2_vs_workers1=<r> rtt_ms=<d>

    python -m bench.replicas [--writers 32] [--seconds 5] [--rtt-ms 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import multiprocessing
import os
import queue
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sessiond.v1 import (
    message_pb2,
    message_service_pb2,
    message_service_pb2_grpc,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
)
from sessiond_server.store import Scope, SQLiteStore

from bench.loadgen import process_cpu_seconds
from bench.sessiond_process import free_port, sessiond_command


def clock() -> int:
    return time.time_ns() // 1000


async def new_postgres_database(admin_url: str) -> str:
    import asyncpg

    name = f"sessiond_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await conn.close()
    return admin_url.rsplit("/", 1)[0] + "/" + name


async def appends_per_second(stores: list[Any], writers: int, seconds: float,
                             content: str = "hello " * 20) -> float:
    """Concurrent writers, spread over the stores, each appending ``content`` to its own
    session."""
    for i in range(writers):
        await stores[i % len(stores)].create_session(Scope(), session_pb2.Session(id=f"w{i}"))
    done = 0
    stop = time.monotonic() + seconds

    async def writer(i: int) -> None:
        nonlocal done
        store = stores[i % len(stores)]
        message = message_pb2.Message(role=message_pb2.ROLE_USER, content=content)
        while time.monotonic() < stop:
            await store.append_messages(Scope(), f"w{i}", [message], None)
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(writer(i) for i in range(writers)))
    return done / (time.monotonic() - started)


async def watch_delay(a: Any, b: Any, samples: int = 200) -> list[float]:
    """Seconds from a write's answer on ``a`` to its delivery to ``b``'s listeners."""
    delivered: dict[int, float] = {}
    arrived = asyncio.Event()

    def listener(changes: Any) -> None:
        for change in changes:
            delivered.setdefault(change.revision, time.monotonic())
        arrived.set()

    b.add_listener(listener)
    await a.create_session(Scope(), session_pb2.Session(id="probe"))
    delays = []
    message = message_pb2.Message(role=message_pb2.ROLE_USER, content="probe")
    for _ in range(samples):
        result = await a.append_messages(Scope(), "probe", [message], None)
        answered = time.monotonic()
        while result.revision not in delivered:
            arrived.clear()
            await arrived.wait()
        delays.append(max(0.0, delivered[result.revision] - answered))
    return delays



# Process level.

CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
START_TIMEOUT_S = 60.0


def children(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    found = [pid]
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found.extend(children(int(child)))
    return found


def wait_serving(target: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"sessiond exited with {process.returncode}")
            with contextlib.suppress(grpc.RpcError):
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.05)
    raise RuntimeError(f"sessiond on {target} did not serve within {START_TIMEOUT_S:.0f}s")


class Fleet:
    """``count`` server processes on ``database`` (each with ``workers``), on their own ports."""

    def __init__(self, database: str, count: int, workers: int, log_dir: Path) -> None:
        self.logs = [log_dir / f"sessiond-{uuid.uuid4().hex[:6]}.log" for _ in range(count)]
        self.targets = [f"127.0.0.1:{free_port()}" for _ in range(count)]
        self.processes = []
        for target, log in zip(self.targets, self.logs, strict=True):
            with log.open("ab") as out:
                self.processes.append(subprocess.Popen(
                    [*sessiond_command(), "serve", "--database", database, "--address", target,
                     "--workers", str(workers)], stdout=out, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL))
        try:
            for target, process in zip(self.targets, self.processes, strict=True):
                wait_serving(target, process)
        except BaseException:
            self.stop()
            raise

    def pids(self) -> list[int]:
        return [pid for p in self.processes for pid in children(p.pid)]

    def stop(self) -> tuple[int, float, float]:
        """Stop every process; the writes their workers logged, the seconds they held the
        global order point (SQLite's write lock, PostgreSQL's revision counter), and the
        write transactions' round trips to PostgreSQL (NaN on SQLite)."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        writes, held, trips = 0, 0.0, math.nan
        for log in self.logs:
            text = log.read_text()
            for n, seconds in re.findall(r"writes=(\d+) write_lock_held=([\d.]+)s", text):
                writes += int(n)
                held += float(seconds)
            for n, rt, seconds in re.findall(
                    r"writes=(\d+) batches=\d+ round_trips=(\d+) counter_held=([\d.]+)s", text):
                writes += int(n)
                held += float(seconds)
                trips = (0 if math.isnan(trips) else trips) + int(rt)
        return writes, held, trips


def _load(args: tuple[list[str], int, int, float, float, float]) -> tuple[int, float]:
    """One load process: ``tasks`` appenders (own connection, own session) from ``first``;
    the appends completed in the window and the sum of their latencies."""
    targets, first, tasks, start_at, warmup, seconds = args

    async def run() -> tuple[int, float]:
        record_from = start_at + warmup
        stop_at = record_from + seconds
        done, latency = 0, 0.0
        request_of = {}
        channels = [grpc.aio.insecure_channel(targets[(first + i) % len(targets)],
                                              options=CHANNEL_OPTIONS) for i in range(tasks)]
        try:
            for i, channel in enumerate(channels):
                sid = f"load-{first + i}"
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await session_service_pb2_grpc.SessionServiceStub(channel).CreateSession(
                        session_service_pb2.CreateSessionRequest(
                            session=session_pb2.Session(id=sid)))
                request_of[i] = message_service_pb2.AppendMessagesRequest(
                    session_id=sid, messages=[message_pb2.Message(
                        role=message_pb2.ROLE_USER, content="hello " * 20)])
            await asyncio.sleep(max(0.0, start_at - time.time()))

            async def task(i: int) -> None:
                nonlocal done, latency
                append = message_service_pb2_grpc.MessageServiceStub(channels[i]).AppendMessages
                while time.time() < stop_at:
                    began = time.time()
                    await append(request_of[i], timeout=30)
                    ended = time.time()
                    if record_from <= began and ended <= stop_at:
                        done += 1
                        latency += ended - began

            await asyncio.gather(*(task(i) for i in range(tasks)))
        finally:
            for channel in channels:
                await channel.close(None)
        return done, latency

    return asyncio.run(run())


def _watch(args: tuple[str, float, float, float]) -> list[float]:
    """Seconds from each event's commit (its time) to its arrival on a watch on ``target``."""
    target, start_at, warmup, seconds = args

    async def run() -> list[float]:
        delays: list[float] = []
        record_from, stop_at = start_at + warmup, start_at + warmup + seconds
        async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
            call = session_service_pb2_grpc.SessionServiceStub(channel).WatchSessions(
                session_service_pb2.WatchSessionsRequest())
            with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
                async with asyncio.timeout(max(1.0, stop_at - time.time() + 1)):
                    async for response in call:
                        now = time.time()
                        if now > stop_at:
                            break
                        if now >= record_from:
                            delays.extend(now - (e.time.seconds + e.time.nanos / 1e9)
                                          for e in response.events)
            call.cancel()
        return delays

    return asyncio.run(run())


@dataclasses.dataclass
class Row:
    label: str
    rate: float
    cpu_per_1000: float
    delay_median_ms: float
    delay_p99_ms: float
    lock_share: float = math.nan
    lock_ms_per_append: float = math.nan
    round_trips_per_append: float = math.nan

    def line(self) -> str:
        # The lock: SQLite's cross-process write lock, PostgreSQL's revision counter row.
        lock = "" if math.isnan(self.lock_share) else (
            f"   lock {self.lock_ms_per_append:6.3f} ms/append, {self.lock_share:5.1%} of "
            f"each append, held {self.rate * self.lock_ms_per_append / 1000:4.0%} of the time")
        trips = "" if math.isnan(self.round_trips_per_append) else (
            f", {self.round_trips_per_append:4.2f} round trips/append")
        return (f"  {self.label:<28} {self.rate:8.0f} appends/s   {self.cpu_per_1000:6.2f} "
                f"cpu-s/1000   watch delay median {self.delay_median_ms:6.2f} ms p99 "
                f"{self.delay_p99_ms:7.2f} ms{lock}{trips}")


def measure(label: str, fleet: Fleet, writers: int, loaders: int, warmup: float,
            seconds: float) -> Row:
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0  # every loader connected and its sessions created
    shares = [writers // loaders + (1 if i < writers % loaders else 0) for i in range(loaders)]
    firsts = [sum(shares[:i]) for i in range(loaders)]
    # The watch on the last process, on a connection of its own.
    watch_target = fleet.targets[-1]
    with context.Pool(loaders + 1) as pool:
        watch = pool.apply_async(_watch, ((watch_target, start_at, warmup, seconds),))
        loads = pool.map_async(_load, [(fleet.targets, first, share, start_at, warmup, seconds)
                                       for first, share in zip(firsts, shares, strict=True)])
        time.sleep(max(0.0, start_at + warmup - time.time()))
        pids = fleet.pids()
        cpu_before = sum(process_cpu_seconds(p) for p in pids)
        time.sleep(max(0.0, start_at + warmup + seconds - time.time()))
        cpu = sum(process_cpu_seconds(p) for p in pids) - cpu_before
        results = loads.get(timeout=seconds + 120)
        delays = sorted(watch.get(timeout=seconds + 120))
    done = sum(r[0] for r in results)
    latency = sum(r[1] for r in results)
    writes, held, trips = fleet.stop()
    row = Row(label, done / seconds, cpu / max(1, done) * 1000,
              statistics.median(delays) * 1000 if delays else math.nan,
              delays[max(0, int(len(delays) * 0.99) - 1)] * 1000 if delays else math.nan)
    if writes:
        row.lock_ms_per_append = held / writes * 1000
        row.lock_share = (held / writes) / (latency / max(1, done))
        row.round_trips_per_append = trips / writes
    return row


# The delaying proxy between sessiond and PostgreSQL.
#
# Threads and blocking sockets, not asyncio: the event loop's timers have
# millisecond resolution (epoll), too coarse for a quarter-millisecond delay,
# while time.sleep waits to within tens of microseconds.

def _pump(source: socket.socket, sink: socket.socket, delay: float) -> None:
    """Copy ``source`` to ``sink``, each chunk ``delay`` seconds late, in order."""
    chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def send() -> None:
        with contextlib.suppress(OSError):
            while True:
                due, chunk = chunks.get()
                if not chunk:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            chunks.put((time.monotonic() + delay, chunk))
    chunks.put((0.0, b""))


def _proxy(listen_port: int, host: str, port: int, one_way: float) -> None:
    listener = socket.create_server(("127.0.0.1", listen_port))
    while True:
        client, _ = listener.accept()
        server = socket.create_connection((host, port))
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for a, b in ((client, server), (server, client)):
            threading.Thread(target=_pump, args=(a, b, one_way), daemon=True).start()


@contextlib.contextmanager
def delayed(url: str, rtt_ms: float) -> Any:
    """``url`` with its host:port replaced by a proxy that adds ``rtt_ms`` per round trip."""
    if rtt_ms <= 0:
        yield url
        return
    parts = urllib.parse.urlsplit(url)
    port = free_port()
    proxy = subprocess.Popen([sys.executable, "-m", "bench.replicas", "--proxy",
                              f"{port}:{parts.hostname}:{parts.port or 5432}:{rtt_ms}"])
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the delaying proxy did not start")
            time.sleep(0.05)
        netloc = parts.netloc.rsplit("@", 1)
        auth = netloc[0] + "@" if len(netloc) == 2 else ""
        yield urllib.parse.urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{port}"))
    finally:
        proxy.terminate()
        proxy.wait(10)


async def store_level(writers: int, seconds: float, admin_url: str | None
                      ) -> tuple[float, float]:
    """Appends/s of one SQLiteStore and one PostgresStore (NaN without PostgreSQL)."""
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = SQLiteStore(Path(tmp) / "bench.db", clock=clock)
        await sqlite.open()
        try:
            sqlite_rate = await appends_per_second([sqlite], writers, seconds)
        finally:
            await sqlite.close()
    if admin_url is None:
        return sqlite_rate, math.nan
    from sessiond_server.store.postgres import PostgresStore

    store = PostgresStore(await new_postgres_database(admin_url), clock=clock)
    await store.open()
    try:
        return sqlite_rate, await appends_per_second([store], writers, seconds)
    finally:
        await store.close()


async def backend_cpu(url: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend serving ``url``'s database (from
    /proc: the server runs on this machine), this connection's own excepted."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        pids = [int(r[0]) for r in await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()")]
    finally:
        await conn.close()
    return {pid: process_cpu_seconds(pid) for pid in pids}


async def postgres_store_profile(admin_url: str, replicas: int, rtt_ms: float, writers: int,
                                 seconds: float) -> str:
    """One line: ``replicas`` PostgresStores in this process (``writers`` appenders spread
    over them), each through the delaying proxy when ``rtt_ms`` > 0: appends/s, round
    trips per append and per batch, writes per batch, the counter's hold time per append
    and its share of wall time, and CPU per append of this process and of PostgreSQL's
    backends."""
    from sessiond_server.store.postgres import PostgresStore

    url = await new_postgres_database(admin_url)
    with delayed(url, rtt_ms) as through:
        stores = [PostgresStore(through, clock=clock) for _ in range(replicas)]
        for store in stores:
            await store.open()
        try:
            pg_before = await backend_cpu(url)
            own_before = process_cpu_seconds(os.getpid())
            started = time.monotonic()
            rate = await appends_per_second(stores, writers, seconds)
            wall = time.monotonic() - started
            own = process_cpu_seconds(os.getpid()) - own_before
            pg_after = await backend_cpu(url)
            pg = sum(cpu - pg_before.get(pid, 0.0) for pid, cpu in pg_after.items())
            stats = [store.writer.stats for store in stores]
        finally:
            for store in stores:
                await store.close()
    writes = sum(s.writes for s in stats)
    batches = sum(s.batches for s in stats)
    trips = sum(s.round_trips for s in stats)
    held = sum(s.counter_held_seconds for s in stats)
    wait = sum(s.counter_wait_seconds for s in stats)
    return (f"  postgres store x{replicas}, rtt {rtt_ms:g} ms  {rate:7.0f} appends/s"
            f"  {trips / writes:5.2f} rt/append  {trips / batches:6.1f} rt/batch"
            f"  {writes / batches:5.1f} writes/batch  counter {held / writes * 1000:6.3f}"
            f" ms/append, held {held / wall:4.0%} of the time, waited for"
            f" {wait / writes * 1000:6.3f} ms/append"
            f"  cpu ms/append: sessiond {own / writes * 1000:5.3f}"
            f" postgres {pg / writes * 1000:5.3f}")


def ratio(a: float, b: float) -> str:
    return "nan" if math.isnan(a) or math.isnan(b) or not b else f"{a / b:.2f}"


def main(writers: int, loaders: int, seconds: float, warmup: float, rtt_ms: float) -> None:
    admin_url = os.environ.get("SESSIOND_TEST_POSTGRES_URL")
    print(f"{writers} concurrent appenders, {seconds:.0f}s each after {warmup:.0f}s warm-up, "
          f"one message per call, {os.cpu_count()} cores")
    sqlite_rate, pg_store_rate = asyncio.run(store_level(writers, seconds, admin_url))
    print("store level (no gRPC)")
    print(f"  sqlite (durability full)     {sqlite_rate:8.0f} appends/s")
    print(f"  postgres, 1 replica          {pg_store_rate:8.0f} appends/s")
    print("processes over gRPC")
    rows: dict[str, Row] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2, 4):
            fleet = Fleet(str(Path(tmp) / f"w{workers}.db"), 1, workers, Path(tmp))
            row = measure(f"sqlite, {workers} worker{'s' if workers > 1 else ''}", fleet,
                          writers, loaders, warmup, seconds)
            rows[f"w{workers}"] = row
            print(row.line(), flush=True)
        if admin_url is None:
            print("  postgres: set SESSIOND_TEST_POSTGRES_URL (scripts/postgres.sh start)")
        else:
            for rtt in (0.0, rtt_ms):
                for replicas in (1, 2, 4):
                    url = asyncio.run(new_postgres_database(admin_url))
                    with delayed(url, rtt) as through:
                        fleet = Fleet(through, replicas, 1, Path(tmp))
                        row = measure(f"postgres, {replicas} replica{'s' if replicas > 1 else ''}"
                                      f", rtt {rtt:g} ms", fleet, writers, loaders, warmup,
                                      seconds)
                    rows[f"pg{replicas}-{rtt:g}"] = row
                    print(row.line(), flush=True)

    def rate(key: str) -> float:
        return rows[key].rate if key in rows else math.nan

    print(f"RESULT_SCALE pg1_vs_sqlite={ratio(pg_store_rate, sqlite_rate)} "
          f"pg2_vs_pg1_rtt={ratio(rate(f'pg2-{rtt_ms:g}'), rate(f'pg1-{rtt_ms:g}'))} "
          f"pg4_vs_pg1_rtt={ratio(rate(f'pg4-{rtt_ms:g}'), rate(f'pg1-{rtt_ms:g}'))} "
          f"workers2_vs_workers1={ratio(rate('w2'), rate('w1'))} rtt_ms={rtt_ms:g}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--loaders", type=int, default=2, help="load generator processes")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rtt-ms", type=float, default=0.5,
                        help="round trip added between sessiond and PostgreSQL")
    parser.add_argument("--postgres-store", action="store_true",
                        help="only the PostgreSQL store-level profile: 1 and 4 replicas, "
                             "with and without the delay")
    parser.add_argument("--proxy", metavar="LISTEN:HOST:PORT:RTT_MS",
                        help=argparse.SUPPRESS)  # the delaying proxy, in its own process
    args = parser.parse_args()
    if args.proxy:
        listen, host, port, rtt = args.proxy.split(":")
        _proxy(int(listen), host, int(port), float(rtt) / 2000)
    elif args.postgres_store:
        admin = os.environ["SESSIOND_TEST_POSTGRES_URL"]
        for rtt in (0.0, args.rtt_ms):
            for count in (1, 4):
                print(asyncio.run(postgres_store_profile(admin, count, rtt, args.writers,
                                                         args.seconds)), flush=True)
    else:
        main(args.writers, args.loaders, args.seconds, args.warmup, args.rtt_ms)
