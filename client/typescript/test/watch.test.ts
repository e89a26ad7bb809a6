/**
 * The resuming watch: the cursor's rules on canned responses (fragments,
 * replays, bookmarks), the reconnect loop on a canned stream source with an
 * injected sleep, and the whole watch against a real server that is killed
 * and restarted, compacts its change log, or is asked for the initial state.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  Backoff,
  DeadlineExceededError,
  EventType,
  follow,
  InvalidArgumentError,
  RelistRequiredError,
  RuntimeState,
  SessiondClient,
  SessiondError,
  SessionEvent,
  SessionStatus,
  WatchCursor,
  WatchResponseType,
  WatchSessionsRequest,
  WatchSessionsResponse,
  WatchStream,
} from "../src";
import { TestServer, uniqueId } from "./server";

const T = WatchResponseType;

function response(type: WatchResponseType, revision: number, eventRevisions: number[] = [], fragment = false) {
  return WatchSessionsResponse.fromPartial({
    type,
    revision,
    fragment,
    events: eventRevisions.map((r, i) => ({
      revision: r,
      type: EventType.EVENT_TYPE_SESSION_UPDATED,
      sessionId: `s${r}-${i}`,
    })),
  });
}

const revisionsOf = (r: WatchSessionsResponse | undefined): number[] =>
  (r?.events ?? []).map((e) => Number(e.revision));

describe("WatchCursor", () => {
  const cursorFrom = (startRevision: number, maxRevisionBytes?: number) =>
    new WatchCursor(WatchSessionsRequest.fromPartial({ startRevision }), maxRevisionBytes);

  test("the parts of a fragmented revision are delivered as one response", () => {
    const cursor = cursorFrom(5);
    assert.equal(cursor.accept(response(T.WATCH_RESPONSE_TYPE_EVENTS, 5, [5, 5], true)), undefined);
    assert.equal(cursor.accept(response(T.WATCH_RESPONSE_TYPE_EVENTS, 5, [5], true)), undefined);
    const whole = cursor.accept(response(T.WATCH_RESPONSE_TYPE_EVENTS, 5, [5, 5]));
    assert.deepEqual(revisionsOf(whole), [5, 5, 5, 5, 5]);
    assert.equal(whole?.fragment, false);
    assert.equal(cursor.nextRevision, 6n);
  });

  test("a half-joined revision is dropped on connection loss and taken whole from the resend", () => {
    const cursor = cursorFrom(5);
    cursor.accept(response(T.WATCH_RESPONSE_TYPE_EVENTS, 5, [5], true));
    cursor.connectionLost();
    assert.equal(cursor.request().startRevision, 5n, "resume at the interrupted revision");
    cursor.accept(response(T.WATCH_RESPONSE_TYPE_CREATED, 9));
    cursor.accept(response(T.WATCH_RESPONSE_TYPE_EVENTS, 5, [5], true));
    assert.deepEqual(revisionsOf(cursor.accept(response(T.WATCH_RESPONSE_TYPE_EVENTS, 5, [5]))), [5, 5]);
  });

  test("a fragmented revision already delivered is skipped when it comes again", () => {
    const cursor = cursorFrom(5);
    cursor.accept(response(T.WATCH_RESPONSE_TYPE_EVENTS, 5, [5], true));
    cursor.accept(response(T.WATCH_RESPONSE_TYPE_EVENTS, 5, [5]));
    assert.equal(cursor.accept(response(T.WATCH_RESPONSE_TYPE_EVENTS, 5, [5], true)), undefined);
    assert.equal(cursor.accept(response(T.WATCH_RESPONSE_TYPE_EVENTS, 5, [5])), undefined);
    assert.deepEqual(revisionsOf(cursor.accept(response(T.WATCH_RESPONSE_TYPE_EVENTS, 6, [6]))), [6]);
  });

  test("a joined revision larger than the bound ends the watch with RESOURCE_EXHAUSTED", () => {
    const one = SessionEvent.encode(response(T.WATCH_RESPONSE_TYPE_EVENTS, 5, [5]).events[0]!).finish().length;
    const cursor = cursorFrom(5, 2 * one);
    cursor.accept(response(T.WATCH_RESPONSE_TYPE_EVENTS, 5, [5, 5], true));
    assert.throws(
      () => cursor.accept(response(T.WATCH_RESPONSE_TYPE_EVENTS, 5, [5], true)),
      (err: SessiondError) => err.codeName === "RESOURCE_EXHAUSTED",
    );
  });

  test("a response of another revision between parts is a protocol error", () => {
    const cursor = cursorFrom(5);
    cursor.accept(response(T.WATCH_RESPONSE_TYPE_EVENTS, 5, [5], true));
    assert.throws(() => cursor.accept(response(T.WATCH_RESPONSE_TYPE_EVENTS, 6, [6])), SessiondError);
  });

  test("replayed events, repeated CREATED and bookmarks behind delivery are not delivered", () => {
    const cursor = cursorFrom(0);
    assert.ok(cursor.accept(response(T.WATCH_RESPONSE_TYPE_CREATED, 3)));
    assert.equal(cursor.nextRevision, 4n, "from now: resume after the revision at creation");
    assert.deepEqual(revisionsOf(cursor.accept(response(T.WATCH_RESPONSE_TYPE_EVENTS, 5, [4, 5]))), [4, 5]);
    assert.equal(cursor.accept(response(T.WATCH_RESPONSE_TYPE_CREATED, 5)), undefined);
    assert.deepEqual(revisionsOf(cursor.accept(response(T.WATCH_RESPONSE_TYPE_EVENTS, 6, [5, 6]))), [6]);
    assert.equal(cursor.accept(response(T.WATCH_RESPONSE_TYPE_PROGRESS, 4)), undefined);
    assert.ok(cursor.accept(response(T.WATCH_RESPONSE_TYPE_PROGRESS, 9)));
    assert.equal(cursor.request().startRevision, 10n);
  });

  test("the initial state is asked for again until INITIAL_COMPLETE", () => {
    const cursor = new WatchCursor(WatchSessionsRequest.fromPartial({ includeInitial: true }));
    cursor.accept(response(T.WATCH_RESPONSE_TYPE_CREATED, 7));
    assert.ok(cursor.accept(response(T.WATCH_RESPONSE_TYPE_INITIAL, 0, [1])));
    assert.equal(cursor.request().includeInitial, true);
    assert.ok(cursor.accept(response(T.WATCH_RESPONSE_TYPE_INITIAL_COMPLETE, 7)));
    assert.deepEqual(
      { include: cursor.request().includeInitial, start: cursor.request().startRevision },
      { include: false, start: 8n },
    );
  });

  test("include_initial with a start revision is refused before any call", () => {
    const client = new SessiondClient("127.0.0.1:1");
    try {
      assert.throws(() => client.watch({ includeInitial: true, startRevision: 3 }), (err: InvalidArgumentError) =>
        err instanceof InvalidArgumentError && err.fieldViolations[0]?.field === "start_revision");
    } finally {
      client.close();
    }
  });
});

/** A canned stream: yields its responses, then fails with UNAVAILABLE (or hangs when last). */
function cannedStream(responses: WatchSessionsResponse[], end: "unavailable" | "hang"): WatchStream {
  let cancelled!: () => void;
  const gone = new Promise<void>((ok) => (cancelled = ok));
  return {
    async *[Symbol.asyncIterator]() {
      yield* responses;
      if (end === "unavailable") {
        throw Object.assign(new Error("connection lost"), { code: 14, details: "connection lost" });
      }
      await gone;
    },
    cancel: () => cancelled(),
  };
}

describe("follow", () => {
  test("reconnects at the first undelivered revision after each loss, with the backoff's delays", async () => {
    const connections = [
      [response(T.WATCH_RESPONSE_TYPE_CREATED, 4), response(T.WATCH_RESPONSE_TYPE_EVENTS, 5, [5]),
        response(T.WATCH_RESPONSE_TYPE_EVENTS, 6, [6], true)],
      [],
      [response(T.WATCH_RESPONSE_TYPE_CREATED, 6), response(T.WATCH_RESPONSE_TYPE_EVENTS, 6, [6], true),
        response(T.WATCH_RESPONSE_TYPE_EVENTS, 6, [6]), response(T.WATCH_RESPONSE_TYPE_EVENTS, 7, [7])],
    ];
    const starts: bigint[] = [];
    const sleeps: number[] = [];
    const controller = new AbortController();
    const delivered: string[] = [];
    const stream = follow(new WatchCursor(WatchSessionsRequest.fromPartial({ startRevision: 5 })), {
      open: (request) => {
        starts.push(request.startRevision);
        const next = connections.shift();
        return cannedStream(next ?? [], next === undefined || connections.length === 0 ? "hang" : "unavailable");
      },
      backoff: new Backoff({ initialMs: 10, random: () => 0 }),
      sleep: async (ms) => void sleeps.push(ms),
      signal: controller.signal,
    });
    for await (const r of stream) {
      delivered.push(`${T[r.type]}:${revisionsOf(r).join(",")}`);
      if (r.revision === 7n) {
        controller.abort();
      }
    }
    assert.deepEqual(starts, [5n, 6n, 6n]);
    assert.deepEqual(sleeps, [10, 20], "the failure count grows until a CREATED");
    assert.deepEqual(delivered, [
      "WATCH_RESPONSE_TYPE_CREATED:",
      "WATCH_RESPONSE_TYPE_EVENTS:5",
      "WATCH_RESPONSE_TYPE_EVENTS:6,6",
      "WATCH_RESPONSE_TYPE_EVENTS:7",
    ]);
  });
});

/** Reads a watch in the background, so a test can wait for revisions while it writes. */
class Reader {
  readonly responses: WatchSessionsResponse[] = [];
  readonly done: Promise<unknown>;
  private wake: (() => void) | undefined;

  constructor(watch: AsyncIterable<WatchSessionsResponse>) {
    this.done = (async () => {
      try {
        for await (const r of watch) {
          this.responses.push(r);
          this.wake?.();
        }
        return undefined;
      } catch (err) {
        return err;
      } finally {
        this.wake?.();
      }
    })();
  }

  revisions(): bigint[] {
    return this.responses.flatMap((r) => r.events.map((e) => e.revision)).filter((r, i, all) => all[i - 1] !== r);
  }

  /** until waits until the predicate holds on what was read (or the watch ends). */
  async until(predicate: () => boolean): Promise<void> {
    let ended = false;
    void this.done.then(() => (ended = true));
    while (!predicate()) {
      assert.ok(!ended, "the watch ended early");
      await new Promise<void>((ok) => (this.wake = ok));
    }
  }
}

describe("watch against a real server", () => {
  let server: TestServer;
  let client: SessiondClient;
  before(async () => {
    server = await TestServer.start();
    client = new SessiondClient(server.address, { retry: { backoff: { initialMs: 50, maximumMs: 200 } } });
  });
  after(async () => {
    client.close();
    await server.stop();
  });

  test("a watch rides out a server kill and restart, each revision once, in order", async () => {
    const run = uniqueId("restart");
    const created = await client.createSession({ session: { id: `${run}-a`, labels: { run } } });
    const watch = client.watch(
      { startRevision: created.revision, filter: { labels: { run } } },
      { maxBackoffMs: 200 },
    );
    const reader = new Reader(watch);
    const written = [created.revision];
    const running = await client.setRuntimeState({ sessionId: `${run}-a`, state: RuntimeState.RUNTIME_STATE_RUNNING });
    written.push(running.revision);
    await reader.until(() => reader.revisions().length === 2);

    await server.kill();
    await server.restart();
    const writer = new SessiondClient(server.address);
    try {
      for (const state of [RuntimeState.RUNTIME_STATE_IDLE, RuntimeState.RUNTIME_STATE_RUNNING]) {
        written.push((await writer.setRuntimeState({ sessionId: `${run}-a`, state })).revision);
      }
      written.push((await writer.endSession({ sessionId: `${run}-a`, status: SessionStatus.SESSION_STATUS_COMPLETED })).revision);
    } finally {
      writer.close();
    }
    await reader.until(() => reader.revisions().length >= written.length);
    watch.close();
    assert.equal(await reader.done, undefined, "close() ends the iteration without an error");
    assert.deepEqual(reader.revisions(), written);
    assert.equal(reader.responses.filter((r) => r.type === T.WATCH_RESPONSE_TYPE_CREATED).length, 1);
  });

  test("include_initial delivers the current sessions, then INITIAL_COMPLETE, then live events", async () => {
    const run = uniqueId("initial");
    for (const suffix of ["a", "b"]) {
      await client.createSession({ session: { id: `${run}-${suffix}`, labels: { run } } });
    }
    const watch = client.watch({ includeInitial: true, filter: { labels: { run } } });
    const reader = new Reader(watch);
    await reader.until(() => reader.responses.some((r) => r.type === T.WATCH_RESPONSE_TYPE_INITIAL_COMPLETE));
    const initial = reader.responses
      .filter((r) => r.type === T.WATCH_RESPONSE_TYPE_INITIAL)
      .flatMap((r) => r.events.map((e) => e.sessionId));
    assert.deepEqual(initial.sort(), [`${run}-a`, `${run}-b`]);
    const ended = await client.endSession({ sessionId: `${run}-b`, status: SessionStatus.SESSION_STATUS_FAILED });
    await reader.until(() => reader.revisions().includes(ended.revision));
    client.close(); // closing the client ends its watches too
    client = new SessiondClient(server.address);
    assert.equal(await reader.done, undefined);
  });

  test("a watch deadline ends the watch with DeadlineExceededError after CREATED", async () => {
    const types: WatchResponseType[] = [];
    const watch = client.watch({ filter: { sessionIds: [uniqueId("idle")] } }, { deadlineMs: 300 });
    await assert.rejects(
      (async () => {
        for await (const r of watch) {
          types.push(r.type);
        }
      })(),
      DeadlineExceededError,
    );
    assert.deepEqual(types, [T.WATCH_RESPONSE_TYPE_CREATED]);
  });
});

describe("watch of a compacted revision", () => {
  let server: TestServer;
  let client: SessiondClient;
  before(async () => {
    server = await TestServer.start({
      args: ["--changelog-keep-revisions", "1", "--changelog-max-age-seconds", "0", "--compaction-interval-seconds", "0.1"],
    });
    client = new SessiondClient(server.address);
  });
  after(async () => {
    client.close();
    await server.stop();
  });

  test("a resume point below the compacted revision ends the watch with RelistRequiredError", async () => {
    const run = uniqueId("compacted");
    const first = await client.createSession({ session: { id: `${run}-a` } });
    for (const suffix of ["b", "c", "d"]) {
      await client.createSession({ session: { id: `${run}-${suffix}` } });
    }
    // Wait for the compactor: a "from now" watch's CREATED says how far it got.
    for (let poll = 0; ; poll += 1) {
      const probe = client.watch();
      const opened = (await probe[Symbol.asyncIterator]().next()).value as WatchSessionsResponse;
      probe.close();
      if (opened.compactedRevision >= first.revision) {
        break;
      }
      assert.ok(poll < 300, "the change log was never compacted");
      await new Promise((ok) => setTimeout(ok, 100));
    }
    const types: WatchResponseType[] = [];
    const error = await (async () => {
      try {
        for await (const r of client.watch({ startRevision: first.revision })) {
          types.push(r.type);
        }
      } catch (err) {
        return err;
      }
      return undefined;
    })();
    assert.ok(error instanceof RelistRequiredError, `not a RelistRequiredError: ${String(error)}`);
    assert.equal(error.reason, "REVISION_COMPACTED");
    assert.equal(error.codeName, "FAILED_PRECONDITION");
    assert.ok(error.compactedRevision >= first.revision);
    assert.deepEqual(types, [T.WATCH_RESPONSE_TYPE_CREATED]);
  });
});
