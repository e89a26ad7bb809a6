"""The ``sessiond`` command against real servers: output, exit codes, live streams, serve.

One-shot commands run ``sessiond.cli.main`` in a worker thread (the in-process server needs
the event loop free) and read what it printed; the streaming commands (``watch``,
``messages tail``) and ``serve`` run as real subprocesses, stopped with SIGINT/SIGTERM as a
person would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import sessiond
from conftest import free_port
from sessiond.cli import main
from sessiond.formatting import format_duration, format_money, table
from sessiond.v1 import message_pb2, session_pb2

SESSIOND = str(Path(sys.executable).parent / "sessiond")
LINE_TIMEOUT = 15.0


def user(content: str) -> message_pb2.Message:
    return message_pb2.Message(role=message_pb2.ROLE_USER, content=content)


def assistant(content: str) -> message_pb2.Message:
    return message_pb2.Message(role=message_pb2.ROLE_ASSISTANT, content=content)


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command in a thread; return (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def seed(address: str) -> None:
    """Two sessions with messages and usage, one of them completed."""
    async with sessiond.AsyncClient(address) as client:
        await client.create_session(
            session=session_pb2.Session(
                id="alpha", agent="clamps", channel="cli", model="m1", labels={"team": "a"}
            )
        )
        await client.create_session(
            session=session_pb2.Session(id="beta", agent="other", channel="discord.x")
        )
        await client.append_messages(
            session_id="alpha",
            messages=[user("first question"), assistant("first answer"), user("second")],
        )
        await client.record_usage(
            session_id="alpha",
            model="m1",
            usage=session_pb2.Usage(prompt_tokens=100, completion_tokens=20, cost_micros=1234),
        )
        await client.end_session(session_id="beta", status=session_pb2.SESSION_STATUS_COMPLETED)


# Parsing and output helpers


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in [
        "serve",
        "sessions list",
        "sessions get",
        "sessions end",
        "sessions delete",
        "messages list",
        "messages tail",
        "stats",
        "cost-by-model",
        "watch",
    ]:
        assert f"sessiond {command}" in out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nonsense"],
        ["sessions"],
        ["sessions", "list", "--label", "no-equals"],
        ["sessions", "end", "x", "--status", "active"],
        ["messages", "list", "x", "--last", "2", "--turns", "1"],
        ["--timeout", "-1", "stats"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2


def test_money_and_durations_read_as_people_write_them() -> None:
    assert format_money(1234) == "$0.001234"
    assert format_money(12_345_678_901) == "$12,345.678901"
    assert format_duration(3723) == "1h02m03s"
    assert format_duration(6.5) == "6.5s"
    assert table(["A", "NUM"], [["x", "1"], ["long", "22"]], right=(1,)).splitlines() == [
        "A     NUM",
        "x       1",
        "long   22",
    ]


# One-shot commands


async def test_sessions_list_shows_a_table_and_json(
    server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    await seed(server.address)
    code, out, _ = await run_cli(capsys, "--address", server.address, "sessions", "list")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["ID", "STATUS", "RUNTIME"]
    assert {row.split()[0] for row in rows} == {"alpha", "beta"}
    assert "$0.001234" in out

    code, out, _ = await run_cli(
        capsys, "sessions", "list", "--address", server.address, "--json", "--agent", "clamps"
    )
    assert code == 0
    listed = json.loads(out)
    assert [s["id"] for s in listed["sessions"]] == ["alpha"]
    assert listed["sessions"][0]["usage"]["cost_micros"] == "1234"


async def test_sessions_list_filters_and_limit(
    server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    await seed(server.address)
    address = ["--address", server.address]
    _, out, _ = await run_cli(capsys, *address, "sessions", "list", "--status", "completed")
    assert [row.split()[0] for row in out.splitlines()[1:]] == ["beta"]
    _, out, _ = await run_cli(capsys, *address, "sessions", "list", "--label", "team=a")
    assert [row.split()[0] for row in out.splitlines()[1:]] == ["alpha"]
    _, out, _ = await run_cli(capsys, *address, "sessions", "list", "--search", "second")
    assert [row.split()[0] for row in out.splitlines()[1:]] == ["alpha"]
    _, out, _ = await run_cli(
        capsys, *address, "sessions", "list", "--limit", "1", "--order-by", "started", "--asc"
    )
    lines = out.splitlines()
    assert lines[1].split()[0] == "alpha"
    assert lines[-1] == "(1 of 2 sessions; --limit for more)"


async def test_address_comes_from_the_environment(
    server: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(server.address)
    monkeypatch.setenv("SESSIOND_ADDRESS", server.address)
    code, out, _ = await run_cli(capsys, "sessions", "get", "alpha")
    assert code == 0
    assert "agent:" in out and "clamps" in out


async def test_get_end_delete_a_session(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    await seed(server.address)
    address = ["--address", server.address]
    code, out, _ = await run_cli(
        capsys, *address, "sessions", "end", "alpha", "--status", "failed", "--reason", "boom"
    )
    assert code == 0
    assert "failed" in out and "boom" in out
    code, out, _ = await run_cli(capsys, *address, "--json", "sessions", "get", "alpha")
    assert json.loads(out)["session"]["status"] == "SESSION_STATUS_FAILED"
    code, out, _ = await run_cli(capsys, *address, "sessions", "delete", "alpha")
    assert code == 0 and "deleted alpha with 3 message(s)" in out
    code, out, err = await run_cli(capsys, *address, "sessions", "get", "alpha")
    assert code == 1
    assert out == ""
    assert err.startswith("error: NOT_FOUND ")


async def test_failures_print_code_message_and_field_violations(
    server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await run_cli(
        capsys, "--address", server.address, "sessions", "list", "--channel", "Not A Channel!"
    )
    assert code == 1
    first, *violations = err.splitlines()
    assert first.startswith("error: INVALID_ARGUMENT ")
    assert violations and all(line.startswith("  ") and ": " in line for line in violations)


async def test_unreachable_server_is_an_error_that_names_the_fix(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = await run_cli(capsys, "--address", "127.0.0.1:1", "--timeout", "1", "stats")
    assert code == 1
    assert err.startswith("error: UNAVAILABLE")
    assert "Traceback" not in err
    assert (
        "no sessiond answers at 127.0.0.1:1: start `sessiond serve` or pass --address"
        in err.splitlines()[-1]
    )


async def test_missing_or_unknown_credentials_name_the_fix(
    make_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from principals import Grant, write_key_file

    keys = write_key_file(tmp_path / "keys.toml", [Grant("ops", "default", "admin")])
    server = await make_server(api_keys_file=tmp_path / "keys.toml")
    monkeypatch.delenv("SESSIOND_TOKEN", raising=False)
    code, _, err = await run_cli(capsys, "--address", server.address, "stats")
    assert code == 1 and err.startswith("error: UNAUTHENTICATED")
    assert err.splitlines()[-1] == (
        "the server wants an API key: pass --token or set SESSIOND_TOKEN"
    )
    code, _, err = await run_cli(capsys, "--address", server.address, "--token", "nope", "stats")
    assert code == 1 and "check --token (or SESSIOND_TOKEN)" in err.splitlines()[-1]
    code, out, _ = await run_cli(
        capsys, "--address", server.address, "--token", keys["ops"], "stats"
    )
    assert code == 0 and "sessions:" in out


async def test_errors_write_enum_names_as_the_words_the_cli_takes(
    server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    await seed(server.address)  # beta is completed
    code, _, err = await run_cli(
        capsys, "--address", server.address, "sessions", "end", "beta", "--status", "failed"
    )
    assert code == 1
    assert err.startswith("error: FAILED_PRECONDITION ")
    assert "completed" in err and "SESSION_STATUS_" not in err


async def test_messages_list_modes(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    await seed(server.address)
    address = ["--address", server.address]
    _, out, _ = await run_cli(capsys, *address, "messages", "list", "alpha")
    header, *rows = out.splitlines()
    assert header.split() == ["SEQ", "TIME", "ROLE", "CONTENT"]
    assert [row.split()[0] for row in rows] == ["1", "2", "3"]
    assert "first question" in rows[0]
    _, out, _ = await run_cli(capsys, *address, "messages", "list", "alpha", "--last", "1")
    assert [row.split()[0] for row in out.splitlines()[1:]] == ["3"]
    _, out, _ = await run_cli(
        capsys, *address, "--json", "messages", "list", "alpha", "--turns", "1"
    )
    assert [m["content"] for m in json.loads(out)["messages"]] == ["second"]


async def test_success_rate_is_a_dash_until_a_session_completes_or_fails(
    server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    address = ["--address", server.address]
    async with sessiond.AsyncClient(server.address) as client:
        await client.create_session(session=session_pb2.Session(id="open"))
        _, out, _ = await run_cli(capsys, *address, "stats")
        assert dict(line.split(":", 1) for line in out.splitlines())["success rate"].strip() == "-"
        await client.create_session(session=session_pb2.Session(id="gone"))
        await client.end_session(session_id="gone", status=session_pb2.SESSION_STATUS_CANCELLED)
        _, out, _ = await run_cli(capsys, *address, "stats")
        assert dict(line.split(":", 1) for line in out.splitlines())["success rate"].strip() == "-"
        await client.end_session(session_id="open", status=session_pb2.SESSION_STATUS_FAILED)
    _, out, _ = await run_cli(capsys, *address, "stats")
    assert dict(line.split(":", 1) for line in out.splitlines())["success rate"].strip() == "0.0%"


async def test_stats_and_cost_by_model(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    await seed(server.address)
    address = ["--address", server.address]
    code, out, _ = await run_cli(capsys, *address, "stats")
    assert code == 0
    values = dict(line.split(":", 1) for line in out.splitlines())
    assert values["sessions"].strip() == "2"
    assert values["completed"].strip() == "1"
    assert values["cost"].strip() == "$0.001234"
    code, out, _ = await run_cli(capsys, *address, "cost-by-model")
    header, row = out.splitlines()
    assert header.split()[0] == "MODEL" and row.split()[0] == "m1"
    assert row.split()[-1] == "$0.001234"
    code, out, _ = await run_cli(capsys, *address, "--json", "stats", "--agent", "nobody")
    assert json.loads(out)["stats"].get("session_count", "0") == "0"


# Streaming commands, as subprocesses


async def start_cli(*argv: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        SESSIOND,
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def read_line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), LINE_TIMEOUT)
    assert line, "the command ended early"
    return line.decode().rstrip("\n")


async def test_watch_prints_json_lines_and_exits_0_on_ctrl_c(server: Any) -> None:
    async with sessiond.AsyncClient(server.address) as client:
        start = (await client.create_session(session=session_pb2.Session(id="w0"))).revision
        process = await start_cli(
            "--address", server.address, "watch", "--json", "--start-revision", str(start + 1)
        )
        try:
            await client.create_session(session=session_pb2.Session(id="w1"))
            await client.append_messages(session_id="w1", messages=[user("hi")])
            created = json.loads(await read_line(process))
            appended = json.loads(await read_line(process))
        finally:
            process.send_signal(signal.SIGINT)
            code = await asyncio.wait_for(process.wait(), LINE_TIMEOUT)
    assert (created["type"], created["session_id"]) == ("EVENT_TYPE_SESSION_CREATED", "w1")
    assert appended["type"] == "EVENT_TYPE_MESSAGES_APPENDED"
    assert int(created["revision"]) == start + 1
    assert code == 0


async def test_watch_table_lines_follow_filters(server: Any) -> None:
    async with sessiond.AsyncClient(server.address) as client:
        start = (await client.create_session(session=session_pb2.Session(id="w0"))).revision
        process = await start_cli(
            "--address",
            server.address,
            "watch",
            "--start-revision",
            str(start + 1),
            "--event",
            "session_ended",
        )
        try:
            await client.create_session(session=session_pb2.Session(id="w1"))
            await client.end_session(session_id="w1", status=session_pb2.SESSION_STATUS_CANCELLED)
            line = await read_line(process)
        finally:
            process.send_signal(signal.SIGINT)
            code = await asyncio.wait_for(process.wait(), LINE_TIMEOUT)
    revision, _date, _clock, kind, session_id, *detail = line.split()
    assert (kind, session_id, detail) == ("session_ended", "w1", ["cancelled"])
    assert int(revision) == start + 2  # w1 created at start + 1, ended at start + 2
    assert code == 0


async def test_messages_tail_shows_the_last_messages_then_follows_until_the_end(
    server: Any,
) -> None:
    async with sessiond.AsyncClient(server.address) as client:
        await client.create_session(session=session_pb2.Session(id="t"))
        await client.append_messages(session_id="t", messages=[user("one"), assistant("two")])
        process = await start_cli(
            "--address", server.address, "messages", "tail", "t", "--last", "1"
        )
        first = await read_line(process)
        await client.append_messages(session_id="t", messages=[user("three")])
        second = await read_line(process)
        await client.end_session(session_id="t", status=session_pb2.SESSION_STATUS_COMPLETED)
        last = await read_line(process)
        code = await asyncio.wait_for(process.wait(), LINE_TIMEOUT)
    assert first.startswith("#2 ") and first.endswith("assistant: two")
    assert second.startswith("#3 ") and second.endswith("user: three")
    assert last == "-- session ended: completed"
    assert code == 0


async def test_messages_tail_of_an_ended_session_prints_its_messages_and_exits(
    server: Any,
) -> None:
    async with sessiond.AsyncClient(server.address) as client:
        await client.create_session(session=session_pb2.Session(id="done"))
        await client.append_messages(
            session_id="done", messages=[user("one"), assistant("two"), user("three")]
        )
        await client.end_session(session_id="done", status=session_pb2.SESSION_STATUS_FAILED)
    for last in ("2", "0"):
        process = await start_cli(
            "--address", server.address, "messages", "tail", "done", "--last", last
        )
        out, err = await asyncio.wait_for(process.communicate(), LINE_TIMEOUT)
        lines = out.decode().splitlines()
        assert process.returncode == 0, err
        expected = ["#2 ", "#3 "] if last == "2" else []
        assert [line[:3] for line in lines[:-1]] == expected
        assert lines[-1] == "-- session ended: failed"


async def test_messages_tail_of_a_missing_session_fails(server: Any) -> None:
    process = await start_cli("--address", server.address, "messages", "tail", "missing")
    _, err = await asyncio.wait_for(process.communicate(), LINE_TIMEOUT)
    assert process.returncode == 1
    assert err.decode().startswith("error: NOT_FOUND")


async def test_watch_says_when_it_connects_reconnects_and_resumes(
    make_server: Any, tmp_path: Path
) -> None:
    """Nothing is running at first: the watch says it is connecting and retrying; a
    server comes up, goes away and comes back on the same database: each step is one
    line on stderr, and no event is lost or repeated on stdout."""
    from harness import FakeClock

    port = free_port()
    address = f"127.0.0.1:{port}"
    process = await start_cli("--address", address, "watch", "--json", "--start-revision", "1")
    assert process.stderr is not None
    try:
        assert await read_err_line(process) == f"-- connecting to {address}"
        assert await read_err_line(process) == (
            f"-- reconnecting to {address} (attempt 1): no sessiond answers; "
            "start `sessiond serve` or pass --address"
        )
        clock = FakeClock()
        first = await make_server(address=address, database=tmp_path / "w.db", clock=clock)
        async with sessiond.AsyncClient(address) as client:
            await client.create_session(session=session_pb2.Session(id="before"))
        line = await read_err_line(process, skip=" (attempt ")
        assert line == "-- resumed at revision 1"
        assert json.loads(await read_line(process))["session_id"] == "before"
        await first.close()
        assert await read_err_line(process) == f"-- reconnecting to {address} (attempt 1)"
        second = await make_server(address=address, database=tmp_path / "w.db", clock=clock)
        async with sessiond.AsyncClient(second.address) as client:
            await client.create_session(session=session_pb2.Session(id="after"))
        line = await read_err_line(process, skip=" (attempt ")
        assert line == "-- resumed at revision 2"
        assert json.loads(await read_line(process))["session_id"] == "after"
    finally:
        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), LINE_TIMEOUT)
    assert code == 0


async def read_err_line(process: asyncio.subprocess.Process, skip: str = "") -> str:
    """The next line on stderr, passing over lines that contain ``skip`` (retries)."""
    assert process.stderr is not None
    while True:
        line = await asyncio.wait_for(process.stderr.readline(), LINE_TIMEOUT)
        assert line, "the command ended early"
        text = line.decode().rstrip("\n")
        if not skip or skip not in text:
            return text


def test_python_m_sessiond_cli_runs_the_command() -> None:
    """Regression: `python -m sessiond.cli` failed with NameError (run_dashboard)."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "sessiond.cli", "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "sessiond dashboard" in done.stdout


# Shell completion


BASH_COMPLETE = """
eval "$(sessiond completion bash)"
complete_line() {  # what bash does on <Tab>: the words so far, the cursor at the end
    COMP_LINE="$1"; COMP_POINT=${#COMP_LINE}
    read -r -a COMP_WORDS <<< "$COMP_LINE"
    [[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
    COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
    COMPREPLY=()
    _python_argcomplete sessiond "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
    echo "$(printf '%s ' "${COMPREPLY[@]}")"
}
"""


def bash_completions(*lines: str) -> list[list[str]]:
    """The completions bash offers for each command line, in a real bash."""
    import subprocess

    script = BASH_COMPLETE + "".join(f"complete_line {json.dumps(line)}\n" for line in lines)
    done = subprocess.run(
        ["bash", "--norc", "-c", script],
        capture_output=True, text=True, timeout=120, check=True,
        env={**os.environ, "PATH": f"{Path(SESSIOND).parent}:{os.environ['PATH']}"},
    )
    return [line.split() for line in done.stdout.splitlines()]


async def test_bash_completes_commands_flags_choices_and_session_ids(server: Any) -> None:
    await seed(server.address)
    address = f"sessiond --address {server.address}"
    commands, statuses, flags, ids, watched = await asyncio.to_thread(
        bash_completions,
        "sessiond mess",
        "sessiond sessions end x --status ",
        "sessiond messages tail alpha --l",
        f"{address} sessions get al",
        f"{address} watch --session b",
    )
    assert commands == ["messages"]
    assert sorted(statuses) == ["cancelled", "completed", "failed"]
    assert flags == ["--last"]
    assert ids == ["alpha"]
    assert watched == ["beta"]


def test_zsh_completion_script_and_answers(capsys: pytest.CaptureFixture[str]) -> None:
    """No zsh here: check the script it sources, then ask sessiond the way that script does
    (argcomplete's protocol, with zsh's "word:description" answers)."""
    import subprocess

    assert main(["completion", "zsh"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#compdef sessiond")
    line = "sessiond sessions "
    done = subprocess.run(
        [SESSIOND], capture_output=True, timeout=60, check=False, pass_fds=(),
        env={**os.environ, "_ARGCOMPLETE": "1", "_ARGCOMPLETE_SHELL": "zsh",
             "_ARGCOMPLETE_SUPPRESS_SPACE": "1", "COMP_LINE": line,
             "COMP_POINT": str(len(line)), "_ARGCOMPLETE_STDOUT_FILENAME": "/dev/stdout"},
    )
    answers = dict(item.split(":", 1) for item in done.stdout.decode().split("\013"))
    assert {"list", "get", "end", "delete"} <= set(answers)
    assert answers["end"] == "end a session with a status"


# serve


def test_serve_runs_the_server_and_exits_cleanly_on_sigterm(
    server_process: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    proc = server_process()
    assert main(["--address", proc.address, "sessions", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out).get("sessions", []) == []
    assert proc.terminate() == 0
