"""``sessiond dashboard``: a live view of a sessiond fleet in the browser.

A small HTTP server (``web``) serves one page and the JSON it reads
(``app``), every answer fetched through the public gRPC API with the
asyncio client, and keeps the page live with server-sent events bridged
from one WatchSessions stream per browser connection (``bridge``). The page
(``static/``) is plain HTML, CSS and JavaScript bundled with the package: no
build step, nothing fetched from the network, no inline script, and every
value that comes from a session or a message is set as text, never as
markup. See docs/dashboard.md.

The CLI wires it as ``sessiond dashboard`` with ``add_arguments`` and
``main`` (or ``serve_dashboard`` from asyncio code).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from sessiond.aio import DEFAULT_TARGET
from sessiond.dashboard.app import (
    DEFAULT_LISTEN,
    DEFAULT_STUCK_AFTER_SECONDS,
    Dashboard,
    DashboardConfig,
)

__all__ = [
    "Dashboard",
    "DashboardConfig",
    "add_arguments",
    "config_from_args",
    "main",
    "serve_dashboard",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``sessiond dashboard`` flags (``--address``, ``--token`` and ``--timeout``
    are the CLI's common options and are read from the same namespace)."""
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address the dashboard listens on (default {DEFAULT_LISTEN}; loopback only "
        "unless --insecure)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --listen address and any Host header",
    )
    parser.add_argument(
        "--stuck-after",
        type=float,
        default=DEFAULT_STUCK_AFTER_SECONDS,
        metavar="SECONDS",
        help="a running turn older than this is shown as stuck "
        f"(default {DEFAULT_STUCK_AFTER_SECONDS:g})",
    )


def config_from_args(args: argparse.Namespace) -> DashboardConfig:
    """The DashboardConfig that the parsed command line describes."""
    if args.stuck_after <= 0:
        raise ValueError("--stuck-after must be positive")
    return DashboardConfig(
        target=getattr(args, "address", None) or DEFAULT_TARGET,
        listen=args.listen,
        insecure=args.insecure,
        token=getattr(args, "token", None) or None,
        timeout=getattr(args, "timeout", None) or 10.0,
        stuck_after_seconds=args.stuck_after,
    )


async def serve_dashboard(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; returns the exit code (2 for a refused --listen)."""
    try:
        dashboard = Dashboard(config_from_args(args))
    except ValueError as error:
        print(f"sessiond dashboard: error: {error}", file=sys.stderr)
        return 2
    try:
        await dashboard.start()
    except OSError as error:
        print(f"sessiond dashboard: cannot listen on {args.listen}: {error}", file=sys.stderr)
        return 1
    print(f"dashboard on {dashboard.url} (sessiond at {dashboard.config.target})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await dashboard.stop()
    return 0


def main(args: argparse.Namespace) -> int:
    """The blocking entry point for ``sessiond dashboard``."""
    try:
        return asyncio.run(serve_dashboard(args))
    except KeyboardInterrupt:
        return 0
