"""Keyword search across scripts: words match whole, runs of CJK, Thai or emoji as substrings.

The rule (store/search.py, written in the proto): a query word with a character of a script
written without spaces (Chinese, Japanese, Thai, ...), or an emoji, matches wherever its
characters occur in order; any other word matches whole words, ignoring case. Both searches
(SearchMessages and ListSessions' text_query) and both backends follow it.
"""

from __future__ import annotations

from typing import Any

import pytest
from harness import append, create_session, user
from sessiond.v1 import message_pb2, message_service_pb2, session_pb2, session_service_pb2

ms = message_service_pb2
ss = session_service_pb2

TEXTS = {
    "ja": "こんにちは世界、今日はいい天気ですね",
    "zh": "我们明天在北京见面吧",
    "ko": "서울에서 만나요 내일",
    "th": "สวัสดีครับ ยินดีต้อนรับ",
    "emoji": "great job 🎉🚀 see you",
    "en": "The category of this cat is Feline",
    "de": "Grüße aus München",
    "ru": "Привет, как дела?",
    "mixed": "Deploy to 東京 region ✅ done",
}

CASES = [
    ("こんにちは", {"ja"}),
    ("世界", {"ja"}),          # two characters inside a longer run
    ("天気", {"ja"}),
    ("北京", {"zh"}),
    ("明天 北京", {"zh"}),      # every run must occur
    ("北京 世界", set()),
    ("서울", {"ko"}),            # Hangul inside a word with a particle
    ("ยินดี", {"th"}),
    ("🚀", {"emoji"}),
    ("🎉🚀", {"emoji"}),
    ("🚀🎉", set()),             # order matters
    ("✅", {"mixed"}),
    ("東京 deploy", {"mixed"}),  # a run and a word together
    ("cat", {"en"}),              # whole words: not "category"
    ("CAT feline", {"en"}),       # case does not matter
    ("münchen", {"de"}),
    ("привет", {"ru"}),
    ("日本", set()),
]


@pytest.fixture
async def corpus(server: Any) -> Any:
    for key, text in TEXTS.items():
        await create_session(server.sessions, f"s-{key}")
        await append(server.messages, f"s-{key}", user(text))
    return server


@pytest.mark.parametrize(("query", "expected"), CASES, ids=[q for q, _ in CASES])
async def test_search_finds_runs_as_substrings_and_words_whole(
        corpus: Any, query: str, expected: set[str]) -> None:
    found = await corpus.messages.SearchMessages(ms.SearchMessagesRequest(query=query))
    assert {m.session_id.removeprefix("s-") for m in found.messages} == expected
    listed = await corpus.sessions.ListSessions(ss.ListSessionsRequest(
        filter=session_pb2.SessionFilter(text_query=query)))
    assert {s.id.removeprefix("s-") for s in listed.sessions} == expected


async def test_runs_follow_updates_pops_and_deletes(server: Any) -> None:
    await create_session(server.sessions, "live")
    await append(server.messages, "live", user("旧い文章"))
    await server.messages.UpdateLastMessage(ms.UpdateLastMessageRequest(
        session_id="live", message=message_pb2.Message(content="新しい文章")))

    async def found(query: str) -> int:
        answer = await server.messages.SearchMessages(ms.SearchMessagesRequest(query=query))
        return len(answer.messages)

    assert await found("新しい") == 1
    assert await found("旧い") == 0
    await server.messages.PopMessage(ms.PopMessageRequest(session_id="live"))
    assert await found("新しい") == 0
    await append(server.messages, "live", user("また明日"))
    await server.sessions.DeleteSession(ss.DeleteSessionRequest(session_id="live"))
    assert await found("明日") == 0
