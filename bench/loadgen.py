"""Load-generating worker processes.

Why processes: the server under test is a Python process on a small machine;
a load generator inside it, or inside the orchestrating process, would share a
GIL with what it measures. Each worker owns one event loop and one gRPC
channel (one HTTP/2 connection, as a client process would) and runs a closed
loop of C concurrent tasks. Workers send back raw latencies, so percentiles
are computed over all workers together.

Requests are pre-serialised bytes sent through identity serialisers: the
client pays no protobuf cost per call, and a sessiond call and an echo-server
call cost the client exactly the same, so the difference between them is the
server.

Workers are spawned, not forked (the gRPC core is not fork-safe once the
parent has channels), and kept alive across phases, so the start-up cost of
importing grpc and protobuf is paid once. All workers of a phase start at the
same monotonic instant and measure the same window.

Every phase is bounded: by time (``duration_s``), and optionally by count
(``max_ops``); a call has a deadline, and a worker that does not answer in
time is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

# One connection per channel even when several channels in one process point
# at the same address (the watch subscribers must be separate connections).
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
]
CALL_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 20.0
# Time allowed between dispatching a phase and its start, so that every worker
# is connected and waiting when the window opens.
START_DELAY_S = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    """One unary call: full method path and serialised request."""

    method: str
    request: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class LoadSpec:
    """A closed-loop phase: ``concurrency`` tasks, each repeating an operation.

    An operation is a sequence of calls made one after the other (an agent
    turn is three calls); task i repeats ``operations[i % len(operations)]``.
    Latency is that of the whole operation.
    """

    target: str
    concurrency: int
    operations: tuple[tuple[Call, ...], ...]
    warmup_s: float
    duration_s: float
    # 0: bounded by time only. Otherwise the worker stops after this many
    # operations (fills); the time bound still holds.
    max_ops: int = 0
    start_at_ns: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class SubscribeSpec:
    """Streaming subscribers, each on its own connection, counting events.

    ``framing`` says how to read a response: "sessiond" is a serialised
    WatchSessionsResponse whose events carry their commit time; "stamped" is
    one or more frames of 8 bytes of big-endian epoch nanoseconds (when the
    ceiling server got the publish), a 4-byte length and a serialised
    WatchSessionsResponse, parsed too so that both subscribers do the same
    client work.
    """

    target: str
    subscribers: int
    method: str
    request: bytes
    framing: str
    warmup_s: float
    duration_s: float
    start_at_ns: int = 0


@dataclasses.dataclass(slots=True)
class PhaseResult:
    """What one worker measured in the window."""

    latencies_ns: list[int] = dataclasses.field(default_factory=list)
    completed: int = 0
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    # Subscribers: events received in the window and their commit-to-receipt
    # delays; how many streams were open at the start of the window.
    events: int = 0
    delays_ns: list[int] = dataclasses.field(default_factory=list)
    streams_ready: int = 0
    first_start_ns: int = 0
    last_end_ns: int = 0
    failure: str = ""
    # CPU seconds the server process (WorkerPool.run's cpu_pid) spent in the
    # measured window; NaN when not measured.
    server_cpu_s: float = math.nan

    def merge(self, other: PhaseResult) -> None:
        """Add another worker's result to this one."""
        self.latencies_ns.extend(other.latencies_ns)
        self.completed += other.completed
        merged = Counter(self.errors)
        merged.update(other.errors)
        self.errors = dict(merged)
        self.events += other.events
        self.delays_ns.extend(other.delays_ns)
        self.streams_ready += other.streams_ready
        starts = [t for t in (self.first_start_ns, other.first_start_ns) if t]
        self.first_start_ns = min(starts) if starts else 0
        self.last_end_ns = max(self.last_end_ns, other.last_end_ns)
        self.failure = "; ".join(f for f in (self.failure, other.failure) if f)


async def _sleep_until(deadline_ns: int) -> None:
    delay = (deadline_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


async def _run_load(spec: LoadSpec) -> PhaseResult:
    result = PhaseResult()
    errors: Counter[str] = Counter()
    record_from = spec.start_at_ns + int(spec.warmup_s * 1e9)
    stop_at = record_from + int(spec.duration_s * 1e9)
    issued = 0
    async with grpc.aio.insecure_channel(spec.target, options=CHANNEL_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT_S)
        # No serialisers: requests and responses stay bytes.
        methods = {
            call.method: channel.unary_unary(call.method, None, None)
            for operation in spec.operations
            for call in operation
        }
        await _sleep_until(spec.start_at_ns)

        async def run_task(index: int) -> None:
            nonlocal issued
            operation = spec.operations[index % len(spec.operations)]
            while time.monotonic_ns() < stop_at:
                if spec.max_ops and issued >= spec.max_ops:
                    return
                issued += 1
                started = time.monotonic_ns()
                try:
                    for call in operation:
                        await methods[call.method](call.request, timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError as error:
                    errors[error.code().name] += 1
                    continue
                ended = time.monotonic_ns()
                if record_from <= started and ended <= stop_at:
                    result.latencies_ns.append(ended - started)
                    result.completed += 1
                    if not result.first_start_ns:
                        result.first_start_ns = started
                    result.last_end_ns = max(result.last_end_ns, ended)

        await asyncio.gather(*(run_task(i) for i in range(spec.concurrency)))
    result.errors = dict(errors)
    return result


async def _run_subscribers(spec: SubscribeSpec) -> PhaseResult:
    # Imported here: only subscribers parse responses.
    from sessiond.v1 import session_service_pb2

    parse = session_service_pb2.WatchSessionsResponse.FromString
    result = PhaseResult()
    errors: Counter[str] = Counter()
    record_from = spec.start_at_ns + int(spec.warmup_s * 1e9)
    stop_at = record_from + int(spec.duration_s * 1e9)
    ready_at: list[int] = []

    async def subscribe() -> None:
        async with grpc.aio.insecure_channel(spec.target, options=CHANNEL_OPTIONS) as channel:
            call = channel.unary_stream(spec.method, None, None)(spec.request)
            try:
                async for raw in call:
                    received_wall = time.time_ns()
                    received = time.monotonic_ns()
                    if spec.framing == "stamped":
                        stamps = []
                        offset = 0
                        while offset + 12 <= len(raw):
                            sent_ns = int.from_bytes(raw[offset : offset + 8], "big")
                            size = int.from_bytes(raw[offset + 8 : offset + 12], "big")
                            response = parse(raw[offset + 12 : offset + 12 + size])
                            offset += 12 + size
                            if sent_ns:
                                stamps += [sent_ns] * max(1, len(response.events))
                        if not stamps:  # the ceiling server's "subscribed" frame
                            ready_at.append(received)
                            continue
                    else:
                        response = parse(raw)
                        if not response.events:  # CREATED, PROGRESS
                            if response.type == 1:
                                ready_at.append(received)
                            continue
                        stamps = [
                            event.time.seconds * 1_000_000_000 + event.time.nanos
                            for event in response.events
                        ]
                    if record_from <= received <= stop_at:
                        result.events += len(stamps)
                        result.delays_ns.extend(received_wall - stamp for stamp in stamps)
                    if received > stop_at:
                        break
            except grpc.aio.AioRpcError as error:
                errors[error.code().name] += 1
            finally:
                call.cancel()

    tasks = [asyncio.create_task(subscribe()) for _ in range(spec.subscribers)]
    # The streams end at stop_at when events flow; this bounds them when not.
    await _sleep_until(stop_at)
    await asyncio.sleep(0.5)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    result.streams_ready = sum(1 for t in ready_at if t <= spec.start_at_ns)
    result.errors = dict(errors)
    return result


def _worker_main(connection: multiprocessing.connection.Connection) -> None:
    """A worker's life: run each phase it is sent until it is sent None."""
    while True:
        spec = connection.recv()
        if spec is None:
            return
        try:
            if isinstance(spec, LoadSpec):
                result = asyncio.run(_run_load(spec))
            elif isinstance(spec, SubscribeSpec):
                result = asyncio.run(_run_subscribers(spec))
            else:
                result = PhaseResult(failure=f"unknown spec {type(spec).__name__}")
        except Exception as error:  # reported, never silently lost
            result = PhaseResult(failure=f"{type(error).__name__}: {error}")
        connection.send(result)


class WorkerPool:
    """A fixed set of spawned worker processes, reused across phases."""

    def __init__(self, size: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._connections: list[multiprocessing.connection.Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        for index in range(size):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_worker_main, args=(child_end,), name=f"bench-worker-{index}", daemon=True
            )
            process.start()
            child_end.close()
            self._connections.append(parent_end)
            self._processes.append(process)

    @property
    def size(self) -> int:
        return len(self._processes)

    def run(
        self,
        specs: Sequence[LoadSpec | SubscribeSpec],
        timeout_s: float,
        start_delay_s: float | None = None,
        cpu_pid: int | None = None,
    ) -> PhaseResult:
        """Run one spec per worker (the first len(specs) workers), merged.

        Every spec gets the same start instant; a worker that has not answered
        within ``timeout_s`` of it fails the phase. With ``cpu_pid``, the
        result says how much CPU that process spent in the measured window.
        """
        if len(specs) > self.size:
            raise ValueError(f"{len(specs)} specs for {self.size} workers")
        delay = START_DELAY_S if start_delay_s is None else start_delay_s
        start_at = time.monotonic_ns() + int(delay * 1e9)
        for connection, spec in zip(self._connections, specs, strict=False):
            connection.send(dataclasses.replace(spec, start_at_ns=start_at))
        window = None
        if cpu_pid is not None:
            record_from = start_at + int(specs[0].warmup_s * 1e9)
            window = CpuWindow(cpu_pid, record_from, record_from + int(specs[0].duration_s * 1e9))
        merged = PhaseResult()
        deadline = time.monotonic() + delay + timeout_s
        for connection in self._connections[: len(specs)]:
            if not connection.poll(max(0.0, deadline - time.monotonic())):
                self.close(force=True)
                raise TimeoutError(f"a worker did not finish within {timeout_s:.0f} s")
            merged.merge(connection.recv())
        if window is not None:
            merged.server_cpu_s = window.seconds()
        return merged

    def close(self, force: bool = False) -> None:
        """Stop the workers: politely, or by killing them."""
        for connection in self._connections:
            if not force:
                with contextlib.suppress(OSError):
                    connection.send(None)
            connection.close()
        for process in self._processes:
            process.join(timeout=0 if force else 5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        self._connections.clear()
        self._processes.clear()


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads), in seconds; NaN if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    # The command name (field 2) may hold spaces; the fields after it are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuWindow:
    """Samples a process's CPU time at the start and the end of a measured window.

    The load workers time their window on the same monotonic clock, so the
    server CPU of the window is the difference of two samples taken at its
    edges by a thread of the parent (which is otherwise idle while it waits).
    """

    def __init__(self, pid: int, start_ns: int, end_ns: int) -> None:
        self._samples: list[float] = []
        self._thread = threading.Thread(
            target=self._run, args=(pid, start_ns, end_ns), daemon=True)
        self._thread.start()

    def _run(self, pid: int, start_ns: int, end_ns: int) -> None:
        for edge in (start_ns, end_ns):
            time.sleep(max(0.0, (edge - time.monotonic_ns()) / 1e9))
            self._samples.append(process_cpu_seconds(pid))

    def seconds(self) -> float:
        self._thread.join()
        return self._samples[1] - self._samples[0]


def split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """Deal items round-robin into ``parts`` lists (one per worker)."""
    return [list(items[index::parts]) for index in range(parts)]
