/**
 * The interop scenario (../SCENARIO.md) with the TypeScript client layer
 * (SessiondClient from client/typescript) against the server at
 * $SESSIOND_ADDRESS; what it observed goes to $SESSIOND_INTEROP_OUT for
 * scripts/interop.sh to compare with the Python reference. Besides that
 * comparison the suite asserts the guarantees itself.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { test } from "node:test";

import {
  eventTypeToJSON,
  NotFoundError,
  Reason,
  RelistRequiredError,
  Role,
  roleToJSON,
  RuntimeState,
  runtimeStateToJSON,
  Session,
  SessiondClient,
  SessiondError,
  SessionKind,
  sessionKindToJSON,
  SessionOrderField,
  SessionStatus,
  sessionStatusToJSON,
  Usage,
  Watch,
  WatchResponseType,
  watchResponseTypeToJSON,
  WatchSessionsResponse,
} from "@sessiond/client";

const WALK_SESSIONS = 1000;
const WALK_PAGE_SIZE = 128;
const COMPACTION_POLLS = 300;
const COMPACTION_POLL_MS = 200;
const T = WatchResponseType;

const USAGE_FIELDS = {
  prompt_tokens: "promptTokens",
  completion_tokens: "completionTokens",
  reasoning_tokens: "reasoningTokens",
  cache_read_tokens: "cacheReadTokens",
  cache_write_tokens: "cacheWriteTokens",
  cost_micros: "costMicros",
  request_count: "requestCount",
  error_count: "errorCount",
  total_tokens: "totalTokens",
} as const;

function usage(u: Usage | undefined): Record<string, number> {
  const x = Usage.fromPartial(u ?? {});
  return Object.fromEntries(Object.entries(USAGE_FIELDS).map(([name, field]) => [name, Number(x[field])]));
}

/** failure awaits a promise that must fail and returns its SessiondError. */
async function failure(promise: Promise<unknown>): Promise<SessiondError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof SessiondError, `not a SessiondError: ${String(err)}`);
    return err;
  }
  assert.fail("the call succeeded");
}

/** next reads one response of a watch that must go on. */
async function next(responses: AsyncIterator<WatchSessionsResponse>): Promise<WatchSessionsResponse> {
  const r = await responses.next();
  assert.ok(!r.done, "the watch ended");
  return r.value;
}

function eventsOf(r: WatchSessionsResponse): WatchSessionsResponse["events"] {
  assert.equal(r.type, T.WATCH_RESPONSE_TYPE_EVENTS, `not EVENTS: ${watchResponseTypeToJSON(r.type)}`);
  assert.equal(r.fragment, false, "the client joins fragments");
  return r.events;
}

class Scenario {
  readonly run = `interop-typescript-${randomBytes(4).toString("hex")}`;
  readonly labels = { interop_run: this.run };
  readonly lines: string[] = [];
  /** The revisions of this run's own writes, in the order they were made. */
  readonly written: bigint[] = [];
  /** The revision of the run's first write (CreateSession a). */
  firstRevision = 0n;

  constructor(readonly client: SessiondClient, readonly address: string) {}

  emit(step: string, fields: Record<string, unknown>): void {
    const all: Record<string, unknown> = { ...fields, step };
    const line = JSON.stringify(Object.fromEntries(Object.entries(all).sort(([x], [y]) => (x < y ? -1 : 1))));
    console.log(line);
    this.lines.push(line);
  }

  short(id: string): string {
    assert.ok(id.startsWith(`${this.run}-`), `session ${id} is not of this run`);
    return id.slice(this.run.length + 1);
  }

  wrote(revision: bigint): void {
    assert.ok(revision > 0n, "a write that changed something has a revision");
    this.written.push(revision);
  }

  session(s: Session | undefined): Record<string, unknown> {
    assert.ok(s);
    return {
      id: this.short(s.id),
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
  }

  newSession(suffix: string): Session {
    return suffix === "a"
      ? Session.fromPartial({
          id: `${this.run}-a`, kind: SessionKind.SESSION_KIND_INTERACTIVE, channel: "cli",
          agent: "interop-agent", model: "model-a", displayName: "A", labels: this.labels,
        })
      : Session.fromPartial({
          id: `${this.run}-${suffix}`, kind: SessionKind.SESSION_KIND_AUTONOMOUS, channel: "discord.interop",
          agent: "interop-agent", model: "model-b", displayName: suffix.toUpperCase(),
          goal: "prove interop", labels: this.labels,
        });
  }

  static error(err: SessiondError): Record<string, unknown> {
    const out: Record<string, unknown> = { code: err.codeName, reason: err.reason };
    if (err.fieldViolations.length > 0) {
      out.field_violations = err.fieldViolations.map((v) => v.field).sort();
    }
    return out;
  }

  async play(): Promise<void> {
    await this.playCalls();
    await this.playWatchRestart();
    await this.playAppendUnavailable();
    await this.playPageWalk();
    await this.playCompacted();
    await this.playRelist();
  }

  async playCalls(): Promise<void> {
    const c = this.client;
    const a = `${this.run}-a`;

    const created = await c.createSession({ session: this.newSession("a") });
    this.wrote(created.revision);
    this.firstRevision = created.revision;
    this.emit("create_session", {
      created: created.created, revision_positive: created.revision > 0n, session: this.session(created.session),
    });

    const watchFilter = { labels: this.labels };
    const firstWatch = c.watch({ startRevision: created.revision, filter: watchFilter });
    const first = firstWatch[Symbol.asyncIterator]();
    assert.equal((await next(first)).type, T.WATCH_RESPONSE_TYPE_CREATED);

    const again = await c.createSession({ session: this.newSession("a") });
    this.emit("create_session_again", { created: again.created, revision: Number(again.revision) });

    const got = await c.getSession({ sessionId: a });
    this.emit("get_session", { session: this.session(got.session) });

    const appended = await c.appendMessages({
      sessionId: a,
      messages: [
        { id: "m1", role: Role.ROLE_USER, content: "hello" },
        {
          id: "m2", role: Role.ROLE_ASSISTANT, content: "calling a tool",
          toolCalls: [{ id: "call-1", name: "search", argumentsJson: '{"q":"x"}' }],
        },
        { id: "m3", role: Role.ROLE_TOOL, content: "result", name: "search", toolCallId: "call-1" },
      ],
    });
    this.wrote(appended.revision);
    const appendRevision = appended.revision;
    this.emit("append_messages", {
      seqs: appended.messages.map((m) => Number(m.seq)),
      roles: appended.messages.map((m) => roleToJSON(m.role)),
      session: this.session(appended.session),
    });

    const retry = await c.appendMessages({
      sessionId: a, messages: [{ id: "m1", role: Role.ROLE_USER, content: "hello" }],
    });
    this.emit("append_retry", { seqs: retry.messages.map((m) => Number(m.seq)), revision: Number(retry.revision) });

    const flags: boolean[] = [];
    for (const suffix of ["b", "c", "d", "e", "f"]) {
      const more = await c.createSession({ session: this.newSession(suffix) });
      this.wrote(more.revision);
      flags.push(more.created);
    }
    this.emit("create_more", { created: flags });

    // One call per page (not the walker): the pages themselves are observed.
    const pages: string[][] = [];
    const totals: number[] = [];
    let token = "";
    for (;;) {
      const page = await c.listSessions({
        filter: { labels: this.labels }, orderBy: SessionOrderField.SESSION_ORDER_FIELD_STARTED_AT,
        ascending: true, pageSize: 4, pageToken: token,
      });
      pages.push(page.sessions.map((s) => this.short(s.id)));
      totals.push(Number(page.totalSize));
      token = page.nextPageToken;
      if (token === "") {
        break;
      }
      assert.ok(pages.length < 10, "pagination does not end");
    }
    this.emit("list_sessions", { pages, total_size: totals });

    const usageRequest = {
      sessionId: a, model: "model-a", requestId: "u1",
      usage: {
        promptTokens: 100n, completionTokens: 50n, reasoningTokens: 10n,
        cacheReadTokens: 20n, cacheWriteTokens: 5n, costMicros: 1234n,
      },
    };
    const recorded = await c.recordUsage(usageRequest);
    this.wrote(recorded.revision);
    this.emit("record_usage", {
      duplicate: recorded.duplicate, session_usage: usage(recorded.sessionUsage),
      model_usage: usage(recorded.modelUsage),
    });
    const duplicate = await c.recordUsage(usageRequest);
    this.emit("record_usage_retry", {
      duplicate: duplicate.duplicate, same_revision: duplicate.revision === recorded.revision,
    });
    const errored = await c.recordUsage({
      sessionId: a, model: "model-b", requestId: "u2", errored: true,
      usage: { promptTokens: 10n, costMicros: 7n },
    });
    this.wrote(errored.revision);
    this.emit("record_usage_errored", {
      duplicate: errored.duplicate, session_usage: usage(errored.sessionUsage),
      model_usage: usage(errored.modelUsage),
    });

    const st = (await c.getStats({ filter: { labels: this.labels } })).stats;
    assert.ok(st);
    this.emit("get_stats", {
      usage: usage(st.usage), session_count: Number(st.sessionCount),
      average_cost_micros: Number(st.averageCostMicros), active_count: Number(st.activeCount),
      running_count: Number(st.runningCount), abandoned_count: Number(st.abandonedCount),
      completed_count: Number(st.completedCount), failed_count: Number(st.failedCount),
      cancelled_count: Number(st.cancelledCount), unknown_count: Number(st.unknownCount),
      message_count: Number(st.messageCount), success_rate: st.successRate,
    });

    const notFound = await failure(c.getSession({ sessionId: `${this.run}-missing` }));
    this.emit("error_not_found", {
      matched: notFound instanceof NotFoundError && notFound.reason === Reason.SESSION_NOT_FOUND,
      ...Scenario.error(notFound),
    });
    this.emit("error_invalid_argument", Scenario.error(await failure(c.listSessions({ pageSize: -1 }))));

    {
      let firstType = "";
      const err = await failure((async () => {
        for await (const r of c.watch({ filter: { sessionIds: [`${this.run}-idle`] } }, { deadlineMs: 300 })) {
          firstType ||= watchResponseTypeToJSON(r.type);
        }
      })());
      this.emit("deadline", { first_response: firstType, code: err.codeName });
    }

    // Watch: the first stream up to the append, closed, then a second one
    // from the last revision seen + 1.
    const seen: unknown[] = [];
    const revisions: bigint[] = [];
    const take = (r: WatchSessionsResponse): void => {
      for (const e of eventsOf(r)) {
        const last = revisions.at(-1);
        if (last !== e.revision) {
          assert.ok(last === undefined || e.revision > last, `revision ${e.revision} after ${last}`);
          revisions.push(e.revision);
        }
        const index = this.written.indexOf(e.revision);
        assert.ok(index >= 0, `event of revision ${e.revision} that this run did not write`);
        seen.push([index, eventTypeToJSON(e.type), this.short(e.sessionId), e.messages.length]);
      }
    };
    while (revisions.length === 0 || revisions.at(-1)! < appendRevision) {
      take(await next(first));
    }
    firstWatch.close();
    const lastSeen = revisions.at(-1)!;

    const secondWatch = c.watch({ startRevision: lastSeen + 1n, filter: watchFilter });
    try {
      const second = secondWatch[Symbol.asyncIterator]();
      assert.equal((await next(second)).type, T.WATCH_RESPONSE_TYPE_CREATED);
      const ended = await c.endSession({
        sessionId: `${this.run}-b`, status: SessionStatus.SESSION_STATUS_COMPLETED, reason: "done",
      });
      this.wrote(ended.revision);
      while (revisions.at(-1)! < this.written.at(-1)!) {
        take(await next(second));
      }
    } finally {
      secondWatch.close();
    }
    assert.deepEqual(revisions, this.written, "the watches saw exactly this run's writes, once, in order");
    this.emit("watch", { resumed: lastSeen < this.written.at(-1)!, events: seen });
  }

  async playWatchRestart(): Promise<void> {
    const c = this.client;
    const a = `${this.run}-a`;
    const watch: Watch = c.watch({ filter: { labels: this.labels }, includeInitial: true });
    const responses = watch[Symbol.asyncIterator]();
    let created = 0;
    const initial: string[][] = [];
    const written: bigint[] = [];
    const delivered: bigint[] = [];
    const events: unknown[] = [];
    try {
      for (;;) {
        const r = await next(responses);
        if (r.type === T.WATCH_RESPONSE_TYPE_CREATED) {
          created += 1;
        } else if (r.type === T.WATCH_RESPONSE_TYPE_INITIAL) {
          initial.push(...r.events.map((e) => [this.short(e.sessionId), sessionStatusToJSON(e.session!.status)]));
        } else if (r.type === T.WATCH_RESPONSE_TYPE_INITIAL_COMPLETE) {
          break;
        }
      }
      const readUntil = async (revision: bigint): Promise<void> => {
        while (delivered.length === 0 || delivered.at(-1)! < revision) {
          const r = await next(responses);
          if (r.type === T.WATCH_RESPONSE_TYPE_CREATED) {
            created += 1;
            continue;
          }
          for (const e of eventsOf(r)) {
            if (delivered.at(-1) !== e.revision) {
              delivered.push(e.revision);
            }
            events.push([written.indexOf(e.revision), eventTypeToJSON(e.type), this.short(e.sessionId), e.messages.length]);
          }
        }
      };

      const running = await c.setRuntimeState({ sessionId: a, state: RuntimeState.RUNTIME_STATE_RUNNING });
      written.push(running.revision);
      await readUntil(running.revision);

      // The watch is not read while the server is down: it must reconnect by itself.
      execFileSync(process.env.SESSIOND_INTEROP_RESTART!, [], { stdio: "inherit" });

      const writer = new SessiondClient(this.address);
      try {
        written.push((await writer.setRuntimeState({ sessionId: a, state: RuntimeState.RUNTIME_STATE_IDLE })).revision);
        written.push((await writer.appendMessages({
          sessionId: a, messages: [{ id: "m4", role: Role.ROLE_USER, content: "after restart" }],
        })).revision);
        written.push((await writer.endSession({
          sessionId: `${this.run}-c`, status: SessionStatus.SESSION_STATUS_COMPLETED,
        })).revision);
      } finally {
        writer.close();
      }
      await readUntil(written.at(-1)!);
    } finally {
      watch.close();
    }
    assert.equal(created, 1, `CREATED delivered ${created} times`);
    assert.deepEqual(delivered, written, "the watch delivered each write once, in order, across the restart");
    this.emit("watch_restart", { initial: initial.sort(compareLists), events });
  }

  async playAppendUnavailable(): Promise<void> {
    const a = `${this.run}-a`;
    const lossy = new SessiondClient(process.env.SESSIOND_INTEROP_PROXY!);
    let appended;
    try {
      appended = await lossy.appendMessages({
        sessionId: a,
        messages: [
          { id: "m5", role: Role.ROLE_USER, content: "once" },
          { id: "m6", role: Role.ROLE_ASSISTANT, content: "stored once" },
        ],
      });
    } finally {
      lossy.close();
    }
    const listed = (await this.client.listMessages({ sessionId: a, lastN: 10 })).messages;
    const stored = ["m5", "m6"].map((id) => listed.filter((m) => m.id === id).length);
    const count = (await this.client.getSession({ sessionId: a })).session!.messageCount;
    this.emit("append_unavailable", {
      seqs: appended.messages.map((m) => Number(m.seq)),
      revision: Number(appended.revision),
      stored,
      message_count: Number(count),
    });
  }

  async playPageWalk(): Promise<void> {
    const walkLabels = { interop_walk: this.run };
    const ids = Array.from({ length: WALK_SESSIONS }, (_, i) => `${this.run}-w${String(i).padStart(4, "0")}`);
    for (const id of ids) {
      await this.client.createSession({
        session: {
          id, kind: SessionKind.SESSION_KIND_AUTONOMOUS, channel: "walk", agent: "interop-agent", labels: walkLabels,
        },
      });
    }
    const walked: string[] = [];
    for await (const s of this.client.listAllSessions({
      filter: { labels: walkLabels }, orderBy: SessionOrderField.SESSION_ORDER_FIELD_STARTED_AT,
      ascending: true, pageSize: WALK_PAGE_SIZE,
    })) {
      walked.push(s.id);
    }
    this.emit("page_walk", {
      count: walked.length,
      unique: new Set(walked).size,
      in_order: walked.length === ids.length && walked.every((id, i) => id === ids[i]),
    });
  }

  async playCompacted(): Promise<void> {
    for (let poll = 0; poll < COMPACTION_POLLS; poll += 1) {
      const watch = this.client.watch({ startRevision: this.firstRevision, filter: { labels: this.labels } });
      const responses = watch[Symbol.asyncIterator]();
      try {
        const first = await next(responses);
        if (first.compactedRevision < this.firstRevision) {
          // The compactor has not run yet.
          watch.close();
          await new Promise((ok) => setTimeout(ok, COMPACTION_POLL_MS));
          continue;
        }
        const err = await failure((async () => {
          for (;;) {
            const r = await responses.next();
            assert.ok(r.done !== true, "the compacted watch ended without an error");
            assert.fail(`a compacted watch delivered ${watchResponseTypeToJSON(r.value.type)}`);
          }
        })());
        this.emit("compacted", {
          first_response: watchResponseTypeToJSON(first.type),
          code: err.codeName,
          reason: err.reason,
          relist: err instanceof RelistRequiredError,
          compacted_at_or_after_start:
            (err instanceof RelistRequiredError ? err.compactedRevision : -1n) >= this.firstRevision,
        });
        return;
      } finally {
        watch.close();
      }
    }
    assert.fail("the change log was never compacted past the first revision");
  }

  async playRelist(): Promise<void> {
    const listed = await this.client.listSessions({ filter: { labels: this.labels } });
    const sessions = listed.sessions.map((s) => [this.short(s.id), sessionStatusToJSON(s.status)]).sort(compareLists);
    const watch = this.client.watch({ filter: { labels: this.labels }, startRevision: listed.revision + 1n });
    const events: string[][] = [];
    try {
      const responses = watch[Symbol.asyncIterator]();
      assert.equal((await next(responses)).type, T.WATCH_RESPONSE_TYPE_CREATED);
      const ended = await this.client.endSession({
        sessionId: `${this.run}-d`, status: SessionStatus.SESSION_STATUS_COMPLETED,
      });
      for (;;) {
        const r = await next(responses);
        events.push(...eventsOf(r).map((e) => [eventTypeToJSON(e.type), this.short(e.sessionId)]));
        if (r.revision >= ended.revision) {
          break;
        }
      }
    } finally {
      watch.close();
    }
    this.emit("relist", { sessions, events });
  }
}

/** compareLists orders lists of strings as Python sorts them. */
function compareLists(x: string[], y: string[]): number {
  for (let i = 0; i < Math.min(x.length, y.length); i += 1) {
    if (x[i] !== y[i]) {
      return x[i]! < y[i]! ? -1 : 1;
    }
  }
  return x.length - y.length;
}

test("interop scenario against the Python server", { skip: !process.env.SESSIOND_ADDRESS }, async () => {
  const address = process.env.SESSIOND_ADDRESS!;
  const client = new SessiondClient(address);
  const scenario = new Scenario(client, address);
  try {
    await scenario.play();
  } finally {
    client.close();
    const out = process.env.SESSIOND_INTEROP_OUT;
    if (out) {
      writeFileSync(out, scenario.lines.map((l) => `${l}\n`).join(""));
    }
  }
});
