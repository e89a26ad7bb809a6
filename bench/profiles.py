"""Reading a profiled server's pstats: where its time goes, as text.

bench.profiled_server merges the profiles of every thread of the server into
one pstats file; this prints, for each RPC the server handled, its calls and
CPU per call with the frames under it that took the most (two levels deep),
then the functions with the most own time overall.

An RPC handler is an ``async def`` named like the RPC (``AppendMessages``) in
``sessiond_server/api``. cProfile counts a coroutine's time only while it runs,
so an RPC's cumulative time is the event-loop CPU spent in it; work done on
another thread (the SQLite writer, aiosqlite readers) appears under that
thread's frames in the overall list, not under the RPC.
"""

from __future__ import annotations

import io
import pstats
from pathlib import Path
from typing import Any

Func = tuple[str, int, str]

#: The frames printed under each RPC, per level.
FRAMES_PER_LEVEL = (6, 3)


def _label(func: Func) -> str:
    path, line, name = func
    return f"{Path(path).name}:{line}({name})" if line else name


def rpc_handlers(stats: pstats.Stats) -> list[Func]:
    """The RPC handlers in ``stats``, the busiest (by cumulative time) first."""
    table: dict[Func, Any] = stats.stats  # type: ignore[attr-defined]
    found = [func for func in table
             if "sessiond_server/api/" in func[0].replace("\\", "/") and func[2][:1].isupper()]
    return sorted(found, key=lambda func: -table[func][3])


def per_rpc(stats: pstats.Stats) -> str:
    """Each RPC: calls, CPU per call, and the frames under it that cost the most."""
    table: dict[Func, Any] = stats.stats  # type: ignore[attr-defined]
    stats.calc_callees()
    callees: dict[Func, dict[Func, Any]] = getattr(stats, "all_callees", None) or {}
    out = io.StringIO()
    for handler in rpc_handlers(stats):
        _cc, calls, _own, cumulative, _callers = table[handler]
        if not calls:
            continue
        out.write(f"{handler[2]}: {calls} calls, {cumulative / calls * 1e6:.0f} us CPU per call"
                  f" on the event loop\n")
        _frames(out, callees, handler, calls, 1)
    return out.getvalue()


def _frames(out: io.StringIO, callees: dict[Func, dict[Func, Any]], func: Func, calls: int,
            depth: int) -> None:
    if depth > len(FRAMES_PER_LEVEL):
        return
    edges = sorted(callees.get(func, {}).items(), key=lambda item: -item[1][3])
    for callee, edge in edges[:FRAMES_PER_LEVEL[depth - 1]]:
        out.write(f"{'  ' * depth}{edge[3] / calls * 1e6:8.0f} us  {_label(callee)}\n")
        _frames(out, callees, callee, calls, depth + 1)


def summarise(path: Path, top: int = 25) -> str:
    """Per RPC, the top frames; then the top functions by own and by cumulative time."""
    if not path.exists():
        return f"{path.name}: no profile written (did the server stop cleanly?)"
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    out.write(f"== {path.name}: per RPC (CPU per call of the RPC, frames under it)\n")
    out.write(per_rpc(stats))
    stats.strip_dirs()
    out.write(f"== {path.name}: by own time\n")
    stats.sort_stats(pstats.SortKey.TIME).print_stats(top)
    out.write(f"== {path.name}: by cumulative time\n")
    stats.sort_stats(pstats.SortKey.CUMULATIVE).print_stats(top)
    return out.getvalue()
