"""``python -m bench [--quick]``: run the suite, print a table, save every figure.

The output ends with two machine-readable lines, RESULT_WATCH and then
RESULT (last), so CI and the docs can quote a run by its final lines:

* append_vs_echo: sessiond appends/s over the gRPC echo ceiling's calls/s;
* append_vs_best_peer: sessiond appends/s over the best peer's appends/s
  (best of every peer and writer count);
* read20_100k_vs_10: p50 of reading the last 20 messages of the largest
  session over that of a 10-message session (1.0 = size does not matter);
* append_at_10k_vs_empty: p50 of an append into a 10,000-message session
  over one into an empty session;
* list_page1000_vs_page1: p50 of ListSessions page 1,000 over page 1;
* stats_1m_ms: p50 of GetStats over all filled sessions (1,000,000 in a
  full run, fewer in --quick: the JSON says how many), and stats_1m_p99_ms
  its p99;
* read20_vs_echo, get_vs_echo: calls/s of reading the last 20 messages of the
  smallest session (32 in flight) and of GetSession (64 in flight) over the
  echo ceiling's calls/s;
* append_cpu_vs_echo: server CPU per append (1 x 1 KB, 64 in flight) over the
  echo server's CPU per call, both from the processes' CPU time in the window;
* turn_p50_ms: p50 of an agent turn (last 20 + append 2 + usage), 64 in flight;
* watch_p99_vs_ceiling: commit-to-receipt p99 of the watch fan-out over the
  bare fan-out's p99;
* append_cpu_lean_vs_full: server CPU per append (1 x 1 KB, 64 in flight) in
  the LEAN view, which every append scenario asks for, over the same append
  in the FULL view (the session and the message echoed);
* list_cpu_skip_vs_count: server CPU per ListSessions page 1 with
  skip_total_size over page 1 counting total_size.

Every figure also reports the server's CPU microseconds per operation.

Latency ratios above 1 mean "slower"; throughput ratios below 1 mean "fewer".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import profiles
from bench.figures import Figure, ratio
from bench.suite import FULL, QUICK, Suite, log_to_stderr

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _find(figures: list[Figure], group: str, starts: str) -> Figure | None:
    for figure in figures:
        if figure.group == group and figure.name.startswith(starts) and not figure.skipped:
            return figure
    return None


def _value(figure: Figure | None, field: str) -> float:
    if figure is None:
        return math.nan
    value: float = getattr(figure, field)
    return value


def summary_lines(figures: list[Figure]) -> tuple[dict[str, float], dict[str, float]]:
    """The RESULT and RESULT_WATCH figures."""
    append = _find(figures, "sessiond", "append 1 x 1 KB, 64")
    echo = _find(figures, "ceiling", "grpc.aio echo")
    peer_rates = [f.ops_per_s for f in figures
                  if f.group == "peer" and not f.skipped and "agent turn" not in f.name]
    reads = [f for f in figures if f.group == "sessiond" and f.name.startswith("read last 20")]
    small = min(reads, key=lambda f: f.extra["session_messages"], default=None)
    large = max(reads, key=lambda f: f.extra["session_messages"], default=None)
    result = {
        "append_vs_echo": ratio(_value(append, "ops_per_s"), _value(echo, "ops_per_s")),
        "append_vs_best_peer": ratio(
            _value(append, "ops_per_s"), max(peer_rates) if peer_rates else math.nan
        ),
        "read20_100k_vs_10": ratio(_value(large, "p50_ms"), _value(small, "p50_ms")),
        "append_at_10k_vs_empty": ratio(
            _value(_find(figures, "sessiond", "append 1 x 1 KB into a 10,000"), "p50_ms"),
            _value(_find(figures, "sessiond", "append 1 x 1 KB into an empty"), "p50_ms"),
        ),
        "list_page1000_vs_page1": ratio(
            _value(_find(figures, "sessiond", "list sessions page 1,000"), "p50_ms"),
            _value(_find(figures, "sessiond", "list sessions page 1 "), "p50_ms"),
        ),
        "stats_1m_ms": _value(_find(figures, "sessiond", "GetStats"), "p50_ms"),
        "stats_1m_p99_ms": _value(_find(figures, "sessiond", "GetStats"), "p99_ms"),
        "read20_vs_echo": ratio(_value(small, "ops_per_s"), _value(echo, "ops_per_s")),
        "get_vs_echo": ratio(
            _value(_find(figures, "sessiond", "get session, 64"), "ops_per_s"),
            _value(echo, "ops_per_s"),
        ),
        "append_cpu_vs_echo": ratio(
            _value(append, "cpu_us_per_op"), _value(echo, "cpu_us_per_op")
        ),
        "turn_p50_ms": _value(_find(figures, "sessiond", "agent turn"), "p50_ms"),
        "append_cpu_lean_vs_full": ratio(
            _value(append, "cpu_us_per_op"),
            _value(_find(figures, "sessiond", "append 1 x 1 KB full view"), "cpu_us_per_op"),
        ),
        "list_cpu_skip_vs_count": ratio(
            _value(_find(figures, "sessiond", "list sessions without total_size"),
                   "cpu_us_per_op"),
            _value(_find(figures, "sessiond", "list sessions page 1 "), "cpu_us_per_op"),
        ),
    }
    fanout = _find(figures, "sessiond", "watch fan-out")
    ceiling = _find(figures, "ceiling", "grpc.aio stream fan-out")
    watch = {
        "fanout_events_per_s": _value(fanout, "ops_per_s"),
        "fanout_vs_ceiling": ratio(_value(fanout, "ops_per_s"), _value(ceiling, "ops_per_s")),
        "delay_p50_ms": _value(fanout, "p50_ms"),
        "delay_p99_ms": _value(fanout, "p99_ms"),
    }
    result["watch_p99_vs_ceiling"] = ratio(_value(fanout, "p99_ms"), _value(ceiling, "p99_ms"))
    return result, watch


def _fmt(value: float, digits: int = 3) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.0f}"


def table(figures: list[Figure]) -> str:
    """The figures as an aligned text table (the same one docs quote)."""
    header = ("group", "scenario", "ops/s", "p50 ms", "p99 ms", "server CPU us/op",
              "server RSS MiB")
    rows = [header]
    for f in figures:
        if f.skipped:
            rows.append((f.group, f.name, "skipped", "", "", "", f.skipped[:60]))
            continue
        errors = f"  errors {f.errors}" if f.errors else ""
        rows.append(
            (
                f.group,
                f.name + errors,
                f"{f.ops_per_s:,.0f}",
                _fmt(f.p50_ms, 2),
                _fmt(f.p99_ms, 2),
                "" if math.isnan(f.cpu_us_per_op) else f"{f.cpu_us_per_op:,.0f}",
                "" if math.isnan(f.peak_rss_mib) else f"{f.peak_rss_mib:,.0f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append(" | ".join(cells).rstrip())
        if index == 0:
            lines.append("-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def _git_revision() -> str:
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return completed.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under 3 minutes")
    parser.add_argument(
        "--install-peers",
        action="store_true",
        help="create bench/.peers-venv when missing (a full run does it anyway)",
    )
    parser.add_argument("--skip-peers", action="store_true", help="report the peers as skipped")
    parser.add_argument(
        "--profile-server",
        action="store_true",
        help="profile each sessiond server (cProfile, every thread); print each RPC's top frames",
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where JSON goes")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sessiond-bench-") as workdir:
        suite = Suite(
            sizes,
            Path(workdir),
            args.results,
            stamp,
            profile=args.profile_server,
            install_peers=args.install_peers or not args.quick,
            skip_peers=args.skip_peers,
            log=log_to_stderr,
        )
        try:
            suite.run()
        finally:
            suite.close()
    elapsed = time.monotonic() - started

    result, watch = summary_lines(suite.figures)
    document: dict[str, Any] = {
        "started_utc": stamp,
        "elapsed_s": round(elapsed, 1),
        "quick": sizes.quick,
        "sizes": dataclasses.asdict(sizes),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
        "git_revision": _git_revision(),
        "facts": suite.facts,
        "figures": [figure.as_json() for figure in suite.figures],
        "result": {k: None if math.isnan(v) else v for k, v in result.items()},
        "result_watch": {k: None if math.isnan(v) else v for k, v in watch.items()},
        "profiles": suite.profiles,
    }
    output = args.results / f"{stamp}.json"
    output.write_text(json.dumps(document, indent=2) + "\n")

    for path in suite.profiles.values():
        print(profiles.summarise(Path(path)))
        print()
    print(table(suite.figures))
    print()
    print(f"figures: {output} ({elapsed:.0f} s)")
    print("RESULT_WATCH " + " ".join(f"{k}={_fmt(v)}" for k, v in watch.items()))
    print("RESULT " + " ".join(f"{k}={_fmt(v)}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
