"""Python reference run of the interop scenario (see SCENARIO.md).

It uses the generated stubs in ``sessiond.v1`` directly, not the typed
client, so that it exercises the wire contract exactly as the generated Go,
TypeScript and Rust clients do. Its output is what their outputs must equal.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sessiond.v1 import (
    event_pb2,
    message_pb2,
    message_service_pb2,
    message_service_pb2_grpc,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
    stats_service_pb2,
    stats_service_pb2_grpc,
)

TIMEOUT = 10.0
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


class Scenario:
    def __init__(self, channel: grpc.Channel, run: str, out: Any) -> None:
        self.sessions = session_service_pb2_grpc.SessionServiceStub(channel)
        self.messages = message_service_pb2_grpc.MessageServiceStub(channel)
        self.stats = stats_service_pb2_grpc.StatsServiceStub(channel)
        self.run = run
        self.out = out
        self.labels = {"interop_run": run}
        # Revisions of this run's own writes, in the order they were made.
        self.written: list[int] = []

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

    def error(self, err: grpc.RpcError) -> dict[str, Any]:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
        assert status is not None, "the server sends grpc-status-details-bin"
        out: dict[str, Any] = {"code": err.code().name}
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                out["domain"] = info.domain
                out["reason"] = info.reason
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                out["field_violations"] = sorted(v.field for v in bad.field_violations)
        return out

    def play(self) -> None:
        pb, ms, st = session_service_pb2, message_service_pb2, stats_service_pb2
        a = f"{self.run}-a"

        created = self.sessions.CreateSession(
            pb.CreateSessionRequest(session=self.new_session("a")), timeout=TIMEOUT
        )
        self.wrote(created.revision)
        self.emit(
            "create_session",
            created=created.created,
            revision_positive=created.revision > 0,
            session=self.session(created.session),
        )

        watch_filter = pb.WatchFilter(labels=self.labels)
        first_watch = self.sessions.WatchSessions(
            pb.WatchSessionsRequest(start_revision=created.revision, filter=watch_filter),
            timeout=60,
        )
        opened = next(first_watch)
        assert opened.type == pb.WATCH_RESPONSE_TYPE_CREATED, opened

        again = self.sessions.CreateSession(
            pb.CreateSessionRequest(session=self.new_session("a")), timeout=TIMEOUT
        )
        self.emit("create_session_again", created=again.created, revision=again.revision)

        got = self.sessions.GetSession(pb.GetSessionRequest(session_id=a), timeout=TIMEOUT)
        self.emit("get_session", session=self.session(got.session))

        appended = self.messages.AppendMessages(
            ms.AppendMessagesRequest(
                session_id=a,
                messages=[
                    message_pb2.Message(id="m1", role=message_pb2.ROLE_USER, content="hello"),
                    message_pb2.Message(
                        id="m2",
                        role=message_pb2.ROLE_ASSISTANT,
                        content="calling a tool",
                        tool_calls=[
                            message_pb2.ToolCall(
                                id="call-1", name="search", arguments_json='{"q":"x"}'
                            )
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
            ),
            timeout=TIMEOUT,
        )
        self.wrote(appended.revision)
        append_revision = appended.revision
        self.emit(
            "append_messages",
            seqs=[m.seq for m in appended.messages],
            roles=[message_pb2.Role.Name(m.role) for m in appended.messages],
            session=self.session(appended.session),
        )

        retry = self.messages.AppendMessages(
            ms.AppendMessagesRequest(
                session_id=a,
                messages=[
                    message_pb2.Message(id="m1", role=message_pb2.ROLE_USER, content="hello")
                ],
            ),
            timeout=TIMEOUT,
        )
        self.emit("append_retry", seqs=[m.seq for m in retry.messages], revision=retry.revision)

        flags = []
        for suffix in "bcdef":
            more = self.sessions.CreateSession(
                pb.CreateSessionRequest(session=self.new_session(suffix)), timeout=TIMEOUT
            )
            self.wrote(more.revision)
            flags.append(more.created)
        self.emit("create_more", created=flags)

        pages: list[list[str]] = []
        totals: list[int] = []
        token = ""
        while True:
            page = self.sessions.ListSessions(
                pb.ListSessionsRequest(
                    filter=session_pb2.SessionFilter(labels=self.labels),
                    order_by=pb.SESSION_ORDER_FIELD_STARTED_AT,
                    ascending=True,
                    page_size=4,
                    page_token=token,
                ),
                timeout=TIMEOUT,
            )
            pages.append([self.short(s.id) for s in page.sessions])
            totals.append(page.total_size)
            token = page.next_page_token
            if not token:
                break
            assert len(pages) < 10, "pagination does not end"
        self.emit("list_sessions", pages=pages, total_size=totals)

        usage_request = st.RecordUsageRequest(
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
        recorded = self.stats.RecordUsage(usage_request, timeout=TIMEOUT)
        self.wrote(recorded.revision)
        self.emit(
            "record_usage",
            duplicate=recorded.duplicate,
            session_usage=self.usage(recorded.session_usage),
            model_usage=self.usage(recorded.model_usage),
        )
        duplicate = self.stats.RecordUsage(usage_request, timeout=TIMEOUT)
        self.emit(
            "record_usage_retry",
            duplicate=duplicate.duplicate,
            same_revision=duplicate.revision == recorded.revision,
        )
        errored = self.stats.RecordUsage(
            st.RecordUsageRequest(
                session_id=a,
                model="model-b",
                usage=session_pb2.Usage(prompt_tokens=10, cost_micros=7),
                errored=True,
                request_id="u2",
            ),
            timeout=TIMEOUT,
        )
        self.wrote(errored.revision)
        self.emit(
            "record_usage_errored",
            duplicate=errored.duplicate,
            session_usage=self.usage(errored.session_usage),
            model_usage=self.usage(errored.model_usage),
        )

        stats = self.stats.GetStats(
            st.GetStatsRequest(filter=session_pb2.SessionFilter(labels=self.labels)),
            timeout=TIMEOUT,
        ).stats
        self.emit(
            "get_stats",
            usage=self.usage(stats.usage),
            **{f: getattr(stats, f) for f in STATS_FIELDS},
            success_rate=stats.success_rate,
        )

        try:
            self.sessions.GetSession(
                pb.GetSessionRequest(session_id=f"{self.run}-missing"), timeout=TIMEOUT
            )
            raise AssertionError("GetSession of a missing session succeeded")
        except grpc.RpcError as err:
            self.emit("error_not_found", **self.error(err))

        try:
            self.sessions.ListSessions(pb.ListSessionsRequest(page_size=-1), timeout=TIMEOUT)
            raise AssertionError("ListSessions with page_size -1 succeeded")
        except grpc.RpcError as err:
            self.emit("error_invalid_argument", **self.error(err))

        idle = self.sessions.WatchSessions(
            pb.WatchSessionsRequest(
                filter=pb.WatchFilter(session_ids=[f"{self.run}-idle"]),
            ),
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

        # Watch: the first stream up to the append, cancelled, then resumed.
        seen: list[list[Any]] = []
        revisions: list[int] = []

        def take(response: session_service_pb2.WatchSessionsResponse) -> None:
            assert response.type == pb.WATCH_RESPONSE_TYPE_EVENTS, response
            for event in response.events:
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

        for response in first_watch:
            take(response)
            if revisions and revisions[-1] >= append_revision:
                break
        first_watch.cancel()
        last_seen = revisions[-1]

        second_watch = self.sessions.WatchSessions(
            pb.WatchSessionsRequest(start_revision=last_seen + 1, filter=watch_filter),
            timeout=60,
        )
        opened = next(second_watch)
        assert opened.type == pb.WATCH_RESPONSE_TYPE_CREATED, opened
        ended = self.sessions.EndSession(
            pb.EndSessionRequest(
                session_id=f"{self.run}-b",
                status=session_pb2.SESSION_STATUS_COMPLETED,
                reason="done",
            ),
            timeout=TIMEOUT,
        )
        self.wrote(ended.revision)
        for response in second_watch:
            take(response)
            if revisions[-1] >= self.written[-1]:
                break
        second_watch.cancel()
        assert revisions == self.written, f"watch saw {revisions}, wrote {self.written}"
        self.emit("watch", resumed=last_seen < self.written[-1], events=seen)


def main() -> int:
    address = os.environ["SESSIOND_ADDRESS"]
    out_path = os.environ.get("SESSIOND_INTEROP_OUT", os.devnull)
    run = f"interop-python-{secrets.token_hex(4)}"
    with grpc.insecure_channel(address) as channel, open(out_path, "w") as out:
        Scenario(channel, run, out).play()
    return 0


if __name__ == "__main__":
    sys.exit(main())
