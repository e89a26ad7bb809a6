"""StatsService, black box: RecordUsage (per-model rows, reasoning as a subset, integer money,
request_id idempotency, budgets, late bills after the end), GetStats and CostByModel.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import field_mask_pb2
from harness import (
    append,
    assistant,
    create_session,
    expect_bad_request,
    expect_failure,
    get_session,
    micros,
    timestamp,
    user,
)
from sessiond.v1 import session_pb2 as sp
from sessiond.v1 import session_service_pb2 as ss
from sessiond.v1 import stats_service_pb2 as st


async def record(server, session_id: str, model: str = "m1", **fields) -> st.RecordUsageResponse:
    usage = fields.pop("usage", None) or sp.Usage()
    return await server.stats.RecordUsage(
        st.RecordUsageRequest(session_id=session_id, model=model, usage=usage, **fields)
    )


def usage(**counters) -> sp.Usage:
    return sp.Usage(**counters)


async def end(server, session_id: str, status=sp.SESSION_STATUS_COMPLETED):
    return await server.sessions.EndSession(
        ss.EndSessionRequest(session_id=session_id, status=status)
    )


async def stats(server, **filter_fields) -> st.Stats:
    answer = await server.stats.GetStats(
        st.GetStatsRequest(filter=sp.SessionFilter(**filter_fields))
    )
    return answer.stats


# RecordUsage -----------------------------------------------------------------------------


async def test_record_usage_adds_to_the_session_and_its_model_row(server):
    await create_session(server.sessions, "s1")
    now = server.clock.advance(4)
    answer = await record(
        server, "s1", "m1",
        usage=usage(prompt_tokens=100, completion_tokens=40, reasoning_tokens=15,
                    cache_read_tokens=30, cache_write_tokens=5, cost_micros=1_234),
    )
    expected = sp.Usage(
        prompt_tokens=100, completion_tokens=40, reasoning_tokens=15, cache_read_tokens=30,
        cache_write_tokens=5, cost_micros=1_234, request_count=1, error_count=0,
        total_tokens=140,  # prompt + completion: reasoning is already inside completion
    )
    assert answer.session_usage == expected
    assert answer.model_usage == expected
    assert not answer.duplicate
    assert (answer.budget_micros, answer.budget_exceeded) == (0, False)
    assert answer.revision > 0
    s = await get_session(server.sessions, "s1")
    assert s.usage == expected
    assert micros(s.last_activity_at) == now
    assert s.revision == answer.revision


async def test_record_usage_keeps_models_apart_and_sums_the_session(server):
    await create_session(server.sessions, "s1")
    await record(server, "s1", "m1", usage=usage(prompt_tokens=10, cost_micros=100))
    await record(server, "s1", "m2", usage=usage(completion_tokens=7, cost_micros=50))
    answer = await record(server, "s1", "m1", usage=usage(prompt_tokens=5, cost_micros=1))
    assert answer.model_usage == sp.Usage(
        prompt_tokens=15, cost_micros=101, request_count=2, total_tokens=15
    )
    assert answer.session_usage == sp.Usage(
        prompt_tokens=15, completion_tokens=7, cost_micros=151, request_count=3, total_tokens=22
    )


async def test_record_usage_ignores_client_request_error_and_total_counts(server):
    await create_session(server.sessions, "s1")
    answer = await record(
        server, "s1",
        usage=usage(prompt_tokens=1, request_count=50, error_count=9, total_tokens=1_000),
    )
    assert (answer.session_usage.request_count, answer.session_usage.error_count) == (1, 0)
    assert answer.session_usage.total_tokens == 1


async def test_record_usage_flagged_errored_counts_an_error(server):
    await create_session(server.sessions, "s1")
    await record(server, "s1", usage=usage(prompt_tokens=3))
    answer = await record(server, "s1", usage=usage(prompt_tokens=2), errored=True)
    assert (answer.session_usage.request_count, answer.session_usage.error_count) == (2, 1)
    assert (answer.model_usage.request_count, answer.model_usage.error_count) == (2, 1)


async def test_record_usage_retry_with_the_same_request_id_counts_once(server):
    await create_session(server.sessions, "s1")
    first = await record(
        server, "s1", usage=usage(prompt_tokens=10, cost_micros=100), request_id="r-1"
    )
    await record(server, "s1", usage=usage(prompt_tokens=1, cost_micros=1), request_id="r-2")
    retry = await record(
        server, "s1", usage=usage(prompt_tokens=10, cost_micros=100), request_id="r-1"
    )
    assert retry.duplicate
    assert retry.revision == first.revision
    assert retry.session_usage == first.session_usage  # the first answer, as it was
    assert retry.model_usage == first.model_usage
    s = await get_session(server.sessions, "s1")
    assert (s.usage.prompt_tokens, s.usage.cost_micros, s.usage.request_count) == (11, 101, 2)


async def test_request_ids_are_scoped_to_their_session(server):
    await create_session(server.sessions, "s1")
    await create_session(server.sessions, "s2")
    await record(server, "s1", usage=usage(cost_micros=5), request_id="same")
    answer = await record(server, "s2", usage=usage(cost_micros=5), request_id="same")
    assert not answer.duplicate
    assert answer.session_usage.cost_micros == 5


@pytest.mark.parametrize(
    "status",
    [sp.SESSION_STATUS_COMPLETED, sp.SESSION_STATUS_FAILED, sp.SESSION_STATUS_CANCELLED],
)
async def test_usage_recorded_after_the_end_still_counts(server, status):
    await create_session(server.sessions, "s1")
    await end(server, "s1", status)
    answer = await record(server, "s1", usage=usage(prompt_tokens=8, cost_micros=80))
    assert answer.session_usage.cost_micros == 80
    s = await get_session(server.sessions, "s1")
    assert (s.status, s.usage.cost_micros) == (status, 80)
    assert (await stats(server)).usage.cost_micros == 80


async def test_budget_is_exceeded_only_when_the_cost_goes_above_it(server):
    await create_session(server.sessions, "s1", budget_micros=1_000)
    below = await record(server, "s1", usage=usage(cost_micros=600))
    at = await record(server, "s1", usage=usage(cost_micros=400))
    above = await record(server, "s1", usage=usage(cost_micros=1))
    assert [r.budget_micros for r in (below, at, above)] == [1_000] * 3
    assert [r.budget_exceeded for r in (below, at, above)] == [False, False, True]
    assert above.session_usage.cost_micros == 1_001  # recorded all the same


async def test_session_without_budget_is_never_exceeded(server):
    await create_session(server.sessions, "s1")
    answer = await record(server, "s1", usage=usage(cost_micros=10**12))
    assert (answer.budget_micros, answer.budget_exceeded) == (0, False)


async def test_reasoning_tokens_above_completion_tokens_is_invalid_argument(server):
    await create_session(server.sessions, "s1")
    await expect_bad_request(
        record(server, "s1", usage=usage(completion_tokens=5, reasoning_tokens=6)),
        "usage.reasoning_tokens",
    )
    assert (await get_session(server.sessions, "s1")).usage.request_count == 0


@pytest.mark.parametrize(
    "counter",
    ["prompt_tokens", "completion_tokens", "reasoning_tokens", "cache_read_tokens",
     "cache_write_tokens", "cost_micros"],
)
async def test_a_negative_counter_is_invalid_argument_naming_it(server, counter):
    await create_session(server.sessions, "s1")
    await expect_bad_request(
        record(server, "s1", usage=usage(**{counter: -1})), f"usage.{counter}"
    )
    assert (await get_session(server.sessions, "s1")).usage.request_count == 0


@pytest.mark.parametrize("model", ["", "m" * 129], ids=["missing", "too-long"])
async def test_record_usage_with_bad_model_is_invalid_argument(server, model):
    await create_session(server.sessions, "s1")
    await expect_bad_request(record(server, "s1", model, usage=usage(cost_micros=1)), "model")


async def test_record_usage_on_a_missing_session_is_not_found(server):
    await expect_failure(
        record(server, "nope", usage=usage(cost_micros=1)),
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
    )


# GetStats --------------------------------------------------------------------------------


async def test_stats_count_sessions_by_effective_status(make_server):
    server = await make_server(abandoned_after_seconds=600)
    await create_session(server.sessions, "idle")
    server.clock.advance(1_000)  # "idle" is now abandoned
    for sid in ("live", "running", "done1", "done2", "failed", "cancelled", "unknown"):
        await create_session(server.sessions, sid, runtime_instance=f"rt-{sid}")
    await server.sessions.SetRuntimeState(
        ss.SetRuntimeStateRequest(session_id="running", state=sp.RUNTIME_STATE_RUNNING)
    )
    await end(server, "done1")
    await end(server, "done2")
    await end(server, "failed", sp.SESSION_STATUS_FAILED)
    await end(server, "cancelled", sp.SESSION_STATUS_CANCELLED)
    await server.sessions.ReconcileSessions(
        ss.ReconcileSessionsRequest(runtime_instance="rt-unknown")
    )
    got = await stats(server)
    assert got.session_count == 8
    assert (got.active_count, got.running_count, got.abandoned_count) == (2, 1, 1)
    assert (got.completed_count, got.failed_count, got.cancelled_count, got.unknown_count) == (
        2, 1, 1, 1,
    )
    assert got.success_rate == pytest.approx(2 / 3)


async def test_stats_running_count_excludes_ended_sessions(server):
    await create_session(server.sessions, "s1")
    await server.sessions.SetRuntimeState(
        ss.SetRuntimeStateRequest(session_id="s1", state=sp.RUNTIME_STATE_RUNNING)
    )
    await end(server, "s1")
    got = await stats(server)
    assert (got.running_count, got.completed_count) == (0, 1)


async def test_stats_of_nothing_are_zero(server):
    got = await stats(server)
    assert got.usage == sp.Usage()
    rest = st.Stats()
    rest.CopyFrom(got)
    rest.ClearField("usage")
    assert rest == st.Stats()


async def test_stats_sum_usage_messages_and_round_the_average_cost_down(server):
    for sid, cost in (("a", 10), ("b", 0), ("c", 1)):
        await create_session(server.sessions, sid)
        await record(server, sid, usage=usage(prompt_tokens=cost, cost_micros=cost))
    await append(server.messages, "a", user("q"), assistant("a"))
    await append(server.messages, "c", user("q"))
    got = await stats(server)
    assert got.session_count == 3
    assert got.usage.cost_micros == 11
    assert got.usage.prompt_tokens == 11
    assert got.usage.request_count == 3
    assert got.average_cost_micros == 3  # 11 / 3 rounded down
    assert got.message_count == 3


async def test_stats_durations_use_end_or_last_activity(server):
    await create_session(server.sessions, "ended")
    await create_session(server.sessions, "open")
    server.clock.advance(30)
    await append(server.messages, "open", user("still going"))
    server.clock.advance(70)
    await end(server, "ended")  # 100 s
    server.clock.advance(500)  # time passing adds nothing to the open one: 30 s
    got = await stats(server)
    assert got.total_duration_seconds == pytest.approx(130)
    assert got.average_duration_seconds == pytest.approx(65)


async def test_stats_success_rate_is_zero_without_completed_or_failed(server):
    await create_session(server.sessions, "s1")
    await end(server, "s1", sp.SESSION_STATUS_CANCELLED)
    assert (await stats(server)).success_rate == 0


async def test_stats_window_is_the_started_filter(server):
    await create_session(server.sessions, "before")
    await record(server, "before", usage=usage(cost_micros=1_000))
    start = server.clock.advance(60)
    await create_session(server.sessions, "inside")
    await record(server, "inside", usage=usage(cost_micros=7))
    stop = server.clock.advance(60)
    await create_session(server.sessions, "after")
    await record(server, "after", usage=usage(cost_micros=500))
    got = await stats(server, started=sp.TimeRange(start=timestamp(start), end=timestamp(stop)))
    assert got.session_count == 1
    assert got.usage.cost_micros == 7


async def test_stats_respect_the_filter(server):
    await create_session(server.sessions, "a", agent="x")
    await create_session(server.sessions, "b", agent="y")
    await record(server, "a", usage=usage(cost_micros=3))
    await record(server, "b", usage=usage(cost_micros=4))
    got = await stats(server, agents=["y"])
    assert (got.session_count, got.usage.cost_micros) == (1, 4)


# CostByModel -----------------------------------------------------------------------------


async def test_cost_by_model_orders_by_cost_then_name_and_counts_sessions(server):
    await create_session(server.sessions, "s1")
    await create_session(server.sessions, "s2")
    await record(server, "s1", "zeta", usage=usage(prompt_tokens=1, cost_micros=100))
    await record(server, "s2", "zeta", usage=usage(prompt_tokens=2, cost_micros=200))
    await record(server, "s1", "beta", usage=usage(completion_tokens=3, cost_micros=300))
    await record(server, "s2", "alpha", usage=usage(prompt_tokens=4, cost_micros=300))
    await record(server, "s2", "alpha", usage=usage(prompt_tokens=1), errored=True)
    answer = await server.stats.CostByModel(st.CostByModelRequest())
    rows = [(m.model, m.session_count, m.usage.cost_micros) for m in answer.models]
    assert rows == [("alpha", 1, 300), ("beta", 1, 300), ("zeta", 2, 300)]
    alpha = answer.models[0].usage
    assert alpha == sp.Usage(
        prompt_tokens=5, cost_micros=300, request_count=2, error_count=1, total_tokens=5
    )


async def test_cost_by_model_respects_the_filter(server):
    await create_session(server.sessions, "a", owner_id="u1")
    await create_session(server.sessions, "b", owner_id="u2")
    await record(server, "a", "m1", usage=usage(cost_micros=5))
    await record(server, "b", "m1", usage=usage(cost_micros=7))
    await record(server, "b", "m2", usage=usage(cost_micros=1))
    answer = await server.stats.CostByModel(
        st.CostByModelRequest(filter=sp.SessionFilter(owner_ids=["u2"]))
    )
    assert [(m.model, m.session_count, m.usage.cost_micros) for m in answer.models] == [
        ("m1", 1, 7),
        ("m2", 1, 1),
    ]


async def test_cost_by_model_counts_usage_by_the_model_given_not_the_session_model(server):
    await create_session(server.sessions, "s1", model="default-model")
    await record(server, "s1", "other-model", usage=usage(cost_micros=9))
    answer = await server.stats.CostByModel(st.CostByModelRequest())
    assert [m.model for m in answer.models] == ["other-model"]


async def test_concurrent_retries_of_one_request_id_count_once(server):
    await create_session(server.sessions, "s1")
    answers = await asyncio.gather(
        *[record(server, "s1", usage=usage(prompt_tokens=10, cost_micros=100), request_id="r")
          for _ in range(10)]
    )
    assert sum(not a.duplicate for a in answers) == 1
    assert len({a.revision for a in answers}) == 1
    s = await get_session(server.sessions, "s1")
    assert (s.usage.prompt_tokens, s.usage.cost_micros, s.usage.request_count) == (10, 100, 1)


async def test_usage_of_a_reconciled_session_still_counts(server):
    await create_session(server.sessions, "s1", runtime_instance="rt-1")
    await server.sessions.ReconcileSessions(ss.ReconcileSessionsRequest(runtime_instance="rt-1"))
    answer = await record(server, "s1", usage=usage(cost_micros=5))
    assert answer.session_usage.cost_micros == 5


async def cost_by_model(server, **filter_fields) -> list[st.ModelCost]:
    answer = await server.stats.CostByModel(
        st.CostByModelRequest(filter=sp.SessionFilter(**filter_fields)))
    return list(answer.models)


# Whole days of a GetStats or CostByModel window (and of a listing's total_size)
# come from rollups kept by the store; the rest is summed row by row. Both must
# give the same figures for any window.

HOUR = 3_600_000_000
DAY = 24 * HOUR
ALL_KINDS = [sp.SESSION_KIND_INTERACTIVE, sp.SESSION_KIND_AUTONOMOUS,
             sp.SESSION_KIND_AGENT_TO_AGENT]


async def test_stats_from_the_rollup_equal_a_row_by_row_sum_for_any_window(make_server):
    server = await make_server(abandoned_after_seconds=12 * 3600)
    origin = server.clock.now_micros() - server.clock.now_micros() % DAY
    ends = [None, sp.SESSION_STATUS_COMPLETED, sp.SESSION_STATUS_FAILED,
            sp.SESSION_STATUS_CANCELLED]
    for i in range(24):  # one every 7 hours: about 7 days, day edges crossed mid-window
        sid = f"s{i}"
        await create_session(server.sessions, sid, owner_id=f"o{i % 3}",
                             dataset_id=f"d{i % 2}", kind=ALL_KINDS[i % 3])
        await record(server, sid, f"m{i % 2}", usage=usage(prompt_tokens=i, cost_micros=i * 7))
        if i % 4 == 1:
            await append(server.messages, sid, user("q"), assistant("a"))
        if i % 5 == 0:
            await server.sessions.SetRuntimeState(
                ss.SetRuntimeStateRequest(session_id=sid, state=sp.RUNTIME_STATE_RUNNING))
        if ends[i % 4]:
            await end(server, sid, ends[i % 4])
        server.clock.advance(7 * 3600)
    await append(server.messages, "s20", user("back"))  # active again, the rest abandoned
    await server.sessions.DeleteSession(ss.DeleteSessionRequest(session_id="s9"))
    # A session moved to another owner takes its usage with it.
    await server.sessions.UpdateSession(ss.UpdateSessionRequest(
        session=sp.Session(id="s4", owner_id="o2"),
        update_mask=field_mask_pb2.FieldMask(paths=["owner_id"])))
    windows = [
        sp.TimeRange(),
        sp.TimeRange(start=timestamp(origin + DAY), end=timestamp(origin + 4 * DAY)),
        sp.TimeRange(start=timestamp(origin + DAY + 5 * HOUR),
                     end=timestamp(origin + 5 * DAY + 3 * HOUR)),
        sp.TimeRange(start=timestamp(origin + 2 * DAY + 1)),
        sp.TimeRange(end=timestamp(origin + 3 * DAY - 1)),
        sp.TimeRange(start=timestamp(origin + 2 * HOUR), end=timestamp(origin + 20 * HOUR)),
        sp.TimeRange(start=timestamp(origin + 3 * DAY), end=timestamp(origin + DAY)),
    ]
    compared = 0
    for window in windows:
        for owners in ([], ["o1"], ["o0", "o2"]):
            fast = await stats(server, started=window, owner_ids=owners)
            # Naming every kind matches the same sessions but is not served by the rollup.
            rowwise = await stats(server, started=window, owner_ids=owners, kinds=ALL_KINDS)
            assert fast == rowwise, (window, owners)
            assert await cost_by_model(server, started=window, owner_ids=owners) == \
                await cost_by_model(server, started=window, owner_ids=owners, kinds=ALL_KINDS)
            # A listing's total_size is counted the same way.
            totals = [(await server.sessions.ListSessions(ss.ListSessionsRequest(
                filter=sp.SessionFilter(started=window, owner_ids=owners, **extra),
                page_size=1))).total_size for extra in ({}, {"kinds": ALL_KINDS})]
            assert totals == [fast.session_count] * 2, (window, owners)
            compared += fast.session_count
    assert compared > 0
    everything = await stats(server)
    assert everything.session_count == 23
    assert everything.abandoned_count > 0 and everything.active_count > 0
    assert await server.check_consistency() == []


async def test_active_and_abandoned_agree_when_the_window_starts_and_ends_mid_day(make_server):
    # Sessions started every 5 hours over 4 days; every other one is touched just before the
    # query, so live (active) sessions sit both in the window's partial days (summed row by
    # row) and in its whole days (from the rollup); the rest are abandoned by then.
    server = await make_server(abandoned_after_seconds=3600)
    origin = server.clock.now_micros() - server.clock.now_micros() % DAY + DAY
    server.clock.advance((origin + 2 * HOUR - server.clock.now_micros()) / 1_000_000)
    for i in range(20):
        await create_session(server.sessions, f"a{i}")
        server.clock.advance(5 * 3600)
    for i in range(0, 20, 2):
        await append(server.messages, f"a{i}", user("still here"))
    windows = [
        sp.TimeRange(start=timestamp(origin + 7 * HOUR),
                     end=timestamp(origin + 3 * DAY + 9 * HOUR)),
        sp.TimeRange(start=timestamp(origin + DAY + 1), end=timestamp(origin + 2 * DAY + HOUR)),
        sp.TimeRange(start=timestamp(origin + 13 * HOUR)),
        sp.TimeRange(end=timestamp(origin + 2 * DAY + 17 * HOUR)),
    ]
    for window in windows:
        fast = await stats(server, started=window)
        rowwise = await stats(server, started=window, kinds=ALL_KINDS)
        assert fast == rowwise, window
        assert fast.active_count > 0 and fast.abandoned_count > 0, (window, fast)
        # The same sessions named by id: the same answer.
        listed = await server.sessions.ListSessions(ss.ListSessionsRequest(
            filter=sp.SessionFilter(started=window), page_size=500))
        by_id = await stats(server, session_ids=[x.id for x in listed.sessions])
        assert (by_id.active_count, by_id.abandoned_count) == \
            (fast.active_count, fast.abandoned_count), window


async def test_stats_past_the_int64_range_saturate_and_writes_go_on(server):
    # A session may hold up to 2^62 micro-dollars, one call adds up to 2^53:
    # 512 calls bring a session near its cap, and three such sessions (one
    # rollup row) sum past 2^63.
    per_call = (1 << 53) - 1
    for sid in ("big1", "big2", "big3"):
        await create_session(server.sessions, sid)
        for _ in range(8):
            await asyncio.gather(*(record(server, sid, usage=usage(cost_micros=per_call))
                                   for _ in range(64)))
    got = await stats(server)
    assert got.session_count == 3
    assert got.usage.cost_micros == (1 << 63) - 1
    [model] = await cost_by_model(server)
    assert model.usage.cost_micros == (1 << 63) - 1
    await append(server.messages, "big1", user("still writable"))
    assert (await stats(server)).message_count == 1
    assert await server.check_consistency() == []


async def test_usage_that_would_pass_the_counter_cap_fails_the_same_way_on_every_retry(server):
    """FAILED_PRECONDITION USAGE_OVERFLOW on every backend (never a retryable UNAVAILABLE),
    and nothing is added."""
    per_call = (1 << 53) - 1  # 512 calls come within 512 of the 2^62 cap
    await create_session(server.sessions, "s1")
    for _ in range(8):
        await asyncio.gather(*(record(server, "s1", usage=usage(cost_micros=per_call))
                               for _ in range(64)))
    before = await get_session(server.sessions, "s1")
    for _ in range(2):  # the retry with the same request_id answers the same
        await expect_failure(
            record(server, "s1", usage=usage(cost_micros=per_call), request_id="r1"),
            grpc.StatusCode.FAILED_PRECONDITION, "USAGE_OVERFLOW")
    after = await get_session(server.sessions, "s1")
    assert after.usage == before.usage and after.revision == before.revision
    assert await server.check_consistency() == []
