/**
 * A minimal agent runtime on sessiond: one turn of a chat session, kept in
 * the service instead of the runtime's own tables.
 *
 *   node dist/agent.js --address 127.0.0.1:50051 --session chat:42 --turn t1 "What is WAL mode?"
 *
 * It touches the session (creating it on first use), marks the runtime
 * running, appends the user's message, reads the last 20 messages as the
 * model's context, appends the assistant's reply with a tool call and the
 * tool's result, records the model call's usage, and marks the runtime idle.
 * Every write carries an id chosen here (message ids, the usage request id),
 * so the client may retry any of them after a lost connection and the turn
 * is still stored once. The address and session may also come from
 * SESSIOND_ADDRESS and SESSIOND_EXAMPLE_SESSION, the API key from
 * SESSIOND_TOKEN.
 */
import { parseArgs } from "node:util";

import { DEFAULT_ADDRESS, Role, RuntimeState, SessiondClient, SessionKind, Timestamp } from "@sessiond/client";

function now(): Timestamp {
  const ms = Date.now();
  return { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 };
}

async function runTurn(client: SessiondClient, sessionId: string, turn: string, text: string): Promise<void> {
  const touched = await client.touchSession({
    session: {
      id: sessionId, kind: SessionKind.SESSION_KIND_INTERACTIVE, channel: "cli",
      agent: "example-agent", model: "example-model",
    },
  });
  console.log(`session ${sessionId} (created: ${touched.created})`);

  await client.setRuntimeState({
    sessionId, state: RuntimeState.RUNTIME_STATE_RUNNING, turnId: turn, turnStartedAt: now(),
  });

  await client.appendMessages({ sessionId, messages: [{ id: `${turn}-user`, role: Role.ROLE_USER, content: text }] });

  const history = await client.listMessages({ sessionId, lastN: 20 });
  console.log(`context: the last ${history.messages.length} messages`);

  // The model's answer, made up here: it calls a tool and reads its result.
  const call = { id: `${turn}-call`, name: "search", argumentsJson: '{"q":"sqlite wal"}' };
  const reply = await client.appendMessages({
    sessionId,
    messages: [
      { id: `${turn}-assistant`, role: Role.ROLE_ASSISTANT, content: "Let me look that up.", toolCalls: [call] },
      {
        id: `${turn}-tool`, role: Role.ROLE_TOOL, name: "search", toolCallId: call.id,
        content: "WAL: a write-ahead log lets readers and one writer work at once.",
      },
    ],
  });
  console.log(`appended the reply: session has ${reply.session?.messageCount} messages`);

  const usage = await client.recordUsage({
    sessionId, model: "example-model", requestId: `${turn}-model-call`,
    usage: { promptTokens: 812, completionTokens: 95, costMicros: 3180 },
  });
  console.log(
    `usage: ${usage.sessionUsage?.totalTokens} tokens, ${usage.sessionUsage?.costMicros} micro-dollars in total`,
  );

  await client.setRuntimeState({ sessionId, state: RuntimeState.RUNTIME_STATE_IDLE });
  console.log("idle");
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    options: {
      address: { type: "string", default: process.env.SESSIOND_ADDRESS ?? DEFAULT_ADDRESS },
      session: { type: "string", default: process.env.SESSIOND_EXAMPLE_SESSION ?? "example:typescript" },
      turn: { type: "string", default: "t1" },
    },
    allowPositionals: true,
  });
  const text = positionals.join(" ") || "What is WAL mode?";
  const client = new SessiondClient(values.address, { apiKey: process.env.SESSIOND_TOKEN });
  try {
    await runTurn(client, values.session, values.turn, text);
  } finally {
    client.close();
  }
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
