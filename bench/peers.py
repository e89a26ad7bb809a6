"""Running the peers: a venv of their own, created on demand, and one subprocess.

The peers (OpenAI Agents SDK, LangGraph, Google ADK) bring large dependency
trees that sessiond must not depend on, even optionally, so they live in
bench/.peers-venv (git-ignored), created by ``python -m bench --install-peers``
or by a full run when it is missing. Versions are pinned so that figures
from two runs compare. Without the venv, the peers are reported as skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

PEERS_VENV = Path(__file__).resolve().parent / ".peers-venv"
PEER_REQUIREMENTS = [
    "openai-agents==0.24.0",
    "langgraph==1.2.22",
    "langgraph-checkpoint-sqlite==3.1.2",
    "google-adk[db]==2.13.0",
]
INSTALL_TIMEOUT_S = 900.0


def peers_python() -> Path:
    return PEERS_VENV / "bin" / "python"


def install_peers() -> str:
    """Create the peers venv and install the pinned peers; '' or the failure."""
    try:
        if not peers_python().exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(PEERS_VENV)],
                check=True,
                capture_output=True,
                timeout=INSTALL_TIMEOUT_S,
            )
        subprocess.run(
            [str(peers_python()), "-m", "pip", "install", "--quiet", *PEER_REQUIREMENTS],
            check=True,
            capture_output=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", b"") or b""
        return f"{error}: {detail.decode(errors='replace')[-500:]}"
    return ""


def run_peers(duration_s: float, writers: list[int]) -> dict[str, Any]:
    """Every peer's figures, or {"skipped": reason} for the lot."""
    if not peers_python().exists():
        return {"skipped": "bench/.peers-venv is missing (python -m bench --install-peers)"}
    script = Path(__file__).resolve().parent / "peer_stores.py"
    # Three peers x len(writers) runs and two agent-turn runs of warm-up +
    # duration, plus imports.
    timeout = (3 * len(writers) + 2) * (duration_s + 10) + 120
    try:
        completed = subprocess.run(
            [
                str(peers_python()),
                str(script),
                "--duration",
                str(duration_s),
                "--writers",
                *map(str, writers),
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", b"") or b""
        return {"skipped": f"the peers failed: {error} {detail.decode(errors='replace')[-300:]}"}
    last_line = completed.stdout.decode().strip().splitlines()[-1]
    report: dict[str, Any] = json.loads(last_line)
    return report
