"""Reading a profiled server's pstats: where its time goes, as text.

bench.profiled_server merges the profiles of every thread of the server into
one pstats file; this prints the functions with the most own time and the
most cumulative time, which is what a hot-spot hunt starts from.
"""

from __future__ import annotations

import io
import pstats
from pathlib import Path


def summarise(path: Path, top: int = 25) -> str:
    """The top functions of one pstats file by own time and by cumulative time."""
    if not path.exists():
        return f"{path.name}: no profile written (did the server stop cleanly?)"
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs()
    out.write(f"== {path.name}: by own time\n")
    stats.sort_stats(pstats.SortKey.TIME).print_stats(top)
    out.write(f"== {path.name}: by cumulative time\n")
    stats.sort_stats(pstats.SortKey.CUMULATIVE).print_stats(top)
    return out.getvalue()
