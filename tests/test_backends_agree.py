"""Property: SQLite and PostgreSQL answer every RPC the same way, for any sequence of calls.

Hypothesis draws a random sequence of session, message, usage and stats calls; the same
sequence goes to a SQLite server and to a PostgreSQL server (real servers over gRPC, one
shared fake clock), and every answer is compared: both succeed with equal responses, or both
fail with the same status code and ErrorInfo reason.

What is normalised, and why:

* page tokens: each database signs its tokens with its own random key, so only whether a
  token is there is compared (the next page is then fetched with each server's own token);
* error messages: compared by code and reason, the contract clients branch on.

Nothing else is: with one clock, timestamps are equal, and since each write that changes
something takes the next revision on both, revisions and etags are equal too. Message text
comes from a small vocabulary of lower-case ASCII words: the keyword search of the two
databases tokenises other scripts differently (SQLite's unicode61 also folds accents).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import ServerHarness, create_postgres_database, drop_postgres_databases
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from harness import FakeClock, decode_failure
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from sessiond.v1 import (
    message_pb2,
    message_service_pb2,
    message_service_pb2_grpc,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
    stats_service_pb2,
    stats_service_pb2_grpc,
)

mp, ms, sp, ss, st = message_pb2, message_service_pb2, session_pb2, session_service_pb2, \
    stats_service_pb2

pytestmark = pytest.mark.postgres

WORDS = ("walrus", "tusk", "ice", "fish", "seal")
AGENTS = ("a1", "a2")
LABELS = ({}, {"team": "x"}, {"team": "y", "tier": "1"})
MODELS = ("m-a", "m-b")
SESSIONS = 4


@pytest.fixture
async def servers(tmp_path: Path, postgres_server: str
                  ) -> AsyncIterator[tuple[ServerHarness, ServerHarness]]:
    """A SQLite server and a PostgreSQL server on one fake clock."""
    from sessiond_server.app import start_server
    from sessiond_server.config import ServerConfig

    clock = FakeClock()
    url = await create_postgres_database(postgres_server)
    started: list[ServerHarness] = []
    try:
        for database in (tmp_path / "agree.db", url):
            running = await start_server(ServerConfig(
                database=database, address="127.0.0.1:0", clock=clock.now_micros))
            channel = grpc.aio.insecure_channel(running.address)
            started.append(ServerHarness(
                running=running, clock=clock, channel=channel,
                sessions=session_service_pb2_grpc.SessionServiceStub(channel),
                messages=message_service_pb2_grpc.MessageServiceStub(channel),
                stats=stats_service_pb2_grpc.StatsServiceStub(channel)))
        yield started[0], started[1]
    finally:
        for harness in started:
            await harness.close()
        await drop_postgres_databases(postgres_server, [url])


def normalised(answer: Message) -> Message:
    """The answer with its page token replaced by whether there is one."""
    copy = type(answer)()
    copy.CopyFrom(answer)
    for field in ("next_page_token",):
        if field in copy.DESCRIPTOR.fields_by_name and getattr(copy, field):
            setattr(copy, field, "more")
    return copy


Call = Callable[[ServerHarness], Awaitable[Message]]


async def both(sqlite: ServerHarness, postgres: ServerHarness, call: Call,
               what: str) -> tuple[Message, Message] | None:
    """Make the call on both servers; assert the answers agree; both answers, or None
    when both failed."""
    answers: list[Message | tuple[Any, str]] = []
    for server in (sqlite, postgres):
        try:
            answers.append(await call(server))
        except grpc.RpcError as err:
            failure = decode_failure(err)
            answers.append((failure.code, failure.reason))
    left, right = answers
    if isinstance(left, tuple) or isinstance(right, tuple):
        assert left == right, f"{what}: sqlite {left!r} != postgres {right!r}"
        return None
    assert normalised(left) == normalised(right), f"{what}:\nsqlite {left}\npostgres {right}"
    return left, right


message_item = hs.tuples(hs.sampled_from([mp.ROLE_USER, mp.ROLE_ASSISTANT, mp.ROLE_TOOL]),
                         hs.lists(hs.sampled_from(WORDS), max_size=3),
                         hs.integers(0, 4),  # client id among a few (0: none)
                         hs.integers(0, 2))  # tool calls
session_filter = hs.fixed_dictionaries({}, optional={
    "statuses": hs.lists(hs.sampled_from([1, 2, 3, 4, 5, 6]), max_size=2),
    "agents": hs.lists(hs.sampled_from(AGENTS), max_size=1),
    "labels": hs.sampled_from(LABELS[1:]),
    "text_query": hs.sampled_from([*WORDS, "none", "!"]),
    "models": hs.lists(hs.sampled_from(["", "gpt"]), max_size=1),
})
S = hs.integers(0, SESSIONS - 1)

operations = hs.lists(hs.one_of(
    hs.tuples(hs.just("create"), S, hs.sampled_from(AGENTS), hs.sampled_from(LABELS)),
    hs.tuples(hs.just("touch"), S),
    hs.tuples(hs.just("get"), S),
    hs.tuples(hs.just("update"), S, hs.sampled_from(["goal one", "goal two"]),
              hs.sampled_from(LABELS), hs.sampled_from(["none", "current", "stale"])),
    hs.tuples(hs.just("end"), S, hs.sampled_from([2, 3, 4])),
    hs.tuples(hs.just("runtime"), S, hs.sampled_from([1, 2, 3])),
    hs.tuples(hs.just("delete"), S),
    *[hs.tuples(hs.just("append"), S, hs.lists(message_item, min_size=1, max_size=3),
                hs.one_of(hs.none(), hs.integers(0, 6)))] * 4,
    hs.tuples(hs.just("list_messages"), S, hs.sampled_from(["page", "last_n", "last_turns",
                                                           "after_seq", "desc"])),
    hs.tuples(hs.just("pop"), S),
    hs.tuples(hs.just("update_last"), S, hs.sampled_from(WORDS)),
    hs.tuples(hs.just("clear"), S),
    hs.tuples(hs.just("search"), hs.sampled_from([*WORDS, "ice fish", "?"])),
    hs.tuples(hs.just("usage"), S, hs.sampled_from(MODELS), hs.integers(0, 10**6),
              hs.sampled_from(["", "r1", "r2"])),
    hs.tuples(hs.just("fork"), S, hs.integers(0, 4)),
    hs.tuples(hs.just("list_sessions"), session_filter, hs.sampled_from([0, 1, 2, 3, 4, 5]),
              hs.booleans()),
    hs.tuples(hs.just("stats"), session_filter),
    hs.tuples(hs.just("cost"), session_filter),
    hs.tuples(hs.just("reconcile"), hs.sets(S, max_size=2)),
    hs.tuples(hs.just("tick"), hs.sampled_from([1, 120, 3600])),
), min_size=4, max_size=30)


class Run:
    """Applies one operation sequence to both servers, comparing each answer."""

    def __init__(self, sqlite: ServerHarness, postgres: ServerHarness) -> None:
        self.sqlite, self.postgres = sqlite, postgres
        self.prefix = uuid.uuid4().hex[:8]
        self.forks = itertools.count(1)

    def sid(self, i: int) -> str:
        return f"{self.prefix}-{i}"

    async def call(self, what: str, call: Call) -> tuple[Message, Message] | None:
        return await both(self.sqlite, self.postgres, call, what)

    async def create(self, i: int, agent: str, labels: dict[str, str]) -> None:
        session = sp.Session(id=self.sid(i), agent=agent, labels=labels,
                             runtime_instance="rt")
        await self.call("create", lambda s: s.sessions.CreateSession(
            ss.CreateSessionRequest(session=session)))

    async def touch(self, i: int) -> None:
        await self.call("touch", lambda s: s.sessions.TouchSession(
            ss.TouchSessionRequest(session=sp.Session(id=self.sid(i)))))

    async def get(self, i: int) -> None:
        await self.call("get", lambda s: s.sessions.GetSession(
            ss.GetSessionRequest(session_id=self.sid(i))))

    async def update(self, i: int, goal: str, labels: dict[str, str], etag: str) -> None:
        got = await self.call("get", lambda s: s.sessions.GetSession(
            ss.GetSessionRequest(session_id=self.sid(i))))
        current = got[0].session.etag if got else ""  # type: ignore[attr-defined]
        tag = {"none": "", "current": current, "stale": "1"}[etag]
        await self.call("update", lambda s: s.sessions.UpdateSession(ss.UpdateSessionRequest(
            session=sp.Session(id=self.sid(i), goal=goal, labels=labels),
            update_mask=field_mask_pb2.FieldMask(paths=["goal", "labels"]), etag=tag)))

    async def end(self, i: int, status: int) -> None:
        await self.call("end", lambda s: s.sessions.EndSession(
            ss.EndSessionRequest(session_id=self.sid(i), status=status)))  # type: ignore[arg-type]

    async def runtime(self, i: int, state: int) -> None:
        await self.call("runtime", lambda s: s.sessions.SetRuntimeState(
            ss.SetRuntimeStateRequest(session_id=self.sid(i), state=state,  # type: ignore[arg-type]
                                      turn_id="t" if state == 2 else "")))

    async def delete(self, i: int) -> None:
        await self.call("delete", lambda s: s.sessions.DeleteSession(
            ss.DeleteSessionRequest(session_id=self.sid(i))))

    async def append(self, i: int, items: list[tuple[int, list[str], int, int]],
                     expected: int | None) -> None:
        messages = [mp.Message(
            role=role, content=" ".join(words), id=f"m{client_id}" if client_id else "",  # type: ignore[arg-type]
            tool_calls=[mp.ToolCall(id=f"c{k}", name="t")
                        for k in range(calls if role == mp.ROLE_ASSISTANT else 0)])
            for role, words, client_id, calls in items]
        request = ms.AppendMessagesRequest(session_id=self.sid(i), messages=messages)
        if expected is not None:
            request.expected_last_seq = expected
        await self.call("append", lambda s: s.messages.AppendMessages(request))

    async def list_messages(self, i: int, mode: str) -> None:
        fields: dict[str, Any] = {
            "page": {"page_size": 2}, "last_n": {"last_n": 2}, "last_turns": {"last_turns": 1},
            "after_seq": {"after_seq": 1}, "desc": {"page_size": 2, "descending": True},
        }[mode]
        request = ms.ListMessagesRequest(session_id=self.sid(i), **fields)
        first = await self.call("list_messages", lambda s: s.messages.ListMessages(request))
        if first and first[0].next_page_token:  # type: ignore[attr-defined]
            tokens = [answer.next_page_token for answer in first]  # type: ignore[attr-defined]
            servers = iter(zip((self.sqlite, self.postgres), tokens, strict=True))

            async def next_page(s: ServerHarness) -> Message:
                _, token = next(servers)
                page = ms.ListMessagesRequest()
                page.CopyFrom(request)
                page.page_token = token
                return await s.messages.ListMessages(page)

            await self.call("list_messages page 2", next_page)

    async def pop(self, i: int) -> None:
        await self.call("pop", lambda s: s.messages.PopMessage(
            ms.PopMessageRequest(session_id=self.sid(i))))

    async def update_last(self, i: int, word: str) -> None:
        await self.call("update_last", lambda s: s.messages.UpdateLastMessage(
            ms.UpdateLastMessageRequest(session_id=self.sid(i), message=mp.Message(content=word),
                                        update_mask=field_mask_pb2.FieldMask(paths=["content"]))))

    async def clear(self, i: int) -> None:
        await self.call("clear", lambda s: s.messages.ClearMessages(
            ms.ClearMessagesRequest(session_id=self.sid(i))))

    async def search(self, query: str) -> None:
        await self.call("search", lambda s: s.messages.SearchMessages(
            ms.SearchMessagesRequest(query=query, page_size=3,
                                     session_ids=[self.sid(i) for i in range(SESSIONS)])))

    async def usage(self, i: int, model: str, cost: int, request_id: str) -> None:
        await self.call("usage", lambda s: s.stats.RecordUsage(st.RecordUsageRequest(
            session_id=self.sid(i), model=model, request_id=request_id,
            usage=sp.Usage(prompt_tokens=cost % 1000, completion_tokens=cost % 77,
                           cost_micros=cost))))

    async def fork(self, i: int, up_to: int) -> None:
        new_id = f"{self.prefix}-fork-{next(self.forks)}"
        await self.call("fork", lambda s: s.sessions.ForkSession(ss.ForkSessionRequest(
            source_session_id=self.sid(i), up_to_seq=up_to, new_session_id=new_id)))

    def scoped(self, fields: dict[str, Any]) -> sp.SessionFilter:
        """The filter, kept to this run's sessions (the servers live across examples)."""
        return sp.SessionFilter(session_ids=[self.sid(i) for i in range(SESSIONS)], **fields)

    async def list_sessions(self, fields: dict[str, Any], order: int, ascending: bool) -> None:
        await self.call("list_sessions", lambda s: s.sessions.ListSessions(
            ss.ListSessionsRequest(filter=self.scoped(fields), order_by=order,  # type: ignore[arg-type]
                                   ascending=ascending, page_size=3)))
        # The whole tenant, where GetStats and total_size may come from the rollups.
        await self.call("list_sessions (tenant)", lambda s: s.sessions.ListSessions(
            ss.ListSessionsRequest(page_size=1)))

    async def stats(self, fields: dict[str, Any]) -> None:
        await self.call("stats", lambda s: s.stats.GetStats(
            st.GetStatsRequest(filter=self.scoped(fields))))
        await self.call("stats (tenant)", lambda s: s.stats.GetStats(st.GetStatsRequest()))

    async def cost(self, fields: dict[str, Any]) -> None:
        await self.call("cost", lambda s: s.stats.CostByModel(
            st.CostByModelRequest(filter=self.scoped(fields))))
        await self.call("cost (tenant)", lambda s: s.stats.CostByModel(st.CostByModelRequest()))

    async def reconcile(self, keep: set[int]) -> None:
        await self.call("reconcile", lambda s: s.sessions.ReconcileSessions(
            ss.ReconcileSessionsRequest(runtime_instance="rt",
                                        keep_session_ids=[self.sid(i) for i in sorted(keep)])))

    async def tick(self, seconds: int) -> None:
        self.sqlite.clock.advance(seconds)  # one clock for both servers


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=operations)
async def test_sqlite_and_postgres_answer_every_call_alike(
        servers: tuple[ServerHarness, ServerHarness], ops: list[tuple[Any, ...]]) -> None:
    run = Run(*servers)
    for i in range(SESSIONS):  # every example starts from sessions with messages
        await run.create(i, AGENTS[i % 2], LABELS[i % len(LABELS)])
        await run.append(i, [(mp.ROLE_USER, [WORDS[i], "ice"], 0, 0),
                             (mp.ROLE_ASSISTANT, ["fish"], i, 1)], None)
    for op in ops:
        await getattr(run, op[0])(*op[1:])
    for server in servers:
        assert await server.check_consistency() == []
