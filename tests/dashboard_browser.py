"""What the dashboard tests share: headless Chromium, a running dashboard, a seeded fleet.

The browser is Debian's ``chromium`` (installed by scripts/install_browser.sh)
driven by Playwright for Python; Playwright's own browser downloads are never
used. Without Chromium the browser tests skip with the reason, except in CI
(``CI=true``), where a missing browser is a failure: CI installs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from harness import FakeClock
from sessiond.aio import AsyncClient
from sessiond.dashboard import Dashboard, DashboardConfig
from sessiond.v1 import message_pb2, session_pb2

CHROMIUM = Path(os.environ.get("SESSIOND_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
VIEWPORT = {"width": 1400, "height": 1000}
# Generous: a change must travel sessiond -> watch -> bridge -> browser -> refetch.
LIVE_TIMEOUT_MS = 10_000
# After sessiond restarts, the bridge's watch comes back through gRPC's reconnect backoff.
RECONNECT_TIMEOUT_MS = 45_000


def browser_missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not CHROMIUM.exists() and shutil.which(str(CHROMIUM)) is None:
        return f"{CHROMIUM} not found: run `bash scripts/install_browser.sh`"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install -e '.[dev]'"
    return None


def require_browser() -> None:
    """Skip (locally) or fail (in CI) when headless Chromium cannot run."""
    reason = browser_missing_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests must run in CI: {reason}")
    pytest.skip(reason)


@contextlib.asynccontextmanager
async def open_browser() -> AsyncIterator[Any]:
    """A headless Chromium browser (Playwright ``Browser``)."""
    require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def running_dashboard(target: str, **overrides: Any) -> AsyncIterator[Dashboard]:
    """A dashboard for ``target`` on a free loopback port (or ``listen=``)."""
    settings: dict[str, Any] = {
        "target": target,
        "listen": "127.0.0.1:0",
        "progress_interval_ms": 500,
        "reconnect_max_seconds": 0.5,
        "timeout": 5.0,
    }
    settings.update(overrides)
    dashboard = Dashboard(DashboardConfig(**settings))
    await dashboard.start()
    try:
        yield dashboard
    finally:
        await dashboard.stop()


@dataclasses.dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_get(url: str, headers: dict[str, str] | None = None) -> HttpAnswer:
    """A blocking GET (call it through asyncio.to_thread); errors are answers too."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return HttpAnswer(response.status, {k.lower(): v for k, v in response.headers.items()},
                              response.read())
    except urllib.error.HTTPError as error:
        return HttpAnswer(error.code, {k.lower(): v for k, v in error.headers.items()},
                          error.read())


def expect(target: Any) -> Any:
    """Playwright's ``expect`` (assertions that wait), imported only when a browser runs."""
    from playwright.async_api import expect as playwright_expect

    return playwright_expect(target)


def screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{name}.png"


async def seed_fleet(client: AsyncClient, clock: FakeClock) -> None:
    """A small, varied fleet: several agents and models, usage, an ended and a stuck session."""
    fleet = [
        ("support-7f3a", "Refund for order 1182", "support-bot", "discord.acme", "claude-sonnet",
         "alice"),
        ("research-02", "Survey of vector stores", "researcher", "cli", "gpt-large", "bob"),
        ("triage-991", "Nightly CI triage", "ci-triage", "slack.eng", "claude-haiku", "carol"),
        ("support-8c21", "Shipping address change", "support-bot", "discord.acme",
         "claude-sonnet", "alice"),
        ("coder-55", "Fix flaky login test", "coder", "cli", "gpt-large", "dave"),
    ]
    for index, (session_id, title, agent, channel, model, owner) in enumerate(fleet):
        clock.advance(600)
        await client.create_session(session=session_pb2.Session(
            id=session_id, display_name=title, agent=agent, channel=channel, model=model,
            owner_id=owner, kind=session_pb2.SESSION_KIND_INTERACTIVE,
            labels={"team": "demo"}, runtime_instance="runtime-a",
        ))
        await client.append_messages(session_id=session_id, messages=[
            message_pb2.Message(role=message_pb2.ROLE_USER, content=f"Please help: {title}"),
            message_pb2.Message(role=message_pb2.ROLE_ASSISTANT, content="On it."),
        ])
        await client.record_usage(
            session_id=session_id, model=model,
            usage=session_pb2.Usage(prompt_tokens=1200 * (index + 1),
                                    completion_tokens=300 * (index + 1),
                                    cost_micros=42_000 * (index + 1) ** 2),
        )
    await client.record_usage(session_id="coder-55", model="claude-haiku",
                              usage=session_pb2.Usage(prompt_tokens=900, completion_tokens=80,
                                                      cost_micros=9_000))
    await client.end_session(session_id="research-02", status=session_pb2.SESSION_STATUS_COMPLETED)
    await client.end_session(session_id="triage-991", status=session_pb2.SESSION_STATUS_FAILED,
                             reason="tool timeout")
    # A turn that started 12 minutes ago and is still running: stuck.
    started = clock.now_micros() - 12 * 60 * 1_000_000
    await client.set_runtime_state(
        session_id="support-8c21", state=session_pb2.RUNTIME_STATE_RUNNING, turn_id="turn-3",
        turn_started_at=_timestamp(started),
    )


def _timestamp(epoch_micros: int) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromMicroseconds(epoch_micros)
    return stamp
