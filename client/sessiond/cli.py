# PYTHON_ARGCOMPLETE_OK  (argcomplete: this command completes its arguments in bash and zsh)
"""The ``sessiond`` command: run the server, or look at one from a terminal.

``sessiond serve`` starts the server (imported only then, so the client
commands work where only the client is installed). Every other command is a
thin layer over the blocking ``sessiond.Client``: parse flags into a request,
call, print with ``sessiond.formatting`` (a table by default, JSON with
``--json``). Failures print ``error: <CODE> <message>`` and the offending
fields on stderr and exit 1; usage errors exit 2; Ctrl-C ends ``watch`` and
``messages tail`` with exit 0.

Common options may come before or after the command: ``sessiond --json
stats`` and ``sessiond stats --json`` mean the same.

Shell completion comes from argcomplete: ``eval "$(sessiond completion bash)"``
(or ``zsh``) completes commands, flags, their choices and, from the server at
``--address``, session ids.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

import argcomplete
from argcomplete.shell_integration import shellcode

from sessiond.aio import DEFAULT_TARGET
from sessiond.dashboard import add_arguments as add_dashboard_arguments
from sessiond.errors import SessiondError, Unauthenticated, Unavailable
from sessiond.formatting import (
    ORDER_WORDS,
    STATUS_WORDS,
    enum_word,
    enum_words,
    event_line,
    message_line,
    message_table,
    model_cost_table,
    readable_enum_names,
    session_details,
    session_table,
    stats_details,
    to_json,
)
from sessiond.sync import Client
from sessiond.v1 import (
    event_pb2,
    message_pb2,
    message_service_pb2,
    session_pb2,
    session_service_pb2,
)
from sessiond.watching import WatchConnection

ADDRESS_ENV = "SESSIOND_ADDRESS"
TOKEN_ENV = "SESSIOND_TOKEN"
DEFAULT_TIMEOUT = 10.0
MAX_PAGE_SIZE = 500
DEFAULT_TAIL = 10
COMPLETION_SHELLS = ("bash", "zsh")
COMPLETION_TIMEOUT = 2.0

TERMINAL_STATUS_WORDS = ("completed", "failed", "cancelled")
TERMINAL_STATUSES = frozenset(STATUS_WORDS[word] for word in TERMINAL_STATUS_WORDS)
EVENT_WORDS = {
    word: event_pb2.EventType.Value(name)
    for word, name in enum_words(event_pb2.EventType.DESCRIPTOR).items()
}
TAIL_EVENT_TYPES = (
    event_pb2.EVENT_TYPE_MESSAGES_APPENDED,
    event_pb2.EVENT_TYPE_MESSAGE_UPDATED,
    event_pb2.EVENT_TYPE_MESSAGE_POPPED,
    event_pb2.EVENT_TYPE_MESSAGES_CLEARED,
    event_pb2.EVENT_TYPE_SESSION_ENDED,
    event_pb2.EVENT_TYPE_SESSION_DELETED,
    event_pb2.EVENT_TYPE_SESSION_PURGED,
)

Command = Callable[[argparse.Namespace, TextIO], int]


class UsageError(Exception):
    """A flag value the parser could not check itself (exit 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    # Answers a completion request from the shell and exits; otherwise returns at once.
    argcomplete.autocomplete(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, or a usage error already printed
        return exit_request.code if isinstance(exit_request.code, int) else 2
    command: Command | None = getattr(args, "command", None)
    if command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return command(args, sys.stdout)
    except UsageError as error:
        parser.print_usage(sys.stderr)
        print(f"sessiond: error: {error}", file=sys.stderr)
        return 2
    except SessiondError as error:
        print_error(error, sys.stderr, args)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `sessiond watch | head`: the reader left
        # Point stdout at /dev/null so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def print_error(
    error: SessiondError, out: TextIO, args: argparse.Namespace | None = None
) -> None:
    """``error: <CODE> <message>``, one line per field violation, and the fix
    when the failure has an obvious one (no server, no credentials).

    Enum value names in the server's message are written as the words the
    command line takes ("completed", not SESSION_STATUS_COMPLETED).
    """
    print(f"error: {error.code.name} {readable_enum_names(error.message)}".rstrip(), file=out)
    for field, description in error.field_violations:
        print(f"  {field}: {readable_enum_names(description)}", file=out)
    fix = error_fix(error, args)
    if fix:
        print(fix, file=out)


def error_fix(error: SessiondError, args: argparse.Namespace | None) -> str:
    """What to do about a failure that has one obvious cause, or ""."""
    address = getattr(args, "address", None) or DEFAULT_TARGET
    if isinstance(error, Unavailable) and not error.reason:
        # No ErrorInfo: the call never reached a sessiond (a sessiond that is
        # up but cannot serve says why, with a reason).
        return (
            f"no sessiond answers at {address}: start `sessiond serve` or pass --address "
            f"(or set {ADDRESS_ENV})"
        )
    if isinstance(error, Unauthenticated):
        if getattr(args, "token", None):
            return f"the server does not accept this token: check --token (or {TOKEN_ENV})"
        return f"the server wants an API key: pass --token or set {TOKEN_ENV}"
    return ""


# Parser

SERVER_EXTRA = "pip install 'sessiond[server]'"


class PrintVersion(argparse.Action):
    """``--version``: the version and git revision, looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from sessiond.version import build_info

        print(build_info())
        parser.exit()


def server_not_installed(args: argparse.Namespace, out: TextIO) -> int:
    """``serve`` where only the client is installed: say what to install."""
    print(f"sessiond: error: the server is not installed; {SERVER_EXTRA}", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, defaults read from the environment now."""
    parser = argparse.ArgumentParser(
        prog="sessiond",
        description="sessiond: a gRPC session service for AI-agent runtimes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--address",
        default=os.environ.get(ADDRESS_ENV) or DEFAULT_TARGET,
        help=f"server address host:port (env {ADDRESS_ENV}; default {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV) or None,
        help=f"bearer token (env {TOKEN_ENV})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT,
        help=f"deadline of each call in seconds (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--version", action=PrintVersion, help="print the version and git revision, then exit"
    )
    # The same options after the command; SUPPRESS keeps the values given
    # before it (or the defaults) when they are not repeated.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--address", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--token", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    common.add_argument(
        "--timeout", type=positive_float, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )

    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    listing: list[tuple[str, str]] = []

    def add(
        group: argparse._SubParsersAction[argparse.ArgumentParser],
        path: str,
        name: str,
        help_text: str,
        handler: Command,
        parents: Sequence[argparse.ArgumentParser] = (common,),
    ) -> argparse.ArgumentParser:
        command = group.add_parser(name, help=help_text, description=help_text, parents=parents)
        command.set_defaults(command=handler)
        listing.append((f"{path} {name}".strip(), help_text))
        return command

    # serve, config, backup, restore, export, import: they need the server
    # package, and a client-only install goes without them.
    try:
        from sessiond_server.server_commands import add_server_commands
    except ModuleNotFoundError as missing:
        if (missing.name or "").startswith("sessiond_server."):
            raise  # the server is installed but broken: say so, do not hide `serve`
        # The server's own dependencies come with the `server` extra.
        add(commands, "", "serve", f"run the server (needs {SERVER_EXTRA})",
            server_not_installed, parents=())
    else:
        add_server_commands(add, commands)

    sessions = commands.add_parser("sessions", help="list, read, end and delete sessions")
    sessions_commands = sessions.add_subparsers(title="commands", metavar="COMMAND", required=True)
    sessions_list = add(
        sessions_commands, "sessions", "list", "list sessions matching filters", run_sessions_list
    )
    add_session_filter_flags(sessions_list)
    sessions_list.add_argument(
        "--search", metavar="TEXT", help="sessions with a message containing every word"
    )
    sessions_list.add_argument(
        "--order-by", choices=tuple(ORDER_WORDS), default="last-activity", help="sort key"
    )
    sessions_list.add_argument("--asc", action="store_true", help="smallest/oldest first")
    sessions_list.add_argument(
        "--limit", type=positive_int, default=50, help="most sessions to show (default 50)"
    )
    sessions_get = add(sessions_commands, "sessions", "get", "show one session", run_sessions_get)
    add_session_id_argument(sessions_get)
    sessions_end = add(
        sessions_commands, "sessions", "end", "end a session with a status", run_sessions_end
    )
    add_session_id_argument(sessions_end)
    sessions_end.add_argument("--status", choices=TERMINAL_STATUS_WORDS, required=True)
    sessions_end.add_argument("--reason", default="", help="free-text reason")
    sessions_delete = add(
        sessions_commands,
        "sessions",
        "delete",
        "delete a session with its messages",
        run_sessions_delete,
    )
    add_session_id_argument(sessions_delete)

    messages = commands.add_parser("messages", help="read a session's messages")
    messages_commands = messages.add_subparsers(title="commands", metavar="COMMAND", required=True)
    messages_list = add(
        messages_commands, "messages", "list", "show a session's messages", run_messages_list
    )
    add_session_id_argument(messages_list)
    window = messages_list.add_mutually_exclusive_group()
    window.add_argument("--last", type=positive_int, metavar="N", help="the last N messages")
    window.add_argument("--turns", type=positive_int, metavar="N", help="the last N turns")
    messages_tail = add(
        messages_commands,
        "messages",
        "tail",
        "show the last messages, then follow new ones live",
        run_messages_tail,
    )
    add_session_id_argument(messages_tail)
    messages_tail.add_argument(
        "--last",
        type=non_negative_int,
        default=DEFAULT_TAIL,
        metavar="N",
        help=f"messages to show before following (default {DEFAULT_TAIL})",
    )

    stats = add(commands, "", "stats", "aggregate counts, tokens and cost", run_stats)
    add_session_filter_flags(stats)
    cost = add(commands, "", "cost-by-model", "usage and cost per model", run_cost_by_model)
    add_session_filter_flags(cost)

    watch = add(commands, "", "watch", "print session changes as they happen", run_watch)
    session_flag = watch.add_argument(
        "--session", action="append", default=[], metavar="ID", help="session id, repeatable"
    )
    complete_with(session_flag, complete_session_ids)
    add_watch_filter_flags(watch)
    watch.add_argument(
        "--event",
        action="append",
        default=[],
        choices=tuple(EVENT_WORDS),
        metavar="TYPE",
        help="event type, repeatable: " + ", ".join(EVENT_WORDS),
    )
    watch.add_argument(
        "--start-revision", type=non_negative_int, default=0, help="replay from this revision"
    )
    watch.add_argument(
        "--initial", action="store_true", help="first print the current state of each session"
    )

    dashboard = add(
        commands, "", "dashboard", "live fleet dashboard in the browser", run_dashboard
    )
    add_dashboard_arguments(dashboard)
    completion = add(
        commands,
        "",
        "completion",
        "print the shell code that completes sessiond's arguments",
        run_completion,
        parents=(),
    )
    completion.add_argument(
        "shell",
        choices=COMPLETION_SHELLS,
        help='bash: eval "$(sessiond completion bash)" in ~/.bashrc; '
        'zsh: eval "$(sessiond completion zsh)" in ~/.zshrc (after compinit)',
    )
    width = max(len(name) for name, _ in listing)
    parser.epilog = "all commands:\n" + "\n".join(
        f"  sessiond {name:<{width}}  {text}" for name, text in listing
    )
    return parser


def add_session_id_argument(parser: argparse.ArgumentParser) -> None:
    """The ID positional, completed from the server's sessions."""
    complete_with(parser.add_argument("session_id", metavar="ID"), complete_session_ids)


def complete_with(action: argparse.Action, completer: Callable[..., list[str]]) -> None:
    """Attach an argcomplete completer (argcomplete reads the ``completer`` attribute)."""
    setattr(action, "completer", completer)  # noqa: B010  (argparse.Action declares no such field)


def complete_session_ids(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """Ids of the most recently active sessions that start with ``prefix``; none when
    the server cannot be asked (a completion never prints an error)."""
    try:
        with Client(
            getattr(parsed_args, "address", None) or DEFAULT_TARGET,
            token=getattr(parsed_args, "token", None),
            timeout=COMPLETION_TIMEOUT,
        ) as client:
            page = client.list_sessions(page_size=MAX_PAGE_SIZE)
    except SessiondError:
        return []
    return [session.id for session in page.sessions if session.id.startswith(prefix)]


def add_session_filter_flags(parser: argparse.ArgumentParser) -> None:
    """The SessionFilter flags shared by sessions list, stats and cost-by-model."""
    add_watch_filter_flags(parser)
    parser.add_argument("--model", action="append", default=[], help="model, repeatable")


def add_watch_filter_flags(parser: argparse.ArgumentParser) -> None:
    """Filter flags that SessionFilter and WatchFilter have in common."""
    parser.add_argument(
        "--status",
        action="append",
        default=[],
        choices=tuple(STATUS_WORDS),
        help="status, repeatable",
    )
    parser.add_argument("--agent", action="append", default=[], help="agent, repeatable")
    parser.add_argument(
        "--channel",
        action="append",
        default=[],
        help='channel, repeatable ("discord." = any alias)',
    )
    parser.add_argument("--owner", action="append", default=[], help="owner id, repeatable")
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        type=label_pair,
        metavar="KEY=VALUE",
        help="label that must be present, repeatable",
    )


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def label_pair(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def session_filter(args: argparse.Namespace) -> session_pb2.SessionFilter:
    """The SessionFilter the filter flags describe."""
    return session_pb2.SessionFilter(
        statuses=[STATUS_WORDS[word] for word in args.status],
        agents=args.agent,
        channels=args.channel,
        owner_ids=args.owner,
        models=args.model,
        labels=dict(args.label),
        text_query=getattr(args, "search", None) or "",
    )


def connect(args: argparse.Namespace) -> Client:
    return Client(args.address, token=args.token, timeout=args.timeout)


def emit_json(messages: Iterable[Any], out: TextIO) -> None:
    for message in messages:
        print(to_json(message), file=out, flush=True)


# Commands


def run_sessions_list(args: argparse.Namespace, out: TextIO) -> int:
    request = session_service_pb2.ListSessionsRequest(
        filter=session_filter(args),
        order_by=ORDER_WORDS[args.order_by],
        ascending=args.asc,
    )
    listed = session_service_pb2.ListSessionsResponse()
    with connect(args) as client:
        # Walk pages until --limit sessions are in; the listing keeps the
        # first page's total and revision and the token to continue.
        while len(listed.sessions) < args.limit:
            request.page_size = min(args.limit - len(listed.sessions), MAX_PAGE_SIZE)
            page = client.list_sessions(request)
            if not listed.revision:
                listed.total_size = page.total_size
                listed.revision = page.revision
            listed.sessions.extend(page.sessions)
            listed.next_page_token = page.next_page_token
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
    if args.json:
        emit_json([listed], out)
        return 0
    print(session_table(listed.sessions), file=out)
    shown = len(listed.sessions)
    if listed.total_size > shown:
        print(f"({shown} of {listed.total_size} sessions; --limit for more)", file=out)
    return 0


def run_sessions_get(args: argparse.Namespace, out: TextIO) -> int:
    with connect(args) as client:
        response = client.get_session(session_id=args.session_id)
    if args.json:
        emit_json([response], out)
    else:
        print(session_details(response.session), file=out)
    return 0


def run_sessions_end(args: argparse.Namespace, out: TextIO) -> int:
    with connect(args) as client:
        response = client.end_session(
            session_id=args.session_id, status=STATUS_WORDS[args.status], reason=args.reason
        )
    if args.json:
        emit_json([response], out)
    else:
        print(session_details(response.session), file=out)
    return 0


def run_sessions_delete(args: argparse.Namespace, out: TextIO) -> int:
    with connect(args) as client:
        response = client.delete_session(session_id=args.session_id)
    if args.json:
        emit_json([response], out)
    else:
        print(
            f"deleted {args.session_id} with {response.deleted_message_count} message(s) "
            f"at revision {response.revision}",
            file=out,
        )
    return 0


def run_messages_list(args: argparse.Namespace, out: TextIO) -> int:
    with connect(args) as client:
        if args.last or args.turns:
            listed = client.list_messages(
                session_id=args.session_id, last_n=args.last, last_turns=args.turns
            )
        else:
            listed = message_service_pb2.ListMessagesResponse()
            request = message_service_pb2.ListMessagesRequest(session_id=args.session_id)
            while True:
                page = client.list_messages(request)
                listed.revision = listed.revision or page.revision
                listed.messages.extend(page.messages)
                if not page.next_page_token:
                    break
                request.page_token = page.next_page_token
    if args.json:
        emit_json([listed], out)
        return 0
    print(message_table(listed.messages), file=out)
    if listed.truncated:
        print("(older messages of these turns left out)", file=out)
    return 0


def run_messages_tail(args: argparse.Namespace, out: TextIO) -> int:
    """Print the last messages, then follow changes from the revision they were read at.

    Ends (exit 0) when the session ends or is deleted, and at once when it had
    already ended: an ended session takes no more messages, so there is
    nothing to follow.
    """
    with connect(args) as client:
        last_seq = 0
        if args.last:
            listed = client.list_messages(session_id=args.session_id, last_n=args.last)
            revision = listed.revision
            for message in listed.messages:
                print_tail_message(message, args.json, out)
                last_seq = message.seq
            # Read after the listing: if the session ended before it, the
            # watch from the listing's revision would never see the end.
            session = client.get_session(session_id=args.session_id).session
        else:
            got = client.get_session(session_id=args.session_id)
            session, revision, last_seq = got.session, got.revision, got.session.last_seq
        if session.status in TERMINAL_STATUSES:
            # Final: print what came after the listing, then the end.
            for message in client.iter_messages(session_id=args.session_id, after_seq=last_seq):
                print_tail_message(message, args.json, out)
            if not args.json:
                print_session_end(session, out)
            return 0
        watch_filter = session_service_pb2.WatchFilter(
            session_ids=[args.session_id], event_types=TAIL_EVENT_TYPES
        )
        stream = client.watch(
            watch_filter,
            start_revision=revision + 1,
            on_connection=ConnectionReport(args.address, sys.stderr, quiet_first=True),
        )
        try:
            for response in stream:
                for event in response.events:
                    if args.json:
                        emit_json([event], out)
                    else:
                        print_tail_event(event, out)
                    if event.type in (
                        event_pb2.EVENT_TYPE_SESSION_ENDED,
                        event_pb2.EVENT_TYPE_SESSION_DELETED,
                        event_pb2.EVENT_TYPE_SESSION_PURGED,
                    ):
                        return 0
        except KeyboardInterrupt:
            return 0
        finally:
            stream.close()
    return 0


def print_tail_message(message: message_pb2.Message, as_json: bool, out: TextIO) -> None:
    if as_json:
        emit_json([message], out)
    else:
        print(message_line(message), file=out, flush=True)


def print_session_end(session: session_pb2.Session, out: TextIO) -> None:
    word = enum_word(session_pb2.SessionStatus.DESCRIPTOR, session.status)
    print(f"-- session ended: {word}", file=out, flush=True)


class ConnectionReport:
    """Says on standard error what a watch's connection is doing.

    "connecting to ADDRESS" before the first call, "connected at revision R"
    when the server confirms it, "reconnecting to ADDRESS (attempt n)" before
    each later call and "resumed at revision R" (R the first revision still
    to come) when one is confirmed. Events go to standard output, so these
    lines never mix with what a pipe reads. ``quiet_first`` leaves out the
    first two lines, for a command that has already talked to the server.
    """

    def __init__(self, address: str, err: TextIO, *, quiet_first: bool = False) -> None:
        self._address = address
        self._err = err
        self._quiet_first = quiet_first
        self._ever_confirmed = False

    def __call__(self, step: WatchConnection) -> None:
        line = self._confirmed_line(step) if step.confirmed else self._opening_line(step)
        if line:
            print(f"-- {line}", file=self._err, flush=True)

    def _opening_line(self, step: WatchConnection) -> str:
        if not step.reconnecting:
            return "" if self._quiet_first else f"connecting to {self._address}"
        line = f"reconnecting to {self._address} (attempt {step.attempt})"
        if step.attempt == 1 and not self._ever_confirmed:
            # Only UNAVAILABLE is retried: nothing answers there (yet).
            line += ": no sessiond answers; start `sessiond serve` or pass --address"
        return line

    def _confirmed_line(self, step: WatchConnection) -> str:
        self._ever_confirmed = True
        if step.reconnecting and step.start_revision:
            return f"resumed at revision {step.start_revision}"
        if step.reconnecting or not self._quiet_first:
            return f"connected at revision {step.revision}"
        return ""


def print_tail_event(event: event_pb2.SessionEvent, out: TextIO) -> None:
    kind = event.type
    if kind == event_pb2.EVENT_TYPE_MESSAGES_APPENDED:
        for message in event.messages:
            print(message_line(message), file=out, flush=True)
    elif kind == event_pb2.EVENT_TYPE_MESSAGE_UPDATED:
        for message in event.messages:
            print(f"{message_line(message)}  (updated)", file=out, flush=True)
    elif kind == event_pb2.EVENT_TYPE_MESSAGE_POPPED:
        seqs = ", ".join(f"#{message.seq}" for message in event.messages) or "last message"
        print(f"-- popped {seqs}", file=out, flush=True)
    elif kind == event_pb2.EVENT_TYPE_MESSAGES_CLEARED:
        print(f"-- cleared {event.removed_count} message(s)", file=out, flush=True)
    elif kind == event_pb2.EVENT_TYPE_SESSION_ENDED:
        print_session_end(event.session, out)
    else:
        print("-- session deleted", file=out, flush=True)


def run_stats(args: argparse.Namespace, out: TextIO) -> int:
    with connect(args) as client:
        response = client.get_stats(filter=session_filter(args))
    if args.json:
        emit_json([response], out)
    else:
        print(stats_details(response.stats), file=out)
    return 0


def run_cost_by_model(args: argparse.Namespace, out: TextIO) -> int:
    with connect(args) as client:
        response = client.cost_by_model(filter=session_filter(args))
    if args.json:
        emit_json([response], out)
    else:
        print(model_cost_table(response.models), file=out)
    return 0


def run_watch(args: argparse.Namespace, out: TextIO) -> int:
    """Print each event as it comes, until Ctrl-C."""
    watch_filter = session_service_pb2.WatchFilter(
        session_ids=args.session,
        statuses=[STATUS_WORDS[word] for word in args.status],
        agents=args.agent,
        channels=args.channel,
        owner_ids=args.owner,
        labels=dict(args.label),
        event_types=[EVENT_WORDS[word] for word in args.event],
    )
    if args.initial and args.start_revision:
        raise UsageError("--initial and --start-revision cannot be combined")
    with connect(args) as client:
        stream = client.watch(
            watch_filter,
            start_revision=args.start_revision,
            include_initial=args.initial,
            on_connection=ConnectionReport(args.address, sys.stderr),
        )
        try:
            for response in stream:
                if response.type == session_service_pb2.WATCH_RESPONSE_TYPE_INITIAL_COMPLETE:
                    print(f"-- initial state read at revision {response.revision}", file=sys.stderr)
                for event in response.events:
                    if args.json:
                        emit_json([event], out)
                    else:
                        print(event_line(event), file=out, flush=True)
        except KeyboardInterrupt:
            return 0
        finally:
            stream.close()
    return 0


def run_completion(args: argparse.Namespace, out: TextIO) -> int:
    """The shell code that asks ``sessiond`` itself for completions (argcomplete)."""
    print(shellcode(["sessiond"], shell=args.shell), file=out, end="")
    return 0


def run_dashboard(args: argparse.Namespace, out: TextIO) -> int:
    """Serve the dashboard until Ctrl-C or SIGTERM."""
    from sessiond.dashboard import main as dashboard_main

    return dashboard_main(args)


# Last, so that every command above is defined when `python -m sessiond.cli` runs.
if __name__ == "__main__":
    sys.exit(main())
