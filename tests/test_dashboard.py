"""``sessiond dashboard``: the HTTP surface, the event-stream bridge, and the page in Chromium.

Every test starts a real sessiond server in process and a real dashboard in
front of it, and talks to the dashboard only over HTTP (or through a
browser). The browser tests use headless Chromium (see dashboard_browser.py)
and write the screenshots that docs/dashboard.md shows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from dashboard_browser import (
    LIVE_TIMEOUT_MS,
    RECONNECT_TIMEOUT_MS,
    VIEWPORT,
    expect,
    http_get,
    open_browser,
    running_dashboard,
    screenshot_path,
    seed_fleet,
)
from sessiond.aio import AsyncClient
from sessiond.dashboard import Dashboard, DashboardConfig, add_arguments, serve_dashboard
from sessiond.v1 import (
    message_pb2,
    session_pb2,
    stats_service_pb2,
    stats_service_pb2_grpc,
)

MARKUP = "<script>alert(1)</script><b>x</b>"

# The dashboard is a client of the public API: one storage backend is enough to prove it.
ON_SQLITE = pytest.mark.parametrize("make_server", ["sqlite"], indirect=True)


async def get(url: str, headers: dict[str, str] | None = None) -> Any:
    return await asyncio.to_thread(http_get, url, headers)


async def create(client: AsyncClient, session_id: str, **fields: Any) -> session_pb2.Session:
    answer = await client.create_session(session=session_pb2.Session(id=session_id, **fields))
    return answer.session


# Listening and headers


def test_refuses_to_listen_beyond_loopback_without_insecure() -> None:
    with pytest.raises(ValueError, match="--insecure"):
        Dashboard(DashboardConfig(listen="0.0.0.0:8080"))
    Dashboard(DashboardConfig(listen="0.0.0.0:8080", insecure=True))
    Dashboard(DashboardConfig(listen="localhost:8080"))
    Dashboard(DashboardConfig(listen="[::1]:8080"))


@ON_SQLITE
async def test_every_answer_carries_the_security_headers(server: Any) -> None:
    async with running_dashboard(server.address) as dashboard:
        for path in ("", "static/dashboard.js", "static/dashboard.css", "api/stats", "nowhere"):
            answer = await get(dashboard.url + path)
            csp = answer.headers["content-security-policy"]
            assert "default-src 'self'" in csp, path
            assert "frame-ancestors 'none'" in csp, path
            assert "unsafe-inline" not in csp, path
            assert answer.headers["x-content-type-options"] == "nosniff", path
            assert answer.headers["referrer-policy"] == "no-referrer", path


@ON_SQLITE
async def test_page_has_no_inline_script_or_style(server: Any) -> None:
    async with running_dashboard(server.address) as dashboard:
        html = (await get(dashboard.url)).body.decode()
        script = (await get(dashboard.url + "static/dashboard.js")).body.decode()
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert "src=" in tag, tag
    assert re.search(r"<script\b[^>]*>\s*[^<\s]", html) is None, "inline script"
    assert "<style" not in html
    assert re.search(r"\son[a-z]+\s*=", html) is None, "inline event handler"
    assert "style=" not in html
    # Values from sessiond go through textContent; the page never parses strings as markup.
    assert "innerHTML" not in script.replace("innerHTML is never used", "")
    assert "insertAdjacentHTML" not in script and "document.write" not in script


@ON_SQLITE
async def test_foreign_host_headers_and_other_methods_are_refused(server: Any) -> None:
    async with running_dashboard(server.address) as dashboard:
        host, port = dashboard.address.rsplit(":", 1)
        rebinding = await get(dashboard.url, {"Host": f"evil.example:{port}"})
        assert rebinding.status == 421
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"POST /api/stats HTTP/1.1\r\nHost: {dashboard.address}\r\n"
                     "Content-Length: 0\r\n\r\n".encode())
        await writer.drain()
        status_line = await reader.readline()
        writer.close()
        assert b" 405 " in status_line


# JSON endpoints


@ON_SQLITE
async def test_sessions_endpoint_filters_sorts_and_pages_with_tokens(server: Any) -> None:
    async with AsyncClient(server.address) as client, running_dashboard(server.address) as dash:
        for number in range(5):
            await create(client, f"s{number}", agent="alpha" if number % 2 else "beta")
            await client.record_usage(session_id=f"s{number}", model="m",
                                      usage=session_pb2.Usage(cost_micros=1000 * number))
        await client.end_session(session_id="s3", status=session_pb2.SESSION_STATUS_FAILED)

        by_cost = (await get(dash.url + "api/sessions?order=cost&page_size=2")).json()
        assert [s["id"] for s in by_cost["sessions"]] == ["s4", "s3"]
        assert by_cost["total_size"] == 5 and by_cost["revision"] > 0
        token = urllib.parse.quote(by_cost["next_page_token"])
        second = (await get(dash.url + f"api/sessions?order=cost&page_size=2&page_token={token}"))
        assert [s["id"] for s in second.json()["sessions"]] == ["s2", "s1"]

        alpha = (await get(dash.url + "api/sessions?agent=alpha&order=cost&asc=1")).json()
        assert [s["id"] for s in alpha["sessions"]] == ["s1", "s3"]
        failed = (await get(dash.url + "api/sessions?status=failed")).json()
        assert [s["id"] for s in failed["sessions"]] == ["s3"]
        assert failed["sessions"][0]["status"] == "SESSION_STATUS_FAILED"

        bad = await get(dash.url + "api/sessions?status=sleepy")
        assert bad.status == 400 and bad.json()["error"]["code"] == "INVALID_ARGUMENT"
        missing = await get(dash.url + "api/sessions/nope")
        assert missing.status == 404 and missing.json()["error"]["code"] == "NOT_FOUND"

        stats = (await get(dash.url + "api/stats")).json()["stats"]
        assert stats["session_count"] == 5 and stats["failed_count"] == 1
        assert stats["usage"]["cost_micros"] == 10_000
        spend = (await get(dash.url + "api/spend?buckets=4")).json()["buckets"]
        assert sum(bucket["cost_micros"] for bucket in spend) == 10_000
        # The activity chart's series come with the spend buckets.
        assert sum(bucket["session_count"] for bucket in spend) == 5
        assert sum(bucket["failed_count"] for bucket in spend) == 1
        assert sum(bucket["request_count"] for bucket in spend) == 5


@ON_SQLITE
async def test_labels_and_forks_filter_sessions_and_values_list_what_exists(server: Any) -> None:
    async with AsyncClient(server.address) as client, running_dashboard(server.address) as dash:
        await create(client, "a", agent="Support-Bot", model="gpt-x", owner_id="ann",
                     labels={"team": "red", "env": "prod"})
        await create(client, "b", agent="support-bot", owner_id="bob", labels={"team": "red"})
        await create(client, "c", agent="coder", labels={"team": "blue"})
        await client.append_messages(session_id="a", messages=[
            message_pb2.Message(role=message_pb2.ROLE_USER, content="hi")])
        await client.fork_session(source_session_id="a", new_session_id="a-fork")
        await client.record_usage(session_id="c", model="claude-y",
                                  usage=session_pb2.Usage(prompt_tokens=1))

        def ids(answer: Any) -> list[str]:
            return sorted(session["id"] for session in answer.json()["sessions"])

        assert ids(await get(dash.url + "api/sessions?label=team%3Dred")) == ["a", "a-fork", "b"]
        assert ids(await get(dash.url + "api/sessions?label=team%3Dred&label=env%3Dprod")) == [
            "a", "a-fork"]
        assert ids(await get(dash.url + "api/sessions?parent_id=a")) == ["a-fork"]
        bad = await get(dash.url + "api/sessions?label=nokey")
        assert bad.status == 400 and "KEY=VALUE" in bad.json()["error"]["message"]

        values = (await get(dash.url + "api/values")).json()
        assert values["agent"] == ["coder", "Support-Bot", "support-bot"]
        assert values["model"] == ["claude-y", "gpt-x"]  # CostByModel's models too
        assert values["owner"] == ["ann", "bob"]


@ON_SQLITE
async def test_timeline_replays_runtime_states_turns_usage_and_the_end(server: Any) -> None:
    async with AsyncClient(server.address) as client, running_dashboard(server.address) as dash:
        await create(client, "t")
        await create(client, "other")
        await client.set_runtime_state(session_id="t", state=session_pb2.RUNTIME_STATE_RUNNING,
                                       turn_id="turn-1")
        await client.append_messages(session_id="t", messages=[
            message_pb2.Message(role=message_pb2.ROLE_USER, content=f"m{n}") for n in range(3)])
        await client.record_usage(session_id="t", model="m", usage=session_pb2.Usage(
            prompt_tokens=10, completion_tokens=5, cost_micros=700))
        await client.record_usage(session_id="t", model="m", errored=True,
                                  usage=session_pb2.Usage(prompt_tokens=1, cost_micros=300))
        await client.set_runtime_state(session_id="other",
                                       state=session_pb2.RUNTIME_STATE_RUNNING, turn_id="x")
        await client.set_runtime_state(session_id="t", state=session_pb2.RUNTIME_STATE_IDLE)
        await client.end_session(session_id="t", status=session_pb2.SESSION_STATUS_COMPLETED,
                                 reason="done")
        answer = (await get(dash.url + "api/sessions/t/timeline")).json()
        assert answer["complete"] is True and answer["dropped"] == 0
        summary = [
            (e["kind"], e.get("state") or e.get("status") or e.get("count")
             or (e.get("cost_micros"), e.get("total_tokens"), e.get("errors")))
            for e in answer["entries"]
        ]
        assert summary == [
            ("created", (None, None, None)),
            ("runtime", "running"),
            ("messages", 3),
            ("usage", (700, 15, 0)),
            ("usage", (300, 1, 1)),
            ("runtime", "idle"),
            ("status", "completed"),
        ]
        assert answer["entries"][1]["turn_id"] == "turn-1"
        revisions = [e["revision"] for e in answer["entries"]]
        assert revisions == sorted(revisions)
        missing = await get(dash.url + "api/sessions/nope/timeline")
        assert missing.status == 404


@ON_SQLITE
async def test_messages_endpoint_is_newest_first_with_page_tokens(server: Any) -> None:
    async with AsyncClient(server.address) as client, running_dashboard(server.address) as dash:
        await create(client, "talk/1")  # a "/" in the id travels percent-encoded
        await client.append_messages(session_id="talk/1", messages=[
            message_pb2.Message(role=message_pb2.ROLE_USER, content=f"m{n}") for n in range(1, 6)
        ])
        base = dash.url + "api/sessions/" + urllib.parse.quote("talk/1", safe="") + "/messages"
        first = (await get(base + "?page_size=3")).json()
        assert [m["content"] for m in first["messages"]] == ["m5", "m4", "m3"]
        token = urllib.parse.quote(first["next_page_token"])
        rest = (await get(base + f"?page_size=3&page_token={token}")).json()
        assert [m["content"] for m in rest["messages"]] == ["m2", "m1"]
        assert rest["next_page_token"] == ""
        usage = (await get(dash.url + "api/cost-by-model?session_id=talk%2F1")).json()
        assert usage["models"] == []


# Credentials


class RecordingStats(stats_service_pb2_grpc.StatsServiceServicer):
    """A StatsService that remembers the authorization metadata of each call."""

    def __init__(self) -> None:
        self.authorizations: list[str | None] = []

    async def GetStats(
        self, request: stats_service_pb2.GetStatsRequest, context: Any
    ) -> stats_service_pb2.GetStatsResponse:
        metadata = {key: value for key, value in context.invocation_metadata()}
        self.authorizations.append(metadata.get("authorization"))
        return stats_service_pb2.GetStatsResponse(revision=1)


@contextlib.asynccontextmanager
async def recording_stats_server() -> AsyncIterator[tuple[str, RecordingStats]]:
    servicer = RecordingStats()
    grpc_server = grpc.aio.server()
    stats_service_pb2_grpc.add_StatsServiceServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        await grpc_server.stop(None)


async def test_viewer_credentials_are_forwarded_as_the_bearer_token() -> None:
    async with recording_stats_server() as (target, recorder), running_dashboard(
        target, token="operator"
    ) as dashboard:
        url = dashboard.url + "api/stats"
        assert (await get(url, {"Authorization": "Bearer viewer-header"})).status == 200
        assert (await get(url, {"Cookie": "theme=dark; token=viewer-cookie"})).status == 200
        assert (await get(url)).status == 200
        refused = await get(url, {"Authorization": "Basic dXNlcjpwdw=="})
        assert refused.status == 401
    assert recorder.authorizations == [
        "Bearer viewer-header",
        "Bearer viewer-cookie",
        "Bearer operator",  # the dashboard's own --token, only for a viewer with none
    ]


# The event stream


async def read_events(
    reader: asyncio.StreamReader, wanted: str, count: int
) -> list[tuple[str | None, dict[str, Any]]]:
    """(id, data) of the next ``count`` events named ``wanted`` on an open event stream."""
    found: list[tuple[str | None, dict[str, Any]]] = []
    async with asyncio.timeout(10.0):
        while len(found) < count:
            block = (await reader.readuntil(b"\n\n")).decode()
            fields: dict[str, str] = {}
            for line in block.splitlines():
                name, _, value = line.partition(": ")
                fields[name] = value
            if fields.get("event") == wanted:
                found.append((fields.get("id"), json.loads(fields["data"])))
    return found


async def open_event_stream(
    dashboard: Dashboard, headers: dict[str, str], query: str = ""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = dashboard.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    writer.write(f"GET /api/events{query} HTTP/1.1\r\nHost: {dashboard.address}\r\n{extra}\r\n"
                 .encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"text/event-stream" in head
    return reader, writer


@ON_SQLITE
async def test_event_stream_resumes_after_the_last_event_id(server: Any) -> None:
    async with AsyncClient(server.address) as client, running_dashboard(server.address) as dash:
        first = await client.create_session(session=session_pb2.Session(id="first"))
        await client.create_session(session=session_pb2.Session(id="second"))

        # A browser that saw the first revision comes back: only what follows arrives.
        reader, writer = await open_event_stream(dash, {"Last-Event-ID": str(first.revision)},
                                                 "?since=0")
        [(event_id, change)] = await read_events(reader, "change", 1)
        assert [e["session_id"] for e in change["events"]] == ["second"]
        assert change["events"][0]["type"] == "EVENT_TYPE_SESSION_CREATED"
        assert event_id == str(change["revision"]) and change["revision"] > first.revision
        writer.close()

        # A new page passes the revision it listed at as ?since=.
        reader, writer = await open_event_stream(dash, {}, f"?since={first.revision}")
        [(_, again)] = await read_events(reader, "change", 1)
        assert [e["session_id"] for e in again["events"]] == ["second"]
        [(progress_id, _)] = await read_events(reader, "progress", 1)
        assert int(progress_id or 0) >= change["revision"]
        writer.close()


# In the browser


async def wait_for_row(page: Any, session_id: str, timeout_ms: float = LIVE_TIMEOUT_MS) -> Any:
    row = page.locator(f'#sessions-body tr[data-session-id="{session_id}"]')
    try:
        await row.wait_for(timeout=timeout_ms)
    except Exception as error:  # say what the page was doing, so a failure can be read
        connection = await page.get_attribute("#connection", "data-state")
        revision = await page.get_attribute("body", "data-last-revision")
        alert = await page.text_content("body")
        raise AssertionError(
            f"row {session_id!r} not shown: connection {connection!r}, last revision "
            f"{revision!r}, page text {(alert or '')[:400]!r}"
        ) from error
    return row


@ON_SQLITE
async def test_page_shows_a_new_session_live_and_moves_it_when_it_ends(server: Any) -> None:
    async with AsyncClient(server.address) as client, running_dashboard(
        server.address
    ) as dash, open_browser() as browser:
        await seed_fleet(client, server.clock)
        page = await browser.new_page(viewport=VIEWPORT)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(dash.url)
        await wait_for_row(page, "coder-55")
        await page.locator('#connection[data-state="live"]').wait_for(timeout=LIVE_TIMEOUT_MS)

        # Charts are SVG drawn from CostByModel and GetStats.
        await expect(page.locator("#chart-cost-by-model rect.bar")).to_have_count(3)
        await expect(page.locator("#chart-spend rect.bar").first).to_be_attached()
        # The stuck turn is highlighted with how long it has run.
        stuck = page.locator('#sessions-body tr.stuck[data-session-id="support-8c21"]')
        await stuck.wait_for(timeout=LIVE_TIMEOUT_MS)
        await expect(stuck.locator(".turn")).to_have_text(re.compile(r"^stuck 12m"))
        await expect(page.locator("#counter-failed")).to_have_text("1")
        await page.screenshot(path=str(screenshot_path("overview")), full_page=True)

        # Created through the Python client: it appears without a reload.
        server.clock.advance(5)
        await create(client, "live-1", display_name=MARKUP, agent="watcher", model="m-live")
        row = await wait_for_row(page, "live-1")
        assert await row.locator("td").nth(1).text_content() == "active"
        assert await row.locator("a").text_content() == MARKUP  # shown as text
        assert await page.locator("#sessions-body b, #sessions-body script").count() == 0

        # Ended: its status changes in place, and the counter follows.
        await client.end_session(session_id="live-1", status=session_pb2.SESSION_STATUS_FAILED)
        await page.locator('#sessions-body tr[data-session-id="live-1"] .status-failed').wait_for(
            timeout=LIVE_TIMEOUT_MS)
        await expect(page.locator("#counter-failed")).to_have_text("2", timeout=LIVE_TIMEOUT_MS)

        # Filters go to ListSessions: failed sessions only.
        await page.select_option('#filters select[name="status"]', "failed")
        await expect(page.locator("#sessions-body tr")).to_have_count(2, timeout=LIVE_TIMEOUT_MS)
        assert errors == []


@ON_SQLITE
async def test_session_view_shows_markup_as_text_and_new_messages_live(server: Any) -> None:
    async with AsyncClient(server.address) as client, running_dashboard(
        server.address
    ) as dash, open_browser() as browser:
        await seed_fleet(client, server.clock)
        await client.append_messages(session_id="coder-55", messages=[
            message_pb2.Message(role=message_pb2.ROLE_USER, content=MARKUP),
            message_pb2.Message(
                role=message_pb2.ROLE_ASSISTANT, content="Running the test suite.",
                tool_calls=[message_pb2.ToolCall(id="call-1", name="run_tests",
                                                 arguments_json='{"path": "tests/login"}')]),
            message_pb2.Message(role=message_pb2.ROLE_TOOL, tool_call_id="call-1",
                                content="1 failed: test_login_redirect"),
        ])
        page = await browser.new_page(viewport=VIEWPORT)
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))
        await page.goto(dash.url + "#/sessions/coder-55")
        markup = page.locator("#messages article", has_text="alert(1)")
        await markup.wait_for(timeout=LIVE_TIMEOUT_MS)
        assert await markup.locator(".content").text_content() == MARKUP
        assert await page.locator("#messages b, #messages script").count() == 0
        await expect(page.locator("#session-usage tbody tr")).to_have_count(2)
        await page.locator('#connection[data-state="live"]').wait_for(timeout=LIVE_TIMEOUT_MS)

        # Newest first, and a new message arrives at the top without a reload.
        await client.append_messages(session_id="coder-55", messages=[
            message_pb2.Message(role=message_pb2.ROLE_ASSISTANT,
                                content="Fixed: the redirect now keeps the query string."),
        ])
        newest = page.locator("#messages article").first
        await expect(newest.locator(".content")).to_have_text(
            re.compile("^Fixed"), timeout=LIVE_TIMEOUT_MS)
        assert await newest.get_attribute("data-seq") == "6"
        await client.record_usage(session_id="coder-55", model="claude-opus",
                                  usage=session_pb2.Usage(prompt_tokens=10, cost_micros=5))
        await page.locator("#session-usage tbody tr", has_text="claude-opus").wait_for(
            timeout=LIVE_TIMEOUT_MS)

        # Older messages come a page (20) at a time.
        await client.append_messages(session_id="coder-55", messages=[
            message_pb2.Message(role=message_pb2.ROLE_USER, content=f"ping {n}") for n in range(20)
        ])
        await expect(page.locator("#messages article")).to_have_count(26, timeout=LIVE_TIMEOUT_MS)
        await page.reload()
        await expect(page.locator("#messages article")).to_have_count(20, timeout=LIVE_TIMEOUT_MS)
        await page.click("#messages-older")
        await expect(page.locator("#messages article")).to_have_count(26, timeout=LIVE_TIMEOUT_MS)
        assert await page.locator("#messages article").last.get_attribute("data-seq") == "1"
        assert await page.locator("#messages-older").is_hidden()
        assert dialogs == []


def utc_minute(timestamp: Any) -> str:
    """A Timestamp as the page's datetime-local value (UTC, to the minute)."""
    return timestamp.ToDatetime().strftime("%Y-%m-%dT%H:%M")


async def row_ids(page: Any) -> list[str]:
    return await page.locator("#sessions-body tr").evaluate_all(
        "rows => rows.map(row => row.dataset.sessionId)")


@ON_SQLITE
async def test_filters_sort_page_and_window_live_in_the_url_and_survive_a_reload(
    server: Any,
) -> None:
    async with AsyncClient(server.address) as client, running_dashboard(
        server.address
    ) as dash, open_browser() as browser:
        await seed_fleet(client, server.clock)
        for number in range(26):
            await create(client, f"bulk-{number:02d}", agent="bulk", labels={"team": "bulk"})
        page = await browser.new_page(viewport=VIEWPORT)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(dash.url)
        await wait_for_row(page, "bulk-25")
        # Suggestions come from the values that exist; typing matches them without case.
        suggested = await page.locator("#known-agent option").evaluate_all(
            "options => options.map(option => option.value)")
        assert {"support-bot", "coder", "bulk"} <= set(suggested)
        await page.fill('#filters input[name="agent"]', "SUPPORT-Bot")
        await page.select_option('#filters select[name="order"]', "cost")
        await page.press('#filters input[name="agent"]', "Enter")
        await expect(page.locator("#sessions-body tr")).to_have_count(2, timeout=LIVE_TIMEOUT_MS)
        assert await row_ids(page) == ["support-8c21", "support-7f3a"]  # by cost
        assert "agent=SUPPORT-Bot" in page.url and "order=cost" in page.url
        await page.reload()
        await expect(page.locator("#sessions-body tr")).to_have_count(2, timeout=LIVE_TIMEOUT_MS)
        assert await row_ids(page) == ["support-8c21", "support-7f3a"]
        assert await page.input_value('#filters input[name="agent"]') == "SUPPORT-Bot"
        assert await page.input_value('#filters select[name="order"]') == "cost"
        # The owner column shows owners; one number format (no "23.5k" beside "6,000").
        owner = page.locator('#sessions-body tr[data-session-id="support-7f3a"] td.owner')
        assert await owner.text_content() == "alice"

        # A labels filter, and the page: 26 bulk sessions are two pages of 25.
        await page.goto(dash.url + "#/?label=team%3Dbulk")
        await expect(page.locator("#sessions-body tr")).to_have_count(25, timeout=LIVE_TIMEOUT_MS)
        await page.click("#page-next")
        await expect(page.locator("#sessions-body tr")).to_have_count(1, timeout=LIVE_TIMEOUT_MS)
        assert "page=" in page.url and "label=team%3Dbulk" in page.url
        shown = await row_ids(page)
        await page.reload()
        await expect(page.locator("#page-info")).to_have_text(
            re.compile(r"^page 2 · 26 sessions"), timeout=LIVE_TIMEOUT_MS)
        assert await row_ids(page) == shown
        await page.click("#page-prev")
        await expect(page.locator("#sessions-body tr")).to_have_count(25, timeout=LIVE_TIMEOUT_MS)
        assert "page=" not in page.url

        # A custom time window: sessions started between two minutes (UTC).
        triage = (await client.get_session(session_id="triage-991")).session
        support = (await client.get_session(session_id="support-8c21")).session
        start = utc_minute(triage.started_at)
        end_stamp = type(support.started_at)()
        end_stamp.FromMicroseconds(support.started_at.ToMicroseconds() + 60_000_000)
        end = utc_minute(end_stamp)
        await page.goto(dash.url + f"#/?window=custom&from={start}&to={end}")
        await expect(page.locator("#sessions-body tr")).to_have_count(2, timeout=LIVE_TIMEOUT_MS)
        assert sorted(await row_ids(page)) == ["support-8c21", "triage-991"]
        await expect(page.locator("#counter-sessions")).to_have_text("2", timeout=LIVE_TIMEOUT_MS)
        await page.reload()
        await expect(page.locator("#sessions-body tr")).to_have_count(2, timeout=LIVE_TIMEOUT_MS)
        assert await page.input_value("#window") == "custom"
        assert await page.input_value("#range-from") == start
        assert await page.is_visible("#custom-range")
        body = await page.text_content("body") or ""
        assert not re.search(r"\d\.\dk\b", body)
        assert errors == []


@ON_SQLITE
async def test_counters_and_charts_use_one_number_format_and_readable_ticks(server: Any) -> None:
    async with AsyncClient(server.address) as client, running_dashboard(
        server.address
    ) as dash, open_browser() as browser:
        await seed_fleet(client, server.clock)
        page = await browser.new_page(viewport=VIEWPORT)
        await page.goto(dash.url)
        await wait_for_row(page, "coder-55")
        await expect(page.locator("#counter-tokens")).to_have_text("23,480")
        await expect(page.locator("#counter-success")).to_have_text("50.0%")
        tokens = page.locator('#sessions-body tr[data-session-id="coder-55"] td.num').nth(1)
        assert await tokens.text_content() == "8,480"
        # The charts come from their own request after the counters: wait for each to be drawn.
        spend = page.locator("#chart-spend text")
        await expect(spend.filter(has_text=re.compile(r"^\$1\.00$"))).to_have_count(1)
        ticks = await spend.all_text_contents()
        assert "$0" in ticks and "$1.00" in ticks  # round money steps on the value axis
        assert any(re.fullmatch(r"\d\d:\d\d", tick) for tick in ticks)  # times of day
        activity_legend = page.locator("#chart-activity text.legend")
        await expect(activity_legend).to_have_count(3)
        activity = await activity_legend.all_text_contents()
        assert {"sessions started", "sessions failed", "errored calls"} <= set(activity)
        await expect(page.locator("#chart-live path.line")).to_have_count(3)


@ON_SQLITE
async def test_session_view_links_parent_and_forks_shows_a_timeline_and_a_not_found_page(
    server: Any,
) -> None:
    async with AsyncClient(server.address) as client, running_dashboard(
        server.address
    ) as dash, open_browser() as browser:
        await seed_fleet(client, server.clock)
        server.clock.advance(30)
        await client.set_runtime_state(session_id="coder-55",
                                       state=session_pb2.RUNTIME_STATE_RUNNING, turn_id="turn-2")
        server.clock.advance(90)
        await client.append_messages(session_id="coder-55", messages=[
            message_pb2.Message(role=message_pb2.ROLE_ASSISTANT, content="Patched the test.")])
        await client.record_usage(session_id="coder-55", model="gpt-large", errored=True,
                                  usage=session_pb2.Usage(prompt_tokens=500, cost_micros=2_000))
        server.clock.advance(30)
        await client.set_runtime_state(session_id="coder-55", state=session_pb2.RUNTIME_STATE_IDLE)
        await client.fork_session(source_session_id="coder-55", new_session_id="coder-55-retry",
                                  up_to_seq=2, display_name="Retry from the question")
        page = await browser.new_page(viewport=VIEWPORT)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(dash.url + "#/sessions/coder-55")
        timeline = page.locator("#timeline tbody tr")
        await timeline.first.wait_for(timeout=LIVE_TIMEOUT_MS)
        texts = await timeline.all_text_contents()
        assert any("running (turn turn-2)" in text for text in texts)
        assert any("usage: $0.0020, 500 tokens, 1 errored" in text for text in texts)
        assert any("1 message appended" in text for text in texts)
        await expect(page.locator("#timeline-chart rect.segment.runtime-running")).to_have_count(1)
        await expect(page.locator("#timeline-chart circle.usage-mark.errored")).to_have_count(1)
        fork = page.locator("#session-forks a.fork-link")
        await expect(fork).to_have_text("Retry from the question", timeout=LIVE_TIMEOUT_MS)
        await page.screenshot(path=str(screenshot_path("session")), full_page=True)

        # A new turn shows up on the timeline without a reload.
        server.clock.advance(10)
        await client.set_runtime_state(session_id="coder-55",
                                       state=session_pb2.RUNTIME_STATE_RUNNING, turn_id="turn-3")
        await page.locator("#timeline tbody tr", has_text="turn-3").wait_for(
            timeout=LIVE_TIMEOUT_MS)

        await fork.click()
        parent = page.locator("#session-fields a.parent-link")
        await expect(parent).to_have_text("coder-55", timeout=LIVE_TIMEOUT_MS)
        assert page.url.endswith("#/sessions/coder-55-retry")
        await parent.click()
        await page.locator("#session-forks a.fork-link").wait_for(timeout=LIVE_TIMEOUT_MS)

        await page.goto(dash.url + "#/sessions/no-such-session")
        await page.locator("#view-notfound").wait_for(timeout=LIVE_TIMEOUT_MS)
        assert await page.text_content("#notfound-id") == "no-such-session"
        assert await page.is_hidden("#view-session") and await page.is_hidden("#alert")
        assert errors == []


@ON_SQLITE
async def test_sign_in_page_when_sessiond_wants_a_key(make_server: Any, tmp_path: Any) -> None:
    from principals import Grant, write_key_file

    keys = write_key_file(tmp_path / "keys.toml", [Grant("ops", "default", "admin")])
    server = await make_server(api_keys_file=tmp_path / "keys.toml")
    async with AsyncClient(server.address, token=keys["ops"]) as client, running_dashboard(
        server.address
    ) as dash, open_browser() as browser:
        await create(client, "private", agent="secret-agent", owner_id="ann")
        page = await browser.new_page(viewport=VIEWPORT)
        await page.goto(dash.url)
        await page.locator("#view-signin").wait_for(timeout=LIVE_TIMEOUT_MS)
        assert await page.is_hidden("#view-overview") and await page.is_hidden("#alert")
        await expect(page.locator("#connection")).to_have_text("signed out")
        await page.screenshot(path=str(screenshot_path("sign-in")))

        await page.fill("#signin-token", "not-a-key")
        await page.press("#signin-token", "Enter")
        await expect(page.locator("#signin-error")).to_have_text(
            re.compile("^That key was not accepted"), timeout=LIVE_TIMEOUT_MS)

        await page.fill("#signin-token", keys["ops"])
        await page.press("#signin-token", "Enter")
        row = await wait_for_row(page, "private")
        assert await row.locator("td.owner").text_content() == "ann"
        await page.locator('#connection[data-state="live"]').wait_for(timeout=LIVE_TIMEOUT_MS)


@ON_SQLITE
async def test_page_resumes_after_sessiond_and_dashboard_restart(make_server: Any) -> None:
    first = await make_server()
    async with open_browser() as browser, contextlib.AsyncExitStack() as first_dashboard:
        dash = await first_dashboard.enter_async_context(running_dashboard(first.address))
        dash_port = dash.address.rsplit(":", 1)[1]
        async with AsyncClient(first.address) as client:
            await create(client, "before")
        page = await browser.new_page(viewport=VIEWPORT)
        await page.goto(dash.url)
        await wait_for_row(page, "before")
        await page.locator('#connection[data-state="live"]').wait_for(timeout=LIVE_TIMEOUT_MS)

        # sessiond restarts on the same database: the bridge's watch resumes by itself.
        await first.close()
        second = await make_server(database=first.database, address=first.address,
                                   clock=first.clock)
        async with AsyncClient(second.address) as client:
            await create(client, "during")
        # After a restart the bridge's watch reconnects with backoff: allow for it.
        await wait_for_row(page, "during", RECONNECT_TIMEOUT_MS)
        seen = int(await page.get_attribute("body", "data-last-revision") or 0)
        assert seen > 0

        # The dashboard restarts on its port: the browser comes back with its Last-Event-ID.
        await first_dashboard.aclose()
        async with running_dashboard(second.address, listen=f"127.0.0.1:{dash_port}"), \
                AsyncClient(second.address) as client:
            await create(client, "after")
            await wait_for_row(page, "after", RECONNECT_TIMEOUT_MS)
            for session_id in ("before", "during", "after"):
                rows = page.locator(f'#sessions-body tr[data-session-id="{session_id}"]')
                assert await rows.count() == 1, session_id
            assert int(await page.get_attribute("body", "data-last-revision") or 0) > seen


# The command line


async def test_serve_dashboard_refuses_a_public_listen_address(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = parser.parse_args([])
    assert defaults.listen == "127.0.0.1:8080" and defaults.insecure is False
    args = parser.parse_args(["--listen", "0.0.0.0:0"])
    assert await serve_dashboard(args) == 2
    assert "--insecure" in capsys.readouterr().err
