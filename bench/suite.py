"""The scenarios, in the order they run, and the sizes of a full and a quick run.

Three sessiond servers are started, one after the other, each on a fresh
database: durability full for the write, read and watch scenarios, durability
normal for the same appends, and durability full again for the large session
tables (listing, stats), whose fill would otherwise slow every other
scenario. The ceilings run right after the sessiond figure they bound, so
both see the machine in the same state. Every phase reports the server's own
peak RSS (reset before the phase).
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from bench import bulk_fill, ceilings, peers, workload
from bench.figures import Figure, percentile_ms
from bench.loadgen import (
    Call,
    LoadSpec,
    PhaseResult,
    SubscribeSpec,
    WorkerPool,
    process_cpu_seconds,
    split,
)
from bench.sessiond_process import SessiondServer, free_port, peak_rss_mib, reset_peak_rss


@dataclasses.dataclass(frozen=True, slots=True)
class Sizes:
    """How big and how long; ``QUICK`` keeps a run under three minutes."""

    quick: bool
    warmup_s: float
    duration_s: float
    read_sizes: tuple[int, ...]
    list_sessions: int
    list_page_size: int
    stats_sessions: int
    # Sequential stats calls: at least stats_repeats of them and stats_s seconds,
    # so that a p99 is a percentile and not the slowest of a handful.
    stats_repeats: int
    stats_s: float
    raw_sqlite_s: float
    peers_s: float
    fill_timeout_s: float
    load_workers: int = 2
    append_in_flight: int = 64
    read_in_flight: int = 32
    prefilled_messages: int = 10_000
    growth_in_flight: int = 8
    list_page: int = 1000
    list_in_flight: int = 4
    watch_subscribers: int = 100
    watch_subscriber_processes: int = 4
    watch_writer_in_flight: int = 8


FULL = Sizes(
    quick=False,
    warmup_s=1.0,
    duration_s=8.0,
    read_sizes=(10, 10_000, 100_000),
    list_sessions=200_000,
    list_page_size=50,
    stats_sessions=1_000_000,
    stats_repeats=25,
    stats_s=5.0,
    raw_sqlite_s=5.0,
    peers_s=5.0,
    fill_timeout_s=3600.0,
)
# Quick: the same scenarios, smaller. Page 1,000 stays the middle of the
# filtered listing (page size 5 over 10,000 matching sessions, as 50 over
# 100,000 in the full run).
QUICK = Sizes(
    quick=True,
    warmup_s=0.3,
    duration_s=1.5,
    read_sizes=(10, 1_000, 10_000),
    list_sessions=20_000,
    list_page_size=5,
    stats_sessions=20_000,
    stats_repeats=10,
    stats_s=0.5,
    raw_sqlite_s=1.5,
    peers_s=1.0,
    fill_timeout_s=120.0,
)


class Suite:
    """Runs every scenario and collects figures; see run()."""

    def __init__(
        self,
        sizes: Sizes,
        workdir: Path,
        results_dir: Path,
        stamp: str,
        profile: bool,
        install_peers: bool,
        skip_peers: bool,
        log: Callable[[str], None],
    ) -> None:
        self.sizes = sizes
        self.workdir = workdir
        self.results_dir = results_dir
        self.stamp = stamp
        self.profile = profile
        self.install_peers = install_peers
        self.skip_peers = skip_peers
        self.log = log
        self.figures: list[Figure] = []
        self.facts: dict[str, Any] = {}
        self.profiles: dict[str, str] = {}
        self.pool = WorkerPool(max(sizes.load_workers, sizes.watch_subscriber_processes + 1))
        self.ceiling = ceilings.CeilingServer(free_port())
        self._server_log = results_dir / f"{stamp}-server.log"

    # -- plumbing ---------------------------------------------------------

    def close(self) -> None:
        self.pool.close()
        self.ceiling.stop()

    def start_server(
        self, name: str, durability: str, database: Path | None = None
    ) -> SessiondServer:
        database = database or self.workdir / f"{name}.db"
        profile = None
        if self.profile:
            profile = self.results_dir / f"{self.stamp}-profile-{name}-{len(self.profiles)}.pstats"
            self.profiles[f"{name} server ({len(self.profiles)})"] = str(profile)
        server = SessiondServer(database, durability, self._server_log, profile)
        self.facts[f"server_{name}_start_s"] = round(server.started_in_s, 3)
        self.log(f"sessiond serve ({name}, durability {durability}) on {server.target}")
        return server

    def stop_server(self, name: str, server: SessiondServer) -> None:
        self.facts[f"server_{name}_database_mib"] = round(server.database_bytes() / 2**20, 1)
        code = server.stop()
        self.facts[f"server_{name}_exit_code"] = code

    def record(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        parts = [f"{figure.group} / {figure.name}:"]
        if figure.skipped:
            parts.append(f"skipped ({figure.skipped})")
        else:
            parts.append(f"{figure.ops_per_s:,.0f} ops/s p50 {figure.p50_ms:.2f} ms")
            parts.append(f"p99 {figure.p99_ms:.2f} ms")
            if not math.isnan(figure.cpu_us_per_op):
                parts.append(f"cpu {figure.cpu_us_per_op:.0f} us/op")
            if not math.isnan(figure.peak_rss_mib):
                parts.append(f"rss {figure.peak_rss_mib:.0f} MiB")
            if figure.errors:
                parts.append(f"errors {figure.errors}")
        self.log("  " + " ".join(parts))
        return figure

    def run_phase(
        self,
        specs: Sequence[LoadSpec | SubscribeSpec],
        pid: int | None,
        timeout_s: float,
        start_delay_s: float | None = None,
    ) -> tuple[PhaseResult, float]:
        """Run a phase; return the merged result (with the server's CPU in the window)
        and the server's peak RSS."""
        if pid is not None:
            reset_peak_rss(pid)
        result = self.pool.run(specs, timeout_s, start_delay_s, cpu_pid=pid)
        if result.failure:
            raise RuntimeError(f"a worker failed: {result.failure}")
        return result, peak_rss_mib(pid) if pid is not None else math.nan

    def load(
        self,
        group: str,
        name: str,
        target: str,
        operations: Sequence[tuple[Call, ...]],
        in_flight: int,
        workers: int,
        pid: int | None,
        note: str = "",
        extra: dict[str, Any] | None = None,
    ) -> Figure:
        """A closed-loop phase: ``in_flight`` operations spread over workers."""
        sizes = self.sizes
        # Every worker needs at least one operation to repeat.
        per_worker_ops = split(list(operations) * max(1, workers // len(operations)), workers)
        specs = [
            LoadSpec(
                target=target,
                concurrency=in_flight // workers,
                operations=tuple(ops),
                warmup_s=sizes.warmup_s,
                duration_s=sizes.duration_s,
            )
            for ops in per_worker_ops
        ]
        timeout = sizes.warmup_s + sizes.duration_s + 60
        result, rss = self.run_phase(specs, pid, timeout)
        return self.record(
            Figure.from_latencies(
                group,
                name,
                result.latencies_ns,
                sizes.duration_s,
                peak_rss_mib=rss,
                cpu_us_per_op=cpu_us_per_op(result.server_cpu_s, result.completed),
                errors=result.errors,
                note=note,
                extra=extra or {},
            )
        )

    def fill_messages(self, server: SessiondServer, session_id: str, count: int) -> float:
        """Append ``count`` 1 KB messages in batches of 100; returns seconds."""
        create_sessions(server.target, [session_id])
        calls = count // 100
        started = time.monotonic()
        if calls:
            spec = LoadSpec(
                target=server.target,
                concurrency=min(4, calls),
                operations=((workload.append_call(session_id, 100),),),
                warmup_s=0.0,
                duration_s=self.sizes.fill_timeout_s,
                max_ops=calls,
            )
            result, _ = self.run_phase([spec], None, self.sizes.fill_timeout_s + 60, 0.2)
            if result.errors or result.completed != calls:
                raise RuntimeError(f"message fill: {result.completed}/{calls}, {result.errors}")
        if count % 100:
            unary(server.target, workload.append_call(session_id, count % 100))
        return time.monotonic() - started

    def fill_sessions(self, database: Path, first: int, count: int, base_us: int) -> float:
        """Create sessions first..first+count-1 with usage, in-process; seconds."""
        context = multiprocessing.get_context("spawn")
        started = time.monotonic()
        with context.Pool(1) as pool:
            pending = pool.apply_async(
                bulk_fill.fill_sessions,
                (database, first, count, base_us, self.sizes.fill_timeout_s),
            )
            created = pending.get(timeout=self.sizes.fill_timeout_s + 120)
        if created != count:
            raise RuntimeError(f"session fill: {created}/{count} before the deadline")
        return time.monotonic() - started

    # -- scenarios --------------------------------------------------------

    def run(self) -> None:
        self.scenarios_full_durability()
        self.scenarios_normal_durability()
        self.scenarios_large_tables()
        self.scenario_raw_sqlite()
        self.scenario_peers()

    def append_phases(self, group: str, server: SessiondServer, prefix: str) -> None:
        sizes = self.sizes
        sessions = [f"{prefix}-append-{i}" for i in range(sizes.append_in_flight)]
        create_sessions(server.target, sessions)
        one = [(workload.append_call(s, 1),) for s in sessions]
        eight = [(workload.append_call(s, 8),) for s in sessions]
        w = sizes.load_workers
        self.load(group, "append 1 x 1 KB, 64 in flight, lean view", server.target, one,
                  sizes.append_in_flight, w, server.pid)  # fmt: skip
        if group == "sessiond":
            # The same appends answered whole (the session and the message echoed), for
            # what the lean view saves; named so that "append 1 x 1 KB, 64" finds the above.
            self.load(group, "append 1 x 1 KB full view, 64 in flight", server.target,
                      [(workload.append_call(s, 1, workload.FULL),) for s in sessions],
                      sizes.append_in_flight, w, server.pid)  # fmt: skip
            # The ceiling right after the figure it bounds: same bytes, same load.
            self.load("ceiling", "grpc.aio echo, same bytes, 64 in flight", self.ceiling.target,
                      [(Call(ceilings.ECHO_METHOD, c.request),) for (c,) in one],
                      sizes.append_in_flight, w, self.ceiling.pid)  # fmt: skip
            self.load(group, "get session, 64 in flight", server.target,
                      [(workload.get_session_call(s),) for s in sessions],
                      sizes.append_in_flight, w, server.pid)  # fmt: skip
        figure = self.load(group, "append 8 x 1 KB, 64 in flight, lean view", server.target,
                           eight,
                           sizes.append_in_flight, w, server.pid)  # fmt: skip
        figure.extra["messages_per_s"] = figure.ops_per_s * 8

    def scenarios_full_durability(self) -> None:
        sizes = self.sizes
        server = self.start_server("full", "full")
        try:
            self.append_phases("sessiond", server, "full")

            turns = [f"turn-{i}" for i in range(sizes.append_in_flight)]
            create_sessions(server.target, turns)
            self.load("sessiond",
                      "agent turn (last 20 + append 2 + usage), 64 in flight, lean view",
                      server.target, [workload.agent_turn(s) for s in turns],
                      sizes.append_in_flight, sizes.load_workers, server.pid)  # fmt: skip

            # Every session is filled before any is read, so each read phase
            # meets the same database (size, write-ahead log, page cache).
            for size in sizes.read_sizes:
                seconds = self.fill_messages(server, f"read-{size}", size)
                self.facts[f"fill_messages_{size}_s"] = round(seconds, 2)
            for size in sizes.read_sizes:
                session_id = f"read-{size}"
                self.load("sessiond", f"read last 20 of {size:,} messages, 32 in flight",
                          server.target, [(workload.read_last_call(session_id),)],
                          sizes.read_in_flight, sizes.load_workers, server.pid,
                          extra={"session_messages": size})  # fmt: skip

            create_sessions(server.target, ["growth-empty"])
            self.fill_messages(server, "growth-10k", sizes.prefilled_messages)
            for session_id, label in (
                ("growth-empty", "an empty"),
                ("growth-10k", "a 10,000-message"),
            ):
                self.load("sessiond",
                          f"append 1 x 1 KB into {label} session, 8 in flight, lean view",
                          server.target, [(workload.append_call(session_id),)],
                          sizes.growth_in_flight, 1, server.pid)  # fmt: skip

            self.watch_fanout(server)
        finally:
            self.stop_server("full", server)

    def watch_fanout(self, server: SessiondServer) -> None:
        """100 WatchSessions subscribers while one writer process appends."""
        sizes = self.sizes
        writers = [f"watch-{i}" for i in range(sizes.watch_writer_in_flight)]
        create_sessions(server.target, writers)
        sample = workload.watch_response_sample()
        cases = (
            ("sessiond", server.target, workload.WATCH_SESSIONS, workload.watch_request(),
             "sessiond", [(workload.append_call(s),) for s in writers], server.pid),
            ("ceiling", self.ceiling.target, ceilings.SUBSCRIBE_METHOD, b"", "stamped",
             [(Call(ceilings.PUBLISH_METHOD, sample),)], self.ceiling.pid),
        )  # fmt: skip
        for group, target, method, request, framing, writes, pid in cases:
            subscribers = split(
                list(range(sizes.watch_subscribers)), sizes.watch_subscriber_processes
            )
            specs: list[LoadSpec | SubscribeSpec] = [
                SubscribeSpec(target, len(share), method, request, framing,
                              sizes.warmup_s, sizes.duration_s)
                for share in subscribers
            ]  # fmt: skip
            specs.append(
                LoadSpec(target, sizes.watch_writer_in_flight, tuple(writes),
                         sizes.warmup_s, sizes.duration_s)
            )  # fmt: skip
            result, rss = self.run_phase(
                specs,
                pid,
                sizes.warmup_s + sizes.duration_s + 60,
                start_delay_s=4.0,
            )
            name = (
                f"watch fan-out to {sizes.watch_subscribers} subscribers"
                if group == "sessiond"
                else f"grpc.aio stream fan-out to {sizes.watch_subscribers} subscribers"
            )
            writes_per_s = result.completed / sizes.duration_s
            self.record(
                Figure(
                    group=group,
                    name=name,
                    ops_per_s=result.events / sizes.duration_s,
                    p50_ms=percentile_ms(result.delays_ns, 0.5),
                    p99_ms=percentile_ms(result.delays_ns, 0.99),
                    peak_rss_mib=rss,
                    cpu_us_per_op=cpu_us_per_op(result.server_cpu_s, result.events),
                    samples=len(result.delays_ns),
                    errors=result.errors,
                    note="ops/s = events delivered per second, all subscribers; "
                    "latency = commit (or send) to receipt; cpu per event delivered",
                    extra={
                        "writes_per_s": writes_per_s,
                        "writer_p50_ms": percentile_ms(result.latencies_ns, 0.5),
                        "streams_ready_at_start": result.streams_ready,
                        "delivered_fraction": (
                            result.events
                            / (writes_per_s * sizes.watch_subscribers * sizes.duration_s)
                            if writes_per_s
                            else math.nan
                        ),
                    },
                )
            )

    def scenarios_normal_durability(self) -> None:
        server = self.start_server("normal", "normal")
        try:
            self.append_phases("sessiond durability=normal", server, "normal")
        finally:
            self.stop_server("normal", server)

    def scenarios_large_tables(self) -> None:
        """Listing over list_sessions sessions, then stats over stats_sessions.

        The database is filled in-process while no server runs (bulk_fill),
        then served; the server is restarted on the same file between the
        two sizes.
        """
        sizes = self.sizes
        database = self.workdir / "tables.db"
        # Start times one second apart, ending about now.
        base_us = time.time_ns() // 1000 - sizes.stats_sessions * 1_000_000
        filled = 0
        for total, measure in ((sizes.list_sessions, self.list_pages),
                               (sizes.stats_sessions, self.stats_calls)):  # fmt: skip
            if total > filled:
                seconds = self.fill_sessions(database, filled, total - filled, base_us)
                self.facts[f"bulk_fill_{total}_sessions_per_s"] = round((total - filled) / seconds)
                self.log(f"  filled {total - filled:,} sessions in {seconds:.1f} s (in-process)")
                filled = total
            server = self.start_server("tables", "full", database)
            try:
                measure(server)
            finally:
                self.stop_server("tables", server)

    def list_pages(self, server: SessiondServer) -> None:
        sizes = self.sizes
        method = workload.LIST_SESSIONS
        from sessiond.v1 import session_service_pb2

        token = ""
        walk_ms: list[float] = []
        with grpc.insecure_channel(server.target) as channel:
            call = channel.unary_unary(method, None, None)
            for _page in range(1, sizes.list_page):  # pages 1..999, bounded
                started = time.perf_counter()
                raw = call(workload.list_sessions_request(sizes.list_page_size, token), timeout=60)
                walk_ms.append((time.perf_counter() - started) * 1000)
                token = session_service_pb2.ListSessionsResponse.FromString(raw).next_page_token
                if not token:
                    raise RuntimeError(f"the listing ended before page {sizes.list_page}")
        self.facts["list_walk_mean_ms"] = round(sum(walk_ms) / len(walk_ms), 3)
        matching = sizes.list_sessions // len(workload.AGENTS)
        # Page 1 counts total_size; page 1,000 answers the count its token carries; the
        # third is page 1 of a listing that asks for no count.
        for name, page_token, skip in (
            ("list sessions page 1", "", False),
            (f"list sessions page {sizes.list_page:,}", token, False),
            ("list sessions without total_size, page 1", "", True),
        ):
            self.load(
                "sessiond",
                f"{name} (filter agent, sort started_at; "
                f"{sizes.list_page_size}/page of {matching:,} matching, "
                f"{sizes.list_sessions:,} total)",
                server.target,
                [(Call(method, workload.list_sessions_request(sizes.list_page_size, page_token,
                                                              skip)),)],
                sizes.list_in_flight,
                1,
                server.pid,
            )

    def stats_calls(self, server: SessiondServer) -> None:
        sizes = self.sizes
        with grpc.insecure_channel(server.target) as channel:
            # Connected before the clock starts: the first call would otherwise
            # time the TCP and HTTP/2 handshake, not GetStats.
            grpc.channel_ready_future(channel).result(timeout=60)
            for label, method in (("GetStats", workload.GET_STATS),
                                  ("CostByModel", workload.COST_BY_MODEL)):  # fmt: skip
                call = channel.unary_unary(method, None, None)
                reset_peak_rss(server.pid)
                # One call first, untimed (as every load phase has its warm-up): after
                # the fill, the first call reads the index from disk. Its time is
                # kept in the JSON as first_call_ms.
                started = time.monotonic_ns()
                call(b"", timeout=300)
                first_call_ns = time.monotonic_ns() - started
                latencies: list[int] = []
                cpu_before = process_cpu_seconds(server.pid)
                until = time.monotonic() + sizes.stats_s
                while len(latencies) < sizes.stats_repeats or time.monotonic() < until:
                    started = time.monotonic_ns()
                    call(b"", timeout=300)
                    latencies.append(time.monotonic_ns() - started)
                cpu_s = process_cpu_seconds(server.pid) - cpu_before
                figure = Figure.from_latencies(
                    "sessiond",
                    f"{label} over {sizes.stats_sessions:,} sessions (sequential)",
                    latencies,
                    sum(latencies) / 1e9,
                    peak_rss_mib=peak_rss_mib(server.pid),
                    cpu_us_per_op=cpu_us_per_op(cpu_s, len(latencies)),
                    extra={"sessions": sizes.stats_sessions,
                           "first_call_ms": round(first_call_ns / 1e6, 3)},
                )
                self.record(figure)

    def scenario_raw_sqlite(self) -> None:
        sizes = self.sizes
        context = multiprocessing.get_context("spawn")
        with context.Pool(1) as pool:
            for rows_per_commit in (1, 64):
                pending = pool.apply_async(
                    ceilings.sqlite_insert_rate,
                    (
                        str(self.workdir),
                        rows_per_commit,
                        sizes.raw_sqlite_s,
                        workload.PAYLOAD_BYTES,
                    ),
                )
                rows, latencies, elapsed = pending.get(timeout=sizes.raw_sqlite_s + 60)
                figure = Figure.from_latencies(
                    "ceiling",
                    f"raw SQLite insert via aiosqlite, WAL, synchronous=FULL, "
                    f"{rows_per_commit} row(s)/commit",
                    latencies,
                    elapsed,
                    completed=rows,
                    note="ops/s = rows/s; latency = one commit",
                    extra={"sqlite_version": ceilings.sqlite_version()},
                )
                self.record(figure)

    def scenario_peers(self) -> None:
        sizes = self.sizes
        if self.skip_peers:
            self.record(Figure("peer", "all peers", skipped="--skip-peers"))
            return
        if self.install_peers and not peers.peers_python().exists():
            self.log("installing the peers into bench/.peers-venv ...")
            failure = peers.install_peers()
            if failure:
                self.log(f"  peers not installed: {failure}")
        report = peers.run_peers(sizes.peers_s, [1, 8])
        if "skipped" in report:
            self.record(Figure("peer", "all peers", skipped=str(report["skipped"])))
            return
        for name, entry in report.items():
            if "skipped" in entry:
                self.record(Figure("peer", name, skipped=entry["skipped"]))
                continue
            runs = [(f"{writers} writer(s)", "in-process, 1 x 1 KB message per call", figures)
                    for writers, figures in entry["writers"].items()]
            runs += [(f"agent turn at {int(history):,} messages, 1 writer",
                      "in-process, read the whole history + append 2 x 1 KB", figures)
                     for history, figures in entry.get("turns", {}).items()]
            for what, note, figures in runs:
                label = f"{name} {entry['version']}, {what}"
                if "error" in figures:
                    self.record(Figure("peer", label, skipped=figures["error"]))
                    continue
                self.record(
                    Figure(
                        "peer",
                        label,
                        ops_per_s=figures["ops_per_s"],
                        p50_ms=_nan(figures["p50_ms"]),
                        p99_ms=_nan(figures["p99_ms"]),
                        samples=figures["samples"],
                        note=note,
                    )
                )


def cpu_us_per_op(cpu_s: float, operations: int) -> float:
    """Server CPU microseconds per operation; NaN when unmeasured or nothing completed."""
    return cpu_s * 1e6 / operations if operations else math.nan


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def unary(target: str, call: Call) -> bytes:
    with grpc.insecure_channel(target) as channel:
        response: bytes = channel.unary_unary(call.method, None, None)(call.request, timeout=60)
        return response


def create_sessions(target: str, session_ids: Sequence[str]) -> None:
    """Create plain sessions (idempotent: an existing identical one is fine)."""
    with grpc.insecure_channel(target) as channel:
        create = channel.unary_unary(workload.CREATE_SESSION, None, None)
        for session_id in session_ids:
            create(workload.create_session_request(session_id), timeout=60)


def log_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
