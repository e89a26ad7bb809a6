"""API keys, principals and the per-call gate: who is calling and what they may do.

Why API keys stored as SHA-256 hashes: keys are minted here as 256 random
bits, so a fast unsalted hash is as strong as a slow salted one (there is
nothing to guess from a dictionary) and lets the server find a key with one
dictionary lookup per call instead of comparing against every entry. A stolen
key file lets nobody call the server. Keys a person chose would need a slow
salted hash instead; the key file accepts only hashes, and ``mint`` is the
way to make keys, so that case does not arise.

The gate (:class:`CallerGate`, a grpc.aio server interceptor) runs before
every ``sessiond.v1`` call:

1. authenticate ``authorization: Bearer <key>``: missing or unknown is
   UNAUTHENTICATED, before the request is even parsed;
2. authorise the method by role (table :data:`METHOD_ROLES`; a method missing
   from it is admin-only, so a new RPC fails closed): PERMISSION_DENIED;
3. take a token from the caller's rate bucket: RESOURCE_EXHAUSTED with a
   google.rpc.RetryInfo;
4. check what a non-admin write asks to own (``owner_id``, ``dataset_id``);
5. set the call's store :class:`Scope`, which ``ApiContext.scope`` hands to
   the store; the store filters every query by it.

Health and reflection are not ``sessiond.v1`` methods and pass untouched.
Keys are never logged; a principal is logged by its key's ``name``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import json
import logging
import re
import secrets
import sys
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from .config import ServerConfig
from .ratelimit import RateLimiter
from .store import Scope

log = logging.getLogger(__name__)

DRAIN_LINGER_SECONDS = 0.2

DOMAIN = "sessiond.v1"
KEY_PREFIX = "sk_sessiond_"
ROLES = ("reader", "writer", "admin")
_RANK = {role: rank for rank, role in enumerate(ROLES)}
_HEX64 = re.compile(r"[0-9a-f]{64}")
API_PACKAGE = "/sessiond.v1."

#: The least role each RPC needs. Reads need reader, writes writer, and the
#: two RPCs that act on sessions by criteria rather than by id (and so would
#: silently act on only part of what the caller named if scoped) need admin.
METHOD_ROLES: dict[str, str] = {
    f"/sessiond.v1.{service}/{method}": role
    for service, methods in {
        "SessionService": {
            "CreateSession": "writer", "GetSession": "reader", "UpdateSession": "writer",
            "DeleteSession": "writer", "ListSessions": "reader", "TouchSession": "writer",
            "EndSession": "writer", "SetRuntimeState": "writer", "ForkSession": "writer",
            "ReconcileSessions": "admin", "PurgeSessions": "admin",
            "WatchSessions": "reader",
            "GetSharedState": "reader", "UpdateSharedState": "writer",
        },
        "MessageService": {
            "AppendMessages": "writer", "ListMessages": "reader", "PopMessage": "writer",
            "UpdateLastMessage": "writer", "ClearMessages": "writer",
            "ReplaceMessages": "writer", "DeleteMessages": "writer",
            "SearchMessages": "reader",
        },
        "StatsService": {
            "RecordUsage": "writer", "GetStats": "reader", "CostByModel": "reader",
        },
    }.items()
    for method, role in methods.items()
}

#: The call's scope, set by the gate for the handler it wraps.
CALL_SCOPE: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "sessiond_call_scope", default=None)
#: Violations the gate found anywhere in the request (see request_violations),
#: added to the handler's own by validation.Checker.done.
REQUEST_VIOLATIONS: contextvars.ContextVar[tuple[tuple[str, str], ...]] = (
    contextvars.ContextVar("sessiond_request_violations", default=()))


def hash_key(key: str) -> str:
    """The hex SHA-256 of an API key: what the key file stores instead of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


def mint_key() -> tuple[str, str]:
    """A new random API key (256 bits) and its hash."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_key(key)


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who a key speaks for."""

    name: str
    tenant: str
    user_id: str
    dataset_ids: frozenset[str]
    role: str

    def allows(self, role: str) -> bool:
        return _RANK[self.role] >= _RANK[role]

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def read_scope(self) -> Scope:
        """Admins see the whole tenant; others their own sessions and granted datasets."""
        return Scope(tenant=self.tenant, user_id=self.user_id, dataset_ids=self.dataset_ids,
                     sees_all=self.is_admin)

    def write_scope(self) -> Scope:
        """Dataset grants are for reading: non-admins write only sessions they own."""
        return Scope(tenant=self.tenant, user_id=self.user_id,
                     dataset_ids=frozenset() if not self.is_admin else self.dataset_ids,
                     sees_all=self.is_admin)


class KeyFileError(ValueError):
    """The API key file is missing, malformed, or grants something impossible."""


def load_api_keys(path: Path) -> dict[str, Principal]:
    """Principals by key hash, from a TOML (``[[keys]]``) or JSON (``{"keys": [...]}``) file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise KeyFileError(f"cannot read API key file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if Path(path).suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise KeyFileError(f"API key file {path} is not valid: {exc}") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise KeyFileError(f"API key file {path} must hold a list named 'keys'")
    found: dict[str, Principal] = {}
    names: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{path}: keys[{i}]"
        if not isinstance(entry, dict):
            raise KeyFileError(f"{where} is not a table")
        unknown = set(entry) - {"name", "sha256", "tenant", "user_id", "dataset_ids", "role"}
        if unknown:
            raise KeyFileError(f"{where} has unknown fields {sorted(unknown)}")
        digest = str(entry.get("sha256", "")).lower()
        if not _HEX64.fullmatch(digest):
            raise KeyFileError(f"{where}.sha256 must be the 64 hex digits of the key's "
                               "SHA-256 (keys themselves never go in this file)")
        if digest in found:
            raise KeyFileError(f"{where} repeats a key hash")
        name = str(entry.get("name", "")) or f"key-{digest[:8]}"
        if name in names:
            raise KeyFileError(f"{where}.name {name!r} is used twice")
        role = entry.get("role", "")
        if role not in ROLES:
            raise KeyFileError(f"{where}.role must be one of {', '.join(ROLES)}")
        tenant = entry.get("tenant", "")
        if not isinstance(tenant, str) or not tenant:
            raise KeyFileError(f"{where}.tenant is required")
        user_id = entry.get("user_id", "")
        datasets = entry.get("dataset_ids", [])
        if not isinstance(user_id, str) or not isinstance(datasets, list) or not all(
                isinstance(d, str) and d for d in datasets):
            raise KeyFileError(f"{where}: user_id is a string, dataset_ids a list of strings")
        if role == "writer" and not user_id:
            raise KeyFileError(f"{where}: a writer needs a user_id to own what it creates")
        if role == "reader" and not user_id and not datasets:
            raise KeyFileError(f"{where}: a reader without user_id or dataset_ids sees nothing")
        names.add(name)
        found[digest] = Principal(name, tenant, user_id, frozenset(datasets), role)
    return found


def bearer_key(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The key of ``authorization: Bearer <key>``, or None."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def denial(code: grpc.StatusCode, reason: str, message: str,
           retry_after: float | None = None) -> grpc.Status:
    """A google.rpc.Status with ErrorInfo, and RetryInfo when ``retry_after`` is given."""
    details = [_pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN))]
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(1_000_000, int(retry_after * 1e9)))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return rpc_status.to_status(status_pb2.Status(
        code=getattr(code_pb2, code.name), message=message, details=details))


class Denied(Exception):
    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.details)
        self.status = status


def check_ownership(principal: Principal, method: str, request: Any) -> None:
    """What a non-admin write may claim: its own user as owner, a granted dataset;
    and which shared states a non-admin may read or change: the application's
    (user_id empty) and its own user's, never another user's.

    An empty owner on a created session becomes the caller's user_id, so the
    caller can see what it created.
    """
    if principal.is_admin:
        return
    name = method.rsplit("/", 1)[-1]
    if name in ("GetSharedState", "UpdateSharedState"):
        _check_user_state(principal, "user_id", request.user_id)
    if name in ("CreateSession", "AppendMessages"):
        for i, shared in enumerate(request.shared_state_deltas):
            _check_user_state(principal, f"shared_state_deltas[{i}].user_id", shared.user_id)
    if name in ("CreateSession", "TouchSession"):
        session, paths = request.session, ("owner_id", "dataset_id")
        if not session.owner_id:
            session.owner_id = principal.user_id
    elif name == "UpdateSession":
        session = request.session
        paths = tuple(p for p in request.update_mask.paths if p in ("owner_id", "dataset_id"))
    else:
        return
    if "owner_id" in paths and session.owner_id != principal.user_id:
        raise Denied(denial(grpc.StatusCode.PERMISSION_DENIED, "OWNER_NOT_ALLOWED",
                            "session.owner_id must be your own user id"))
    if "dataset_id" in paths and session.dataset_id and \
            session.dataset_id not in principal.dataset_ids:
        raise Denied(denial(grpc.StatusCode.PERMISSION_DENIED, "DATASET_NOT_ALLOWED",
                            "session.dataset_id must be a dataset you are granted"))


def _check_user_state(principal: Principal, field: str, user_id: str) -> None:
    if user_id and user_id != principal.user_id:
        raise Denied(denial(grpc.StatusCode.PERMISSION_DENIED, "OWNER_NOT_ALLOWED",
                            f"{field} must be empty (the application's state) or your own"
                            " user id"))


def peer_host(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's address without the port ("ipv4:127.0.0.1:5000" -> "ipv4:127.0.0.1")."""
    peer = context.peer() or "unknown"
    return peer.rsplit(":", 1)[0] if peer.count(":") > 1 else peer


Gate = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]


class CallerGate(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authentication, authorisation, rate limit and scope for every sessiond.v1 call.

    ``keys`` None means authentication is off: every caller is the default
    tenant's admin, limited by its peer address. ``limiter`` None means no
    rate limit.
    """

    def __init__(self, keys: dict[str, Principal] | None,
                 limiter: RateLimiter | None) -> None:
        self.keys = keys
        self.limiter = limiter
        # Shutdown: once draining, new calls get UNAVAILABLE (retryable) from
        # here rather than whatever the transport says when the server stops
        # under them; ``in_flight`` counts the calls already past the gate.
        self.draining = False
        self.in_flight = 0
        self._wrapped: dict[tuple[str, Principal | None], tuple[Any, Any]] = {}
        self._idle = asyncio.Event()

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()

    async def drain(self, seconds: float) -> None:
        """Refuse new calls and wait (at most ``seconds``) for those in flight."""
        self.draining = True
        if self.in_flight:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), seconds)
        # Calls already on the wire still reach the gate and get their
        # retryable UNAVAILABLE, instead of being cut off by the transport.
        await asyncio.sleep(min(DRAIN_LINGER_SECONDS, seconds))

    def authenticate(self, metadata: Sequence[tuple[str, Any]] | None) -> Principal | None:
        if self.keys is None:
            return None
        key = bearer_key(metadata)
        principal = self.keys.get(hash_key(key)) if key else None
        if principal is None:
            raise Denied(denial(grpc.StatusCode.UNAUTHENTICATED,
                                "UNAUTHENTICATED" if key is None else "UNKNOWN_API_KEY",
                                "send 'authorization: Bearer <api key>'" if key is None
                                else "the API key is not known"))
        return principal

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler[Any, Any]]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        method = details.method
        handler = await continuation(details)
        if handler is None or not method.startswith(API_PACKAGE):
            return handler
        if self.draining:
            return _rejection(handler, denial(  # type: ignore[no-any-return]
                grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN",
                "the server is shutting down; retry shortly or on another replica"))
        try:
            principal = self.authenticate(details.invocation_metadata)
            needed = METHOD_ROLES.get(method, "admin")
            if principal is not None and not principal.allows(needed):
                raise Denied(denial(
                    grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED",
                    f"{method.rsplit('/', 1)[-1]} needs the {needed} role; "
                    f"this key has {principal.role}"))
        except Denied as denied:
            log.info("denied %s: %s", method, denied.status.details)
            return _rejection(handler, denied.status)  # type: ignore[no-any-return]
        # The wrapped handler depends only on the method's handler and the principal,
        # so it is built once per (method, principal) rather than once per call; the
        # table is bounded by the methods times the configured keys.
        cached = self._wrapped.get((method, principal))
        if cached is not None and cached[0] is handler:
            return cached[1]  # type: ignore[no-any-return]
        scope = (Scope() if principal is None else
                 principal.write_scope() if needed != "reader" else principal.read_scope())
        wrapped = _wrap(cast(Any, handler)._replace(
            request_deserializer=_tolerant(handler.request_deserializer)),
            self._gate(method, principal, scope), self)
        self._wrapped[(method, principal)] = (handler, wrapped)
        return wrapped  # type: ignore[no-any-return]

    def _gate(self, method: str, principal: Principal | None, scope: Scope) -> Gate:
        limiter = self.limiter

        async def gate(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            try:
                if limiter is not None:
                    caller = (f"key:{principal.name}" if principal is not None
                              else peer_host(context))
                    wait = limiter.acquire(caller)
                    if wait:
                        raise Denied(denial(
                            grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED",
                            f"more than {limiter.rate:g} requests per second; retry in "
                            f"{wait:.3f} s", retry_after=wait))
                if isinstance(request, Malformed):
                    raise Denied(denial(grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST",
                                        "the request is not a valid protobuf message of "
                                        "its type"))
                # Reported with the handler's own violations (Checker.done), so one
                # answer still names every bad field.
                REQUEST_VIOLATIONS.set(tuple(request_violations(request)))
                if principal is not None:
                    check_ownership(principal, method, request)
            except Denied as denied:
                await context.abort_with_status(denied.status)  # type: ignore[attr-defined]
            CALL_SCOPE.set(scope)

        return gate


TIMESTAMP = "google.protobuf.Timestamp"
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799  # 0001-01-01 .. 9999-12-31


def request_violations(message: Any) -> list[tuple[str, str]]:
    """Values no handler can use, wherever they sit in a request.

    * a Timestamp outside 0001-01-01..9999-12-31 or with bad nanos: protobuf
      refuses to convert it (ValueError), which a handler would surface as UNKNOWN;
    * a NUL character in a string: PostgreSQL cannot store one in text or JSON,
      and FTS5 ends a query string at it.

    Checked here once for every request and every field, including fields
    added later, so no handler can forget them. Every call pays for it, so it
    is cheap when nothing is wrong: a string holding NUL puts a zero byte on the
    wire, so a request whose encoding has none skips the string walk (one C
    serialisation and a memchr), and only fields whose type can hold a
    Timestamp are visited for the timestamp rule.
    """
    if not isinstance(message, ProtoMessage):
        return []
    found: list[tuple[str, str]] = []
    if b"\x00" in message.SerializeToString():
        _walk(message, "", found)
    else:
        _timestamps(message, "", found)
    return found


@functools.cache
def _timestamp_fields(descriptor: Descriptor) -> tuple[tuple[str, bool, bool], ...]:
    """(name, repeated, map) of the fields of this type that can hold a Timestamp."""
    return tuple((f.name, f.is_repeated, f.message_type.GetOptions().map_entry)
                 for f in descriptor.fields
                 if f.message_type is not None and _holds_timestamp(f.message_type))


@functools.cache
def _holds_timestamp(descriptor: Descriptor) -> bool:
    """Whether a message of this type can hold a Timestamp at any depth."""
    seen: set[str] = set()
    pending = [descriptor]
    while pending:
        current = pending.pop()
        if current.full_name == TIMESTAMP:
            return True
        if current.full_name in seen:
            continue
        seen.add(current.full_name)
        pending.extend(f.message_type for f in current.fields if f.message_type is not None)
    return False


def _bad_timestamp(stamp: Any) -> bool:
    return not (MIN_SECONDS <= stamp.seconds <= MAX_SECONDS
                and 0 <= stamp.nanos < 1_000_000_000)


TIMESTAMP_MESSAGE = "must be between 0001-01-01 and 9999-12-31 with nanos in [0, 999999999]"


def _timestamps(message: Any, prefix: str, found: list[tuple[str, str]]) -> None:
    """The Timestamp violations under ``message``, visiting only fields that can hold one."""
    if message.DESCRIPTOR.full_name == TIMESTAMP:
        if _bad_timestamp(message):
            found.append((prefix.removesuffix("."), TIMESTAMP_MESSAGE))
        return
    for name, repeated, is_map in _timestamp_fields(message.DESCRIPTOR):
        if is_map:
            for k, v in getattr(message, name).items():
                _timestamps(v, f"{prefix}{name}[{k!r}].", found)
        elif repeated:
            for i, item in enumerate(getattr(message, name)):
                _timestamps(item, f"{prefix}{name}[{i}].", found)
        elif message.HasField(name):
            _timestamps(getattr(message, name), f"{prefix}{name}.", found)


def _walk(message: Any, prefix: str, found: list[tuple[str, str]]) -> None:
    """Every violation under ``message``: its strings and its Timestamps."""
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.message_type is None:
            if field.type == FieldDescriptor.TYPE_STRING:
                texts = list(value) if field.is_repeated else [value]
                if any("\x00" in t for t in texts):
                    found.append((path, NUL_MESSAGE))
            continue
        if field.message_type.GetOptions().map_entry:
            if any("\x00" in k for k in value if isinstance(k, str)):
                found.append((path, NUL_MESSAGE))
            entries = []
            for k, v in value.items():
                if isinstance(v, ProtoMessage):
                    entries.append((f"{path}[{k!r}]", v))
                elif isinstance(v, str) and "\x00" in v:
                    found.append((f"{path}[{str(k)[:64]!r}]", NUL_MESSAGE))
        elif field.is_repeated:
            entries = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
        else:
            entries = [(path, value)]
        for where, item in entries:
            if item.DESCRIPTOR.full_name == TIMESTAMP:
                if _bad_timestamp(item):
                    found.append((where, TIMESTAMP_MESSAGE))
            else:
                _walk(item, where + ".", found)


NUL_MESSAGE = "must not contain NUL characters (U+0000)"


class Malformed:
    """What a request that does not parse becomes, so the gate can answer INVALID_ARGUMENT.

    gRPC itself answers an undecodable request with UNKNOWN, which tells a client
    nothing; malformed bytes are the client's mistake and get the client's code.
    """

    __slots__ = ()


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None
    inner = deserialize

    def parse(data: bytes) -> Any:
        try:
            return inner(data)
        except DecodeError:
            return Malformed()

    return parse


def _wrap(handler: Any, gate: Gate, counter: CallerGate) -> Any:
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            counter.enter()
            try:
                await gate(request, context)
                return await inner(request, context)
            finally:
                counter.leave()

        return handler._replace(unary_unary=unary)
    if handler.unary_stream is not None:
        inner_stream = handler.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]
                         ) -> AsyncIterator[Any]:
            counter.enter()
            try:
                await gate(request, context)
                async for response in inner_stream(request, context):
                    yield response
            finally:
                counter.leave()

        return handler._replace(unary_stream=stream)
    # Client-streaming methods do not exist in sessiond.v1; refuse rather than pass.
    return _rejection(handler, denial(grpc.StatusCode.UNIMPLEMENTED, "UNIMPLEMENTED",
                                      "not supported"))


def _rejection(handler: Any, status: grpc.Status) -> Any:
    """A handler of the same shape that answers ``status`` without parsing the request."""

    async def reject(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort_with_status(status)  # type: ignore[attr-defined]

    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(reject)
    return grpc.unary_unary_rpc_method_handler(reject)


# Minting keys: `python -m sessiond_server.auth mint ...` (and `sessiond keys mint`).
def mint_entry(tenant: str, role: str, user_id: str = "", dataset_ids: Sequence[str] = (),
               name: str = "") -> tuple[str, str]:
    """A new key and the TOML ``[[keys]]`` entry that grants it (the entry holds the hash)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    key, digest = mint_key()
    lines = ["[[keys]]", f"name = {json.dumps(name or user_id or f'key-{digest[:8]}')}",
             f'sha256 = "{digest}"', f"tenant = {json.dumps(tenant)}",
             f"role = {json.dumps(role)}"]
    if user_id:
        lines.append(f"user_id = {json.dumps(user_id)}")
    if dataset_ids:
        lines.append(f"dataset_ids = {json.dumps(list(dataset_ids))}")
    return key, "\n".join(lines) + "\n"


def add_mint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--role", required=True, choices=ROLES)
    parser.add_argument("--user", default="", help="user_id the key acts as")
    parser.add_argument("--dataset", action="append", default=[],
                        help="dataset id the key may read (repeatable)")
    parser.add_argument("--name", default="", help="label for logs (default: the user)")


def run_mint(args: argparse.Namespace, out: Any = None) -> int:
    """Print the key once (to give to the caller) and the entry for the key file."""
    out = out or sys.stdout
    try:
        key, entry = mint_entry(args.tenant, args.role, args.user, args.dataset, args.name)
        if args.role == "writer" and not args.user:
            raise ValueError("a writer needs --user")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"# API key (shown once; give it to the caller, store it nowhere else):\n# {key}\n",
          file=out)
    print(entry, end="", file=out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sessiond_server.auth")
    commands = parser.add_subparsers(dest="command", required=True)
    mint = commands.add_parser("mint", help="mint an API key and print its key-file entry")
    add_mint_arguments(mint)
    args = parser.parse_args(argv)
    return run_mint(args)


if __name__ == "__main__":
    raise SystemExit(main())


# Serving: what start_server needs from the security settings.
@dataclasses.dataclass(frozen=True)
class Security:
    """Keys, transport credentials and interceptors for one server."""

    keys: dict[str, Principal] | None
    credentials: grpc.ServerCredentials | None
    interceptors: tuple[grpc.aio.ServerInterceptor, ...]  # type: ignore[type-arg]


class InsecureExposure(RuntimeError):
    """Listening beyond loopback without API keys and TLS, and without --insecure."""


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror}") from None


def prepare_security(config: ServerConfig, *, loopback: bool) -> Security:
    """Load keys and certificates and refuse an unprotected non-loopback listener.

    Runs before the database is opened, so a refused start touches nothing.
    """
    keys = load_api_keys(config.api_keys_file) if config.api_keys_file else None
    credentials = None
    if config.tls_cert_file or config.tls_key_file:
        if not (config.tls_cert_file and config.tls_key_file):
            raise KeyFileError("TLS needs both a certificate and a private key")
        client_ca = (_read(config.tls_client_ca_file, "client CA")
                     if config.tls_client_ca_file else None)
        credentials = grpc.ssl_server_credentials(
            [(_read(config.tls_key_file, "TLS key"), _read(config.tls_cert_file, "TLS cert"))],
            root_certificates=client_ca, require_client_auth=client_ca is not None)
    elif config.tls_client_ca_file:
        raise KeyFileError("a client CA needs a server certificate and key (TLS)")
    if not loopback and (keys is None or credentials is None):
        missing = " and ".join(m for m, absent in (("API keys", keys is None),
                                                    ("TLS", credentials is None)) if absent)
        if not config.insecure:
            raise InsecureExposure(
                f"refusing to listen on {config.address} beyond loopback without {missing};"
                " configure them, or pass --insecure to accept the risk")
        for _ in range(3):
            log.warning("INSECURE: listening on %s beyond loopback without %s (--insecure);"
                        " anyone who can reach this port can %s", config.address, missing,
                        "read and write every session" if keys is None
                        else "read API keys and data off the network")
    if keys is not None:
        log.info("authentication on: %d API keys", len(keys))
    limits = config.limits
    limiter = None
    if limits.rate_limit_per_second > 0:
        clock = config.clock
        burst = limits.rate_limit_burst or max(1, round(limits.rate_limit_per_second))
        limiter = RateLimiter(limits.rate_limit_per_second, burst,
                              lambda: clock() / 1_000_000)
    # Installed even with authentication and rate limits off: it also turns
    # undecodable requests into INVALID_ARGUMENT.
    interceptors = (CallerGate(keys, limiter),)
    return Security(keys, credentials, interceptors)
