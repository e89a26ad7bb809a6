/**
 * A WatchSessions stream that survives restarts and lost connections.
 *
 * A raw WatchSessions call ends when the server restarts or the connection
 * drops. `follow` reconnects by itself, with exponential backoff and jitter,
 * and resumes at the revision after the last one it knows to be complete, so
 * the consumer sees one ordered stream in which no revision is missing and
 * none is delivered twice (etcd's resumable watch, driven from the client).
 *
 * What the consumer receives is WatchSessionsResponse messages:
 *
 * - CREATED once, when the first connection is confirmed (reconnections are
 *   invisible). Writes made after it has arrived are sure to be seen.
 * - INITIAL and then INITIAL_COMPLETE when includeInitial is set. If the
 *   connection drops before INITIAL_COMPLETE, the initial state is sent again
 *   from the start, so treat INITIAL events as a snapshot that is complete
 *   only at INITIAL_COMPLETE.
 * - EVENTS with whole revisions, each revision at most once. A revision the
 *   server sent in fragments (WatchSessionsResponse.fragment) is joined here
 *   and delivered as one response with fragment = false.
 * - PROGRESS bookmarks, never lower than a revision already delivered.
 *
 * The resume point advances on CREATED of a "from now" watch, on EVENTS, on
 * INITIAL_COMPLETE and on PROGRESS. When the server answers that the resume
 * point has been compacted away, the iteration throws RelistRequiredError:
 * list again and start a new watch from the list's revision + 1.
 *
 * The state machine (`WatchCursor`) knows nothing of gRPC, and `follow`
 * takes the stream opener, the backoff and the sleep as arguments, so tests
 * drive reconnection without waiting for real time.
 */
import * as grpc from "@grpc/grpc-js";

import { SessionEvent } from "./gen/sessiond/v1/event";
import { WatchResponseType, WatchSessionsRequest, WatchSessionsResponse } from "./gen/sessiond/v1/session_service";
import { InvalidArgumentError, SessiondError, toSessiondError, UnavailableError } from "./errors";
import { Backoff } from "./retry";

/** The default bound on one joined fragmented revision: 64 MiB of encoded events. */
export const DEFAULT_MAX_REVISION_BYTES = 64 * 1024 * 1024;

/** A revision being joined from its fragments. */
interface PartialRevision {
  revision: bigint;
  events: SessionEvent[];
  bytes: number;
}

/**
 * The resume point of a watch, and the filter that keeps delivery exact.
 *
 * `request()` is what to send on each (re)connection; `accept(response)`
 * updates the resume point and returns what to hand to the consumer, or
 * undefined when the response holds nothing new (a repeated CREATED, a
 * replayed revision, a bookmark behind what was delivered, a fragment of a
 * revision not yet complete). `connectionLost()` forgets a half-received
 * fragmented revision, which the server sends again from its first part.
 */
export class WatchCursor {
  /** nextRevision is the first revision not yet delivered; 0 means "from now" until CREATED. */
  nextRevision: bigint;
  private readonly template: WatchSessionsRequest;
  private initialPending: boolean;
  private createdSeen = false;
  private partial: PartialRevision | undefined;
  private readonly maxRevisionBytes: number;

  constructor(request: WatchSessionsRequest, maxRevisionBytes = DEFAULT_MAX_REVISION_BYTES) {
    if (request.includeInitial && request.startRevision !== 0n) {
      throw new InvalidArgumentError({
        code: grpc.status.INVALID_ARGUMENT,
        message: "include_initial requires start_revision 0",
        fieldViolations: [{ field: "start_revision", description: "must be 0 when include_initial is set" }],
      });
    }
    this.template = WatchSessionsRequest.fromPartial(request);
    this.nextRevision = request.startRevision;
    this.initialPending = request.includeInitial;
    this.maxRevisionBytes = maxRevisionBytes;
  }

  /** initialIsPending says whether the initial state has still to be completed. */
  get initialIsPending(): boolean {
    return this.initialPending;
  }

  /** request is the request that resumes the watch where delivery stopped. */
  request(): WatchSessionsRequest {
    return {
      ...this.template,
      startRevision: this.initialPending ? 0n : this.nextRevision,
      includeInitial: this.initialPending,
    };
  }

  /** connectionLost drops a half-joined revision: the next stream sends it again whole. */
  connectionLost(): void {
    this.partial = undefined;
  }

  /** accept advances the resume point past response and returns what to deliver. */
  accept(response: WatchSessionsResponse): WatchSessionsResponse | undefined {
    if (this.partial !== undefined && response.type !== WatchResponseType.WATCH_RESPONSE_TYPE_EVENTS) {
      throw protocolError(`revision ${this.partial.revision} was interrupted by a response of another type`);
    }
    switch (response.type) {
      case WatchResponseType.WATCH_RESPONSE_TYPE_CREATED: {
        const first = !this.createdSeen;
        this.createdSeen = true;
        if (this.nextRevision === 0n && !this.initialPending) {
          // "From now": events after the revision current at creation follow,
          // so a reconnect must resume right after it.
          this.nextRevision = response.revision + 1n;
        }
        return first ? response : undefined;
      }
      case WatchResponseType.WATCH_RESPONSE_TYPE_INITIAL:
        return this.initialPending ? response : undefined;
      case WatchResponseType.WATCH_RESPONSE_TYPE_INITIAL_COMPLETE:
        if (!this.initialPending) {
          return undefined;
        }
        this.initialPending = false;
        this.nextRevision = response.revision + 1n;
        return response;
      case WatchResponseType.WATCH_RESPONSE_TYPE_EVENTS: {
        const whole = this.join(response);
        return whole === undefined ? undefined : this.acceptEvents(whole);
      }
      case WatchResponseType.WATCH_RESPONSE_TYPE_PROGRESS:
        if (this.initialPending || response.revision + 1n < this.nextRevision) {
          return undefined;
        }
        this.nextRevision = response.revision + 1n;
        return response;
      default:
        return undefined;
    }
  }

  /** join collects the parts of a fragmented revision; undefined until the last part. */
  private join(response: WatchSessionsResponse): WatchSessionsResponse | undefined {
    if (this.partial === undefined && !response.fragment) {
      return response;
    }
    if (this.partial !== undefined && this.partial.revision !== response.revision) {
      throw protocolError(
        `revision ${this.partial.revision} was interrupted by a part of revision ${response.revision}`,
      );
    }
    if (response.revision < this.nextRevision) {
      // A revision already delivered, sent again after a resume: skip its parts.
      this.partial = response.fragment ? { revision: response.revision, events: [], bytes: 0 } : undefined;
      return undefined;
    }
    const partial = this.partial ?? { revision: response.revision, events: [], bytes: 0 };
    for (const event of response.events) {
      partial.bytes += SessionEvent.encode(event).finish().length;
      partial.events.push(event);
    }
    if (partial.bytes > this.maxRevisionBytes) {
      this.partial = undefined;
      throw new SessiondError({
        code: grpc.status.RESOURCE_EXHAUSTED,
        message: `revision ${response.revision} exceeds maxRevisionBytes (${this.maxRevisionBytes} bytes of events)`,
      });
    }
    if (response.fragment) {
      this.partial = partial;
      return undefined;
    }
    this.partial = undefined;
    return { ...response, events: partial.events, fragment: false };
  }

  private acceptEvents(response: WatchSessionsResponse): WatchSessionsResponse | undefined {
    const fresh = response.events.filter((event) => event.revision >= this.nextRevision);
    const last = fresh[fresh.length - 1];
    if (last === undefined) {
      return undefined;
    }
    const highest = response.revision > last.revision ? response.revision : last.revision;
    this.nextRevision = highest + 1n;
    return fresh.length === response.events.length ? response : { ...response, events: fresh };
  }
}

function protocolError(message: string): SessiondError {
  return new SessiondError({ code: grpc.status.INTERNAL, message: `watch stream: ${message}` });
}

/** One WatchSessions call as `follow` sees it: responses, then an end or an error. */
export interface WatchStream extends AsyncIterable<WatchSessionsResponse> {
  /** cancel ends the call from the client side. */
  cancel(): void;
}

/** How `follow` waits; resolves early (without error) when signal aborts. */
export type Sleep = (ms: number, signal: AbortSignal) => Promise<void>;

/** sleep waits ms milliseconds, or less when signal aborts first. */
export const sleep: Sleep = (ms, signal) =>
  new Promise((resolve) => {
    if (signal.aborted) {
      resolve();
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });

/** What `follow` needs besides the request. */
export interface FollowOptions {
  /** open starts one WatchSessions call. */
  open: (request: WatchSessionsRequest) => WatchStream;
  /** backoff spaces the reconnections. */
  backoff: Backoff;
  /** sleep waits between reconnections. */
  sleep: Sleep;
  /** signal ends the watch: the current call is cancelled and the iteration returns. */
  signal: AbortSignal;
}

/**
 * follow yields the responses of a watch that reconnects on connection loss
 * (UNAVAILABLE, or a stream the server ends), resuming where `cursor` says.
 * It throws SessiondError subclasses (RelistRequiredError for a compacted
 * resume point) for any other failure, and returns when options.signal
 * aborts.
 */
export async function* follow(
  cursor: WatchCursor,
  options: FollowOptions,
): AsyncGenerator<WatchSessionsResponse, void, undefined> {
  const { signal } = options;
  let failures = 0;
  while (!signal.aborted) {
    const stream = options.open(cursor.request());
    const cancel = (): void => stream.cancel();
    signal.addEventListener("abort", cancel, { once: true });
    try {
      for await (const response of stream) {
        if (response.type === WatchResponseType.WATCH_RESPONSE_TYPE_CREATED) {
          failures = 0;
        }
        const delivered = cursor.accept(response);
        if (delivered !== undefined) {
          yield delivered;
        }
      }
    } catch (err) {
      if (signal.aborted) {
        return;
      }
      const error = toSessiondError(err);
      if (!(error instanceof UnavailableError)) {
        throw error;
      }
    } finally {
      signal.removeEventListener("abort", cancel);
      stream.cancel();
      cursor.connectionLost();
    }
    if (signal.aborted) {
      return;
    }
    // Connection lost, or the server ended the stream: come back later.
    await options.sleep(options.backoff.delayMs(failures), signal);
    failures += 1;
  }
}
