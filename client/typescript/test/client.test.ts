/**
 * SessiondClient against a real server: typed errors, the API key,
 * deadlines, retries of idempotent calls only, and the page walkers.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  Backoff,
  CancelledError,
  CreateSessionRequest,
  DeadlineExceededError,
  ERROR_DOMAIN,
  grpc,
  InvalidArgumentError,
  MessageServiceService,
  NotFoundError,
  retryIsSafe,
  Role,
  SessiondClient,
  SessiondError,
  SessionOrderField,
  SessionServiceService,
  StatsServiceService,
  UnaryRpcName,
  UnauthenticatedError,
  UnavailableError,
} from "../src";
import { newApiKey, TestServer, uniqueId } from "./server";

/** rejection awaits a promise that must fail and returns its SessiondError. */
async function rejection(promise: Promise<unknown>): Promise<SessiondError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof SessiondError, `not a SessiondError: ${String(err)}`);
    return err;
  }
  assert.fail("the call succeeded");
}

/**
 * loseReplies is an interceptor that lets each call reach the server, then
 * replaces the first `count` answers with UNAVAILABLE: the reply lost after
 * the server committed, the case where a blind retry would apply a write twice.
 */
function loseReplies(count: { remaining: number }): grpc.Interceptor {
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, _listener, next) {
        next(metadata, {
          onReceiveStatus(status, nextStatus) {
            // The answer arrived (and was held back by grpc-js until its
            // status); a non-OK status makes the call fail with it instead.
            if (count.remaining > 0 && status.code === grpc.status.OK) {
              count.remaining -= 1;
              nextStatus({ code: grpc.status.UNAVAILABLE, details: "reply lost (injected)", metadata: new grpc.Metadata() });
            } else {
              nextStatus(status);
            }
          },
        });
      },
    });
}

describe("against a real server", () => {
  let server: TestServer;
  const clients: SessiondClient[] = [];
  const connect = (options: ConstructorParameters<typeof SessiondClient>[1] = {}): SessiondClient => {
    const client = new SessiondClient(server.address, options);
    clients.push(client);
    return client;
  };

  before(async () => {
    server = await TestServer.start();
  });
  after(async () => {
    clients.forEach((c) => c.close());
    await server.stop();
  });

  test("a missing session is a NotFoundError with the ErrorInfo reason", async () => {
    const error = await rejection(connect().getSession({ sessionId: uniqueId("missing") }));
    assert.ok(error instanceof NotFoundError);
    assert.equal(error.code, grpc.status.NOT_FOUND);
    assert.equal(error.codeName, "NOT_FOUND");
    assert.equal(error.reason, "SESSION_NOT_FOUND");
    assert.equal(error.domain, ERROR_DOMAIN);
  });

  test("bad input is an InvalidArgumentError naming the field", async () => {
    const error = await rejection(connect().listSessions({ pageSize: -1 }));
    assert.ok(error instanceof InvalidArgumentError);
    assert.deepEqual(
      error.fieldViolations.map((v) => v.field),
      ["page_size"],
    );
    assert.ok(error.fieldViolations[0]!.description.length > 0);
  });

  test("a deadline already past fails with DeadlineExceededError and is not retried", async () => {
    const sleeps: number[] = [];
    const client = connect({ sleep: async (ms) => void sleeps.push(ms) });
    const error = await rejection(client.getStats({}, { deadlineMs: 0 }));
    assert.ok(error instanceof DeadlineExceededError);
    assert.deepEqual(sleeps, []);
  });

  test("an aborted signal cancels the call", async () => {
    const controller = new AbortController();
    controller.abort();
    const error = await rejection(connect().getStats({}, { signal: controller.signal }));
    assert.equal(error.codeName, "CANCELLED");
  });

  test("after close() calls fail with CancelledError and watches end at once", async () => {
    const client = connect();
    await client.getStats({});
    client.close();
    const error = await rejection(client.getStats({}));
    assert.ok(error instanceof CancelledError);
    const delivered: unknown[] = [];
    for await (const r of client.watch()) {
      delivered.push(r);
    }
    assert.deepEqual(delivered, []);
  });

  test("an append with message ids whose reply is lost is retried and stored once", async () => {
    const lost = { remaining: 2 };
    const sleeps: number[] = [];
    const client = connect({
      channelOptions: { interceptors: [loseReplies(lost)] },
      sleep: async (ms) => void sleeps.push(ms),
      retry: { backoff: new Backoff({ initialMs: 10, random: () => 0 }) },
    });
    const reader = connect();
    const id = uniqueId("retried");
    await reader.createSession({ session: { id } });
    const answer = await client.appendMessages({
      sessionId: id,
      messages: [{ id: "m1", role: Role.ROLE_USER, content: "hello" }],
    });
    assert.equal(lost.remaining, 0, "two replies were lost before the answer came through");
    assert.deepEqual(sleeps, [10, 20], "two retries, spaced by the backoff");
    assert.deepEqual(answer.messages.map((m) => m.seq), [1n]);
    assert.equal(answer.revision, 0n, "the answer that came through is the repeat of a stored append");
    const stored = await reader.listMessages({ sessionId: id });
    assert.deepEqual(stored.messages.map((m) => m.id), ["m1"]);
  });

  test("an append without message ids is never retried", async () => {
    const lost = { remaining: 1 };
    const sleeps: number[] = [];
    const client = connect({
      channelOptions: { interceptors: [loseReplies(lost)] },
      sleep: async (ms) => void sleeps.push(ms),
    });
    const reader = connect();
    const id = uniqueId("not-retried");
    await reader.createSession({ session: { id } });
    const error = await rejection(
      client.appendMessages({ sessionId: id, messages: [{ role: Role.ROLE_USER, content: "once" }] }),
    );
    assert.ok(error instanceof UnavailableError);
    assert.deepEqual(sleeps, []);
    const stored = await reader.listMessages({ sessionId: id });
    assert.deepEqual(stored.messages.map((m) => m.content), ["once"], "the server stored it once");
  });

  test("retries stop at maxRetries", async () => {
    const lost = { remaining: 10 };
    const sleeps: number[] = [];
    const client = connect({
      channelOptions: { interceptors: [loseReplies(lost)] },
      sleep: async (ms) => void sleeps.push(ms),
      retry: { maxRetries: 2 },
    });
    const error = await rejection(client.getStats({}));
    assert.ok(error instanceof UnavailableError);
    assert.equal(sleeps.length, 2);
    assert.equal(lost.remaining, 7, "the first call and two retries");
  });

  test("an append answer larger than gRPC's usual 4 MiB receive limit is accepted", async () => {
    const client = connect();
    const id = uniqueId("large");
    await client.createSession({ session: { id } });
    const content = "x".repeat(900 * 1024);
    const answer = await client.appendMessages({
      sessionId: id,
      messages: Array.from({ length: 6 }, (_, i) => ({ id: `m${i}`, role: Role.ROLE_USER, content })),
    });
    assert.deepEqual(answer.messages.map((m) => m.content.length), Array(6).fill(content.length));

    // The caller's own setting wins: with gRPC's usual limit the same answer is refused.
    const small = connect({ channelOptions: { "grpc.max_receive_message_length": 4 * 1024 * 1024 } });
    // (An append answer: a ListMessages page is bounded far below 4 MiB by the server.)
    const error = await rejection(small.appendMessages({
      sessionId: id,
      messages: Array.from({ length: 6 }, (_, i) => ({ id: `n${i}`, role: Role.ROLE_USER, content })),
    }));
    assert.equal(error.codeName, "RESOURCE_EXHAUSTED");
  });

  test("listAllSessions walks every page in order, each session once", async () => {
    const client = connect();
    const run = uniqueId("walk");
    const ids = Array.from({ length: 23 }, (_, i) => `${run}-${String(i).padStart(2, "0")}`);
    for (const id of ids) {
      await client.createSession({ session: { id, labels: { walk: run } } });
    }
    const seen: string[] = [];
    for await (const session of client.listAllSessions({
      filter: { labels: { walk: run } },
      orderBy: SessionOrderField.SESSION_ORDER_FIELD_STARTED_AT,
      ascending: true,
      pageSize: 5,
    })) {
      seen.push(session.id);
    }
    assert.deepEqual(seen, ids);
  });

  test("listAllMessages walks a session's messages page after page", async () => {
    const client = connect();
    const id = uniqueId("messages");
    await client.createSession({ session: { id } });
    const contents = Array.from({ length: 12 }, (_, i) => `message ${i}`);
    await client.appendMessages({
      sessionId: id,
      messages: contents.map((content, i) => ({ id: `m${i}`, role: Role.ROLE_USER, content })),
    });
    const seen: string[] = [];
    for await (const message of client.listAllMessages({ sessionId: id, pageSize: 5 })) {
      seen.push(message.content);
    }
    assert.deepEqual(seen, contents);
  });
});

describe("with API keys", () => {
  const alice = newApiKey("acme");
  let server: TestServer;
  before(async () => {
    server = await TestServer.start({ apiKeys: [alice] });
  });
  after(async () => {
    await server.stop();
  });

  test("the API key is sent as a bearer token; without it the call is UNAUTHENTICATED", async () => {
    const anonymous = new SessiondClient(server.address);
    const keyed = new SessiondClient(server.address, { apiKey: alice.key });
    try {
      const error = await rejection(anonymous.getStats({}));
      assert.ok(error instanceof UnauthenticatedError);
      const created = await keyed.createSession({ session: { id: uniqueId("keyed") } });
      assert.equal(created.session?.tenant, "acme");
    } finally {
      anonymous.close();
      keyed.close();
    }
  });
});

describe("coverage of the API", () => {
  const services = { SessionServiceService, MessageServiceService, StatsServiceService };

  test("every RPC has a client method and every unary RPC a retry rule", () => {
    for (const [service, definition] of Object.entries(services)) {
      for (const [method, rpc] of Object.entries(definition)) {
        const name = method === "watchSessions" ? "watch" : method;
        assert.equal(typeof Reflect.get(SessiondClient.prototype, name), "function", `${service}.${method}`);
        if (!rpc.responseStream) {
          const rpcName = rpc.path.slice(rpc.path.lastIndexOf("/") + 1) as UnaryRpcName;
          const empty = rpc.requestDeserialize(Buffer.alloc(0)); // the request with every field at zero
          assert.equal(typeof retryIsSafe(rpcName, empty), "boolean", `no retry rule for ${rpcName}`);
        }
      }
    }
  });
});

describe("retryIsSafe", () => {
  test("reads and same-target writes are always safe", () => {
    for (const rpc of ["GetSession", "ListSessions", "ListMessages", "SearchMessages", "GetStats",
      "CostByModel", "TouchSession", "EndSession", "SetRuntimeState"] as const) {
      assert.equal(retryIsSafe(rpc, {}), true, rpc);
    }
  });

  test("writes are safe only with a client-chosen id or an etag", () => {
    assert.equal(retryIsSafe("CreateSession", CreateSessionRequest.fromPartial({ session: { id: "a" } })), true);
    assert.equal(retryIsSafe("CreateSession", CreateSessionRequest.fromPartial({ session: {} })), false);
    assert.equal(retryIsSafe("CreateSession", CreateSessionRequest.fromPartial({})), false);
    assert.equal(retryIsSafe("ForkSession", { newSessionId: "b" }), true);
    assert.equal(retryIsSafe("ForkSession", { newSessionId: "" }), false);
    assert.equal(retryIsSafe("UpdateSession", { etag: "e" }), true);
    assert.equal(retryIsSafe("UpdateSession", { etag: "" }), false);
    assert.equal(retryIsSafe("AppendMessages", { messages: [{ id: "m1" }, { id: "m2" }] }), true);
    assert.equal(retryIsSafe("AppendMessages", { messages: [{ id: "m1" }, { id: "" }] }), false);
    assert.equal(retryIsSafe("AppendMessages", { messages: [] }), false);
    assert.equal(retryIsSafe("RecordUsage", { requestId: "u1" }), true);
    assert.equal(retryIsSafe("RecordUsage", { requestId: "" }), false);
  });

  test("deletes, pops, clears, purges and reconciles are never retried", () => {
    for (const rpc of ["DeleteSession", "PopMessage", "UpdateLastMessage", "ClearMessages", "PurgeSessions",
      "ReconcileSessions"] as const) {
      assert.equal(retryIsSafe(rpc, {}), false, rpc);
    }
  });
});

describe("Backoff", () => {
  test("delays grow by the multiplier up to the cap, scaled down by the jitter", () => {
    const steady = new Backoff({ initialMs: 100, maximumMs: 1_000, multiplier: 2, random: () => 0 });
    assert.deepEqual([0, 1, 2, 3, 4, 5].map((n) => steady.delayMs(n)), [100, 200, 400, 800, 1_000, 1_000]);
    const jittered = new Backoff({ initialMs: 100, jitter: 0.5, random: () => 0.999 });
    assert.ok(jittered.delayMs(0) > 50 && jittered.delayMs(0) < 51);
    assert.equal(steady.delayMs(10_000), 1_000, "a long outage stays at the cap");
  });
});
