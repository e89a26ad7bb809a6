"""ListSessions ordering and keyset pagination, black box: every order field in both
directions with the id tie-break, page sizes, signed tokens, total_size, and stability while
rows are inserted and deleted between pages (no duplicates, no pre-existing row skipped).
"""

from __future__ import annotations

import asyncio

import pytest
from harness import (
    append,
    create_session,
    expect_bad_request,
    micros,
    timestamp,
    user,
)
from sessiond.v1 import message_service_pb2 as ms
from sessiond.v1 import session_pb2 as sp
from sessiond.v1 import session_service_pb2 as ss
from sessiond.v1 import stats_service_pb2 as st

# Deliberately not in alphabetical order, so the id tie-break is visible.
IDS = ["k", "c", "x", "a", "m", "e", "q", "b", "z", "d"]


def sort_value(session: sp.Session, order_by: int) -> int:
    if order_by in (ss.SESSION_ORDER_FIELD_UNSPECIFIED, ss.SESSION_ORDER_FIELD_LAST_ACTIVITY_AT):
        return micros(session.last_activity_at)
    if order_by == ss.SESSION_ORDER_FIELD_STARTED_AT:
        return micros(session.started_at)
    if order_by == ss.SESSION_ORDER_FIELD_ENDED_AT:
        # Sessions not ended sort as if ended at the epoch.
        return micros(session.ended_at) if session.HasField("ended_at") else 0
    if order_by == ss.SESSION_ORDER_FIELD_COST:
        return session.usage.cost_micros
    if order_by == ss.SESSION_ORDER_FIELD_TOKENS:
        return session.usage.total_tokens
    raise AssertionError(order_by)


def expected_order(sessions, order_by: int, ascending: bool) -> list[str]:
    keyed = sorted(
        sessions, key=lambda s: (sort_value(s, order_by), s.id), reverse=not ascending
    )
    return [s.id for s in keyed]


async def walk(server, page_size: int, **request_fields) -> list[list[str]]:
    """Every page of a listing, as lists of ids; checks total_size stays put."""
    pages: list[list[str]] = []
    totals: set[int] = set()
    token = ""
    while True:
        page = await server.sessions.ListSessions(
            ss.ListSessionsRequest(page_size=page_size, page_token=token, **request_fields)
        )
        pages.append([s.id for s in page.sessions])
        totals.add(page.total_size)
        token = page.next_page_token
        if not token:
            break
        assert len(pages) < 1000, "the listing never ends"
    assert len(totals) == 1, f"total_size changed between pages: {totals}"
    return pages


async def sessions_with_ties(server) -> list[sp.Session]:
    """Ten sessions whose every sort key has ties, and ids out of insertion order."""
    base = server.clock.now_micros()
    for i, sid in enumerate(IDS):
        await create_session(
            server.sessions, sid, started_at=timestamp(base - (i % 3) * 1_000_000)
        )
        await server.stats.RecordUsage(
            st.RecordUsageRequest(
                session_id=sid,
                model="m",
                usage=sp.Usage(prompt_tokens=(i % 4) * 5, cost_micros=(i % 3) * 10),
            )
        )
        if i % 2:
            server.clock.advance(1)  # pairs of sessions share last_activity_at
    for i, sid in enumerate(IDS):
        if i % 3 == 0:
            await server.sessions.EndSession(
                ss.EndSessionRequest(
                    session_id=sid,
                    status=sp.SESSION_STATUS_COMPLETED,
                    ended_at=timestamp(base + (i % 2) * 1_000_000),
                )
            )
    listed = await server.sessions.ListSessions(ss.ListSessionsRequest(page_size=500))
    assert sorted(s.id for s in listed.sessions) == sorted(IDS)
    return list(listed.sessions)


ORDER_FIELDS = [
    ss.SESSION_ORDER_FIELD_UNSPECIFIED,
    ss.SESSION_ORDER_FIELD_LAST_ACTIVITY_AT,
    ss.SESSION_ORDER_FIELD_STARTED_AT,
    ss.SESSION_ORDER_FIELD_ENDED_AT,
    ss.SESSION_ORDER_FIELD_COST,
    ss.SESSION_ORDER_FIELD_TOKENS,
]


@pytest.mark.parametrize("ascending", [False, True], ids=["descending", "ascending"])
@pytest.mark.parametrize("order_by", ORDER_FIELDS, ids=ss.SessionOrderField.Name)
async def test_list_sessions_orders_by_each_field_with_id_tie_break_across_pages(
    server, order_by, ascending
):
    sessions = await sessions_with_ties(server)
    values = [sort_value(s, order_by) for s in sessions]
    assert len(set(values)) < len(values), "the data set must contain ties"
    expected = expected_order(sessions, order_by, ascending)
    for page_size in (3, 4, 500):
        pages = await walk(server, page_size, order_by=order_by, ascending=ascending)
        assert [sid for page in pages for sid in page] == expected, f"page_size={page_size}"
        assert all(len(page) == page_size for page in pages[:-1])


async def test_sessions_not_ended_sort_last_when_descending_by_ended_at(server):
    await create_session(server.sessions, "open")
    await create_session(server.sessions, "closed")
    await server.sessions.EndSession(
        ss.EndSessionRequest(session_id="closed", status=sp.SESSION_STATUS_FAILED)
    )
    pages = await walk(server, 10, order_by=ss.SESSION_ORDER_FIELD_ENDED_AT)
    assert pages == [["closed", "open"]]


async def test_page_size_zero_means_fifty(server):
    for i in range(55):
        await create_session(server.sessions, f"s{i:02d}")
    first = await server.sessions.ListSessions(ss.ListSessionsRequest())
    assert len(first.sessions) == 50
    assert first.next_page_token
    assert first.total_size == 55
    rest = await server.sessions.ListSessions(
        ss.ListSessionsRequest(page_token=first.next_page_token)
    )
    assert len(rest.sessions) == 5
    assert rest.next_page_token == ""


async def test_page_size_500_is_accepted(server):
    await create_session(server.sessions, "s1")
    page = await server.sessions.ListSessions(ss.ListSessionsRequest(page_size=500))
    assert [s.id for s in page.sessions] == ["s1"]


@pytest.mark.parametrize("page_size", [-1, 501])
async def test_page_size_negative_or_above_500_is_invalid_argument(server, page_size):
    await expect_bad_request(
        server.sessions.ListSessions(ss.ListSessionsRequest(page_size=page_size)), "page_size"
    )


async def first_page_token(server, **request_fields) -> str:
    for i in range(5):
        await create_session(server.sessions, f"s{i}")
    page = await server.sessions.ListSessions(ss.ListSessionsRequest(page_size=2, **request_fields))
    assert page.next_page_token
    return page.next_page_token


def tampered(token: str) -> str:
    middle = len(token) // 2
    replacement = "A" if token[middle] != "A" else "B"
    return token[:middle] + replacement + token[middle + 1 :]


@pytest.mark.parametrize(
    "make_token",
    [tampered, lambda t: t[:-4], lambda t: t + "AAAA", lambda t: "not-a-token"],
    ids=["changed-byte", "cut-short", "extended", "garbage"],
)
async def test_a_changed_page_token_is_invalid_argument(server, make_token):
    token = await first_page_token(server)
    await expect_bad_request(
        server.sessions.ListSessions(
            ss.ListSessionsRequest(page_size=2, page_token=make_token(token))
        ),
        "page_token",
    )


@pytest.mark.parametrize(
    "changed",
    [
        {"order_by": ss.SESSION_ORDER_FIELD_STARTED_AT},
        {"ascending": True},
        {"filter": sp.SessionFilter(agents=["someone"])},
    ],
    ids=["order_by", "ascending", "filter"],
)
async def test_a_page_token_with_another_filter_or_order_is_invalid_argument(server, changed):
    token = await first_page_token(server)
    await expect_bad_request(
        server.sessions.ListSessions(
            ss.ListSessionsRequest(page_size=2, page_token=token, **changed)
        ),
        "page_token",
    )


async def test_a_page_token_may_change_the_page_size(server):
    token = await first_page_token(server)
    page = await server.sessions.ListSessions(
        ss.ListSessionsRequest(page_size=10, page_token=token)
    )
    assert len(page.sessions) == 3


async def test_total_size_counts_every_matching_session(server):
    for i in range(7):
        await create_session(server.sessions, f"s{i}", agent="even" if i % 2 == 0 else "odd")
    pages = await walk(server, 2, filter=sp.SessionFilter(agents=["even"]))
    assert sum(len(p) for p in pages) == 4
    page = await server.sessions.ListSessions(
        ss.ListSessionsRequest(page_size=1, filter=sp.SessionFilter(agents=["even"]))
    )
    assert page.total_size == 4
    nothing = await server.sessions.ListSessions(
        ss.ListSessionsRequest(filter=sp.SessionFilter(agents=["nobody"]))
    )
    assert (list(nothing.sessions), nothing.total_size, nothing.next_page_token) == ([], 0, "")


async def test_pages_stay_consistent_while_sessions_are_inserted_between_them(server):
    base = server.clock.now_micros()
    existing = [f"old{i:02d}" for i in range(20)]
    for i, sid in enumerate(existing):
        await create_session(server.sessions, sid, started_at=timestamp(base + i * 1_000_000))
    seen: list[str] = []
    token = ""
    inserted = 0
    while True:
        page = await server.sessions.ListSessions(
            ss.ListSessionsRequest(
                order_by=ss.SESSION_ORDER_FIELD_STARTED_AT, ascending=True, page_size=3,
                page_token=token,
            )
        )
        seen.extend(s.id for s in page.sessions)
        token = page.next_page_token
        if not token:
            break
        # New rows before the cursor, after it, and tied with rows already listed.
        for offset in (-5_000_000, 30_000_000, (len(seen) - 1) * 1_000_000):
            await create_session(
                server.sessions, f"new{inserted:03d}", started_at=timestamp(base + offset)
            )
            inserted += 1
    assert len(seen) == len(set(seen)), "a session was listed twice"
    assert set(existing) <= set(seen), f"skipped: {sorted(set(existing) - set(seen))}"


@pytest.mark.parametrize("ascending", [False, True], ids=["descending", "ascending"])
async def test_deleting_the_last_row_of_a_page_does_not_break_the_next_page(server, ascending):
    ids = [f"s{i:02d}" for i in range(12)]
    for sid in ids:
        await create_session(server.sessions, sid)
        server.clock.advance(1)
    seen: list[str] = []
    deleted: list[str] = []
    token = ""
    while True:
        page = await server.sessions.ListSessions(
            ss.ListSessionsRequest(page_size=4, page_token=token, ascending=ascending)
        )
        page_ids = [s.id for s in page.sessions]
        seen.extend(page_ids)
        token = page.next_page_token
        if not token:
            break
        await server.sessions.DeleteSession(ss.DeleteSessionRequest(session_id=page_ids[-1]))
        deleted.append(page_ids[-1])
    assert len(seen) == len(set(seen))
    assert sorted(seen) == ids
    assert len(deleted) == 2


async def test_a_page_token_survives_a_server_restart(make_server):
    first = await make_server()
    for i in range(5):
        await create_session(first.sessions, f"s{i}")
        first.clock.advance(1)
    page = await first.sessions.ListSessions(ss.ListSessionsRequest(page_size=2))
    database = first.database
    await first.close()
    second = await make_server(database=database, clock=first.clock)
    rest = await second.sessions.ListSessions(
        ss.ListSessionsRequest(page_size=10, page_token=page.next_page_token)
    )
    assert [s.id for s in page.sessions] + [s.id for s in rest.sessions] == [
        "s4", "s3", "s2", "s1", "s0"
    ]


# Message paging tokens ---------------------------------------------------------------------


async def test_a_changed_list_messages_page_token_is_invalid_argument(server):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", *[user(f"m{i}") for i in range(6)])
    page = await server.messages.ListMessages(ms.ListMessagesRequest(session_id="s1", page_size=2))
    await expect_bad_request(
        server.messages.ListMessages(
            ms.ListMessagesRequest(
                session_id="s1", page_size=2, page_token=tampered(page.next_page_token)
            )
        ),
        "page_token",
    )


async def test_a_changed_search_page_token_is_invalid_argument(server):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", *[user(f"needle {i}") for i in range(6)])
    page = await server.messages.SearchMessages(
        ms.SearchMessagesRequest(query="needle", page_size=2)
    )
    await expect_bad_request(
        server.messages.SearchMessages(
            ms.SearchMessagesRequest(
                query="needle", page_size=2, page_token=tampered(page.next_page_token)
            )
        ),
        "page_token",
    )


async def test_message_pages_stay_consistent_while_messages_are_appended(server):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", *[user(f"m{i}") for i in range(10)])
    seen: list[int] = []
    token = ""
    while True:
        page = await server.messages.ListMessages(
            ms.ListMessagesRequest(session_id="s1", page_size=3, page_token=token)
        )
        seen.extend(m.seq for m in page.messages)
        token = page.next_page_token
        if not token:
            break
        if len(seen) < 12:
            await append(server.messages, "s1", user("more"))
    assert seen == sorted(set(seen))
    assert set(range(1, 11)) <= set(seen)


async def test_pages_walked_while_another_client_inserts_and_deletes_concurrently(server):
    existing = [f"old{i:02d}" for i in range(30)]
    doomed = set(existing[1::5])
    for sid in existing:
        await create_session(server.sessions, sid)
        server.clock.advance(1)

    async def other_client() -> None:
        for i in range(30):
            await create_session(server.sessions, f"new{i:02d}")
            server.clock.advance(1)
            if i < len(doomed):
                victim = sorted(doomed)[i]
                await server.sessions.DeleteSession(ss.DeleteSessionRequest(session_id=victim))

    async def pager() -> list[str]:
        seen: list[str] = []
        token = ""
        while True:
            page = await server.sessions.ListSessions(
                ss.ListSessionsRequest(
                    order_by=ss.SESSION_ORDER_FIELD_STARTED_AT, page_size=2, page_token=token
                )
            )
            seen.extend(s.id for s in page.sessions)
            token = page.next_page_token
            if not token:
                return seen

    seen, _ = await asyncio.gather(pager(), other_client())
    assert len(seen) == len(set(seen)), "a session was listed twice"
    survivors = set(existing) - doomed
    assert survivors <= set(seen), f"skipped: {sorted(survivors - set(seen))}"
