/**
 * Prints the status changes of sessions as they happen, from a watch that
 * resumes by itself after a lost connection or a server restart, and lists
 * again when the server says it must.
 *
 *   node dist/follow.js --address 127.0.0.1:50051 [--session chat:42] [--until-idle]
 *
 * It starts from the current state (includeInitial), prints "watching" once
 * that state is complete, then one line per change of status or runtime
 * state. With --until-idle it exits after the followed session has gone from
 * running back to idle. The address and session may also come from
 * SESSIOND_ADDRESS and SESSIOND_EXAMPLE_SESSION, the API key from
 * SESSIOND_TOKEN; Ctrl-C stops it.
 */
import { parseArgs } from "node:util";

import {
  DEFAULT_ADDRESS,
  RelistRequiredError,
  runtimeStateToJSON,
  SessiondClient,
  sessionStatusToJSON,
  WatchResponseType,
} from "@sessiond/client";

/** short turns SESSION_STATUS_ACTIVE into "active", RUNTIME_STATE_IDLE into "idle". */
const short = (name: string): string => name.replace(/^(SESSION_STATUS_|RUNTIME_STATE_)/, "").toLowerCase();

/** follow prints changes until the watch ends; true when --until-idle saw the turn end. */
async function follow(client: SessiondClient, sessionIds: string[], untilIdle: boolean, signal: AbortSignal): Promise<boolean> {
  const known = new Map<string, string>();
  let sawRunning = false;
  for await (const response of client.watch({ filter: { sessionIds }, includeInitial: true }, { signal })) {
    if (response.type === WatchResponseType.WATCH_RESPONSE_TYPE_INITIAL_COMPLETE) {
      console.log(`watching (${known.size} sessions)`);
      continue;
    }
    for (const event of response.events) {
      const s = event.session;
      if (s === undefined) {
        continue;
      }
      const status = short(sessionStatusToJSON(s.status));
      const runtime = short(runtimeStateToJSON(s.runtimeState));
      const now = `${status}, ${runtime}`;
      if (known.get(s.id) !== now) {
        console.log(`${s.id}: ${now}`);
      }
      known.set(s.id, now);
      sawRunning ||= runtime === "running";
      if (untilIdle && sawRunning && runtime === "idle") {
        return true;
      }
    }
  }
  return false;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      address: { type: "string", default: process.env.SESSIOND_ADDRESS ?? DEFAULT_ADDRESS },
      session: { type: "string", default: process.env.SESSIOND_EXAMPLE_SESSION ?? "" },
      "until-idle": { type: "boolean", default: false },
    },
  });
  const client = new SessiondClient(values.address, { apiKey: process.env.SESSIOND_TOKEN });
  const stop = new AbortController();
  process.once("SIGINT", () => stop.abort());
  try {
    for (;;) {
      try {
        await follow(client, values.session ? [values.session] : [], values["until-idle"], stop.signal);
        return;
      } catch (err) {
        if (!(err instanceof RelistRequiredError)) {
          throw err;
        }
        console.log("the change log moved past us: starting again from the current state");
      }
    }
  } finally {
    client.close();
  }
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
