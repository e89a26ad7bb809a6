"""What every servicer shares: the store, the limits, page tokens, and the caller's scope."""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc

from ..config import ServerConfig
from ..store import Scope, SessionStore
from ..watch import WatchHub
from .page_tokens import PageTokens

DEFAULT_SCOPE = Scope()


@dataclasses.dataclass
class ApiContext:
    store: SessionStore
    hub: WatchHub
    config: ServerConfig
    tokens: PageTokens
    watchers_by_caller: dict[str, int] = dataclasses.field(default_factory=dict)

    def scope(self, context: grpc.aio.ServicerContext[Any, Any]) -> Scope:
        """The caller's scope. Authentication, when configured, sets it per call."""
        return DEFAULT_SCOPE
