"""The artifacts an operator installs: the wheel, and the container image built here without a
registry (scripts/build_image.sh) and run with podman.

The wheel without extras is the client and the command line; ``serve`` there says which extra
brings the server.

It must refuse to listen beyond loopback without API keys and TLS, and with them serve:
health SERVING over TLS, and one authenticated RPC that writes to the database on its volume,
as the image's non-root user. Marked ``image`` (root, podman, a few minutes on the first build
while debootstrap fills its cache): ``make test`` leaves it out, ``make test-image`` and CI's own
step run it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sessiond.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc

pytestmark = [
    pytest.mark.image,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(os.geteuid() != 0, reason="building and running the image needs root"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl"),
]

REPO = Path(__file__).resolve().parent.parent
IMAGE_UID = 10001
PROCESS_TIMEOUT = 120  # seconds a container may take to refuse, or to start serving


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_image(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(REPO / "scripts" / "run_image.sh"), *args],
                          capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def image() -> str:
    built = subprocess.run(["bash", str(REPO / "scripts" / "build_image.sh")],
                           capture_output=True, text=True, timeout=1500,
                           env={**os.environ, "PYTHON": sys.executable})
    assert built.returncode == 0, built.stderr[-4000:]
    return built.stdout.strip().splitlines()[-1]


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    """A TLS certificate for 127.0.0.1 and an API key file, readable by the image's user."""
    d = tmp_path / "secrets"
    d.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=sessiond", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", "tls.key", "-out", "tls.crt"], cwd=d, check=True,
                   capture_output=True)
    minted = subprocess.run([str(Path(sys.executable).parent / "sessiond"), "keys", "mint",
                             "--tenant", "acme", "--role", "admin"], capture_output=True,
                            text=True, check=True)
    key = next(line.removeprefix("# ").strip() for line in minted.stdout.splitlines()[1:]
               if line.startswith("# ") and len(line.strip()) > 20)
    (d / "keys.toml").write_text(minted.stdout)
    (d / "api-key").write_text(key)
    for path in (d, *d.iterdir()):
        os.chown(path, IMAGE_UID, IMAGE_UID)
    return d


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    os.chown(d, IMAGE_UID, IMAGE_UID)  # the volume, owned by the image's non-root user
    return d


@contextlib.contextmanager
def container(image: str, *args: str, volumes: dict[Path, str]) -> Iterator[str]:
    name = f"sessiond-test-{uuid.uuid4().hex[:8]}"
    mounts = [f"--volume={host}:{inside}" for host, inside in volumes.items()]
    started = run_image("--detach", "--name", name, "--network", "host", *mounts, image,
                        *args, timeout=PROCESS_TIMEOUT)
    assert started.returncode == 0, started.stderr
    try:
        yield name
    finally:
        subprocess.run(["podman", "stop", "--time", "20", name], capture_output=True,
                       timeout=PROCESS_TIMEOUT)
        subprocess.run(["podman", "rm", "--force", name], capture_output=True,
                       timeout=PROCESS_TIMEOUT)


def logs(name: str) -> str:
    out = subprocess.run(["podman", "logs", name], capture_output=True, text=True, timeout=60)
    return out.stdout + out.stderr


def test_the_wheel_without_extras_is_the_client_and_names_the_server_extra(
        tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(tmp_path / "dist"), str(REPO)], check=True, timeout=600)
    [wheel] = (tmp_path / "dist").glob("sessiond-*.whl")
    venv = tmp_path / "client-only"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)], check=True,
                   timeout=900)
    installed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=freeze"],
                               capture_output=True, text=True, check=True).stdout.lower()
    for server_only in ("aiosqlite", "prometheus-client", "asyncpg", "grpcio-health-checking"):
        assert server_only not in installed, installed
    sessiond = str(venv / "bin" / "sessiond")
    version = subprocess.run([sessiond, "--version"], capture_output=True, text=True,
                             check=True).stdout
    assert version.startswith("sessiond ") and "revision" in version
    assert "unknown" not in version  # the wheel recorded the revision it was built from
    listing = subprocess.run([sessiond, "sessions", "--help"], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    serve = subprocess.run([sessiond, "serve"], capture_output=True, text=True, timeout=60)
    assert serve.returncode == 1
    assert serve.stderr.strip() == ("sessiond: error: the server is not installed; "
                                    "pip install 'sessiond[server]'")


def test_the_image_refuses_to_serve_beyond_loopback_without_keys_and_tls(
        image: str, data_dir: Path) -> None:
    refused = run_image("--rm", "--network", "host", f"--volume={data_dir}:/var/lib/sessiond",
                        image, timeout=PROCESS_TIMEOUT)
    assert refused.returncode == 1, refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("sessiond: error")]
    assert len(errors) == 1 and "--insecure" in errors[0], refused.stderr
    assert list(data_dir.iterdir()) == []  # refused before the database was touched


def test_the_image_serves_health_and_rpcs_over_tls_as_a_non_root_user(
        image: str, secrets_dir: Path, data_dir: Path) -> None:
    port = free_port()
    with container(image, "serve", f"--address=0.0.0.0:{port}",
                   "--api-keys-file=/etc/sessiond/secrets/keys.toml",
                   "--tls-cert-file=/etc/sessiond/secrets/tls.crt",
                   "--tls-key-file=/etc/sessiond/secrets/tls.key",
                   volumes={data_dir: "/var/lib/sessiond",
                            secrets_dir: "/etc/sessiond/secrets:ro"}) as name:
        credentials = grpc.ssl_channel_credentials((secrets_dir / "tls.crt").read_bytes())
        token = (secrets_dir / "api-key").read_text().strip()
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + PROCESS_TIMEOUT
            while True:  # bounded wait for the start, not a timing assertion
                with contextlib.suppress(grpc.RpcError):
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        break
                assert time.monotonic() < deadline, logs(name)
                time.sleep(0.2)
            sessions = session_service_pb2_grpc.SessionServiceStub(channel)
            auth = (("authorization", f"Bearer {token}"),)
            sessions.CreateSession(session_service_pb2.CreateSessionRequest(
                session=session_pb2.Session(id="in-a-container", agent="probe")),
                metadata=auth, timeout=30)
            got = sessions.GetSession(session_service_pb2.GetSessionRequest(
                session_id="in-a-container"), metadata=auth, timeout=30)
            assert got.session.agent == "probe"
            with pytest.raises(grpc.RpcError) as unauthenticated:
                sessions.GetSession(session_service_pb2.GetSessionRequest(
                    session_id="in-a-container"), timeout=30)
            assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        whoami = subprocess.run(["podman", "exec", name, "id", "-u"], capture_output=True,
                                text=True, timeout=60)
        assert whoami.stdout.strip() == str(IMAGE_UID), whoami.stderr
        # The probe the Kubernetes manifests run (deploy/kubernetes): health over TLS.
        probe = subprocess.run(["podman", "exec", name, "grpc_health_probe",
                                f"-addr=127.0.0.1:{port}", "-tls", "-tls-no-verify"],
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode == 0, probe.stdout + probe.stderr
        assert "status: SERVING" in probe.stdout + probe.stderr
        started_line = next(line for line in logs(name).splitlines() if "serving on" in line)
        assert "version=" in started_line and "git_revision=" in started_line
    database = data_dir / "sessiond.db"
    assert database.stat().st_uid == IMAGE_UID  # written on the volume by the non-root user
