"""Python reference run of the interop scenario (see SCENARIO.md).

It drives the Python client (``sessiond.Client``), the reference every
other language's client layer is held to (docs/clients.md): its typed
errors, retries, page walker and resuming watch. Its output is what the Go,
TypeScript and Rust outputs must equal. Only the deadline step uses a raw
stub, because the Python watch takes no deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Generator
from typing import Any

import grpc
from sessiond import Client, NotFound, RelistRequired, SessiondError
from sessiond.v1 import (
    event_pb2,
    message_pb2,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
    stats_service_pb2,
)

TIMEOUT = 10.0
WALK_SESSIONS = 1000
WALK_PAGE_SIZE = 128
COMPACTION_POLLS = 300
COMPACTION_POLL_SECONDS = 0.2
USAGE_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_micros",
    "request_count",
    "error_count",
    "total_tokens",
)
STATS_FIELDS = (
    "session_count",
    "average_cost_micros",
    "active_count",
    "running_count",
    "abandoned_count",
    "completed_count",
    "failed_count",
    "cancelled_count",
    "unknown_count",
    "message_count",
)

Watch = Generator[session_service_pb2.WatchSessionsResponse, None, None]
pb = session_service_pb2


class Scenario:
    def __init__(self, client: Client, address: str, run: str, out: Any) -> None:
        self.client = client
        self.address = address
        self.run = run
        self.out = out
        self.labels = {"interop_run": run}
        # Revisions of this run's own writes, in the order they were made.
        self.written: list[int] = []
        # The revision of the run's first write (CreateSession a).
        self.first_revision = 0

    def emit(self, step: str, **fields: Any) -> None:
        line = json.dumps({"step": step, **fields}, sort_keys=True)
        print(line)
        self.out.write(line + "\n")

    def short(self, session_id: str) -> str:
        assert session_id.startswith(self.run + "-"), session_id
        return session_id[len(self.run) + 1 :]

    def wrote(self, revision: int) -> None:
        assert revision > 0, "a write that changed something has a revision"
        self.written.append(revision)

    @staticmethod
    def usage(u: session_pb2.Usage) -> dict[str, int]:
        return {f: getattr(u, f) for f in USAGE_FIELDS}

    def session(self, s: session_pb2.Session) -> dict[str, Any]:
        return {
            "id": self.short(s.id),
            "tenant": s.tenant,
            "kind": session_pb2.SessionKind.Name(s.kind),
            "channel": s.channel,
            "agent": s.agent,
            "model": s.model,
            "display_name": s.display_name,
            "status": session_pb2.SessionStatus.Name(s.status),
            "runtime_state": session_pb2.RuntimeState.Name(s.runtime_state),
            "message_count": s.message_count,
            "turn_count": s.turn_count,
            "tool_call_count": s.tool_call_count,
            "last_seq": s.last_seq,
            "usage": self.usage(s.usage),
            "has_started_at": s.HasField("started_at"),
            "has_etag": s.etag != "",
        }

    def new_session(self, suffix: str) -> session_pb2.Session:
        if suffix == "a":
            return session_pb2.Session(
                id=f"{self.run}-a",
                kind=session_pb2.SESSION_KIND_INTERACTIVE,
                channel="cli",
                agent="interop-agent",
                model="model-a",
                display_name="A",
                labels=self.labels,
            )
        return session_pb2.Session(
            id=f"{self.run}-{suffix}",
            kind=session_pb2.SESSION_KIND_AUTONOMOUS,
            channel="discord.interop",
            agent="interop-agent",
            model="model-b",
            display_name=suffix.upper(),
            goal="prove interop",
            labels=self.labels,
        )

    @staticmethod
    def error(err: SessiondError) -> dict[str, Any]:
        out: dict[str, Any] = {"code": err.code.name, "reason": err.reason}
        if err.field_violations:
            out["field_violations"] = sorted(field for field, _ in err.field_violations)
        return out

    def events_of(self, response: session_service_pb2.WatchSessionsResponse) -> list[Any]:
        assert response.type == pb.WATCH_RESPONSE_TYPE_EVENTS, response
        assert not response.fragment, "the client joins fragments"
        return list(response.events)

    def play(self) -> None:
        self.play_calls()
        self.play_watch_restart()
        self.play_append_unavailable()
        self.play_page_walk()
        self.play_compacted()
        self.play_relist()

    def play_calls(self) -> None:
        c = self.client
        a = f"{self.run}-a"

        created = c.create_session(session=self.new_session("a"))
        self.wrote(created.revision)
        self.first_revision = created.revision
        self.emit(
            "create_session",
            created=created.created,
            revision_positive=created.revision > 0,
            session=self.session(created.session),
        )

        watch_filter = pb.WatchFilter(labels=self.labels)
        first_watch = c.watch(watch_filter, start_revision=created.revision)
        opened = next(first_watch)
        assert opened.type == pb.WATCH_RESPONSE_TYPE_CREATED, opened

        again = c.create_session(session=self.new_session("a"))
        self.emit("create_session_again", created=again.created, revision=again.revision)

        got = c.get_session(session_id=a)
        self.emit("get_session", session=self.session(got.session))

        appended = c.append_messages(
            session_id=a,
            messages=[
                message_pb2.Message(id="m1", role=message_pb2.ROLE_USER, content="hello"),
                message_pb2.Message(
                    id="m2",
                    role=message_pb2.ROLE_ASSISTANT,
                    content="calling a tool",
                    tool_calls=[
                        message_pb2.ToolCall(id="call-1", name="search", arguments_json='{"q":"x"}')
                    ],
                ),
                message_pb2.Message(
                    id="m3",
                    role=message_pb2.ROLE_TOOL,
                    content="result",
                    name="search",
                    tool_call_id="call-1",
                ),
            ],
        )
        self.wrote(appended.revision)
        append_revision = appended.revision
        self.emit(
            "append_messages",
            seqs=[m.seq for m in appended.messages],
            roles=[message_pb2.Role.Name(m.role) for m in appended.messages],
            session=self.session(appended.session),
        )

        retry = c.append_messages(
            session_id=a,
            messages=[message_pb2.Message(id="m1", role=message_pb2.ROLE_USER, content="hello")],
        )
        self.emit("append_retry", seqs=[m.seq for m in retry.messages], revision=retry.revision)

        flags = []
        for suffix in "bcdef":
            more = c.create_session(session=self.new_session(suffix))
            self.wrote(more.revision)
            flags.append(more.created)
        self.emit("create_more", created=flags)

        pages: list[list[str]] = []
        totals: list[int] = []
        token = ""
        while True:
            page = c.list_sessions(
                filter=session_pb2.SessionFilter(labels=self.labels),
                order_by=pb.SESSION_ORDER_FIELD_STARTED_AT,
                ascending=True,
                page_size=4,
                page_token=token,
            )
            pages.append([self.short(s.id) for s in page.sessions])
            totals.append(page.total_size)
            token = page.next_page_token
            if not token:
                break
            assert len(pages) < 10, "pagination does not end"
        self.emit("list_sessions", pages=pages, total_size=totals)

        usage_request = stats_service_pb2.RecordUsageRequest(
            session_id=a,
            model="model-a",
            usage=session_pb2.Usage(
                prompt_tokens=100,
                completion_tokens=50,
                reasoning_tokens=10,
                cache_read_tokens=20,
                cache_write_tokens=5,
                cost_micros=1234,
            ),
            request_id="u1",
        )
        recorded = c.record_usage(usage_request)
        self.wrote(recorded.revision)
        self.emit(
            "record_usage",
            duplicate=recorded.duplicate,
            session_usage=self.usage(recorded.session_usage),
            model_usage=self.usage(recorded.model_usage),
        )
        duplicate = c.record_usage(usage_request)
        self.emit(
            "record_usage_retry",
            duplicate=duplicate.duplicate,
            same_revision=duplicate.revision == recorded.revision,
        )
        errored = c.record_usage(
            session_id=a,
            model="model-b",
            usage=session_pb2.Usage(prompt_tokens=10, cost_micros=7),
            errored=True,
            request_id="u2",
        )
        self.wrote(errored.revision)
        self.emit(
            "record_usage_errored",
            duplicate=errored.duplicate,
            session_usage=self.usage(errored.session_usage),
            model_usage=self.usage(errored.model_usage),
        )

        stats = c.get_stats(filter=session_pb2.SessionFilter(labels=self.labels)).stats
        self.emit(
            "get_stats",
            usage=self.usage(stats.usage),
            **{f: getattr(stats, f) for f in STATS_FIELDS},
            success_rate=stats.success_rate,
        )

        try:
            c.get_session(session_id=f"{self.run}-missing")
            raise AssertionError("GetSession of a missing session succeeded")
        except SessiondError as err:
            matched = isinstance(err, NotFound) and err.reason == "SESSION_NOT_FOUND"
            self.emit("error_not_found", matched=matched, **self.error(err))

        try:
            c.list_sessions(page_size=-1)
            raise AssertionError("ListSessions with page_size -1 succeeded")
        except SessiondError as err:
            self.emit("error_invalid_argument", **self.error(err))

        # The Python watch takes no deadline: a raw stub shows the wire behaviour.
        with grpc.insecure_channel(self.address) as channel:
            raw = session_service_pb2_grpc.SessionServiceStub(channel)
            idle = raw.WatchSessions(
                pb.WatchSessionsRequest(filter=pb.WatchFilter(session_ids=[f"{self.run}-idle"])),
                timeout=0.3,
            )
            first_type = ""
            try:
                for response in idle:
                    if not first_type:
                        first_type = pb.WatchResponseType.Name(response.type)
                raise AssertionError("a watch with a deadline ended without an error")
            except grpc.RpcError as err:
                self.emit("deadline", first_response=first_type, code=err.code().name)

        # Watch: the first stream up to the append, closed, then a second one
        # from the last revision seen + 1.
        seen: list[list[Any]] = []
        revisions: list[int] = []

        def take(response: session_service_pb2.WatchSessionsResponse) -> None:
            for event in self.events_of(response):
                if not revisions or revisions[-1] != event.revision:
                    assert not revisions or event.revision > revisions[-1], "order"
                    revisions.append(event.revision)
                seen.append(
                    [
                        self.written.index(event.revision),
                        event_pb2.EventType.Name(event.type),
                        self.short(event.session_id),
                        len(event.messages),
                    ]
                )

        with contextlib.closing(first_watch):
            for response in first_watch:
                take(response)
                if revisions and revisions[-1] >= append_revision:
                    break
        last_seen = revisions[-1]

        with contextlib.closing(c.watch(watch_filter, start_revision=last_seen + 1)) as second:
            opened = next(second)
            assert opened.type == pb.WATCH_RESPONSE_TYPE_CREATED, opened
            ended = c.end_session(
                session_id=f"{self.run}-b",
                status=session_pb2.SESSION_STATUS_COMPLETED,
                reason="done",
            )
            self.wrote(ended.revision)
            for response in second:
                take(response)
                if revisions[-1] >= self.written[-1]:
                    break
        assert revisions == self.written, f"watch saw {revisions}, wrote {self.written}"
        self.emit("watch", resumed=last_seen < self.written[-1], events=seen)

    def play_watch_restart(self) -> None:
        c = self.client
        a = f"{self.run}-a"
        watch = c.watch(pb.WatchFilter(labels=self.labels), include_initial=True)
        with contextlib.closing(watch):
            created = 0
            initial: list[list[str]] = []
            for response in watch:
                if response.type == pb.WATCH_RESPONSE_TYPE_CREATED:
                    created += 1
                elif response.type == pb.WATCH_RESPONSE_TYPE_INITIAL:
                    initial.extend(
                        [self.short(e.session_id), session_pb2.SessionStatus.Name(e.session.status)]
                        for e in response.events
                    )
                elif response.type == pb.WATCH_RESPONSE_TYPE_INITIAL_COMPLETE:
                    break
            written: list[int] = []
            delivered: list[int] = []
            events: list[list[Any]] = []

            def read_until(revision: int) -> None:
                nonlocal created
                for response in watch:
                    if response.type == pb.WATCH_RESPONSE_TYPE_CREATED:
                        created += 1
                        continue
                    for event in self.events_of(response):
                        if not delivered or delivered[-1] != event.revision:
                            delivered.append(event.revision)
                        events.append(
                            [
                                written.index(event.revision),
                                event_pb2.EventType.Name(event.type),
                                self.short(event.session_id),
                                len(event.messages),
                            ]
                        )
                    if delivered and delivered[-1] >= revision:
                        return

            running = c.set_runtime_state(session_id=a, state=session_pb2.RUNTIME_STATE_RUNNING)
            written.append(running.revision)
            read_until(running.revision)

            subprocess.run([os.environ["SESSIOND_INTEROP_RESTART"]], check=True)

            with Client(self.address, timeout=TIMEOUT) as writer:
                idle = writer.set_runtime_state(session_id=a, state=session_pb2.RUNTIME_STATE_IDLE)
                written.append(idle.revision)
                appended = writer.append_messages(
                    session_id=a,
                    messages=[
                        message_pb2.Message(
                            id="m4", role=message_pb2.ROLE_USER, content="after restart"
                        )
                    ],
                )
                written.append(appended.revision)
                ended = writer.end_session(
                    session_id=f"{self.run}-c", status=session_pb2.SESSION_STATUS_COMPLETED
                )
                written.append(ended.revision)
            read_until(written[-1])
        assert created == 1, f"CREATED delivered {created} times"
        assert delivered == written, f"watch delivered {delivered}, wrote {written}"
        self.emit("watch_restart", initial=sorted(initial), events=events)

    def play_append_unavailable(self) -> None:
        a = f"{self.run}-a"
        with Client(os.environ["SESSIOND_INTEROP_PROXY"], timeout=TIMEOUT) as lossy:
            appended = lossy.append_messages(
                session_id=a,
                messages=[
                    message_pb2.Message(id="m5", role=message_pb2.ROLE_USER, content="once"),
                    message_pb2.Message(
                        id="m6", role=message_pb2.ROLE_ASSISTANT, content="stored once"
                    ),
                ],
            )
        listed = self.client.list_messages(session_id=a, last_n=10).messages
        stored = [sum(1 for m in listed if m.id == wanted) for wanted in ("m5", "m6")]
        count = self.client.get_session(session_id=a).session.message_count
        self.emit(
            "append_unavailable",
            seqs=[m.seq for m in appended.messages],
            revision=appended.revision,
            stored=stored,
            message_count=count,
        )

    def play_page_walk(self) -> None:
        walk_labels = {"interop_walk": self.run}
        ids = [f"{self.run}-w{i:04d}" for i in range(WALK_SESSIONS)]
        for session_id in ids:
            self.client.create_session(
                session=session_pb2.Session(
                    id=session_id,
                    kind=session_pb2.SESSION_KIND_AUTONOMOUS,
                    channel="walk",
                    agent="interop-agent",
                    labels=walk_labels,
                )
            )
        walked = [
            s.id
            for s in self.client.iter_sessions(
                filter=session_pb2.SessionFilter(labels=walk_labels),
                order_by=pb.SESSION_ORDER_FIELD_STARTED_AT,
                ascending=True,
                page_size=WALK_PAGE_SIZE,
            )
        ]
        self.emit(
            "page_walk", count=len(walked), unique=len(set(walked)), in_order=walked == ids
        )

    def play_compacted(self) -> None:
        watch_filter = pb.WatchFilter(labels=self.labels)
        for _ in range(COMPACTION_POLLS):
            watch = self.client.watch(watch_filter, start_revision=self.first_revision)
            with contextlib.closing(watch):
                first = next(watch)
                if first.compacted_revision < self.first_revision:
                    time.sleep(COMPACTION_POLL_SECONDS)  # the compactor has not run yet
                    continue
                try:
                    for response in watch:
                        raise AssertionError(f"a compacted watch delivered {response}")
                except SessiondError as err:
                    compacted = err.compacted_revision if isinstance(err, RelistRequired) else -1
                    self.emit(
                        "compacted",
                        first_response=pb.WatchResponseType.Name(first.type),
                        code=err.code.name,
                        reason=err.reason,
                        relist=isinstance(err, RelistRequired),
                        compacted_at_or_after_start=compacted >= self.first_revision,
                    )
                    return
        raise AssertionError("the change log was never compacted past the first revision")

    def play_relist(self) -> None:
        listed = self.client.list_sessions(filter=session_pb2.SessionFilter(labels=self.labels))
        sessions = sorted(
            [self.short(s.id), session_pb2.SessionStatus.Name(s.status)] for s in listed.sessions
        )
        watch = self.client.watch(
            pb.WatchFilter(labels=self.labels), start_revision=listed.revision + 1
        )
        events: list[list[str]] = []
        with contextlib.closing(watch):
            opened = next(watch)
            assert opened.type == pb.WATCH_RESPONSE_TYPE_CREATED, opened
            ended = self.client.end_session(
                session_id=f"{self.run}-d", status=session_pb2.SESSION_STATUS_COMPLETED
            )
            for response in watch:
                events.extend(
                    [event_pb2.EventType.Name(e.type), self.short(e.session_id)]
                    for e in self.events_of(response)
                )
                if response.revision >= ended.revision:
                    break
        self.emit("relist", sessions=sessions, events=events)


def main() -> int:
    address = os.environ["SESSIOND_ADDRESS"]
    out_path = os.environ.get("SESSIOND_INTEROP_OUT", os.devnull)
    run = f"interop-python-{secrets.token_hex(4)}"
    with Client(address, timeout=TIMEOUT) as client, open(out_path, "w") as out:
        Scenario(client, address, run, out).play()
    return 0


if __name__ == "__main__":
    sys.exit(main())
