"""Channel settings the async and sync clients share.

gRPC clients refuse responses over 4 MiB by default, but a sessiond response can be larger
than that within the server's limits: an AppendMessages answer echoes up to
``max_request_bytes`` (8 MiB by default) of messages. The clients therefore accept what the
server may send (its send limit, 64 MiB); pages and watch responses are bounded far below that
by the server itself. A caller's own options win over these defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: The largest response the clients accept: the server's send limit.
MAX_RESPONSE_BYTES = 64 << 20

DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
)


def channel_options(options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The caller's options, plus each default the caller did not set itself."""
    given = {name for name, _ in options}
    return [*options, *(option for option in DEFAULT_OPTIONS if option[0] not in given)]
