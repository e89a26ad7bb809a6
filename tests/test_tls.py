"""TLS, mutual TLS, and the refusal to listen beyond loopback unprotected.

Throwaway certificates come from the ``openssl`` command (a CA, a server certificate for
localhost, a client certificate from that CA, and one from a rogue CA).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from principals import Caller, Grant, write_key_file
from sessiond.v1 import session_service_pb2

ss = session_service_pb2

pytestmark = [
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl"),
    # Transport security does not depend on the storage backend.
    pytest.mark.parametrize("make_server", ["sqlite"], indirect=True),
]


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path

    def client(self, *, cert: Path | None = None, key: Path | None = None
               ) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=key.read_bytes() if key else None,
            certificate_chain=cert.read_bytes() if cert else None)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(directory: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem",
             cwd=directory)


def _leaf(directory: Path, name: str, ca: str, extensions: str) -> None:
    (directory / f"{name}.ext").write_text(extensions)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
             cwd=directory)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "rogue-ca")
    _leaf(d, "server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
          "extendedKeyUsage=serverAuth\n")
    _leaf(d, "client", "ca", "extendedKeyUsage=clientAuth\n")
    _leaf(d, "rogue", "rogue-ca", "extendedKeyUsage=clientAuth\n")
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem",
               d / "client.key", d / "rogue.pem", d / "rogue.key")


def local(server: Any) -> str:
    return f"localhost:{server.running.port}"


async def answers(caller: Caller) -> grpc.StatusCode:
    """OK when a call gets through, else the code the client saw."""
    try:
        await caller.sessions.ListSessions(ss.ListSessionsRequest(), timeout=10)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    finally:
        await caller.close()
    return grpc.StatusCode.OK


async def test_a_tls_server_answers_clients_that_trust_its_ca_and_not_plaintext(
        make_server: Any, pki: Pki) -> None:
    server = await make_server(tls_cert_file=pki.server_cert, tls_key_file=pki.server_key)
    assert await answers(Caller(local(server), credentials=pki.client())) == grpc.StatusCode.OK
    assert await answers(Caller(local(server))) == grpc.StatusCode.UNAVAILABLE


async def test_a_client_that_does_not_trust_the_servers_ca_is_refused(
        make_server: Any, pki: Pki) -> None:
    server = await make_server(tls_cert_file=pki.server_cert, tls_key_file=pki.server_key)
    untrusting = grpc.ssl_channel_credentials(root_certificates=pki.rogue_cert.read_bytes())
    assert await answers(Caller(local(server), credentials=untrusting)) == \
        grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca(
        make_server: Any, pki: Pki) -> None:
    server = await make_server(tls_cert_file=pki.server_cert, tls_key_file=pki.server_key,
                               tls_client_ca_file=pki.ca)
    good = pki.client(cert=pki.client_cert, key=pki.client_key)
    assert await answers(Caller(local(server), credentials=good)) == grpc.StatusCode.OK
    assert await answers(Caller(local(server), credentials=pki.client())) == \
        grpc.StatusCode.UNAVAILABLE
    rogue = pki.client(cert=pki.rogue_cert, key=pki.rogue_key)
    assert await answers(Caller(local(server), credentials=rogue)) == \
        grpc.StatusCode.UNAVAILABLE


async def test_tls_and_api_keys_together_beyond_loopback(make_server: Any, pki: Pki,
                                                        tmp_path: Path) -> None:
    keys = write_key_file(tmp_path / "keys.toml", [Grant("r", "t", "reader", "r")])
    server = await make_server(address="0.0.0.0:0", api_keys_file=tmp_path / "keys.toml",
                               tls_cert_file=pki.server_cert, tls_key_file=pki.server_key)
    assert await answers(Caller(local(server), keys["r"], credentials=pki.client())) == \
        grpc.StatusCode.OK
    assert await answers(Caller(local(server), credentials=pki.client())) == \
        grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("with_keys, with_tls", [(False, False), (True, False), (False, True)])
async def test_listening_beyond_loopback_unprotected_is_refused_before_the_database_opens(
        make_server: Any, pki: Pki, tmp_path: Path, with_keys: bool, with_tls: bool) -> None:
    from sessiond_server.auth import InsecureExposure

    extra: dict[str, Any] = {}
    if with_keys:
        write_key_file(tmp_path / "keys.toml", [Grant("r", "t", "reader", "r")])
        extra["api_keys_file"] = tmp_path / "keys.toml"
    if with_tls:
        extra.update(tls_cert_file=pki.server_cert, tls_key_file=pki.server_key)
    database = tmp_path / "never.db"
    with pytest.raises(InsecureExposure, match="--insecure"):
        await make_server(address="0.0.0.0:0", database=database, **extra)
    assert not database.exists()


async def test_insecure_listens_beyond_loopback_and_says_so_loudly(
        make_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    server = await make_server(address="0.0.0.0:0", insecure=True)
    warnings = [r for r in caplog.records if "INSECURE" in r.getMessage()]
    assert len(warnings) >= 1 and all(r.levelno == logging.WARNING for r in warnings)
    assert "without API keys and TLS" in warnings[0].getMessage()
    assert await answers(Caller(local(server))) == grpc.StatusCode.OK


@pytest.mark.parametrize("fields, complaint", [
    ({"tls_cert_file": "server"}, "both"),
    ({"tls_client_ca_file": "ca"}, "client CA"),
    ({"tls_cert_file": "server", "tls_key_file": "missing"}, "cannot read"),
])
async def test_incomplete_tls_settings_refuse_to_start(make_server: Any, pki: Pki,
                                                       fields: dict[str, str], complaint: str
                                                       ) -> None:
    from sessiond_server.auth import KeyFileError

    paths = {"server": pki.server_cert, "ca": pki.ca, "missing": pki.ca.parent / "nope.key"}
    with pytest.raises(KeyFileError, match=complaint):
        await make_server(**{k: paths[v] for k, v in fields.items()})
