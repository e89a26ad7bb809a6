"""Reading py-spy samples of the server: where its time goes, as text.

py-spy's raw format is one line per distinct stack, ``frame;frame;... count``,
over every thread (the store's writer thread included, which cProfile would
miss). Two views answer "what is hot": self time (the frame on top of the
stack) and inclusive time (the frame anywhere in the stack), both as shares
of all samples, idle threads excluded.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

# Frames of threads that are waiting, not working: left out of the shares.
IDLE_FRAMES = re.compile(
    r"\b(select|poll|epoll_wait|_worker \(concurrent|wait \(threading|_poll_wrapper"
    r"|run_forever|_run_once|get \(queue)"
)


def _frame_name(frame: str) -> str:
    # "append_messages (sessiond_server/store/sqlite.py:123)" -> without the line.
    return re.sub(r":\d+\)$", ")", frame.strip())


def summarise(path: Path, top: int = 12) -> str:
    """The hottest frames of one py-spy raw profile, as aligned text."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [_frame_name(frame) for frame in stack.split(";") if frame]
        if not frames or IDLE_FRAMES.search(frames[-1]):
            continue
        count = int(count_text)
        total += count
        self_time[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return f"{path.name}: no busy samples"
    lines = [f"{path.name}: {total} busy samples"]
    lines.append("  self%  frame")
    lines += [f"  {100 * n / total:5.1f}  {frame}" for frame, n in self_time.most_common(top)]
    lines.append("  incl%  frame")
    lines += [f"  {100 * n / total:5.1f}  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)
