"""The ``sessiond`` subcommands that run beside the database, not over gRPC.

``serve``, ``config``, ``backup``, ``restore``, ``export`` and ``import`` live
here, with the server package, so the client's ``cli.py`` registers them with
one call and a client-only install simply goes without them. Each handler
prints ``sessiond: error: ...`` and returns 1 (or 2 for bad settings) instead
of a traceback. Heavy modules (the server, the store) are imported only when a
command runs, so ``sessiond --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TextIO

from .auth import add_mint_arguments, run_mint
from .settings import DEST_PREFIX, SettingsError, add_serve_arguments, describe, resolve

Handler = Callable[[argparse.Namespace, TextIO], int]
AddCommand = Callable[..., argparse.ArgumentParser]


def add_server_commands(add: AddCommand, commands: Any) -> None:
    """Register the server-side commands with cli.py's ``add(group, path, name, help, handler,
    parents=())``."""
    serve = add(commands, "", "serve", "run the server", run_serve, parents=())
    add_serve_arguments(serve)
    config = add(commands, "", "config",
                 "print the effective server configuration (secrets masked)", run_config,
                 parents=())
    add_serve_arguments(config)

    backup = add(commands, "", "backup",
                 "copy a live database to a new file, writers keep going", run_backup,
                 parents=())
    backup.add_argument("destination", type=Path, metavar="DEST", help="the new backup file")
    _add_database(backup)

    restore = add(commands, "", "restore",
                  "replace a stopped server's database with a backup", run_restore, parents=())
    restore.add_argument("source", type=Path, metavar="SRC", help="a file `backup` wrote")
    _add_database(restore)
    restore.add_argument("--force", action="store_true",
                         help="replace an existing database file")

    export = add(commands, "", "export",
                 "write sessions, messages and usage as JSON Lines", run_export, parents=())
    _add_database(export)
    export.add_argument("--output", "-o", type=Path, metavar="FILE",
                        help="write here instead of standard output")
    export.add_argument("--tenant", action="append", default=[], help="tenant, repeatable")
    export.add_argument("--owner", action="append", default=[], help="owner id, repeatable")
    export.add_argument("--since", metavar="TIME",
                        help="sessions started at or after TIME (RFC 3339 or a date)")
    export.add_argument("--until", metavar="TIME", help="sessions started before TIME")

    imported = add(commands, "", "import",
                   "merge an export or runtime history into a stopped server's database",
                   run_import, parents=())
    _add_database(imported)
    imported.add_argument("files", nargs="*", type=Path, metavar="FILE",
                          help="files to read (default: standard input)")
    imported.add_argument("--format", choices=("export", "history"), default="export",
                          help="export: what `sessiond export` writes (default); history: "
                               "one message object per line, one file per session")
    imported.add_argument("--session-id", metavar="ID",
                          help="history: the session id (default: each file's name without "
                               "its extension)")
    imported.add_argument("--tenant", default="default", help="history: the tenant")
    imported.add_argument("--agent", default="", help="history: the sessions' agent")
    imported.add_argument("--channel", default="", help="history: the sessions' channel")

    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(title="commands", metavar="COMMAND", required=True)
    mint = add(key_commands, "keys", "mint", "mint an API key and print its key-file entry",
               run_keys_mint, parents=())
    add_mint_arguments(mint)


def run_keys_mint(args: argparse.Namespace, out: TextIO) -> int:
    return run_mint(args, out)


def _add_database(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database", dest=DEST_PREFIX + "database", metavar="PATH",
                        default=argparse.SUPPRESS,
                        help="the SQLite database (default: as `sessiond serve` would use)")
    parser.add_argument("--config", type=Path, metavar="FILE", default=argparse.SUPPRESS,
                        dest=DEST_PREFIX + "config_file", help="TOML configuration file")


def _fail(message: object, code: int = 1) -> int:
    print(f"sessiond: error: {message}", file=sys.stderr)
    return code


def _database(args: argparse.Namespace) -> Path:
    from .store.postgres_url import postgres_url, sqlite_path

    config = resolve(args, os.environ).config
    if postgres_url(config.database) is not None:
        raise SettingsError(["this command works on a SQLite database; for PostgreSQL use "
                             "pg_dump / pg_restore"])
    return sqlite_path(config.database)


@contextlib.contextmanager
def _errors() -> Iterator[list[int]]:
    """Turn the expected failures into a message and an exit code."""
    from .maintenance import DatabaseInUse, MaintenanceError

    code = [0]
    try:
        yield code
    except SettingsError as exc:
        code[0] = _fail(exc, 2)
    except (MaintenanceError, DatabaseInUse, ValueError) as exc:
        code[0] = _fail(exc)
    except OSError as exc:
        code[0] = _fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))


def run_serve(args: argparse.Namespace, out: TextIO) -> int:
    """Resolve the settings (flags > env > file > defaults) and serve until a signal.

    A failed start is one line, ``sessiond: error: <what> ; <the fix>``, and
    exit code 1 (2 for bad settings); the traceback only at ``--log-level debug``.
    """
    try:
        resolved = resolve(args, os.environ)
    except SettingsError as exc:  # one line, as every other failed start
        return _fail("invalid configuration: " + "; ".join(exc.problems), 2)
    for warning in resolved.warnings:
        print(f"sessiond: warning: {warning}", file=sys.stderr)
    from .app import StartFailure, run

    try:
        return run(resolved.config)
    except StartFailure as exc:
        if resolved.config.log_level == "debug" and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        return _fail(exc)
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down
        return 130


def run_config(args: argparse.Namespace, out: TextIO) -> int:
    try:
        resolved = resolve(args, os.environ)
    except SettingsError as exc:
        return _fail(exc, 2)
    for warning in resolved.warnings:
        print(f"sessiond: warning: {warning}", file=sys.stderr)
    out.write(describe(resolved))
    return 0


def run_backup(args: argparse.Namespace, out: TextIO) -> int:
    from .maintenance import Progress, backup_database

    with _errors() as code:
        database = _database(args)
        revision = backup_database(database, args.destination,
                                   progress=Progress("backup", 0))
        print(f"backed up {database} at revision {revision} to {args.destination}",
              file=sys.stderr)
    return code[0]


def run_restore(args: argparse.Namespace, out: TextIO) -> int:
    from .maintenance import Progress, restore_database

    with _errors() as code:
        database = _database(args)
        revision = restore_database(args.source, database, force=args.force,
                                    progress=Progress("restore", 0))
        print(f"restored {database} from {args.source} (revision {revision})", file=sys.stderr)
    return code[0]


def run_export(args: argparse.Namespace, out: TextIO) -> int:
    from .maintenance import Progress, export_database, parse_time

    with _errors() as code:
        database = _database(args)
        since = parse_time(args.since) if args.since else 0
        until = parse_time(args.until) if args.until else 0
        target: IO[str]
        with contextlib.ExitStack() as stack:
            if args.output is not None:
                target = stack.enter_context(args.output.open("w", encoding="utf-8"))
            else:
                target = out
            counts = export_database(database, target, tenants=args.tenant, owners=args.owner,
                                     since_micros=since, until_micros=until,
                                     progress=Progress("export", 0))
        print(f"exported {counts['session']} sessions, {counts['message']} messages, "
              f"{counts['usage']} usage records, {counts['shared_state']} shared states",
              file=sys.stderr)
    return code[0]


def run_import(args: argparse.Namespace, out: TextIO) -> int:
    import asyncio

    from .config import wall_clock_micros
    from .maintenance import (
        Progress,
        ReadPosition,
        import_records,
        read_export,
        read_history,
        remaining_bytes,
    )

    with _errors() as code:
        database = _database(args)
        files: Sequence[Path] = args.files
        if args.session_id and len(files) != 1:
            raise ValueError("--session-id needs exactly one file")
        if args.format == "history" and not files:
            raise ValueError("--format history reads files (one per session), not stdin")
        stdin = sys.stdin.buffer
        # Progress is in bytes read: known in advance for files (and a file
        # redirected to stdin), a running count for a pipe.
        total = sum(f.stat().st_size for f in files) if files else remaining_bytes(stdin)
        progress = Progress("import", total, unit="bytes")
        position = ReadPosition()
        now = wall_clock_micros()

        def chunks() -> Iterator[Any]:
            if not files:
                yield from read_export(position.lines(stdin), "stdin")
                return
            for path in files:
                with path.open("rb") as raw:
                    if args.format == "export":
                        yield from read_export(position.lines(raw), str(path))
                    else:
                        yield from read_history(
                            position.lines(raw), args.session_id or path.stem,
                            tenant=args.tenant, agent=args.agent, channel=args.channel,
                            source=str(path), default_micros=now)

        try:
            counts = asyncio.run(import_records(
                database, chunks(), clock=wall_clock_micros,
                on_chunk=lambda: progress.update(position.bytes_read)))
        finally:
            progress.finish()
        print(f"imported into {database}: {counts['sessions_created']} new sessions, "
              f"{counts['messages_added']} new messages, {counts['shared_states_added']} new "
              f"shared states (revision {counts['revision']})", file=sys.stderr)
    return code[0]
