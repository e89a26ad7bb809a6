"""What an operator reads off a running ``sessiond serve``: ``sessiond --version``, the same
version and git revision in the start log line and in the ``sessiond_build_info`` gauge, and
one info line, not a warning per stream, for the watch streams a normal shutdown ends.
"""

from __future__ import annotations

import importlib.metadata
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families
from sessiond.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc
from sessiond.version import build_info

REPO = Path(__file__).resolve().parent.parent
SESSIOND = str(Path(sys.executable).parent / "sessiond")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_version_prints_the_installed_version_and_the_checkouts_revision() -> None:
    printed = subprocess.run([SESSIOND, "--version"], capture_output=True, text=True,
                             timeout=60, check=True).stdout.strip()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()
    version = importlib.metadata.version("sessiond")
    # An editable install asks git at run time; "-dirty" follows uncommitted changes.
    assert printed in (f"sessiond {version} (revision {commit})",
                       f"sessiond {version} (revision {commit}-dirty)"), printed
    build_info.cache_clear()  # computed now, as the command just did
    assert printed == str(build_info())


def test_start_line_metric_and_shutdown_line_name_the_build_and_the_ended_streams(
        server_process: Any) -> None:
    metrics_port = free_port()
    process = server_process(None, "--metrics-address", f"127.0.0.1:{metrics_port}")
    build_info.cache_clear()  # computed now, as the server just did
    build = build_info()
    start_line = next(line for line in process.log_path.read_text().splitlines()
                      if "serving on" in line)
    assert f"version={build.version} git_revision={build.revision}" in start_line

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    [sample] = families["sessiond_build_info"].samples
    assert sample.labels == {"version": build.version, "revision": build.revision}
    assert sample.value == 1

    channel = grpc.insecure_channel(process.address)
    sessions = session_service_pb2_grpc.SessionServiceStub(channel)
    sessions.CreateSession(session_service_pb2.CreateSessionRequest(
        session=session_pb2.Session(id="s")), timeout=30)
    streams = [sessions.WatchSessions(session_service_pb2.WatchSessionsRequest())
               for _ in range(3)]
    for stream in streams:
        next(stream)  # the stream is open on the server
    process.process.send_signal(signal.SIGTERM)
    for stream in streams:
        try:
            for _ in stream:
                pass
        except grpc.RpcError as ended:
            assert ended.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    channel.close()
    assert process.process.wait(timeout=60) == 0

    log = process.log_path.read_text().splitlines()
    assert not [line for line in log if "WARNING" in line and "sessiond.rpc" in line], log
    summaries = [line for line in log if "shutdown ended" in line]
    assert len(summaries) == 1, log
    assert "shutdown ended 3 open calls (WatchSessions 3)" in summaries[0]
