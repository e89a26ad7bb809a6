"""Fuzzing every RPC: hostile field values and malformed protobuf bytes get a clear status.

Requests are built from the message descriptors, so every field of every request (nested
filters, masks, timestamps, maps) is covered without listing them: huge and control-laden
strings, SQL and FTS5 syntax, negative and extreme integers, unknown enum numbers, timestamps
far outside any calendar, tampered page tokens. A share of the ids name sessions that exist,
so calls reach the store rather than stopping at validation. Then raw calls send random and
mutated bytes to every method. Every answer must be OK or a deliberate client-facing code,
never UNKNOWN, INTERNAL or a hang; afterwards the server still answers and
``check_consistency()`` finds nothing wrong. Bounded by example counts (about 30-60 s).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as pd
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import expect_bad_request, user
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from sessiond.v1 import (
    message_service_pb2,
    session_pb2,
    session_service_pb2,
    stats_service_pb2,
)

ss = session_service_pb2
ms = message_service_pb2
st = stats_service_pb2
FD = pd.FieldDescriptor

# Codes the contract allows a call to end with; UNKNOWN, INTERNAL, DEADLINE_EXCEEDED
# (a hang) and UNIMPLEMENTED (for a real method) are failures.
CLEAR = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
         grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION,
         grpc.StatusCode.ABORTED, grpc.StatusCode.OUT_OF_RANGE,
         grpc.StatusCode.RESOURCE_EXHAUSTED}

SERVICES = [ss.DESCRIPTOR.services_by_name["SessionService"],
            ms.DESCRIPTOR.services_by_name["MessageService"],
            st.DESCRIPTOR.services_by_name["StatsService"]]
METHODS = sorted((m for s in SERVICES for m in s.methods), key=lambda m: m.full_name)
EXISTING = ["fz-a", "fz-b", "fz-c"]

HOSTILE_TEXT = [
    "", " ", "fz-a", "fz-b", "fz-c", "x" * 256, "x" * 257, "é" * 129, "a\x00b", "\x7f",
    "'; DROP TABLE sessions; --", "\" OR 1=1 --", "%", "_", "*", "\\", "fz-a' OR '1'='1",
    "NEAR(a b)", "a OR b", "\"unbalanced", "col:term", "^start", "a* AND -b", "(((", ")",
    "{}", "[]", "sessions.", "discord.", "discord.clamps", "cli", "UPPER.case",
    "\u202e\u200b", "\ud7ff\ue000", "🙂" * 70, "x" * 70_000, "y" * (1 << 20),
]


def text() -> hs.SearchStrategy[str]:
    return hs.one_of(hs.sampled_from(HOSTILE_TEXT), hs.text(max_size=40),
                     hs.text(alphabet=hs.characters(codec="utf-8"), min_size=200, max_size=600))


def integer(bits: int, signed: bool) -> hs.SearchStrategy[int]:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    edges = [v for v in (lo, hi, -1, 0, 1, 2, 50, 99, 100, 101, 500, 501, 1000, 1001, 1 << 53,
                         (1 << 53) + 1, (1 << 31) - 1, -(1 << 31)) if lo <= v <= hi]
    return hs.one_of(hs.sampled_from(edges), hs.integers(lo, hi))


def field_value(field: pd.FieldDescriptor, depth: int) -> hs.SearchStrategy[Any]:
    t = field.type
    if t == FD.TYPE_STRING:
        if field.name == "page_token":
            return page_token()
        return text()
    if t == FD.TYPE_BYTES:
        return hs.binary(max_size=64)
    if t == FD.TYPE_BOOL:
        return hs.booleans()
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return hs.floats(allow_nan=True, allow_infinity=True, width=32)
    if t == FD.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return hs.one_of(hs.sampled_from(known), integer(32, True))
    if t in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        return integer(32, True)
    if t in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        return integer(64, True)
    if t in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return integer(32, False)
    if t in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return integer(64, False)
    if t == FD.TYPE_MESSAGE:
        return message(field.message_type, depth + 1)
    raise AssertionError(f"unhandled field type {t}")


def message(desc: pd.Descriptor, depth: int = 0) -> hs.SearchStrategy[Message]:
    from google.protobuf import message_factory

    cls = message_factory.GetMessageClass(desc)
    if desc.full_name == "google.protobuf.FieldMask":
        paths = hs.lists(hs.one_of(hs.sampled_from(
            ["goal", "labels", "content", "status", "owner_id", "id", "tenant", "seq",
             "", "a.b", "*"]), text()), max_size=4)
        return paths.map(lambda p: cls(paths=p))
    if desc.full_name == "google.protobuf.Timestamp":
        return hs.builds(cls, seconds=integer(64, True),
                         nanos=hs.one_of(hs.integers(0, 999_999_999), integer(32, True)))
    if depth > 3:
        return hs.just(cls())
    fields: dict[str, hs.SearchStrategy[Any]] = {}
    for field in desc.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_f, value_f = field.message_type.fields
            fields[field.name] = hs.dictionaries(field_value(key_f, depth),
                                                 field_value(value_f, depth), max_size=4)
        elif field.is_repeated:
            # Long lists (around the 100-value limits) of short values only, so a
            # request stays well under the request size limit most of the time.
            short = (hs.text(max_size=8) if field.type == FD.TYPE_STRING
                     else field_value(field, depth))
            fields[field.name] = hs.one_of(
                hs.lists(field_value(field, depth), max_size=3),
                hs.lists(short, min_size=99, max_size=130)
                if field.type != FD.TYPE_MESSAGE else hs.just([]))
        else:
            fields[field.name] = field_value(field, depth)
    chosen = hs.fixed_dictionaries({}, optional=fields)  # type: ignore[arg-type]
    return chosen.map(lambda values: build(cls, values))


def build(cls: Any, values: dict[str, Any]) -> Message:
    msg = cls()
    for name, value in values.items():
        target = getattr(msg, name, None)
        field = msg.DESCRIPTOR.fields_by_name[name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for k, v in value.items():
                if isinstance(v, Message):
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            target.extend(value)
        elif isinstance(value, Message):
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


def page_token() -> hs.SearchStrategy[str]:
    return hs.one_of(
        hs.sampled_from(["", "x", "=", "a" * 5000, "eyJ9", "AAAA", "%%%",
                         base64.urlsafe_b64encode(b"\x00" * 16 + b'["sessions","",[1,"a"]]')
                         .decode()]),
        hs.binary(max_size=80).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
        text())


async def call(server: Any, method: pd.MethodDescriptor, request: Message) -> grpc.StatusCode:
    service = {"SessionService": server.sessions, "MessageService": server.messages,
               "StatsService": server.stats}[method.containing_service.name]
    stub = getattr(service, method.name)
    try:
        if method.server_streaming:
            stream = stub(request, timeout=20)
            try:
                await stream.read()
            finally:
                stream.cancel()
        else:
            await stub(request, timeout=20)
    except grpc.RpcError as err:
        code: grpc.StatusCode = err.code()  # type: ignore[attr-defined]
        assert code in CLEAR, (method.name, code, err.details())  # type: ignore[attr-defined]
        return code
    return grpc.StatusCode.OK


async def prepare(server: Any) -> None:
    for sid in EXISTING:
        await server.sessions.TouchSession(ss.TouchSessionRequest(
            session=session_pb2.Session(id=sid)))
        await server.messages.AppendMessages(ms.AppendMessagesRequest(
            session_id=sid, messages=[user("hello world"), user("NEAR quoted \"text\"")]))


async def assert_healthy(server: Any) -> None:
    """The server still answers, and counters, change log and file are consistent."""
    await server.sessions.ListSessions(ss.ListSessionsRequest())
    health = health_pb2_grpc.HealthStub(server.channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert await server.check_consistency() == []


@pytest.fixture
async def fuzzed(server: Any) -> AsyncIterator[Any]:
    """A server with a few sessions to hit; checked healthy after all examples ran."""
    await prepare(server)
    yield server
    await assert_healthy(server)


REQUESTS = hs.sampled_from(METHODS).flatmap(
    lambda m: hs.tuples(hs.just(m), message(m.input_type)))


@settings(max_examples=700, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(case=REQUESTS)
async def test_every_rpc_answers_hostile_field_values_with_a_clear_status(fuzzed: Any,
                                                                          case: Any) -> None:
    method, request = case
    await call(fuzzed, method, request)


async def test_every_string_field_of_every_rpc_holds_hostile_text(fuzzed: Any) -> None:
    server = fuzzed
    for method in METHODS:
        for value in ("'; DROP TABLE sessions; --", "NEAR(\"", "x" * 70_000, "fz-a"):
            request = message_for(method, value)
            await call(server, method, request)
    await assert_healthy(server)


def message_for(method: pd.MethodDescriptor, value: str) -> Message:
    """The request with every string field (one level down too) set to ``value``."""
    from google.protobuf import message_factory

    cls = message_factory.GetMessageClass(method.input_type)
    msg = cls()
    for field in msg.DESCRIPTOR.fields:
        if field.type == FD.TYPE_STRING and not field.is_repeated:
            setattr(msg, field.name, value)
        elif field.type == FD.TYPE_STRING:
            getattr(msg, field.name).append(value)
        elif field.message_type is not None and not field.is_repeated and \
                not field.message_type.GetOptions().map_entry:
            inner = getattr(msg, field.name)
            for sub in inner.DESCRIPTOR.fields:
                if sub.type == FD.TYPE_STRING and not sub.is_repeated:
                    setattr(inner, sub.name, value)
    return msg


async def test_search_text_is_never_query_syntax(fuzzed: Any) -> None:
    server = fuzzed
    for query in ("NEAR(hello world)", "hello OR", "hello*", "-hello", "hello:world",
                  "'; DELETE FROM messages; --", "AND", "^hello", "(hello", "{hello}"):
        answer = await server.messages.SearchMessages(ms.SearchMessagesRequest(query=query))
        for m in answer.messages:
            assert m.session_id in EXISTING
    for nothing in ("\"", "*", "(", "--"):  # punctuation only: nothing to search for
        await expect_bad_request(server.messages.SearchMessages(
            ms.SearchMessagesRequest(query=nothing)), "query")
    found = await server.messages.SearchMessages(ms.SearchMessagesRequest(query="NEAR"))
    assert {m.session_id for m in found.messages} == set(EXISTING)
    await assert_healthy(server)


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=hs.integers(0, 10_000), replacement=hs.sampled_from("AZaz09-_"),
       kind=hs.sampled_from(["sessions", "messages", "search"]))
async def test_a_tampered_page_token_is_invalid_argument(fuzzed: Any, position: int,
                                                         replacement: str, kind: str) -> None:
    server = fuzzed
    tokens = TOKENS.setdefault(str(server.database), {})
    if not tokens:
        for _ in range(3):
            await server.sessions.CreateSession(ss.CreateSessionRequest())
        tokens["sessions"] = (await server.sessions.ListSessions(
            ss.ListSessionsRequest(page_size=1))).next_page_token
        tokens["messages"] = (await server.messages.ListMessages(
            ms.ListMessagesRequest(session_id="fz-a", page_size=1))).next_page_token
        tokens["search"] = (await server.messages.SearchMessages(
            ms.SearchMessagesRequest(query="hello", page_size=1))).next_page_token
        assert all(tokens.values())
    token = tokens[kind]
    i = position % len(token)
    tampered = token[:i] + replacement + token[i + 1:]
    if tampered == token:
        return
    request: Any = {
        "sessions": lambda: server.sessions.ListSessions(
            ss.ListSessionsRequest(page_size=1, page_token=tampered)),
        "messages": lambda: server.messages.ListMessages(
            ms.ListMessagesRequest(session_id="fz-a", page_size=1, page_token=tampered)),
        "search": lambda: server.messages.SearchMessages(
            ms.SearchMessagesRequest(query="hello", page_size=1, page_token=tampered)),
    }[kind]
    try:
        await request()
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        return
    # Base64 padding bits can change without changing the decoded bytes.
    assert base64.urlsafe_b64decode(tampered + "==") == base64.urlsafe_b64decode(token + "==")


TOKENS: dict[str, dict[str, str]] = {}  # by server database: valid tokens to tamper with


@settings(max_examples=500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=hs.sampled_from(METHODS), payload=hs.one_of(
    hs.binary(max_size=300),
    hs.sampled_from(METHODS).flatmap(lambda m: message(m.input_type)).map(
        lambda msg: msg.SerializeToString()).flatmap(
        lambda raw: hs.tuples(hs.just(raw), hs.integers(0, max(0, len(raw) - 1)),
                              hs.integers(0, 255), hs.integers(0, 3)).map(mutate))))
async def test_malformed_protobuf_bytes_get_a_clear_status(fuzzed: Any, method: Any,
                                                           payload: bytes) -> None:
    server = fuzzed
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.server_streaming:
            stream = server.channel.unary_stream(path)(payload, timeout=20)
            try:
                await stream.read()
            finally:
                stream.cancel()
        else:
            await server.channel.unary_unary(path)(payload, timeout=20)
    except grpc.RpcError as err:
        assert err.code() in CLEAR, (method.name, err.code(), err.details())


def mutate(args: tuple[bytes, int, int, int]) -> bytes:
    raw, at, byte, how = args
    if not raw:
        return bytes([byte])
    if how == 0:  # flip one byte
        return raw[:at] + bytes([byte]) + raw[at + 1:]
    if how == 1:  # cut short
        return raw[:at]
    if how == 2:  # insert a byte
        return raw[:at] + bytes([byte]) + raw[at:]
    return raw + bytes([byte, byte])  # trailing garbage


async def test_unknown_methods_are_unimplemented_and_the_server_stays_up(fuzzed: Any
                                                                       ) -> None:
    server = fuzzed
    for path in ("/sessiond.v1.SessionService/Nope", "/sessiond.v2.SessionService/GetSession",
                 "/x/y", "/sessiond.v1.SessionService/"):
        try:
            await server.channel.unary_unary(path)(b"\x0a\x01x", timeout=10)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED, (path, err.code())


# Regressions the fuzzing found: each once answered UNKNOWN or UNAVAILABLE.
async def test_a_timestamp_outside_the_calendar_is_invalid_argument_naming_it(fuzzed: Any
                                                                             ) -> None:
    far = timestamp_pb2.Timestamp(seconds=-(1 << 63))
    await expect_bad_request(fuzzed.sessions.EndSession(ss.EndSessionRequest(
        session_id="fz-a", status=session_pb2.SESSION_STATUS_COMPLETED, ended_at=far)),
        "ended_at")
    await expect_bad_request(fuzzed.messages.AppendMessages(ms.AppendMessagesRequest(
        session_id="fz-a", messages=[user("x"), user("y", created_at=timestamp_pb2.Timestamp(
            seconds=0, nanos=-1))])), "messages[1].created_at")


async def test_a_nul_character_anywhere_is_invalid_argument_naming_the_field(fuzzed: Any
                                                                           ) -> None:
    await expect_bad_request(fuzzed.messages.SearchMessages(
        ms.SearchMessagesRequest(query="hello\x00")), "query")
    await expect_bad_request(fuzzed.messages.AppendMessages(ms.AppendMessagesRequest(
        session_id="fz-a", messages=[user("a\x00b")])), "messages[0].content")
    await expect_bad_request(fuzzed.sessions.CreateSession(ss.CreateSessionRequest(
        session=session_pb2.Session(labels={"k": "v\x00"}))), "session.labels['k']")


def test_a_nul_in_search_text_separates_words() -> None:
    from sessiond_server.store.search import SearchTerms, fts5_strings, search_terms

    assert search_terms("hello\x00world") == SearchTerms(("hello", "world"), ())
    assert fts5_strings(("hello", "world")) == '"hello" "world"'


async def test_running_longer_than_centuries_is_invalid_argument(fuzzed: Any) -> None:
    await expect_bad_request(fuzzed.stats.GetStats(st.GetStatsRequest(
        filter=session_pb2.SessionFilter(running_longer_than_seconds=1 << 62))),
        "filter.running_longer_than_seconds")
