"""Property: whatever sequence of message and usage writes a client makes, every session's
counters equal recounts.

Hypothesis draws random sequences of appends (new messages and retries by id), pops, updates
of the last message, clears, usage records (with repeated request ids) and forks. A model
built only from the requests predicts each answer; at the end the session counters must
equal (1) a recount of what ListMessages returns, (2) the model, and usage must equal the
recorded inputs, per model (CostByModel) and summed (the session); ``check_consistency()``
must report nothing. The run is bounded (examples, operations, sessions) to stay fast.
"""

from __future__ import annotations

import dataclasses
import itertools
import uuid

import grpc
from google.protobuf import field_mask_pb2
from harness import (
    counters_of,
    decode_failure,
    get_session,
    list_all_messages,
    recount,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from sessiond.v1 import message_pb2 as mp
from sessiond.v1 import message_service_pb2 as ms
from sessiond.v1 import session_pb2 as sp
from sessiond.v1 import session_service_pb2 as ss
from sessiond.v1 import stats_service_pb2 as st

MODELS = ("m-a", "m-b", "m-c")
WORDS = ("", "", "hello", "tool output", "final answer")
MAX_SESSIONS = 3
USAGE_FIELDS = (
    "prompt_tokens", "completion_tokens", "reasoning_tokens", "cache_read_tokens",
    "cache_write_tokens", "cost_micros", "request_count", "error_count",
)


@dataclasses.dataclass
class ModelMessage:
    seq: int
    id: str
    role: int
    content: str
    tool_calls: int


@dataclasses.dataclass
class ModelSession:
    id: str
    messages: list[ModelMessage] = dataclasses.field(default_factory=list)
    highest_seq: int = 0
    usage: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    answers: dict[str, st.RecordUsageResponse] = dataclasses.field(default_factory=dict)

    def counters(self) -> tuple[int, int, int, int]:
        return (
            len(self.messages),
            sum(1 for m in self.messages if m.role == mp.ROLE_ASSISTANT and m.content),
            sum(m.tool_calls for m in self.messages),
            self.highest_seq,
        )

    def total_usage(self) -> sp.Usage:
        total = {name: 0 for name in USAGE_FIELDS}
        for counters in self.usage.values():
            for name in USAGE_FIELDS:
                total[name] += counters[name]
        return usage_message(total)


def usage_message(counters: dict[str, int]) -> sp.Usage:
    return sp.Usage(
        **counters,
        total_tokens=counters["prompt_tokens"] + counters["completion_tokens"],
    )


def session_counters(session: sp.Session) -> tuple[int, int, int, int]:
    return (session.message_count, session.turn_count, session.tool_call_count, session.last_seq)


# Operations --------------------------------------------------------------------------------

new_message = hs.tuples(
    hs.just("new"),
    hs.sampled_from([mp.ROLE_USER, mp.ROLE_ASSISTANT, mp.ROLE_ASSISTANT, mp.ROLE_TOOL,
                     mp.ROLE_SYSTEM]),
    hs.sampled_from(WORDS),
    hs.integers(0, 2),
    hs.booleans(),  # carries a client id
)
retried_message = hs.tuples(hs.just("retry"), hs.integers(0, 50))

operations = hs.lists(
    hs.one_of(
        hs.tuples(
            hs.just("append"), hs.integers(0, 9),
            hs.lists(hs.one_of(new_message, new_message, retried_message), min_size=1,
                     max_size=4),
        ),
        hs.tuples(hs.just("pop"), hs.integers(0, 9)),
        hs.tuples(
            hs.just("update"), hs.integers(0, 9), hs.sampled_from(WORDS),
            hs.one_of(hs.none(), hs.integers(0, 3)),
        ),
        hs.tuples(hs.just("clear"), hs.integers(0, 9)),
        hs.tuples(
            hs.just("usage"), hs.integers(0, 9), hs.sampled_from(MODELS),
            hs.fixed_dictionaries({
                "prompt_tokens": hs.integers(0, 1000),
                "completion_tokens": hs.integers(0, 500),
                "cache_read_tokens": hs.integers(0, 300),
                "cache_write_tokens": hs.integers(0, 300),
                "cost_micros": hs.integers(0, 10**9),
            }),
            hs.floats(0, 1),  # reasoning share of completion
            hs.booleans(),  # errored
            hs.sampled_from(["none", "new", "repeat"]),
        ),
        hs.tuples(hs.just("fork"), hs.integers(0, 9), hs.integers(0, 50)),
        hs.tuples(
            hs.just("replace"), hs.integers(0, 9), hs.integers(0, 50),
            hs.lists(new_message, max_size=3),
        ),
        hs.tuples(hs.just("delete"), hs.integers(0, 9), hs.integers(0, 50)),
    ),
    min_size=1,
    max_size=18,
)


class Run:
    """Applies operations to the server and to the model, checking each answer."""

    def __init__(self, server) -> None:
        self.server = server
        self.sessions: list[ModelSession] = []
        self.ids = itertools.count(1)
        self.prefix = uuid.uuid4().hex[:8]

    def fresh_id(self, kind: str) -> str:
        return f"{self.prefix}-{kind}-{next(self.ids)}"

    async def start(self) -> None:
        sid = self.fresh_id("s")
        await self.server.sessions.CreateSession(
            ss.CreateSessionRequest(session=sp.Session(id=sid))
        )
        self.sessions.append(ModelSession(sid))

    def pick(self, index: int) -> ModelSession:
        return self.sessions[index % len(self.sessions)]

    def check_session(self, model: ModelSession, session: sp.Session) -> None:
        assert session_counters(session) == model.counters(), (session, model.messages)

    async def append(self, target: int, items) -> None:
        model = self.pick(target)
        request: list[mp.Message] = []
        expected: list[ModelMessage] = []
        staged: list[ModelMessage] = []
        for item in items:
            if item[0] == "retry":
                with_ids = [m for m in model.messages if m.id]
                if not with_ids:
                    continue
                old = with_ids[item[1] % len(with_ids)]
                if any(m.id == old.id for m in request):
                    continue
                request.append(mp.Message(id=old.id, role=old.role, content=old.content))
                expected.append(old)
                continue
            _, role, content, calls, has_id = item
            calls = calls if role == mp.ROLE_ASSISTANT else 0
            message = ModelMessage(
                seq=model.highest_seq + len(staged) + 1,
                id=self.fresh_id("m") if has_id else "",
                role=role,
                content=content,
                tool_calls=calls,
            )
            request.append(
                mp.Message(
                    id=message.id, role=role, content=content,
                    tool_calls=[mp.ToolCall(id=f"c{i}", name="t") for i in range(calls)],
                )
            )
            staged.append(message)
            expected.append(message)
        if not request:
            return
        answer = await self.server.messages.AppendMessages(
            ms.AppendMessagesRequest(session_id=model.id, messages=request)
        )
        model.messages.extend(staged)
        model.highest_seq += len(staged)
        got = [(m.seq, m.id, m.role, m.content, len(m.tool_calls)) for m in answer.messages]
        want = [(m.seq, m.id, m.role, m.content, m.tool_calls) for m in expected]
        assert got == want
        assert (answer.revision == 0) == (not staged)
        self.check_session(model, answer.session)

    async def pop(self, target: int) -> None:
        model = self.pick(target)
        try:
            answer = await self.server.messages.PopMessage(
                ms.PopMessageRequest(session_id=model.id)
            )
        except grpc.RpcError as err:
            assert not model.messages, decode_failure(err).describe()
            assert decode_failure(err).reason == "SESSION_EMPTY"
            return
        removed = model.messages.pop()
        assert (answer.message.seq, answer.message.content) == (removed.seq, removed.content)
        self.check_session(model, answer.session)

    async def update(self, target: int, content: str, calls: int | None) -> None:
        model = self.pick(target)
        message = mp.Message(content=content)
        paths: list[str] = []
        if calls is not None:
            message.tool_calls.extend(mp.ToolCall(id=f"u{i}", name="t") for i in range(calls))
            paths = ["content", "tool_calls"]
        try:
            answer = await self.server.messages.UpdateLastMessage(
                ms.UpdateLastMessageRequest(
                    session_id=model.id,
                    message=message,
                    update_mask=field_mask_pb2.FieldMask(paths=paths),
                )
            )
        except grpc.RpcError as err:
            assert not model.messages, decode_failure(err).describe()
            assert decode_failure(err).reason == "SESSION_EMPTY"
            return
        last = model.messages[-1]
        last.content = content
        if calls is not None:
            last.tool_calls = calls
        assert (answer.message.seq, answer.message.content) == (last.seq, content)
        assert len(answer.message.tool_calls) == last.tool_calls
        self.check_session(model, answer.session)

    async def clear(self, target: int) -> None:
        model = self.pick(target)
        answer = await self.server.messages.ClearMessages(
            ms.ClearMessagesRequest(session_id=model.id)
        )
        assert answer.removed_count == len(model.messages)
        assert (answer.revision == 0) == (not model.messages)
        model.messages.clear()
        self.check_session(model, answer.session)

    async def replace(self, target: int, keep: int, items) -> None:
        """ReplaceMessages after the first ``keep`` messages (all of them at most)."""
        model = self.pick(target)
        keep = keep % (len(model.messages) + 1)
        after_seq = model.messages[keep - 1].seq if keep else 0
        request: list[mp.Message] = []
        staged: list[ModelMessage] = []
        for _, role, content, calls, has_id in items:
            calls = calls if role == mp.ROLE_ASSISTANT else 0
            message = ModelMessage(seq=model.highest_seq + len(staged) + 1,
                                   id=self.fresh_id("m") if has_id else "", role=role,
                                   content=content, tool_calls=calls)
            request.append(mp.Message(
                id=message.id, role=role, content=content,
                tool_calls=[mp.ToolCall(id=f"c{i}", name="t") for i in range(calls)]))
            staged.append(message)
        answer = await self.server.messages.ReplaceMessages(ms.ReplaceMessagesRequest(
            session_id=model.id, after_seq=after_seq, messages=request,
            expected_last_seq=model.highest_seq))
        removed = len(model.messages) - keep
        assert answer.removed_count == removed
        assert (answer.revision == 0) == (not removed and not staged)
        model.messages[keep:] = staged
        model.highest_seq += len(staged)
        assert [(m.seq, m.id) for m in answer.messages] == [(m.seq, m.id) for m in staged]
        self.check_session(model, answer.session)

    async def delete(self, target: int, upto: int) -> None:
        """DeleteMessages up to the seq of one of the messages (or last_seq when none)."""
        model = self.pick(target)
        if not model.highest_seq:
            return
        kept = model.messages
        up_to_seq = kept[upto % len(kept)].seq if kept else model.highest_seq
        answer = await self.server.messages.DeleteMessages(
            ms.DeleteMessagesRequest(session_id=model.id, up_to_seq=up_to_seq))
        removed = sum(1 for m in kept if m.seq <= up_to_seq)
        assert answer.removed_count == removed
        assert (answer.revision == 0) == (not removed)
        model.messages = [m for m in kept if m.seq > up_to_seq]
        self.check_session(model, answer.session)

    async def usage(self, target, model_name, counters, share, errored, request_kind) -> None:
        model = self.pick(target)
        counters = dict(counters)
        counters["reasoning_tokens"] = int(counters["completion_tokens"] * share)
        request_id = ""
        if request_kind == "new":
            request_id = self.fresh_id("r")
        elif request_kind == "repeat" and model.answers:
            request_id = sorted(model.answers)[0]
        answer = await self.server.stats.RecordUsage(
            st.RecordUsageRequest(
                session_id=model.id, model=model_name, usage=sp.Usage(**counters),
                errored=errored, request_id=request_id,
            )
        )
        if request_id in model.answers:
            first = model.answers[request_id]
            assert answer.duplicate
            assert answer.revision == first.revision
            return
        assert not answer.duplicate
        row = model.usage.setdefault(model_name, {name: 0 for name in USAGE_FIELDS})
        for name, value in counters.items():
            row[name] += value
        row["request_count"] += 1
        row["error_count"] += int(errored)
        assert answer.model_usage == usage_message(row)
        assert answer.session_usage == model.total_usage()
        if request_id:
            model.answers[request_id] = answer

    async def fork(self, target: int, choice: int) -> None:
        if len(self.sessions) >= MAX_SESSIONS:
            return
        source = self.pick(target)
        seqs = [0] + [m.seq for m in source.messages] + [source.highest_seq]
        up_to = seqs[choice % len(seqs)]
        new_id = self.fresh_id("f")
        answer = await self.server.sessions.ForkSession(
            ss.ForkSessionRequest(source_session_id=source.id, up_to_seq=up_to,
                                  new_session_id=new_id)
        )
        copied = [m for m in source.messages if up_to == 0 or m.seq <= up_to]
        fork = ModelSession(
            new_id,
            messages=[
                dataclasses.replace(m, seq=i) for i, m in enumerate(copied, start=1)
            ],
            highest_seq=len(copied),
        )
        # The contract does not say whether a fork inherits usage: take what it reports.
        for row in (await self.cost_by_model(new_id)).models:
            fork.usage[row.model] = {name: getattr(row.usage, name) for name in USAGE_FIELDS}
        assert answer.session.usage == fork.total_usage()
        assert answer.session.parent_id == source.id
        self.check_session(fork, answer.session)
        self.sessions.append(fork)

    async def cost_by_model(self, session_id: str) -> st.CostByModelResponse:
        return await self.server.stats.CostByModel(
            st.CostByModelRequest(filter=sp.SessionFilter(session_ids=[session_id]))
        )

    async def verify(self) -> None:
        for model in self.sessions:
            stored = await list_all_messages(self.server.messages, model.id)
            session = await get_session(self.server.sessions, model.id)
            assert counters_of(session) == recount(stored)
            assert [(m.seq, m.id, m.role, m.content, len(m.tool_calls)) for m in stored] == [
                (m.seq, m.id, m.role, m.content, m.tool_calls) for m in model.messages
            ]
            self.check_session(model, session)
            assert session.usage == model.total_usage()
            rows = {row.model: row for row in (await self.cost_by_model(model.id)).models}
            assert set(rows) == set(model.usage)
            for name, counters in model.usage.items():
                assert rows[name].session_count == 1
                assert rows[name].usage == usage_message(counters)
        assert await self.server.check_consistency() == []


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=operations)
async def test_session_counters_equal_recounts_after_any_sequence_of_writes(server, ops):
    run = Run(server)
    await run.start()
    for op in ops:
        await getattr(run, op[0])(*op[1:])
    await run.verify()
