"""Google ADK on sessiond: SessiondSessionService driven through ADK's own API.

A real server on both backends; ADK's ``Runner`` with an ``LlmAgent`` whose model
is scripted (no network) calls a tool and writes state at every scope; the
session service's methods are checked against the contract ADK's own services
keep: merged app/user/session state, temp state never stored, recent-events and
after-timestamp reads, staleness, and one commit per event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest
import sessiond
from conftest import ServerHarness
from google.adk.agents import LlmAgent
from google.adk.errors._stale_session_error import StaleSessionError
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import Runner
from google.adk.sessions.base_session_service import GetSessionConfig
from google.adk.tools.tool_context import ToolContext
from google.genai import types
from harness import assert_counters_match_recount, get_session
from sessiond.integrations.adk import SessiondSessionService, adk_ids, sessiond_id
from sessiond.v1 import session_service_pb2


class ScriptedLlm(BaseLlm):
    """A model that answers from a script, one response per call."""

    script: list[types.Content]

    async def generate_content_async(self, llm_request: LlmRequest, stream: bool = False
                                     ) -> AsyncGenerator[LlmResponse, None]:
        yield LlmResponse(content=self.script.pop(0))


def remember(city: str, tool_context: ToolContext) -> str:
    """Remember the user's city."""
    tool_context.state["user:city"] = city
    tool_context.state["app:cities_seen"] = 1
    tool_context.state["last_city"] = city
    tool_context.state["temp:scratch"] = "never stored"
    return f"remembered {city}"


def event(text: str, author: str = "user", **state: Any) -> Event:
    return Event(invocation_id="inv", author=author,
                 content=types.Content(role="user" if author == "user" else "model",
                                       parts=[types.Part(text=text)]),
                 actions=EventActions(state_delta=state))


async def test_a_runner_turn_with_a_tool_stores_events_and_state_at_every_scope(
    server: ServerHarness,
) -> None:
    model = ScriptedLlm(model="scripted", script=[
        types.Content(role="model", parts=[types.Part(function_call=types.FunctionCall(
            id="call_1", name="remember", args={"city": "Paris"}))]),
        types.Content(role="model", parts=[types.Part(text="Noted: Paris.")]),
    ])
    agent = LlmAgent(name="concierge", model=model, tools=[remember])
    async with sessiond.AsyncClient(server.address) as client:
        service = SessiondSessionService(client=client)
        runner = Runner(agent=agent, app_name="travel", session_service=service)
        await service.create_session(app_name="travel", user_id="ada", session_id="trip")
        final = None
        async for produced in runner.run_async(
                user_id="ada", session_id="trip",
                new_message=types.Content(role="user", parts=[types.Part(text="I live in Paris")])):
            if produced.is_final_response():
                final = produced
        assert final is not None and final.content.parts[0].text == "Noted: Paris."
        session = await service.get_session(app_name="travel", user_id="ada", session_id="trip")
        assert session is not None
        assert session.state == {"last_city": "Paris", "app:cities_seen": 1,
                                 "user:city": "Paris"}
        assert [e.author for e in session.events] == ["user", "concierge", "concierge",
                                                      "concierge"]
        assert await service.get_user_state(app_name="travel", user_id="ada") == {
            "city": "Paris"}
        # No header message, no state copy: one message per event, the state on the session.
        stored = await get_session(server.sessions, sessiond_id("travel", "ada", "trip"))
        assert stored.id == "travel/ada/trip" and (stored.agent, stored.owner_id) == (
            "travel", "ada")
        assert stored.message_count == len(session.events)
        assert stored.state_json == '{"last_city":"Paris"}'
        assert stored.tool_call_count == 1
        await assert_counters_match_recount(server.sessions, server.messages,
                                            sessiond_id("travel", "ada", "trip"))


async def test_state_merges_per_scope_and_temp_state_is_never_stored(
    server: ServerHarness,
) -> None:
    async with sessiond.AsyncClient(server.address) as client:
        service = SessiondSessionService(client=client)
        s11 = await service.create_session(app_name="app", user_id="u1", session_id="s11",
                                           state={"k": "v", "app:a": 1, "user:u": 2})
        await service.create_session(app_name="app", user_id="u2", session_id="s2")
        assert s11.state == {"k": "v", "app:a": 1, "user:u": 2}
        await service.append_event(s11, event("hi", **{"app:a": 3, "user:u": 4,
                                                        "temp:t": 5, "k": "w"}))
        assert s11.state == {"k": "w", "app:a": 3, "user:u": 4, "temp:t": 5}
        again = await service.get_session(app_name="app", user_id="u1", session_id="s11")
        assert again is not None
        assert again.state == {"k": "w", "app:a": 3, "user:u": 4}
        other = await service.get_session(app_name="app", user_id="u2", session_id="s2")
        assert other is not None and other.state == {"app:a": 3}
        assert await service.get_session(app_name="app", user_id="u2",
                                         session_id="s11") is None


async def test_created_sessions_read_back_equal_and_list_oldest_first(
    server: ServerHarness,
) -> None:
    async with sessiond.AsyncClient(server.address) as client:
        service = SessiondSessionService(client=client)
        created = await service.create_session(app_name="app", user_id="u", state={"x": 1})
        assert created.id
        assert await service.get_session(app_name="app", user_id="u",
                                         session_id=created.id) == created
        for n in range(3):
            server.clock.advance(1)
            await service.create_session(app_name="app", user_id="u", session_id=f"s{n}")
        listed = await service.list_sessions(app_name="app", user_id="u")
        assert [s.id for s in listed.sessions] == [created.id, "s0", "s1", "s2"]
        with pytest.raises(AlreadyExistsError):
            await service.create_session(app_name="app", user_id="u", session_id="s0")
        await service.delete_session(app_name="app", user_id="u", session_id="s0")
        assert await service.get_session(app_name="app", user_id="u", session_id="s0") is None


async def test_recent_and_after_timestamp_reads(server: ServerHarness) -> None:
    async with sessiond.AsyncClient(server.address) as client:
        service = SessiondSessionService(client=client)
        session = await service.create_session(app_name="app", user_id="u", session_id="s")
        for n in range(5):
            step = event(f"e{n}")
            step.timestamp = 1000.0 + n
            await service.append_event(session, step)

        async def texts(**config: Any) -> list[str]:
            read = await service.get_session(app_name="app", user_id="u", session_id="s",
                                             config=GetSessionConfig(**config))
            assert read is not None
            return [e.content.parts[0].text for e in read.events]

        assert await texts() == ["e0", "e1", "e2", "e3", "e4"]
        assert await texts(num_recent_events=2) == ["e3", "e4"]
        assert await texts(num_recent_events=0) == []
        assert await texts(after_timestamp=1002.0) == ["e2", "e3", "e4"]
        assert await texts(after_timestamp=1002.0, num_recent_events=1) == ["e4"]


async def test_a_stale_session_object_cannot_append(server: ServerHarness) -> None:
    async with sessiond.AsyncClient(server.address) as client:
        service = SessiondSessionService(client=client)
        first = await service.create_session(app_name="app", user_id="u", session_id="s")
        second = await service.get_session(app_name="app", user_id="u", session_id="s")
        assert second is not None
        await service.append_event(first, event("one", n=1))
        with pytest.raises(StaleSessionError):
            await service.append_event(second, event("two", n=2))
        fresh = await service.get_session(app_name="app", user_id="u", session_id="s")
        assert fresh is not None and fresh.state == {"n": 1} and len(fresh.events) == 1


async def test_concurrent_events_on_separate_sessions_each_commit_once(
    server: ServerHarness,
) -> None:
    async with sessiond.AsyncClient(server.address) as client:
        service = SessiondSessionService(client=client)
        sessions = [await service.create_session(app_name="app", user_id=f"u{n}",
                                                 session_id=f"s{n}") for n in range(4)]

        async def writer(session: Any) -> None:
            for n in range(10):
                await service.append_event(session, event(f"e{n}", **{"app:total": n,
                                                                      "count": n}))

        await asyncio.gather(*(writer(s) for s in sessions))
        for n, session in enumerate(sessions):
            read = await service.get_session(app_name="app", user_id=f"u{n}",
                                             session_id=session.id)
            assert read is not None and len(read.events) == 10
            assert read.state == {"count": 9, "app:total": 9}
        shared = await server.sessions.GetSharedState(
            session_service_pb2.GetSharedStateRequest(app="app"))
        assert shared.state.state_json == '{"total":9}'


async def test_a_refused_create_session_writes_none_of_its_app_and_user_state(
    server: ServerHarness,
) -> None:
    async with sessiond.AsyncClient(server.address) as client:
        service = SessiondSessionService(client=client)
        await service.create_session(app_name="app", user_id="u", session_id="s",
                                     state={"app:plan": "free", "user:name": "Ada"})
        # The same id again: refused, and its app: and user: keys are not written either
        # (the session and its shared state are one CreateSession).
        with pytest.raises(AlreadyExistsError):
            await service.create_session(app_name="app", user_id="u", session_id="s",
                                         state={"app:plan": "paid", "user:name": "Bob"})
        read = await service.get_session(app_name="app", user_id="u", session_id="s")
        assert read is not None and read.state == {"app:plan": "free", "user:name": "Ada"}
        assert await service.get_user_state(app_name="app", user_id="u") == {"name": "Ada"}


def test_session_ids_are_scoped_by_app_and_user_and_read_back() -> None:
    assert sessiond_id("shop", "ada@example.com", "s1") == "shop/ada@example.com/s1"
    odd = ("a/b", "50% off", "x\ty ")
    assert sessiond_id(*odd) == "a%2Fb/50%25%20off/x%09y%20"
    assert adk_ids(sessiond_id(*odd)) == odd
    # Ids not written through the adapter are not read as ADK ids.
    assert adk_ids("plain") is None
    assert adk_ids("a/b/c%41") is None


async def test_two_users_of_one_app_each_have_their_own_session_s1(
    server: ServerHarness,
) -> None:
    async with sessiond.AsyncClient(server.address) as client:
        service = SessiondSessionService(client=client)
        first = await service.create_session(app_name="app", user_id="u1", session_id="s1")
        await service.append_event(first, event("hi"))
        second = await service.create_session(app_name="app", user_id="u2@example.com",
                                              session_id="s1")
        assert (second.id, second.user_id) == ("s1", "u2@example.com")
        read = await service.get_session(app_name="app", user_id="u2@example.com",
                                         session_id="s1")
        assert read is not None and read.user_id == "u2@example.com" and read.events == []
        again = await service.get_session(app_name="app", user_id="u1", session_id="s1")
        assert again is not None and len(again.events) == 1
        listed = await service.list_sessions(app_name="app")
        assert sorted((s.user_id, s.id) for s in listed.sessions) == [
            ("u1", "s1"), ("u2@example.com", "s1")]
        await service.delete_session(app_name="app", user_id="u2@example.com",
                                     session_id="s1")
        assert await service.get_session(app_name="app", user_id="u1",
                                         session_id="s1") is not None


class AnswerLostOnce(sessiond.AsyncClient):
    """A client whose first CreateSession answer is lost: the request reached the server
    and committed, and the call is sent again, as a retry after a lost answer does."""

    async def create_session(self, *args: Any, **kwargs: Any) -> Any:
        await super().create_session(*args, **kwargs)
        return await super().create_session(*args, **kwargs)


async def test_a_create_retried_after_a_lost_answer_is_the_create_not_a_duplicate(
    server: ServerHarness,
) -> None:
    async with AnswerLostOnce(server.address) as client:
        service = SessiondSessionService(client=client)
        named = await service.create_session(app_name="app", user_id="u", session_id="s",
                                             state={"k": 1, "user:n": 1})
        generated = await service.create_session(app_name="app", user_id="u")
        assert named.id == "s" and named.state == {"k": 1, "user:n": 1}
        assert generated.id and generated.id != "s"
        listed = await service.list_sessions(app_name="app", user_id="u")
        assert sorted(s.id for s in listed.sessions) == sorted(["s", generated.id])
    async with sessiond.AsyncClient(server.address) as client:
        service = SessiondSessionService(client=client)
        # Another create of the same id, the same content but a call of its own: a duplicate.
        with pytest.raises(AlreadyExistsError):
            await service.create_session(app_name="app", user_id="u", session_id="s",
                                         state={"k": 1, "user:n": 1})
