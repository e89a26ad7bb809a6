/**
 * The sessiond client: one Promise-returning method per RPC, over one
 * @grpc/grpc-js channel.
 *
 * Every method takes the RPC's request as a plain object (any field may be
 * left out; it is completed with `Request.fromPartial`) and resolves to the
 * RPC's response message, so the proto comments document the client too.
 * Around each call the client adds what every caller would otherwise repeat:
 *
 * - the API key in the `authorization: Bearer <key>` metadata;
 * - a deadline (the client's `deadlineMs`, or the call's own), which bounds
 *   the whole call, retries included;
 * - retries with exponential backoff and jitter, only on UNAVAILABLE and
 *   only for requests that `retryIsSafe` accepts, at most `maxRetries`;
 * - SessiondError subclasses, with the ErrorInfo reason and the field
 *   violations, instead of raw gRPC errors;
 * - page walking (`listAllSessions`, `listAllMessages`) and a watch that
 *   resumes by itself (`watch`, see ./watch).
 */
import * as grpc from "@grpc/grpc-js";

import {
  AppendMessagesRequest, AppendMessagesResponse, ClearMessagesRequest, ClearMessagesResponse,
  DeleteMessagesRequest, DeleteMessagesResponse,
  ListMessagesRequest, ListMessagesResponse, MessageServiceService, PopMessageRequest, PopMessageResponse,
  ReplaceMessagesRequest, ReplaceMessagesResponse,
  SearchMessagesRequest, SearchMessagesResponse, UpdateLastMessageRequest, UpdateLastMessageResponse,
} from "./gen/sessiond/v1/message_service";
import { Message } from "./gen/sessiond/v1/message";
import { Session } from "./gen/sessiond/v1/session";
import {
  CreateSessionRequest, CreateSessionResponse, DeleteSessionRequest, DeleteSessionResponse,
  EndSessionRequest, EndSessionResponse, ForkSessionRequest, ForkSessionResponse, GetSessionRequest,
  GetSessionResponse, ListSessionsRequest, ListSessionsResponse, PurgeSessionsRequest, PurgeSessionsResponse,
  ReconcileSessionsRequest, ReconcileSessionsResponse, SessionServiceService, SetRuntimeStateRequest,
  SetRuntimeStateResponse, TouchSessionRequest, TouchSessionResponse, UpdateSessionRequest, UpdateSessionResponse,
  WatchSessionsRequest, WatchSessionsResponse,
  GetSharedStateRequest, GetSharedStateResponse, UpdateSharedStateRequest, UpdateSharedStateResponse,
} from "./gen/sessiond/v1/session_service";
import {
  CostByModelRequest, CostByModelResponse, GetStatsRequest, GetStatsResponse, RecordUsageRequest,
  RecordUsageResponse, StatsServiceService,
} from "./gen/sessiond/v1/stats_service";
import { CancelledError, toSessiondError, UnavailableError } from "./errors";
import { Backoff, BackoffOptions, retryIsSafe, UnaryRpcName } from "./retry";
import { DEFAULT_MAX_REVISION_BYTES, follow, sleep as realSleep, Sleep, WatchCursor, WatchStream } from "./watch";

/** DEFAULT_ADDRESS is where `sessiond serve` listens by default. */
export const DEFAULT_ADDRESS = "127.0.0.1:50051";

/** MAX_RESPONSE_BYTES is the largest response accepted (channelOptions may change it). */
export const MAX_RESPONSE_BYTES = 64 * 1024 * 1024;

type Builtin = Date | Function | Uint8Array | string | number | boolean | bigint | undefined;

/**
 * DeepPartial is what request methods accept: any field may be left out
 * (zero value), int64 fields may be given as number, string or bigint.
 */
export type DeepPartial<T> = T extends bigint ? string | number | bigint
  : T extends Builtin ? T : T extends Array<infer U> ? Array<DeepPartial<U>>
  : T extends ReadonlyArray<infer U> ? ReadonlyArray<DeepPartial<U>>
  : T extends { $case: string; value: unknown } ? { $case: T["$case"]; value?: DeepPartial<T["value"]> }
  : T extends {} ? { [K in keyof T]?: DeepPartial<T[K]> }
  : Partial<T>;

/** TLS settings: PEM contents, as for grpc.credentials.createSsl. */
export interface TlsOptions {
  /** rootCerts are the CA certificates to trust (default: the system's). */
  rootCerts?: Buffer;
  /** privateKey and certChain are the client certificate, for mutual TLS. */
  privateKey?: Buffer;
  certChain?: Buffer;
}

/** The retry policy of unary calls. */
export interface RetryOptions {
  /** maxRetries bounds the retries of one retry-safe call (default 3; 0 disables). */
  maxRetries?: number;
  /** backoff spaces the retries and a watch's reconnections. */
  backoff?: Backoff | BackoffOptions;
}

/** How a client connects and what it adds to every call. */
export interface ClientOptions {
  /** apiKey is sent as `authorization: Bearer <apiKey>` on every call. */
  apiKey?: string;
  /** tls makes the channel TLS (true: system roots); plain text without. */
  tls?: boolean | TlsOptions;
  /** credentials overrides tls with ready-made channel credentials. */
  credentials?: grpc.ChannelCredentials;
  /** deadlineMs is the default deadline of each unary call (default 10000). */
  deadlineMs?: number;
  /** retry is the retry policy of unary calls. */
  retry?: RetryOptions;
  /**
   * channelOptions are passed to the @grpc/grpc-js client (interceptors,
   * keepalive, "grpc.max_receive_message_length", ...) and win over the
   * client's own settings.
   */
  channelOptions?: grpc.ClientOptions;
  /** sleep waits between retries and reconnections (injectable for tests). */
  sleep?: Sleep;
}

/** Options of one call. */
export interface CallOptions {
  /** deadlineMs overrides the client's deadline for this call, retries included. */
  deadlineMs?: number;
  /** signal cancels the call (it then fails with CancelledError). */
  signal?: AbortSignal;
}

/** Options of a watch. */
export interface WatchOptions {
  /** maxBackoffMs caps the wait between reconnections (default 30000). */
  maxBackoffMs?: number;
  /** maxRevisionBytes bounds one revision joined from fragments (default 64 MiB). */
  maxRevisionBytes?: number;
  /** signal ends the watch, like close(). */
  signal?: AbortSignal;
  /**
   * deadlineMs, when set, is the time the whole watch may run (reconnections
   * included); then it ends with DeadlineExceededError. Default: no deadline.
   */
  deadlineMs?: number;
}

interface UnaryDefinition<Req, Res> {
  readonly path: string;
  readonly requestSerialize: (value: Req) => Buffer;
  readonly responseDeserialize: (value: Buffer) => Res;
}

interface MessageType<T> {
  fromPartial(object: DeepPartial<T>): T;
}

/**
 * A watch that resumes by itself: iterate it with `for await`, end it with
 * `close()` (or by leaving the loop, or with WatchOptions.signal). It can be
 * iterated once. See ./watch for what it delivers.
 */
export class Watch implements AsyncIterable<WatchSessionsResponse> {
  private readonly responses: AsyncGenerator<WatchSessionsResponse, void, undefined>;

  /** @internal */
  constructor(
    private readonly end: () => void,
    responses: AsyncGenerator<WatchSessionsResponse, void, undefined>,
  ) {
    this.responses = responses;
  }

  [Symbol.asyncIterator](): AsyncGenerator<WatchSessionsResponse, void, undefined> {
    return this.responses;
  }

  /** close ends the watch: its call is cancelled and the iteration returns. */
  close(): void {
    this.end();
  }
}

/**
 * A sessiond client. `new SessiondClient(address, options)`, then call the
 * methods; `close()` when done (it also ends the client's watches).
 */
export class SessiondClient {
  /** address is the server's host:port. */
  readonly address: string;
  private readonly channel: grpc.Client;
  private readonly apiKey: string | undefined;
  private readonly deadlineMs: number;
  private readonly maxRetries: number;
  private readonly backoff: Backoff;
  private readonly sleep: Sleep;
  // One controller per call or watch in flight, aborted by close().
  private readonly inFlight = new Set<AbortController>();
  private closed = false;

  constructor(address: string = DEFAULT_ADDRESS, options: ClientOptions = {}) {
    this.address = address;
    this.apiKey = options.apiKey;
    this.deadlineMs = options.deadlineMs ?? 10_000;
    this.maxRetries = options.retry?.maxRetries ?? 3;
    const backoff = options.retry?.backoff;
    this.backoff = backoff instanceof Backoff ? backoff : new Backoff(backoff);
    this.sleep = options.sleep ?? realSleep;
    this.channel = new grpc.Client(address, channelCredentials(options), {
      // After a server restart, reconnect within the retry backoff's cap
      // rather than grpc-js's default of up to two minutes.
      "grpc.max_reconnect_backoff_ms": this.backoff.maximumMs,
      // The server's send limit: an AppendMessages answer echoes up to the
      // server's max_request_bytes (8 MiB by default), above gRPC's usual 4 MiB.
      "grpc.max_receive_message_length": MAX_RESPONSE_BYTES,
      ...options.channelOptions,
    });
  }

  /** close cancels every call and watch in flight and closes the channel. */
  close(): void {
    this.closed = true;
    for (const controller of this.inFlight) {
      controller.abort();
    }
    this.inFlight.clear();
    this.channel.close();
  }

  /**
   * track makes a controller that close() or the caller's signal aborts
   * (aborted from the start once the client is closed: a call then fails
   * with CancelledError, a watch ends at once).
   */
  private track(signal: AbortSignal | undefined): AbortController {
    const controller = new AbortController();
    if (this.closed || signal?.aborted === true) {
      controller.abort();
    } else {
      signal?.addEventListener("abort", () => controller.abort(), { once: true, signal: controller.signal });
    }
    this.inFlight.add(controller);
    return controller;
  }

  /** untrack ends what track started (and frees the caller's signal listener). */
  private untrack(controller: AbortController): void {
    controller.abort();
    this.inFlight.delete(controller);
  }

  // SessionService

  /** CreateSession; retried on UNAVAILABLE when session.id is set. */
  createSession(request: DeepPartial<CreateSessionRequest>, options?: CallOptions): Promise<CreateSessionResponse> {
    return this.unary("CreateSession", SessionServiceService.createSession, CreateSessionRequest, request, options);
  }

  /** GetSession. */
  getSession(request: DeepPartial<GetSessionRequest>, options?: CallOptions): Promise<GetSessionResponse> {
    return this.unary("GetSession", SessionServiceService.getSession, GetSessionRequest, request, options);
  }

  /** UpdateSession; retried on UNAVAILABLE only when etag is set. */
  updateSession(request: DeepPartial<UpdateSessionRequest>, options?: CallOptions): Promise<UpdateSessionResponse> {
    return this.unary("UpdateSession", SessionServiceService.updateSession, UpdateSessionRequest, request, options);
  }

  /** DeleteSession; never retried. */
  deleteSession(request: DeepPartial<DeleteSessionRequest>, options?: CallOptions): Promise<DeleteSessionResponse> {
    return this.unary("DeleteSession", SessionServiceService.deleteSession, DeleteSessionRequest, request, options);
  }

  /** ListSessions: one page; see listAllSessions for all of them. */
  listSessions(request: DeepPartial<ListSessionsRequest> = {}, options?: CallOptions): Promise<ListSessionsResponse> {
    return this.unary("ListSessions", SessionServiceService.listSessions, ListSessionsRequest, request, options);
  }

  /**
   * listAllSessions walks ListSessions page after page (pageToken is set
   * for you); each page is one call with its own deadline and retries. It
   * sets skipTotalSize: a walker has no use for the count.
   */
  async *listAllSessions(
    request: DeepPartial<ListSessionsRequest> = {},
    options?: CallOptions,
  ): AsyncGenerator<Session, void, undefined> {
    let page = ListSessionsRequest.fromPartial({ ...request, skipTotalSize: true });
    for (;;) {
      const response = await this.listSessions(page, options);
      yield* response.sessions;
      if (response.nextPageToken === "") {
        return;
      }
      page = { ...page, pageToken: response.nextPageToken };
    }
  }

  /** TouchSession; retried on UNAVAILABLE. */
  touchSession(request: DeepPartial<TouchSessionRequest>, options?: CallOptions): Promise<TouchSessionResponse> {
    return this.unary("TouchSession", SessionServiceService.touchSession, TouchSessionRequest, request, options);
  }

  /** EndSession; retried on UNAVAILABLE. */
  endSession(request: DeepPartial<EndSessionRequest>, options?: CallOptions): Promise<EndSessionResponse> {
    return this.unary("EndSession", SessionServiceService.endSession, EndSessionRequest, request, options);
  }

  /** SetRuntimeState; retried on UNAVAILABLE. */
  setRuntimeState(
    request: DeepPartial<SetRuntimeStateRequest>,
    options?: CallOptions,
  ): Promise<SetRuntimeStateResponse> {
    return this.unary(
      "SetRuntimeState", SessionServiceService.setRuntimeState, SetRuntimeStateRequest, request, options,
    );
  }

  /** ForkSession; retried on UNAVAILABLE when newSessionId is set. */
  forkSession(request: DeepPartial<ForkSessionRequest>, options?: CallOptions): Promise<ForkSessionResponse> {
    return this.unary("ForkSession", SessionServiceService.forkSession, ForkSessionRequest, request, options);
  }

  /** ReconcileSessions; never retried. */
  reconcileSessions(
    request: DeepPartial<ReconcileSessionsRequest>,
    options?: CallOptions,
  ): Promise<ReconcileSessionsResponse> {
    return this.unary(
      "ReconcileSessions", SessionServiceService.reconcileSessions, ReconcileSessionsRequest, request, options,
    );
  }

  /** PurgeSessions; never retried. */
  purgeSessions(request: DeepPartial<PurgeSessionsRequest>, options?: CallOptions): Promise<PurgeSessionsResponse> {
    return this.unary("PurgeSessions", SessionServiceService.purgeSessions, PurgeSessionsRequest, request, options);
  }

  /**
   * WatchSessions as an endless AsyncIterable that resumes by itself after
   * any failure or server restart, each revision once and in order (see
   * ./watch). Iteration throws RelistRequiredError when the resume point was
   * compacted, and other SessiondErrors for anything but UNAVAILABLE.
   */
  watch(request: DeepPartial<WatchSessionsRequest> = {}, options: WatchOptions = {}): Watch {
    // Refused here, before any call: include_initial with a start revision.
    const cursor = new WatchCursor(
      WatchSessionsRequest.fromPartial(request), options.maxRevisionBytes ?? DEFAULT_MAX_REVISION_BYTES,
    );
    const deadline = options.deadlineMs === undefined ? Infinity : Date.now() + options.deadlineMs;
    const controller = this.track(options.signal);
    const responses = follow(cursor, {
      open: (req) => this.openWatch(req, deadline),
      backoff: this.backoff.withMaximum(options.maxBackoffMs ?? 30_000),
      sleep: this.sleep,
      signal: controller.signal,
    });
    const untrack = (): void => this.untrack(controller);
    async function* tracked(): AsyncGenerator<WatchSessionsResponse, void, undefined> {
      try {
        yield* responses;
      } finally {
        untrack();
      }
    }
    return new Watch(untrack, tracked());
  }

  private openWatch(request: WatchSessionsRequest, deadline: number): WatchStream {
    const definition = SessionServiceService.watchSessions;
    const call = this.channel.makeServerStreamRequest(
      definition.path, definition.requestSerialize, definition.responseDeserialize, request, this.metadata(),
      { deadline },
    );
    // A cancelled call reports CANCELLED as an 'error' event, possibly after
    // its iterator is gone; without a listener Node would treat it as fatal.
    call.on("error", () => undefined);
    return {
      [Symbol.asyncIterator]: () => call[Symbol.asyncIterator]() as AsyncIterator<WatchSessionsResponse>,
      cancel: () => call.cancel(),
    };
  }

  /** GetSharedState. */
  getSharedState(request: DeepPartial<GetSharedStateRequest>, options?: CallOptions): Promise<GetSharedStateResponse> {
    return this.unary("GetSharedState", SessionServiceService.getSharedState, GetSharedStateRequest, request, options);
  }

  /** UpdateSharedState; retried on UNAVAILABLE (a delta applied twice is applied once). */
  updateSharedState(
    request: DeepPartial<UpdateSharedStateRequest>,
    options?: CallOptions,
  ): Promise<UpdateSharedStateResponse> {
    return this.unary(
      "UpdateSharedState", SessionServiceService.updateSharedState, UpdateSharedStateRequest, request, options,
    );
  }

  // MessageService

  /** AppendMessages; retried on UNAVAILABLE when every message has an id. */
  appendMessages(
    request: DeepPartial<AppendMessagesRequest>,
    options?: CallOptions,
  ): Promise<AppendMessagesResponse> {
    return this.unary("AppendMessages", MessageServiceService.appendMessages, AppendMessagesRequest, request, options);
  }

  /** ListMessages: one page, or the last N messages or turns. */
  listMessages(request: DeepPartial<ListMessagesRequest>, options?: CallOptions): Promise<ListMessagesResponse> {
    return this.unary("ListMessages", MessageServiceService.listMessages, ListMessagesRequest, request, options);
  }

  /**
   * listAllMessages walks ListMessages page after page (after a seq or a
   * time, either direction); each page is one call with its own deadline.
   */
  async *listAllMessages(
    request: DeepPartial<ListMessagesRequest>,
    options?: CallOptions,
  ): AsyncGenerator<Message, void, undefined> {
    let page = ListMessagesRequest.fromPartial(request);
    for (;;) {
      const response = await this.listMessages(page, options);
      yield* response.messages;
      if (response.nextPageToken === "") {
        return;
      }
      page = { ...page, pageToken: response.nextPageToken };
    }
  }

  /** PopMessage; never retried. */
  popMessage(request: DeepPartial<PopMessageRequest>, options?: CallOptions): Promise<PopMessageResponse> {
    return this.unary("PopMessage", MessageServiceService.popMessage, PopMessageRequest, request, options);
  }

  /** UpdateLastMessage; never retried. */
  updateLastMessage(
    request: DeepPartial<UpdateLastMessageRequest>,
    options?: CallOptions,
  ): Promise<UpdateLastMessageResponse> {
    return this.unary(
      "UpdateLastMessage", MessageServiceService.updateLastMessage, UpdateLastMessageRequest, request, options,
    );
  }

  /** ClearMessages; never retried. */
  clearMessages(request: DeepPartial<ClearMessagesRequest>, options?: CallOptions): Promise<ClearMessagesResponse> {
    return this.unary("ClearMessages", MessageServiceService.clearMessages, ClearMessagesRequest, request, options);
  }

  /** SearchMessages: one page of matches, newest first. */
  searchMessages(
    request: DeepPartial<SearchMessagesRequest>,
    options?: CallOptions,
  ): Promise<SearchMessagesResponse> {
    return this.unary("SearchMessages", MessageServiceService.searchMessages, SearchMessagesRequest, request, options);
  }

  /** ReplaceMessages; retried on UNAVAILABLE when every new message has an id. */
  replaceMessages(
    request: DeepPartial<ReplaceMessagesRequest>,
    options?: CallOptions,
  ): Promise<ReplaceMessagesResponse> {
    return this.unary(
      "ReplaceMessages", MessageServiceService.replaceMessages, ReplaceMessagesRequest, request, options,
    );
  }

  /** DeleteMessages; retried on UNAVAILABLE (a repeat finds nothing left to delete). */
  deleteMessages(request: DeepPartial<DeleteMessagesRequest>, options?: CallOptions): Promise<DeleteMessagesResponse> {
    return this.unary("DeleteMessages", MessageServiceService.deleteMessages, DeleteMessagesRequest, request, options);
  }

  // StatsService

  /** RecordUsage; retried on UNAVAILABLE when requestId is set. */
  recordUsage(request: DeepPartial<RecordUsageRequest>, options?: CallOptions): Promise<RecordUsageResponse> {
    return this.unary("RecordUsage", StatsServiceService.recordUsage, RecordUsageRequest, request, options);
  }

  /** GetStats. */
  getStats(request: DeepPartial<GetStatsRequest> = {}, options?: CallOptions): Promise<GetStatsResponse> {
    return this.unary("GetStats", StatsServiceService.getStats, GetStatsRequest, request, options);
  }

  /** CostByModel. */
  costByModel(request: DeepPartial<CostByModelRequest> = {}, options?: CallOptions): Promise<CostByModelResponse> {
    return this.unary("CostByModel", StatsServiceService.costByModel, CostByModelRequest, request, options);
  }

  /** unary sends one call with deadline, retries and error conversion. */
  private async unary<Req, Res>(
    rpc: UnaryRpcName,
    definition: UnaryDefinition<Req, Res>,
    type: MessageType<Req>,
    partial: DeepPartial<Req>,
    options: CallOptions = {},
  ): Promise<Res> {
    const request = type.fromPartial(partial);
    const deadline = Date.now() + (options.deadlineMs ?? this.deadlineMs);
    const mayRetry = retryIsSafe(rpc, request);
    const controller = this.track(options.signal);
    try {
      for (let attempt = 0; ; attempt += 1) {
        let error;
        try {
          return await this.send(definition, request, deadline, controller.signal);
        } catch (err) {
          error = toSessiondError(err);
        }
        if (!(mayRetry && error instanceof UnavailableError)) {
          throw error;
        }
        const delay = this.backoff.delayMs(attempt);
        if (attempt >= this.maxRetries || Date.now() + delay >= deadline) {
          throw error;
        }
        await this.sleep(delay, controller.signal);
      }
    } finally {
      this.untrack(controller);
    }
  }

  private send<Req, Res>(
    definition: UnaryDefinition<Req, Res>,
    request: Req,
    deadline: number,
    signal: AbortSignal,
  ): Promise<Res> {
    return new Promise((resolve, reject) => {
      if (signal.aborted) {
        reject(new CancelledError({ code: grpc.status.CANCELLED, message: "cancelled before it was sent" }));
        return;
      }
      const call = this.channel.makeUnaryRequest(
        definition.path, definition.requestSerialize, definition.responseDeserialize, request, this.metadata(),
        { deadline },
        (err, response) => {
          signal.removeEventListener("abort", cancel);
          if (err !== null || response === undefined) {
            reject(err ?? new Error("no response"));
          } else {
            resolve(response);
          }
        },
      );
      const cancel = (): void => call.cancel();
      signal.addEventListener("abort", cancel, { once: true });
    });
  }

  private metadata(): grpc.Metadata {
    const metadata = new grpc.Metadata();
    if (this.apiKey !== undefined && this.apiKey !== "") {
      metadata.set("authorization", `Bearer ${this.apiKey}`);
    }
    return metadata;
  }
}

function channelCredentials(options: ClientOptions): grpc.ChannelCredentials {
  if (options.credentials !== undefined) {
    return options.credentials;
  }
  if (options.tls === undefined || options.tls === false) {
    return grpc.credentials.createInsecure();
  }
  const tls = options.tls === true ? {} : options.tls;
  return grpc.credentials.createSsl(tls.rootCerts ?? null, tls.privateKey ?? null, tls.certChain ?? null);
}
