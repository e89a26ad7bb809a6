"""``sessiond serve`` under cProfile, every thread included.

Usage: ``python -m bench.profiled_server OUTPUT.pstats serve --database ...``

``python -m cProfile`` sees only the main thread, but sessiond's store writes
on a writer thread and reads through aiosqlite threads; so every thread
started here gets a profiler of its own (``threading.Thread.run`` is wrapped
before the server starts), and all of them are merged into one pstats file
when the server returns from a SIGTERM. (py-spy, which would sample without
this, cannot read this interpreter's build.) cProfile slows the server
down: figures of a profiled run are for finding hot spots, not for quoting.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import threading
from collections.abc import Callable
from typing import Any


def main() -> int:
    output, argv = sys.argv[1], sys.argv[2:]
    thread_profiles: list[cProfile.Profile] = []
    guard = threading.Lock()
    original_run: Callable[[threading.Thread], None] = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        profile = cProfile.Profile()
        with guard:
            thread_profiles.append(profile)
        profile.enable()
        try:
            original_run(self)
        finally:
            profile.disable()

    threading.Thread.run = profiled_run  # type: ignore[method-assign]

    from sessiond.cli import main as sessiond_main

    sys.argv = ["sessiond", *argv]
    main_profile = cProfile.Profile()
    code: Any = 0
    main_profile.enable()
    try:
        code = sessiond_main()
    except SystemExit as exit_:
        code = exit_.code
    finally:
        main_profile.disable()
        stats = pstats.Stats(main_profile)
        with guard:
            for profile in thread_profiles:
                try:
                    stats.add(profile)
                except (TypeError, ValueError):  # a profile with no data yet
                    continue
        stats.dump_stats(output)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
