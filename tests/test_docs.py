"""README.md documents every RPC, CLI command, metric and setting; this fails when one is not.

The lists come from the code itself (the generated service descriptors, the CLI's parser,
``observability.METRICS`` and ``settings.all_settings()``), so adding any of them without a
line in the README fails here. Each check is also run against a README with the thing
removed, to prove the check would notice.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from sessiond.cli import build_parser
from sessiond.v1 import message_service_pb2, session_service_pb2, stats_service_pb2
from sessiond_server.observability import METRICS
from sessiond_server.settings import all_settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def rpc_names() -> list[str]:
    return sorted(
        method.name
        for module in (session_service_pb2, message_service_pb2, stats_service_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    )


def cli_commands(parser: argparse.ArgumentParser | None = None, prefix: str = "") -> list[str]:
    """Every runnable command path: "serve", "sessions list", ..."""
    parser = parser or build_parser()
    found: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = f"{prefix} {name}".strip()
                nested = cli_commands(sub, path)
                found.extend(nested or [path])
    return found


def missing_rpcs(text: str) -> list[str]:
    return [name for name in rpc_names() if not re.search(rf"\b{name}\b", text)]


def missing_commands(text: str) -> list[str]:
    return [path for path in cli_commands() if f"sessiond {path}" not in text]


def missing_metrics(text: str) -> list[str]:
    return [name for name in METRICS if f"`{name}`" not in text]


def missing_settings(text: str) -> list[str]:
    return [s.field for s in all_settings() if not re.search(rf"`(\[limits\] )?{s.field}`", text)
            and not re.search(rf"\b{s.field}\b", text)]


def test_every_rpc_is_documented() -> None:
    assert missing_rpcs(README) == []


def test_every_cli_command_is_documented() -> None:
    commands = cli_commands()
    assert {"serve", "sessions list", "watch"} <= set(commands)
    assert missing_commands(README) == []


def test_every_metric_is_documented_and_every_documented_metric_exists() -> None:
    assert missing_metrics(README) == []
    documented = set(re.findall(r"`(sessiond_[a-z_]+)`", README))
    assert documented <= set(METRICS), documented - set(METRICS)


def test_every_setting_is_documented() -> None:
    assert missing_settings(README) == []


@pytest.mark.parametrize(
    ("check", "example"),
    [
        (missing_rpcs, "WatchSessions"),
        (missing_commands, "sessiond stats"),
        (missing_metrics, "`sessiond_watchers`"),
        (missing_settings, "retention_interval_seconds"),
    ],
)
def test_each_check_notices_a_removal(check: object, example: str) -> None:
    assert example in README
    without = README.replace(example, "")
    assert check(without) != []  # type: ignore[operator]
