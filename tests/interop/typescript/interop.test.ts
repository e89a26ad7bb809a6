/**
 * The interop scenario (../SCENARIO.md) with the generated TypeScript client
 * against the server at $SESSIOND_ADDRESS; what it observed goes to
 * $SESSIOND_INTEROP_OUT for scripts/interop.sh to compare with the Python
 * reference.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { test } from "node:test";

import {
  AppendMessagesRequest,
  CreateSessionRequest,
  EndSessionRequest,
  errorDetails,
  eventTypeToJSON,
  GetSessionRequest,
  GetStatsRequest,
  grpc,
  ListSessionsRequest,
  MessageServiceClient,
  RecordUsageRequest,
  Role,
  roleToJSON,
  runtimeStateToJSON,
  Session,
  SessionKind,
  sessionKindToJSON,
  SessionOrderField,
  SessionServiceClient,
  SessionStatus,
  sessionStatusToJSON,
  StatsServiceClient,
  Usage,
  WatchResponseType,
  watchResponseTypeToJSON,
  WatchSessionsRequest,
  WatchSessionsResponse,
} from "@sessiond/client";

const CALL_TIMEOUT_MS = 10_000;

type Callback<Res> = (err: grpc.ServiceError | null, res: Res) => void;
type UnaryMethod<Req, Res> = (
  req: Req,
  metadata: grpc.Metadata,
  options: Partial<grpc.CallOptions>,
  callback: Callback<Res>,
) => grpc.ClientUnaryCall;

/** unary turns a generated callback method into a promise, with a deadline. */
function unary<Req, Res>(method: UnaryMethod<Req, Res>, req: Req): Promise<Res> {
  return new Promise((resolve, reject) => {
    method(req, new grpc.Metadata(), { deadline: Date.now() + CALL_TIMEOUT_MS }, (err, res) =>
      err ? reject(err) : resolve(res),
    );
  });
}

/** failure runs a call that must fail and returns its error. */
async function failure(promise: Promise<unknown>): Promise<grpc.ServiceError> {
  try {
    await promise;
  } catch (err) {
    return err as grpc.ServiceError;
  }
  throw new assert.AssertionError({ message: "the call succeeded" });
}

const codeName = (code: grpc.status): string => grpc.status[code];

function usage(u: Usage | undefined): Record<string, number> {
  const x = Usage.fromPartial(u ?? {});
  return {
    prompt_tokens: Number(x.promptTokens),
    completion_tokens: Number(x.completionTokens),
    reasoning_tokens: Number(x.reasoningTokens),
    cache_read_tokens: Number(x.cacheReadTokens),
    cache_write_tokens: Number(x.cacheWriteTokens),
    cost_micros: Number(x.costMicros),
    request_count: Number(x.requestCount),
    error_count: Number(x.errorCount),
    total_tokens: Number(x.totalTokens),
  };
}

test("interop scenario against the Python server", { skip: !process.env.SESSIOND_ADDRESS }, async () => {
  const address = process.env.SESSIOND_ADDRESS!;
  const credentials = grpc.credentials.createInsecure();
  const sessions = new SessionServiceClient(address, credentials);
  const messages = new MessageServiceClient(address, credentials);
  const stats = new StatsServiceClient(address, credentials);
  const run = `interop-typescript-${randomBytes(4).toString("hex")}`;
  const labels = { interop_run: run };
  const lines: string[] = [];
  const written: bigint[] = [];

  const emit = (step: string, fields: Record<string, unknown>): void => {
    const all: Record<string, unknown> = { ...fields, step };
    const line = JSON.stringify(Object.fromEntries(Object.entries(all).sort(([x], [y]) => (x < y ? -1 : 1))));
    console.log(line);
    lines.push(line);
  };
  const short = (id: string): string => {
    assert.ok(id.startsWith(`${run}-`), `session ${id} is not of this run`);
    return id.slice(run.length + 1);
  };
  const wrote = (revision: bigint): void => {
    assert.ok(revision > 0n, "a write that changed something has a revision");
    written.push(revision);
  };
  const session = (s: Session | undefined): Record<string, unknown> => {
    assert.ok(s);
    return {
      id: short(s.id),
      tenant: s.tenant,
      kind: sessionKindToJSON(s.kind),
      channel: s.channel,
      agent: s.agent,
      model: s.model,
      display_name: s.displayName,
      status: sessionStatusToJSON(s.status),
      runtime_state: runtimeStateToJSON(s.runtimeState),
      message_count: Number(s.messageCount),
      turn_count: Number(s.turnCount),
      tool_call_count: Number(s.toolCallCount),
      last_seq: Number(s.lastSeq),
      usage: usage(s.usage),
      has_started_at: s.startedAt !== undefined,
      has_etag: s.etag !== "",
    };
  };
  const newSession = (suffix: string): Session =>
    suffix === "a"
      ? Session.fromPartial({
          id: `${run}-a`, kind: SessionKind.SESSION_KIND_INTERACTIVE, channel: "cli",
          agent: "interop-agent", model: "model-a", displayName: "A", labels,
        })
      : Session.fromPartial({
          id: `${run}-${suffix}`, kind: SessionKind.SESSION_KIND_AUTONOMOUS, channel: "discord.interop",
          agent: "interop-agent", model: "model-b", displayName: suffix.toUpperCase(),
          goal: "prove interop", labels,
        });
  const rpcError = (err: grpc.ServiceError): Record<string, unknown> => {
    const details = errorDetails(err);
    assert.ok(details?.errorInfo, `no ErrorInfo in the status details of ${err.message}`);
    const out: Record<string, unknown> = {
      code: codeName(err.code),
      domain: details.errorInfo.domain,
      reason: details.errorInfo.reason,
    };
    if (details.badRequest) {
      out.field_violations = details.badRequest.fieldViolations.map((v) => v.field).sort();
    }
    return out;
  };

  const a = `${run}-a`;
  try {
    const created = await unary(sessions.createSession.bind(sessions),
      CreateSessionRequest.fromPartial({ session: newSession("a") }));
    wrote(created.revision);
    emit("create_session", {
      created: created.created, revision_positive: created.revision > 0n, session: session(created.session),
    });

    const watchFilter = { labels };
    const firstWatch = sessions.watchSessions(
      WatchSessionsRequest.fromPartial({ startRevision: created.revision, filter: watchFilter }),
      new grpc.Metadata(), { deadline: Date.now() + 60_000 });
    const first: AsyncIterator<WatchSessionsResponse> = firstWatch[Symbol.asyncIterator]();
    const opened = await first.next();
    assert.equal(opened.value?.type, WatchResponseType.WATCH_RESPONSE_TYPE_CREATED);

    const again = await unary(sessions.createSession.bind(sessions),
      CreateSessionRequest.fromPartial({ session: newSession("a") }));
    emit("create_session_again", { created: again.created, revision: Number(again.revision) });

    const got = await unary(sessions.getSession.bind(sessions), GetSessionRequest.fromPartial({ sessionId: a }));
    emit("get_session", { session: session(got.session) });

    const appended = await unary(messages.appendMessages.bind(messages), AppendMessagesRequest.fromPartial({
      sessionId: a,
      messages: [
        { id: "m1", role: Role.ROLE_USER, content: "hello" },
        {
          id: "m2", role: Role.ROLE_ASSISTANT, content: "calling a tool",
          toolCalls: [{ id: "call-1", name: "search", argumentsJson: '{"q":"x"}' }],
        },
        { id: "m3", role: Role.ROLE_TOOL, content: "result", name: "search", toolCallId: "call-1" },
      ],
    }));
    wrote(appended.revision);
    const appendRevision = appended.revision;
    emit("append_messages", {
      seqs: appended.messages.map((m) => Number(m.seq)),
      roles: appended.messages.map((m) => roleToJSON(m.role)),
      session: session(appended.session),
    });

    const retry = await unary(messages.appendMessages.bind(messages), AppendMessagesRequest.fromPartial({
      sessionId: a, messages: [{ id: "m1", role: Role.ROLE_USER, content: "hello" }],
    }));
    emit("append_retry", { seqs: retry.messages.map((m) => Number(m.seq)), revision: Number(retry.revision) });

    const flags: boolean[] = [];
    for (const suffix of ["b", "c", "d", "e", "f"]) {
      const more = await unary(sessions.createSession.bind(sessions),
        CreateSessionRequest.fromPartial({ session: newSession(suffix) }));
      wrote(more.revision);
      flags.push(more.created);
    }
    emit("create_more", { created: flags });

    const pages: string[][] = [];
    const totals: number[] = [];
    let token = "";
    for (;;) {
      const page = await unary(sessions.listSessions.bind(sessions), ListSessionsRequest.fromPartial({
        filter: { labels }, orderBy: SessionOrderField.SESSION_ORDER_FIELD_STARTED_AT, ascending: true,
        pageSize: 4, pageToken: token,
      }));
      pages.push(page.sessions.map((s) => short(s.id)));
      totals.push(Number(page.totalSize));
      token = page.nextPageToken;
      if (!token) break;
      assert.ok(pages.length < 10, "pagination does not end");
    }
    emit("list_sessions", { pages, total_size: totals });

    const usageRequest = RecordUsageRequest.fromPartial({
      sessionId: a, model: "model-a", requestId: "u1",
      usage: {
        promptTokens: 100n, completionTokens: 50n, reasoningTokens: 10n,
        cacheReadTokens: 20n, cacheWriteTokens: 5n, costMicros: 1234n,
      },
    });
    const recorded = await unary(stats.recordUsage.bind(stats), usageRequest);
    wrote(recorded.revision);
    emit("record_usage", {
      duplicate: recorded.duplicate, session_usage: usage(recorded.sessionUsage),
      model_usage: usage(recorded.modelUsage),
    });
    const duplicate = await unary(stats.recordUsage.bind(stats), usageRequest);
    emit("record_usage_retry", { duplicate: duplicate.duplicate, same_revision: duplicate.revision === recorded.revision });
    const errored = await unary(stats.recordUsage.bind(stats), RecordUsageRequest.fromPartial({
      sessionId: a, model: "model-b", requestId: "u2", errored: true,
      usage: { promptTokens: 10n, costMicros: 7n },
    }));
    wrote(errored.revision);
    emit("record_usage_errored", {
      duplicate: errored.duplicate, session_usage: usage(errored.sessionUsage),
      model_usage: usage(errored.modelUsage),
    });

    const st = (await unary(stats.getStats.bind(stats), GetStatsRequest.fromPartial({ filter: { labels } }))).stats!;
    emit("get_stats", {
      usage: usage(st.usage), session_count: Number(st.sessionCount),
      average_cost_micros: Number(st.averageCostMicros), active_count: Number(st.activeCount),
      running_count: Number(st.runningCount), abandoned_count: Number(st.abandonedCount),
      completed_count: Number(st.completedCount), failed_count: Number(st.failedCount),
      cancelled_count: Number(st.cancelledCount), unknown_count: Number(st.unknownCount),
      message_count: Number(st.messageCount), success_rate: st.successRate,
    });

    emit("error_not_found", rpcError(await failure(
      unary(sessions.getSession.bind(sessions), GetSessionRequest.fromPartial({ sessionId: `${run}-missing` })))));
    emit("error_invalid_argument", rpcError(await failure(
      unary(sessions.listSessions.bind(sessions), ListSessionsRequest.fromPartial({ pageSize: -1 })))));

    {
      const idle = sessions.watchSessions(
        WatchSessionsRequest.fromPartial({ filter: { sessionIds: [`${run}-idle`] } }),
        new grpc.Metadata(), { deadline: Date.now() + 300 });
      let firstType = "";
      const err = await failure((async () => {
        for await (const r of idle as AsyncIterable<WatchSessionsResponse>) {
          firstType ||= watchResponseTypeToJSON(r.type);
        }
      })());
      emit("deadline", { first_response: firstType, code: codeName(err.code) });
    }

    // Watch: the first stream up to the append, cancelled, then resumed.
    const seen: unknown[] = [];
    const revisions: bigint[] = [];
    const take = (r: WatchSessionsResponse): void => {
      assert.equal(r.type, WatchResponseType.WATCH_RESPONSE_TYPE_EVENTS);
      for (const e of r.events) {
        const last = revisions.at(-1);
        if (last !== e.revision) {
          assert.ok(last === undefined || e.revision > last, `revision ${e.revision} after ${last}`);
          revisions.push(e.revision);
        }
        const index = written.indexOf(e.revision);
        assert.ok(index >= 0, `event of revision ${e.revision} that this run did not write`);
        seen.push([index, eventTypeToJSON(e.type), short(e.sessionId), e.messages.length]);
      }
    };
    while (revisions.length === 0 || revisions.at(-1)! < appendRevision) {
      const next = await first.next();
      assert.ok(!next.done, "the first watch ended");
      take(next.value);
    }
    firstWatch.on("error", () => {}); // the CANCELLED status that cancel() causes
    firstWatch.cancel();
    const lastSeen = revisions.at(-1)!;

    const secondWatch = sessions.watchSessions(
      WatchSessionsRequest.fromPartial({ startRevision: lastSeen + 1n, filter: watchFilter }),
      new grpc.Metadata(), { deadline: Date.now() + 60_000 });
    const second: AsyncIterator<WatchSessionsResponse> = secondWatch[Symbol.asyncIterator]();
    const secondOpened = await second.next();
    assert.equal(secondOpened.value?.type, WatchResponseType.WATCH_RESPONSE_TYPE_CREATED);
    const ended = await unary(sessions.endSession.bind(sessions), EndSessionRequest.fromPartial({
      sessionId: `${run}-b`, status: SessionStatus.SESSION_STATUS_COMPLETED, reason: "done",
    }));
    wrote(ended.revision);
    while (revisions.at(-1)! < written.at(-1)!) {
      const next = await second.next();
      assert.ok(!next.done, "the second watch ended");
      take(next.value);
    }
    secondWatch.on("error", () => {});
    secondWatch.cancel();
    assert.deepEqual(revisions, written, "the watches saw exactly this run's writes, once, in order");
    emit("watch", { resumed: lastSeen < written.at(-1)!, events: seen });
  } finally {
    sessions.close();
    messages.close();
    stats.close();
    const out = process.env.SESSIOND_INTEROP_OUT;
    if (out) writeFileSync(out, lines.map((l) => `${l}\n`).join(""));
  }
});
