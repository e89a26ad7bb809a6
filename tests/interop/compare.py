"""Compares the interop outputs of the clients with the Python reference.

Usage: compare.py REFERENCE.jsonl NAME=OUTPUT.jsonl ...

Each file holds one JSON object per scenario step (SCENARIO.md). Lines are
compared as parsed JSON, so key order and number spelling (0 or 0.0) do not
matter; any other difference, a missing step or an extra one fails, and
the steps a language lacks or adds are named first.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def read(path: Path) -> list[Any]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str]) -> int:
    reference = read(Path(argv[0]))
    if not reference:
        print(f"compare: the reference output {argv[0]} is empty", file=sys.stderr)
        return 1
    failed = 0
    for spec in argv[1:]:
        name, _, path = spec.partition("=")
        observed = read(Path(path))
        problems = []
        want_steps = [line.get("step") for line in reference]
        got_steps = [line.get("step") for line in observed]
        missing = [step for step in want_steps if step not in got_steps]
        extra = [step for step in got_steps if step not in want_steps]
        if missing or extra:
            # Usually a suite that has not caught up with SCENARIO.md yet.
            problems.append(
                f"  steps missing: {missing or 'none'}; "
                f"steps not in SCENARIO.md: {extra or 'none'}"
            )
        for i in range(max(len(reference), len(observed))):
            want = reference[i] if i < len(reference) else None
            got = observed[i] if i < len(observed) else None
            if want != got:
                step = (want or got or {}).get("step", "?")
                problems.append(f"  step {i + 1} ({step}):\n    python: {want}\n    {name}: {got}")
        if problems:
            failed += 1
            print(f"compare: {name} differs from the Python reference:", file=sys.stderr)
            print("\n".join(problems), file=sys.stderr)
        else:
            print(f"compare: {name} matches the Python reference ({len(observed)} steps)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
