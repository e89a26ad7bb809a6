"""sessiond's benchmark suite: how fast the server is, and against what.

A figure alone says little, so every sessiond figure is printed next to a
ceiling measured in the same run on the same machine (a bare gRPC echo server,
a bare streaming fan-out server, raw SQLite inserts) and, when they are
installed, next to the session stores of other agent frameworks.

The load comes from separate worker processes over real gRPC on loopback,
against ``sessiond serve`` started as a user starts it. Every loop is bounded
in count and in time. Run ``python -m bench --help``; the figures and what
limits them are in docs/performance.md.
"""
