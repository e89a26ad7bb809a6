"""The operations commands end to end: ``sessiond config``, ``backup``, ``export``, ``import``.

They run through ``sessiond.cli.main`` in a worker thread (the in-process server shares the
event loop), with output captured: exit codes, messages on stderr, no progress bar when
stderr is not a terminal.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sessiond.cli import main
from sessiond.v1 import message_pb2, message_service_pb2, session_pb2, session_service_pb2

SQLITE = pytest.mark.parametrize("make_server", ["sqlite"], indirect=True)
SESSIOND = str(Path(sys.executable).parent / "sessiond")


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


def run_with_terminal_stderr(argv: list[str], stdin: bytes | None) -> tuple[int, str]:
    """Run ``sessiond`` with stderr on a pseudo-terminal (so it draws progress); stdin is
    a pipe fed ``stdin``, or nothing. Returns (exit code, everything written to stderr)."""
    master, slave = os.openpty()
    process = subprocess.Popen(
        [SESSIOND, *argv], stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    if stdin is not None:
        assert process.stdin is not None
        process.stdin.write(stdin)
        process.stdin.close()
    written = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        written += chunk
    os.close(master)
    return process.wait(timeout=60), written.decode()


@SQLITE
async def test_import_progress_counts_what_it_reads_from_files_and_from_stdin(
    make_server: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Regression: progress counted lines but advanced by messages (it stopped at 50%),
    and an import from standard input showed none. It is measured in bytes read now."""
    server = await make_server()
    for number in range(3):
        await server.sessions.CreateSession(session_service_pb2.CreateSessionRequest(
            session=session_pb2.Session(id=f"s{number}")))
        for batch in range(7):  # 700 messages: more than one import chunk
            await server.messages.AppendMessages(message_service_pb2.AppendMessagesRequest(
                session_id=f"s{number}", messages=[
                    message_pb2.Message(role=message_pb2.ROLE_USER, content=f"line {n}")
                    for n in range(batch * 100, batch * 100 + 100)]))
    code, out, err = await run(capsys, "export", "--database", str(server.database))
    assert code == 0, err
    exported = tmp_path / "export.jsonl"
    exported.write_text(out)
    size = exported.stat().st_size

    code, err = await asyncio.to_thread(run_with_terminal_stderr, [
        "import", str(exported), "--database", str(tmp_path / "a.db")], None)
    assert code == 0, err
    frames = [frame.strip() for frame in err.split("\r") if frame.strip()]
    percents = [int(match[1]) for frame in frames if (match := re.search(r"(\d+)%", frame))]
    assert len(percents) > 2 and percents == sorted(percents)
    assert frames[-2].startswith("import [") and frames[-2].endswith(
        f"100% {size:,}/{size:,} bytes")
    assert "3 new sessions, 2100 new messages" in frames[-1]

    code, err = await asyncio.to_thread(run_with_terminal_stderr, [
        "import", "--database", str(tmp_path / "b.db")], exported.read_bytes())
    assert code == 0, err
    frames = [frame.strip() for frame in err.split("\r") if frame.strip()]
    counts = [int(frame.split()[1].replace(",", "")) for frame in frames[:-1]]
    assert len(counts) > 2 and counts == sorted(counts) and counts[-1] == size
    assert "3 new sessions, 2100 new messages" in frames[-1]


def test_config_help_reads_as_written_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    """Defaults as they are (an empty key is "empty", not 'secret'), no Python reprs, a
    paragraph shared by several settings shown once, metavars that name the value."""
    assert main(["config", "--help"]) == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    assert "--page-token-key KEY" in flat
    assert "SESSIOND_PAGE_TOKEN_KEY; default empty)" in flat
    for repr_text in ("PosixPath(", "default None", "default '", "default True",
                      "default False", "default b'"):
        assert repr_text not in flat, repr_text
    assert "SESSIOND_REFLECTION; default on" in flat
    assert "SESSIOND_TLS_CERT_FILE; default none" in flat
    for paragraph in ("the newest keep_revisions revisions are kept",
                      "remove sessions idle longer than ttl", "certificate chain and private key",
                      "connections per replica", "Requests per second each caller"):
        assert flat.lower().count(paragraph.lower()) == 1, paragraph
    for title in ("Change log compaction:", "Retention:", "TLS:", "PostgreSQL only:",
                  "Rate limit (in the [limits] table):"):
        assert title in out.splitlines(), title
    metavars = set(re.findall(r"--[a-z-]+ ([A-Z][A-Z:|]*)\b", out))
    assert metavars <= {"FILE", "PATH", "PATH|URL", "HOST:PORT", "KEY", "N", "NUMBER", "SECONDS",
                        "BYTES", "TEXT"}, metavars
    assert "--durability full|normal" in out and "--address HOST:PORT" in out
