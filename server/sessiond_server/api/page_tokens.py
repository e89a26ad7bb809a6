"""Opaque, signed keyset page tokens.

A token carries the sort values of the last row returned plus a digest of the
caller's scope and the request fields that shape the listing. It is signed with HMAC-SHA256, so a
tampered or foreign token is rejected as INVALID_ARGUMENT instead of being
trusted, and it survives restarts because the key is kept in the database.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from google.protobuf.message import Message

from ..store import Scope
from .errors import BadRequest


def request_digest(scope: Scope, *parts: Message | Any) -> str:
    """A short digest of what a continued listing must keep unchanged: the caller's
    scope (a token is only good for the principal it was issued to: it may carry
    what that caller's listing counted) and the request fields that shape it."""
    h = hashlib.sha256()
    h.update(repr((scope.tenant, scope.user_id, sorted(scope.dataset_ids),
                   scope.sees_all)).encode())
    h.update(b"\x00")
    for part in parts:
        h.update(part.SerializeToString(deterministic=True) if isinstance(part, Message)
                 else repr(part).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


class PageTokens:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:16]

    def encode(self, kind: str, digest: str, values: Any) -> str:
        payload = json.dumps([kind, digest, values], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(self._sign(payload) + payload).decode().rstrip("=")

    def decode(self, field: str, token: str, kind: str, digest: str) -> Any:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            mac, payload = raw[:16], raw[16:]
            if len(token) > 4096 or not hmac.compare_digest(mac, self._sign(payload)):
                raise ValueError("bad signature")
            token_kind, token_digest, values = json.loads(payload)
        except (ValueError, TypeError) as exc:
            raise BadRequest([(field, "is not a valid page token")]) from exc
        if token_kind != kind or token_digest != digest:
            raise BadRequest([(field, "belongs to a listing with other parameters")])
        return values
