"""Per-caller limits: the request rate (token bucket on the injected clock), concurrent watch
streams per principal, and the size bounds of pages, filters, queries and whole requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from harness import expect_bad_request, expect_failure, rpc_failure, user
from principals import Caller, Grant, write_key_file
from sessiond.v1 import (
    message_service_pb2,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
    stats_service_pb2,
)

ss = session_service_pb2
ss_grpc = session_service_pb2_grpc
ms = message_service_pb2
st = stats_service_pb2
S = session_pb2


def retry_delay(err: grpc.RpcError) -> float:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay: duration_pb2.Duration = info.retry_delay
            return delay.ToNanoseconds() / 1e9
    raise AssertionError("no RetryInfo in the status")


async def rate_limited(call: Any) -> float:
    """Await a call that must be rate limited; the retry delay it names."""
    try:
        await call
    except grpc.RpcError as err:
        failure = await rpc_failure(_raise(err))
        assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED, failure.describe()
        assert failure.reason == "RATE_LIMITED"
        return retry_delay(err)
    raise AssertionError("the call was not rate limited")


async def _raise(err: grpc.RpcError) -> None:
    raise err


async def test_a_caller_over_its_rate_is_told_when_to_retry(make_server: Any) -> None:
    server = await make_server(limits={"rate_limit_per_second": 2, "rate_limit_burst": 3})
    request = ss.ListSessionsRequest()
    for _ in range(3):  # the burst
        await server.sessions.ListSessions(request)
    delay = await rate_limited(server.sessions.ListSessions(request))
    assert delay == pytest.approx(0.5)
    server.clock.advance(0.25)
    assert await rate_limited(server.sessions.ListSessions(request)) == pytest.approx(0.25)
    server.clock.advance(0.25)
    await server.sessions.ListSessions(request)
    # A refused call spent nothing and changed nothing.
    server.clock.advance(10)
    for _ in range(3):
        await server.sessions.CreateSession(ss.CreateSessionRequest())
    await rate_limited(server.sessions.CreateSession(ss.CreateSessionRequest()))
    server.clock.advance(1)
    listed = await server.sessions.ListSessions(request)
    assert len(listed.sessions) == 3


async def test_watch_streams_count_against_the_rate_when_they_open(make_server: Any) -> None:
    server = await make_server(limits={"rate_limit_per_second": 1, "rate_limit_burst": 1})
    await server.sessions.ListSessions(ss.ListSessionsRequest())
    call = server.sessions.WatchSessions(ss.WatchSessionsRequest())
    with pytest.raises(grpc.RpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_delay(err.value) == pytest.approx(1.0)


async def test_each_api_key_has_its_own_bucket(make_server: Any, tmp_path: Path) -> None:
    keys = write_key_file(tmp_path / "keys.toml", [Grant("a", "t", "writer", "a"),
                                                   Grant("b", "t", "writer", "b")])
    server = await make_server(api_keys_file=tmp_path / "keys.toml",
                               limits={"rate_limit_per_second": 1, "rate_limit_burst": 2})
    a, b = Caller(server.address, keys["a"]), Caller(server.address, keys["b"])
    try:
        for _ in range(2):
            await a.sessions.ListSessions(ss.ListSessionsRequest())
        await rate_limited(a.sessions.ListSessions(ss.ListSessionsRequest()))
        for _ in range(2):
            await b.sessions.ListSessions(ss.ListSessionsRequest())
        # Unauthenticated calls are refused before they cost a token.
        anonymous = Caller(server.address)
        for _ in range(5):
            await expect_failure(anonymous.sessions.ListSessions(ss.ListSessionsRequest()),
                                 grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
        await anonymous.close()
    finally:
        await a.close()
        await b.close()


def test_the_bucket_table_stays_bounded_with_many_callers() -> None:
    from sessiond_server.ratelimit import RateLimiter

    now = [0.0]
    limiter = RateLimiter(10, 5, lambda: now[0], max_callers=100)
    for i in range(1000):
        assert limiter.acquire(f"caller-{i}") == 0.0
        now[0] += 0.001
    assert limiter.callers <= 100


def test_a_clock_stepping_back_does_not_lock_a_caller_out() -> None:
    from sessiond_server.ratelimit import RateLimiter

    now = [1000.0]
    limiter = RateLimiter(1, 1, lambda: now[0])
    assert limiter.acquire("c") == 0.0
    now[0] = 0.0  # a large step back
    assert limiter.acquire("c") == pytest.approx(1.0)
    now[0] = 1.0
    assert limiter.acquire("c") == 0.0


async def test_watch_streams_are_limited_per_principal(make_server: Any, tmp_path: Path
                                                      ) -> None:
    keys = write_key_file(tmp_path / "keys.toml", [Grant("a", "t", "reader", "a"),
                                                   Grant("b", "t", "reader", "b")])
    server = await make_server(api_keys_file=tmp_path / "keys.toml",
                               limits={"max_watchers_per_caller": 2})
    a, b = Caller(server.address, keys["a"]), Caller(server.address, keys["b"])
    calls = []
    try:
        for _ in range(2):
            call = a.sessions.WatchSessions(ss.WatchSessionsRequest())
            assert (await call.read()).type == ss.WATCH_RESPONSE_TYPE_CREATED
            calls.append(call)
        third = a.sessions.WatchSessions(ss.WatchSessionsRequest())
        with pytest.raises(grpc.RpcError) as err:
            await third.read()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        other = b.sessions.WatchSessions(ss.WatchSessionsRequest())
        assert (await other.read()).type == ss.WATCH_RESPONSE_TYPE_CREATED
        calls.append(other)
    finally:
        for call in calls:
            call.cancel()
        await a.close()
        await b.close()


async def test_without_keys_the_watch_quota_is_per_peer_address(make_server: Any) -> None:
    # "localhost" listens on both loopback families, so two peer addresses can reach it.
    server = await make_server(address="localhost:0",
                               limits={"max_watchers_per_caller": 2})
    port = server.address.rsplit(":", 1)[1]
    v4 = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    v6 = grpc.aio.insecure_channel(f"[::1]:{port}")
    calls = []
    try:
        for _ in range(2):
            call = ss_grpc.SessionServiceStub(v4).WatchSessions(ss.WatchSessionsRequest())
            assert (await call.read()).type == ss.WATCH_RESPONSE_TYPE_CREATED
            calls.append(call)
        third = ss_grpc.SessionServiceStub(v4).WatchSessions(ss.WatchSessionsRequest())
        with pytest.raises(grpc.RpcError) as err:
            await third.read()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        other = ss_grpc.SessionServiceStub(v6).WatchSessions(ss.WatchSessionsRequest())
        assert (await other.read()).type == ss.WATCH_RESPONSE_TYPE_CREATED
        calls.append(other)
    finally:
        for call in calls:
            call.cancel()
        await v4.close()
        await v6.close()


@pytest.fixture
async def small(make_server: Any) -> Any:
    return await make_server(limits={"max_page_size": 5, "max_message_page_size": 7,
                                     "max_filter_values": 3, "max_query_bytes": 16,
                                     "max_request_bytes": 64 << 10})


@pytest.mark.parametrize("size", [6, -1, 2**31 - 1])
async def test_a_page_size_beyond_the_limit_is_invalid_argument(small: Any, size: int) -> None:
    await expect_bad_request(small.sessions.ListSessions(
        ss.ListSessionsRequest(page_size=size)), "page_size")
    await expect_bad_request(small.messages.SearchMessages(
        ms.SearchMessagesRequest(query="x", page_size=size)), "page_size")


async def test_the_largest_page_sizes_are_accepted(small: Any) -> None:
    await small.sessions.ListSessions(ss.ListSessionsRequest(page_size=5))
    created = await small.sessions.CreateSession(ss.CreateSessionRequest())
    sid = created.session.id
    await small.messages.ListMessages(ms.ListMessagesRequest(session_id=sid, page_size=7))
    await expect_bad_request(small.messages.ListMessages(
        ms.ListMessagesRequest(session_id=sid, page_size=8)), "page_size")
    await expect_bad_request(small.messages.ListMessages(
        ms.ListMessagesRequest(session_id=sid, last_n=8)), "last_n")


@pytest.mark.parametrize("name", ["session_ids", "agents", "models", "owner_ids",
                                  "dataset_ids", "runtime_instances"])
async def test_a_filter_with_too_many_values_is_invalid_argument(small: Any, name: str) -> None:
    f = S.SessionFilter(**{name: ["a", "b", "c", "d"]})
    await expect_bad_request(small.sessions.ListSessions(ss.ListSessionsRequest(filter=f)),
                             f"filter.{name}")
    await expect_bad_request(small.stats.GetStats(st.GetStatsRequest(filter=f)),
                             f"filter.{name}")
    await expect_bad_request(small.stats.CostByModel(st.CostByModelRequest(filter=f)),
                             f"filter.{name}")
    ok = S.SessionFilter(**{name: ["a", "b", "c"]})
    await small.sessions.ListSessions(ss.ListSessionsRequest(filter=ok))


async def test_watch_filters_are_bounded_too(small: Any) -> None:
    call = small.sessions.WatchSessions(ss.WatchSessionsRequest(
        filter=ss.WatchFilter(session_ids=["a", "b", "c", "d"])))
    with pytest.raises(grpc.RpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_search_or_text_query_over_the_query_limit_is_invalid_argument(small: Any
                                                                              ) -> None:
    await expect_bad_request(small.messages.SearchMessages(
        ms.SearchMessagesRequest(query="q" * 17)), "query")
    await expect_bad_request(small.sessions.ListSessions(ss.ListSessionsRequest(
        filter=S.SessionFilter(text_query="q" * 17))), "filter.text_query")
    await small.messages.SearchMessages(ms.SearchMessagesRequest(query="q" * 16))


async def test_a_request_over_the_request_size_limit_is_refused_by_grpc(small: Any) -> None:
    created = await small.sessions.CreateSession(ss.CreateSessionRequest())
    failure = await rpc_failure(small.messages.AppendMessages(ms.AppendMessagesRequest(
        session_id=created.session.id, messages=[user("x" * (65 << 10))])))
    assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED, failure.describe()
    assert await small.check_consistency() == []
