"""Logs: one debug line per RPC with method, code, duration and peer; never message text or
credentials; server faults logged with their cause; JSON lines that parse."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Any

import grpc
import pytest
from sessiond.v1 import message_pb2, message_service_pb2, session_pb2, session_service_pb2
from sessiond_server.observability import JsonFormatter, configure_logging

SECRET_TEXT = "TOP-SECRET-MESSAGE-TEXT"
SECRET_TOKEN = "sk-live-do-not-log"
GET = "sessiond.v1.SessionService/GetSession"


async def until(condition: Any, what: str) -> None:
    """Wait (bounded) for ``condition()``: a call that ended in an error is answered before
    the server's interceptor finishes with it, so its record may come a moment later."""
    for _ in range(2000):  # at most about 20 s
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_each_rpc_logs_one_debug_line_without_message_text_or_metadata(
    server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sessiond.rpc")
    metadata = (("x-api-key", SECRET_TOKEN),)
    await server.sessions.CreateSession(session_service_pb2.CreateSessionRequest(
        session=session_pb2.Session(id="s")), metadata=metadata)
    await server.messages.AppendMessages(message_service_pb2.AppendMessagesRequest(
        session_id="s", messages=[message_pb2.Message(role=message_pb2.ROLE_USER,
                                                      content=SECRET_TEXT)]), metadata=metadata)
    with pytest.raises(grpc.aio.AioRpcError):
        await server.sessions.GetSession(session_service_pb2.GetSessionRequest(session_id="nope"))
    await until(lambda: any(getattr(r, "rpc_method", "") == GET for r in caplog.records),
                "the GetSession log line")
    lines = [r for r in caplog.records if r.name == "sessiond.rpc"]
    by_method = {r.rpc_method: r for r in lines}  # type: ignore[attr-defined]
    append = by_method["sessiond.v1.MessageService/AppendMessages"]
    assert append.levelno == logging.DEBUG
    assert append.rpc_code == "OK"  # type: ignore[attr-defined]
    assert append.duration_ms >= 0  # type: ignore[attr-defined]
    assert append.peer  # type: ignore[attr-defined]
    assert by_method[GET].rpc_code == "NOT_FOUND"  # type: ignore[attr-defined]
    everything = caplog.text + "".join(str(vars(r)) for r in caplog.records)
    assert SECRET_TEXT not in everything
    assert SECRET_TOKEN not in everything


def test_json_lines_carry_the_rpc_fields_and_the_error_cause() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("sessiond.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("rpc %s ended", "X/Y", extra={"rpc_method": "X/Y", "rpc_code": "INTERNAL",
                                                     "duration_ms": 1.5, "peer": "ipv4:1.2.3.4"})
        try:
            raise OSError("disk full")
        except OSError:
            logger.exception("write failed")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "warning" and first["message"] == "rpc X/Y ended"
    assert first["rpc_code"] == "INTERNAL" and first["duration_ms"] == 1.5
    assert first["time"].endswith("Z")
    assert "OSError: disk full" in second["error"]


def test_configure_logging_sets_format_and_level() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("json", "warning", stream)
        logging.getLogger("sessiond").info("hidden")
        logging.getLogger("sessiond").warning("shown")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["shown"]
