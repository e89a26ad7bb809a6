"""What every servicer shares: the store, the limits, page tokens, and the caller's scope."""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc

from ..auth import CALL_SCOPE
from ..config import ServerConfig
from ..store import Scope, SessionStore
from ..watch import WatchHub
from .errors import RpcError
from .page_tokens import PageTokens

DEFAULT_SCOPE = Scope()


@dataclasses.dataclass
class ApiContext:
    store: SessionStore
    hub: WatchHub
    config: ServerConfig
    tokens: PageTokens
    watchers_by_caller: dict[str, int] = dataclasses.field(default_factory=dict)
    # True when API keys are configured: a call without a scope set by the
    # gate (auth.CallerGate) is then refused instead of seeing the default tenant.
    authenticated: bool = False

    def scope(self, context: grpc.aio.ServicerContext[Any, Any]) -> Scope:
        """The caller's scope, as the gate set it for this call.

        Without authentication every caller is the default tenant's admin.
        With it, a missing scope means the gate did not run for this call: that
        is a wiring mistake, and it fails closed.
        """
        scope = CALL_SCOPE.get()
        if scope is not None:
            return scope
        if self.authenticated:
            raise RpcError(grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED",
                           "this call was not authenticated")
        return DEFAULT_SCOPE
