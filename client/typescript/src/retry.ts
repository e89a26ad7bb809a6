/**
 * When a failed call may be sent again, and how long to wait first.
 *
 * A call that failed with UNAVAILABLE may or may not have reached the
 * server. Sending it again is safe only when a second arrival cannot apply a
 * change twice; `retryIsSafe` is that rule (the same as the Python client's
 * `sessiond.errors.retry_is_safe`, see docs/clients.md). `Backoff` spaces the
 * attempts (and a watch's reconnections) with exponential delays and jitter
 * so that many clients cut off at once do not come back in step; its random
 * source is injectable so tests see fixed delays.
 */
import type { CreateSessionRequest, ForkSessionRequest, UpdateSessionRequest } from "./gen/sessiond/v1/session_service";
import type { AppendMessagesRequest, ReplaceMessagesRequest } from "./gen/sessiond/v1/message_service";
import type { RecordUsageRequest } from "./gen/sessiond/v1/stats_service";

/** The settings of a Backoff; every field has a default. */
export interface BackoffOptions {
  /** initialMs is the delay after the first failure (default 100). */
  initialMs?: number;
  /** maximumMs caps every delay (default 5000). */
  maximumMs?: number;
  /** multiplier grows the delay after each further failure (default 2). */
  multiplier?: number;
  /** jitter scales each delay by a random factor in [1 - jitter, 1] (default 0.5). */
  jitter?: number;
  /** random returns a number in [0, 1) (default Math.random). */
  random?: () => number;
}

/**
 * Exponential backoff with jitter: the n-th delay (n from 0) is
 * `initialMs * multiplier ** n` capped at `maximumMs`, then scaled by a
 * random factor in `[1 - jitter, 1]`.
 */
export class Backoff {
  readonly initialMs: number;
  readonly maximumMs: number;
  readonly multiplier: number;
  readonly jitter: number;
  private readonly random: () => number;

  constructor(options: BackoffOptions = {}) {
    this.initialMs = options.initialMs ?? 100;
    this.maximumMs = options.maximumMs ?? 5_000;
    this.multiplier = options.multiplier ?? 2;
    this.jitter = options.jitter ?? 0.5;
    this.random = options.random ?? Math.random;
  }

  /** delayMs is how long to wait after the attempt-th consecutive failure (from 0). */
  delayMs(attempt: number): number {
    // Cap the exponent first: a long outage must not overflow to Infinity.
    const base = Math.min(this.maximumMs, this.initialMs * this.multiplier ** Math.min(attempt, 64));
    return base * (1 - this.jitter * this.random());
  }

  /** withMaximum is the same backoff with another cap (and an initial delay not above it). */
  withMaximum(maximumMs: number): Backoff {
    return new Backoff({
      initialMs: Math.min(this.initialMs, maximumMs),
      maximumMs,
      multiplier: this.multiplier,
      jitter: this.jitter,
      random: this.random,
    });
  }
}

/** The unary RPCs of sessiond, by method name (as in the proto). */
export type UnaryRpcName =
  | "CreateSession" | "GetSession" | "UpdateSession" | "DeleteSession" | "ListSessions"
  | "TouchSession" | "EndSession" | "SetRuntimeState" | "ForkSession" | "ReconcileSessions"
  | "PurgeSessions" | "GetSharedState" | "UpdateSharedState"
  | "AppendMessages" | "ListMessages" | "PopMessage" | "UpdateLastMessage" | "ClearMessages"
  | "SearchMessages" | "ReplaceMessages" | "DeleteMessages"
  | "RecordUsage" | "GetStats" | "CostByModel";

const always = (): boolean => true;
const never = (): boolean => false;

// The rule per RPC. Reads are always safe. Writes are safe when the server
// recognises a repeat: a client-chosen id (session, fork, message ids, usage
// request_id), a target state that is the same on every attempt (touch, end,
// runtime state, a state delta, a history deleted up to a seq or replaced by
// messages that all carry ids), or an etag that a first success would have
// made stale.
// Anything else (appends without ids, pops, clears, deletes, purges,
// reconciles, updates without etag) could act twice, so it is never retried.
const RETRY_RULES: { readonly [K in UnaryRpcName]: (request: never) => boolean } = {
  GetSession: always,
  ListSessions: always,
  ListMessages: always,
  SearchMessages: always,
  GetStats: always,
  CostByModel: always,
  TouchSession: always,
  EndSession: always,
  SetRuntimeState: always,
  GetSharedState: always,
  UpdateSharedState: always,
  DeleteMessages: always,
  CreateSession: (r: CreateSessionRequest) => (r.session?.id ?? "") !== "",
  ForkSession: (r: ForkSessionRequest) => r.newSessionId !== "",
  UpdateSession: (r: UpdateSessionRequest) => r.etag !== "",
  AppendMessages: (r: AppendMessagesRequest) => r.messages.length > 0 && r.messages.every((m) => m.id !== ""),
  RecordUsage: (r: RecordUsageRequest) => r.requestId !== "",
  ReplaceMessages: (r: ReplaceMessagesRequest) => r.messages.every((m) => m.id !== ""),
  DeleteSession: never,
  ReconcileSessions: never,
  PurgeSessions: never,
  PopMessage: never,
  UpdateLastMessage: never,
  ClearMessages: never,
};

/**
 * retryIsSafe says whether sending this request of this RPC a second time
 * cannot apply a change twice (the rule above, RPC by RPC).
 */
export function retryIsSafe(rpc: UnaryRpcName, request: unknown): boolean {
  const rule = RETRY_RULES[rpc] as (request: unknown) => boolean;
  return rule(request);
}
