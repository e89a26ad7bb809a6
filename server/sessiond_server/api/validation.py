"""Request validation: every bound and format rule, each violation named by field path.

A ``Checker`` collects violations so that a request with several mistakes
names all of them at once, then raises one BadRequest. Nothing reaches the
store before its request passed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from google.protobuf.descriptor import EnumDescriptor

from ..auth import REQUEST_VIOLATIONS
from ..config import Limits
from ..store.search import is_searchable
from .errors import BadRequest, echo

CHANNEL = re.compile(r"[a-z][a-z0-9_-]*(\.[A-Za-z0-9_.@:+-]+)?")
CHANNEL_TYPE_PREFIX = re.compile(r"[a-z][a-z0-9_-]*\.")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: The longest etag a request may carry; the server's etags are revision numbers.
MAX_ETAG_BYTES = 64


@functools.cache
def _numbers(descriptor: EnumDescriptor) -> frozenset[int]:
    """The values of an enum other than its zero (``*_UNSPECIFIED``)."""
    return frozenset(v.number for v in descriptor.values if v.number)


class Checker:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.violations: list[tuple[str, str]] = []

    def fail(self, field: str, description: str) -> None:
        self.violations.append((field, description))

    def done(self) -> None:
        named = {f for f, _ in self.violations}
        self.violations.extend(v for v in REQUEST_VIOLATIONS.get() if v[0] not in named)
        if self.violations:
            raise BadRequest(self.violations)

    def identifier(self, field: str, value: str, *, required: bool = True,
                   chosen: bool = False) -> None:
        """An id. ``chosen`` marks one the call gives a new thing (a session, a message, a
        request): it must not be blank nor start or end with white space, a mistake that would
        otherwise store " x " beside "x". An id that names something stored is matched exactly
        as given, so a stored id stays reachable whatever it looks like."""
        if not value:
            if required:
                self.fail(field, "is required")
            return
        size = len(value.encode())
        if size > self.limits.max_id_bytes:
            self.fail(field, f"is {size} bytes; the limit is {self.limits.max_id_bytes}")
        elif CONTROL.search(value):
            self.fail(field, "must not contain control characters")
        elif chosen and value != value.strip():
            self.fail(field, "must not be blank nor start or end with white space")

    def query(self, field: str, value: str, *, required: bool) -> None:
        """A search query: empty means none where it is optional; blank is never a query."""
        if not value:
            if required:
                self.fail(field, "is required")
            return
        if not is_searchable(value):
            self.fail(field, "has nothing to search for (a word with a letter or digit, or "
                      "CJK, Thai or emoji text)"
                      + ("" if required else "; leave it empty for no text condition"))
            return
        self.text(field, value, self.limits.max_query_bytes)

    def text(self, field: str, value: str, max_bytes: int | None = None) -> None:
        limit = self.limits.max_text_field_bytes if max_bytes is None else max_bytes
        size = len(value.encode())
        if size > limit:
            self.fail(field, f"is {size} bytes; the limit is {limit}")

    def etag(self, field: str, value: str) -> None:
        """An etag a write is guarded by: empty for none; never longer than any etag issued."""
        self.text(field, value, MAX_ETAG_BYTES)

    def channel(self, field: str, value: str, *, type_prefix_ok: bool = False) -> None:
        if not value:
            return
        if len(value.encode()) > 128:
            self.fail(field, "is longer than 128 bytes")
        elif not (CHANNEL.fullmatch(value)
                  or (type_prefix_ok and CHANNEL_TYPE_PREFIX.fullmatch(value))):
            self.fail(field, 'must be "<type>" or "<type>.<alias>", e.g. "discord.clamps"')

    def string_map(self, field: str, values: Mapping[str, str]) -> None:
        lim = self.limits
        if len(values) > lim.max_labels:
            self.fail(field, f"has {len(values)} entries; the limit is {lim.max_labels}")
            return
        for key, value in values.items():
            if not key or len(key.encode()) > lim.max_label_key_bytes or CONTROL.search(key):
                self.fail(f"{field}[{echo(key)}]",
                          f"keys must be 1 to {lim.max_label_key_bytes} bytes without control"
                          " characters")
            if len(value.encode()) > lim.max_label_value_bytes:
                self.fail(f"{field}[{echo(key)}]",
                          f"values must be at most {lim.max_label_value_bytes} bytes")

    def mask_paths(self, field: str, paths: Iterable[str], allowed: Collection[str]) -> None:
        """The paths of a FieldMask: each one a field the RPC may update."""
        for i, path in enumerate(paths):
            if path not in allowed:
                self.fail(f"{field}.paths[{i}]",
                          f"{echo(path)} cannot be updated; allowed: {', '.join(sorted(allowed))}")

    def enum(self, field: str, value: int, enum: Any,
             allowed: Iterable[int] | None = None, *, required: bool = False) -> None:
        if value == 0 and not required:
            return
        if value in (_numbers(enum.DESCRIPTOR) if allowed is None else allowed):
            return  # the common case, without building the message below
        names = dict(enum.items())
        valid = set(allowed) if allowed is not None else {v for v in names.values() if v}
        if value not in valid:
            choices = ", ".join(n for n, v in names.items() if v in valid)
            self.fail(field, f"{value} is not one of {choices}")

    def page_size(self, field: str, value: int, default: int, maximum: int) -> int:
        if value == 0:
            return default
        if value < 0 or value > maximum:
            self.fail(field, f"must be between 1 and {maximum} (0 means {default})")
        return value

    def non_negative(self, field: str, value: int) -> None:
        if value < 0:
            self.fail(field, "must not be negative")

    def count(self, field: str, values: Collection[Any], limit: int | None = None) -> bool:
        """Whether a repeated field holds at most ``limit`` values (the filter bound).

        Checked before any value is looked at, so an oversized list costs one
        ``len`` and its values are not checked one by one.
        """
        bound = self.limits.max_filter_values if limit is None else limit
        if len(values) > bound:
            self.fail(field, f"has {len(values)} values; the limit is {bound}")
            return False
        return True

    def enums(self, field: str, values: Collection[int], enum: Any,
              allowed: Iterable[int] | None = None) -> None:
        """A repeated enum filter: bounded in count, each value a named non-zero one."""
        if not self.count(field, values):
            return
        for i, value in enumerate(values):
            self.enum(f"{field}[{i}]", value, enum, allowed, required=True)

    def channels(self, field: str, values: Collection[str]) -> None:
        """A repeated channel filter: bounded in count; "<type>." prefixes allowed."""
        if not self.count(field, values):
            return
        for i, value in enumerate(values):
            self.channel(f"{field}[{i}]", value, type_prefix_ok=True)

    def values(self, field: str, values: Collection[str], *, identifiers: bool = True) -> None:
        if not self.count(field, values):
            return
        for i, value in enumerate(values):
            if identifiers:
                self.identifier(f"{field}[{i}]", value)
            else:
                self.text(f"{field}[{i}]", value, self.limits.max_id_bytes)
