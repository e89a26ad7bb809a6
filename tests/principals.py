"""Callers with API keys, and the tenant-isolation guarantee as a reusable validator.

``write_key_file`` mints keys and writes the key file the server reads (hashes only);
``Caller`` is one principal's channel and stubs, sending ``authorization: Bearer <key>``
on every call; ``assert_sees_exactly`` checks, through every read RPC, that a caller sees
exactly the sessions it should and that everything else answers NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
from harness import expect_failure
from sessiond.v1 import (
    message_service_pb2,
    message_service_pb2_grpc,
    session_service_pb2,
    session_service_pb2_grpc,
    stats_service_pb2,
    stats_service_pb2_grpc,
)

ss = session_service_pb2
ms = message_service_pb2
st = stats_service_pb2


@dataclasses.dataclass(frozen=True)
class Grant:
    name: str
    tenant: str
    role: str
    user_id: str = ""
    dataset_ids: tuple[str, ...] = ()


def write_key_file(path: Path, grants: Iterable[Grant]) -> dict[str, str]:
    """Mint a key per grant, write the key file (TOML or JSON by suffix); keys by name."""
    from sessiond_server.auth import mint_key

    keys: dict[str, str] = {}
    entries = []
    for grant in grants:
        key, digest = mint_key()
        keys[grant.name] = key
        entries.append({"name": grant.name, "sha256": digest, "tenant": grant.tenant,
                        "role": grant.role, "user_id": grant.user_id,
                        "dataset_ids": list(grant.dataset_ids)})
    if path.suffix == ".json":
        path.write_text(json.dumps({"keys": entries}))
    else:
        lines = []
        for e in entries:
            lines.append("[[keys]]")
            lines.extend(f"{k} = {json.dumps(v)}" for k, v in e.items())
        path.write_text("\n".join(lines) + "\n")
    return keys


def _with_header(details: Any, header: str | None) -> Any:
    if header is None:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata.add("authorization", header)
    return details._replace(metadata=metadata)


# grpc.aio files an interceptor under the first interceptor type it matches, so unary
# and streaming calls need one class each.
class _BearerUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, header: str | None) -> None:
        self.header = header

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_header(details, self.header), request)


class _BearerStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, header: str | None) -> None:
        self.header = header

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any
                                     ) -> Any:
        return await continuation(_with_header(details, self.header), request)


class Caller:
    """One principal's channel: every call carries its key."""

    def __init__(self, address: str, key: str | None = None, *, header: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 options: Sequence[tuple[str, Any]] = ()) -> None:
        value = header if header is not None else (f"Bearer {key}" if key else None)
        interceptors: list[Any] = [_BearerUnary(value), _BearerStream(value)]
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(address, interceptors=interceptors,
                                                     options=list(options))
        else:
            self.channel = grpc.aio.secure_channel(address, credentials,
                                                   interceptors=interceptors,
                                                   options=list(options))
        self.sessions = session_service_pb2_grpc.SessionServiceStub(self.channel)
        self.messages = message_service_pb2_grpc.MessageServiceStub(self.channel)
        self.stats = stats_service_pb2_grpc.StatsServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()


async def watch_initial_ids(caller: Caller) -> set[str]:
    """The ids a WatchSessions with include_initial lists before INITIAL_COMPLETE."""
    seen: set[str] = set()
    call = caller.sessions.WatchSessions(ss.WatchSessionsRequest(include_initial=True))
    try:
        async for response in call:
            if response.type == ss.WATCH_RESPONSE_TYPE_INITIAL_COMPLETE:
                return seen
            seen.update(e.session_id for e in response.events)
    finally:
        call.cancel()
    raise AssertionError("the watch ended before INITIAL_COMPLETE")


async def assert_sees_exactly(caller: Caller, visible: set[str], hidden: set[str],
                              word: str) -> None:
    """The caller reads ``visible`` and nothing of ``hidden``, through every read RPC.

    Each session is expected to hold one message containing ``word`` and usage with
    cost_micros 1 on model "m", so search, stats and cost sums are comparable.
    """
    for sid in visible:
        got = await caller.sessions.GetSession(ss.GetSessionRequest(session_id=sid))
        assert got.session.id == sid
    for sid in hidden:
        await expect_failure(caller.sessions.GetSession(ss.GetSessionRequest(session_id=sid)),
                             grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
        await expect_failure(
            caller.messages.ListMessages(ms.ListMessagesRequest(session_id=sid)),
            grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
    listed = await caller.sessions.ListSessions(ss.ListSessionsRequest(page_size=500))
    assert {s.id for s in listed.sessions} == visible
    assert listed.total_size == len(visible)
    stats = await caller.stats.GetStats(st.GetStatsRequest())
    assert stats.stats.session_count == len(visible)
    assert stats.stats.usage.cost_micros == len(visible)
    costs = await caller.stats.CostByModel(st.CostByModelRequest())
    assert sum(m.usage.cost_micros for m in costs.models) == len(visible)
    found = await caller.messages.SearchMessages(
        ms.SearchMessagesRequest(query=word, page_size=500))
    assert {m.session_id for m in found.messages} == visible
    # Naming hidden sessions explicitly finds nothing either.
    if hidden:
        named = await caller.messages.SearchMessages(
            ms.SearchMessagesRequest(query=word, session_ids=sorted(hidden)))
        assert list(named.messages) == []
    assert await watch_initial_ids(caller) == visible


async def next_event_ids(call: Any, count: int) -> list[str]:
    """Session ids of the next ``count`` events of a running watch."""
    ids: list[str] = []
    async for response in call:
        ids.extend(e.session_id for e in response.events)
        if len(ids) >= count:
            return ids
    raise AssertionError(f"the watch ended after {ids}")


async def close_all(callers: Iterable[Caller]) -> None:
    for caller in callers:
        with contextlib.suppress(Exception):
            await asyncio.shield(caller.close())
