"""The operations commands end to end: ``sessiond config``, ``backup``, ``export``, ``import``.

They run through ``sessiond.cli.main`` in a worker thread (the in-process server shares the
event loop), with output captured: exit codes, messages on stderr, no progress bar when
stderr is not a terminal.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from sessiond.cli import main
from sessiond.v1 import message_pb2, message_service_pb2, session_pb2, session_service_pb2

SQLITE = pytest.mark.parametrize("make_server", ["sqlite"], indirect=True)


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_config_prints_the_effective_configuration(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSIOND_LOG_FORMAT", "json")
    monkeypatch.setenv("SESSIOND_PAGE_TOKEN_KEY", "hush")
    assert main(["config", "--readers", "3"]) == 0
    out = capsys.readouterr().out
    assert "readers = 3  # flag" in out
    assert 'log_format = "json"  # environment' in out
    assert "hush" not in out


def test_bad_settings_exit_2_naming_them(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config_file = tmp_path / "s.toml"
    config_file.write_text("colour = 'blue'\n")
    assert main(["serve", "--config", str(config_file), "--readers", "none"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'colour'" in err
    assert "--readers: 'none' is not an integer" in err


@SQLITE
async def test_backup_export_and_import_from_the_command_line(
    make_server: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server = await make_server()
    await server.sessions.CreateSession(session_service_pb2.CreateSessionRequest(
        session=session_pb2.Session(id="cli", owner_id="ann")))
    await server.messages.AppendMessages(message_service_pb2.AppendMessagesRequest(
        session_id="cli", messages=[message_pb2.Message(role=message_pb2.ROLE_USER,
                                                        content="hello")]))
    database = str(server.database)

    backup = tmp_path / "backup.db"
    code, _, err = await run(capsys, "backup", str(backup), "--database", database)
    assert code == 0 and backup.exists(), err
    assert "\r" not in err  # no progress bar when stderr is not a terminal
    code, _, err = await run(capsys, "backup", str(backup), "--database", database)
    assert code == 1 and "exists" in err

    code, out, err = await run(capsys, "export", "--database", database, "--owner", "ann")
    assert code == 0, err
    assert [json.loads(line)["type"] for line in out.splitlines()] == [
        "header", "session", "message"]
    exported = tmp_path / "export.jsonl"
    exported.write_text(out)

    code, _, err = await run(capsys, "import", str(exported), "--database", database)
    assert code == 1 and "in use" in err  # the server holds it

    fresh = tmp_path / "fresh.db"
    code, _, err = await run(capsys, "import", str(exported), "--database", str(fresh))
    assert code == 0 and "1 new sessions, 1 new messages" in err, err
    code, _, err = await run(capsys, "import", str(exported), "--database", str(fresh))
    assert code == 0 and "0 new sessions, 0 new messages" in err, err
