"""StatsService: usage accounting and aggregates, computed in the database."""

from __future__ import annotations

from typing import Any

import grpc
from sessiond.v1 import stats_service_pb2, stats_service_pb2_grpc

from .context import ApiContext
from .errors import unary
from .sessions import check_filter
from .validation import Checker

st = stats_service_pb2
Ctx = grpc.aio.ServicerContext[Any, Any]

USAGE_INPUTS = ("prompt_tokens", "completion_tokens", "reasoning_tokens", "cache_read_tokens",
                "cache_write_tokens", "cost_micros")
MAX_COUNTER = 1 << 53  # one call adding more than this is a mistake, not a bill


class StatsService(stats_service_pb2_grpc.StatsServiceServicer):
    def __init__(self, api: ApiContext) -> None:
        self.api = api

    @unary
    async def RecordUsage(self, request: st.RecordUsageRequest, context: Ctx
                          ) -> st.RecordUsageResponse:
        c = Checker(self.api.config.limits)
        c.identifier("session_id", request.session_id)
        c.identifier("model", request.model)
        if len(request.model.encode()) > 128:
            c.fail("model", "is longer than 128 bytes")
        for name in USAGE_INPUTS:
            value = getattr(request.usage, name)
            if value < 0:
                c.fail(f"usage.{name}", "must not be negative")
            elif value > MAX_COUNTER:
                c.fail(f"usage.{name}", f"must be at most {MAX_COUNTER}")
        if request.usage.reasoning_tokens > request.usage.completion_tokens:
            c.fail("usage.reasoning_tokens", "is part of completion_tokens and cannot exceed it")
        c.identifier("request_id", request.request_id, required=False, chosen=True)
        c.done()
        result = await self.api.store.record_usage(
            self.api.scope(context), request.session_id, request.model, request.usage,
            request.errored, request.request_id)
        exceeded = bool(result.budget_micros) and \
            result.session_usage.cost_micros > result.budget_micros
        return st.RecordUsageResponse(
            session_usage=result.session_usage, model_usage=result.model_usage,
            budget_micros=result.budget_micros, budget_exceeded=exceeded,
            duplicate=result.duplicate, revision=result.revision)

    @unary
    async def GetStats(self, request: st.GetStatsRequest, context: Ctx) -> st.GetStatsResponse:
        c = Checker(self.api.config.limits)
        check_filter(c, "filter", request.filter)
        c.done()
        stats, revision = await self.api.store.get_stats(self.api.scope(context), request.filter)
        return st.GetStatsResponse(stats=stats, revision=revision)

    @unary
    async def CostByModel(self, request: st.CostByModelRequest, context: Ctx
                          ) -> st.CostByModelResponse:
        c = Checker(self.api.config.limits)
        check_filter(c, "filter", request.filter)
        c.done()
        models, revision = await self.api.store.cost_by_model(self.api.scope(context),
                                                              request.filter)
        return st.CostByModelResponse(models=models, revision=revision)
