/**
 * What a failed sessiond call means.
 *
 * The server answers every failure with a google.rpc.Status in the
 * grpc-status-details-bin trailer: an ErrorInfo (domain "sessiond.v1",
 * reason in UPPER_SNAKE_CASE, metadata) and, for bad input, a BadRequest
 * naming each offending field. This module turns a raw @grpc/grpc-js error
 * into a SessiondError (one subclass per status code the server documents),
 * so callers test `err instanceof NotFoundError` or `err.reason ===
 * "SESSION_ENDED"` instead of decoding trailers. A watch whose resume point
 * left the change log becomes RelistRequiredError, with compactedRevision.
 */
import * as grpc from "@grpc/grpc-js";

import { BadRequest, ErrorInfo } from "./gen/google/rpc/error_details";
import { Status } from "./gen/google/rpc/status";

/** ERROR_DOMAIN is the ErrorInfo domain of errors raised by sessiond itself. */
export const ERROR_DOMAIN = "sessiond.v1";

/**
 * The ErrorInfo reasons the server sends (docs/clients.md), to compare with
 * SessiondError.reason. An unknown reason is kept as its string.
 */
export const Reason = {
  BAD_REQUEST: "BAD_REQUEST",
  MALFORMED_REQUEST: "MALFORMED_REQUEST",
  SESSION_NOT_FOUND: "SESSION_NOT_FOUND",
  SESSION_EXISTS: "SESSION_EXISTS",
  SESSION_ENDED: "SESSION_ENDED",
  SESSION_EMPTY: "SESSION_EMPTY",
  ETAG_MISMATCH: "ETAG_MISMATCH",
  LAST_SEQ_MISMATCH: "LAST_SEQ_MISMATCH",
  MESSAGE_ID_CONFLICT: "MESSAGE_ID_CONFLICT",
  USAGE_OVERFLOW: "USAGE_OVERFLOW",
  REVISION_COMPACTED: "REVISION_COMPACTED",
  TOO_MANY_WATCHES: "TOO_MANY_WATCHES",
  RATE_LIMITED: "RATE_LIMITED",
  SHUTTING_DOWN: "SHUTTING_DOWN",
  STORAGE_UNAVAILABLE: "STORAGE_UNAVAILABLE",
  UNAUTHENTICATED: "UNAUTHENTICATED",
  UNKNOWN_API_KEY: "UNKNOWN_API_KEY",
  PERMISSION_DENIED: "PERMISSION_DENIED",
  OWNER_NOT_ALLOWED: "OWNER_NOT_ALLOWED",
  DATASET_NOT_ALLOWED: "DATASET_NOT_ALLOWED",
  STORE_ERROR: "STORE_ERROR",
  INTERNAL: "INTERNAL",
} as const;

/** A reason the server is known to send; SessiondError.reason may hold others too. */
export type Reason = (typeof Reason)[keyof typeof Reason];

/** The ErrorInfo reason of a watch whose start revision left the change log. */
export const REASON_REVISION_COMPACTED = Reason.REVISION_COMPACTED;

/** The trailer that carries a serialized google.rpc.Status. */
export const STATUS_DETAILS_TRAILER = "grpc-status-details-bin";

/** One BadRequest field violation: the request field and what is wrong with it. */
export interface FieldViolation {
  field: string;
  description: string;
}

/** The details of a failed call that the server sends, decoded. */
export interface ErrorDetails {
  /** status is the whole google.rpc.Status. */
  status: Status;
  /** errorInfo is the ErrorInfo detail (domain "sessiond.v1"), if any. */
  errorInfo?: ErrorInfo;
  /** badRequest is the BadRequest detail (field violations), if any. */
  badRequest?: BadRequest;
}

/**
 * errorDetails decodes the google.rpc.Status of a failed call from the
 * grpc-status-details-bin trailer; undefined when there is none or it does
 * not decode.
 */
export function errorDetails(err: unknown): ErrorDetails | undefined {
  const metadata = (err as Partial<grpc.ServiceError> | undefined)?.metadata;
  if (!(metadata instanceof grpc.Metadata)) {
    return undefined;
  }
  const raw = metadata.get(STATUS_DETAILS_TRAILER)[0];
  if (raw === undefined || typeof raw === "string") {
    return undefined;
  }
  let status: Status;
  try {
    status = Status.decode(raw);
  } catch {
    return undefined;
  }
  const out: ErrorDetails = { status };
  for (const any of status.details) {
    const type = any.typeUrl.slice(any.typeUrl.lastIndexOf("/") + 1);
    try {
      if (type === "google.rpc.ErrorInfo") {
        out.errorInfo = ErrorInfo.decode(any.value);
      } else if (type === "google.rpc.BadRequest") {
        out.badRequest = BadRequest.decode(any.value);
      }
    } catch {
      // A detail that does not decode is left out; the code still stands.
    }
  }
  return out;
}

/** What a SessiondError is made of. */
export interface SessiondErrorInit {
  /** code is the gRPC status code. */
  code: grpc.status;
  /** message is the status message ("" when there is none). */
  message: string;
  /** reason is the ErrorInfo reason ("" when the server sent none). */
  reason?: string;
  /** domain is the ErrorInfo domain (ERROR_DOMAIN, or "" without ErrorInfo). */
  domain?: string;
  /** metadata is the ErrorInfo metadata (for example compacted_revision). */
  metadata?: Record<string, string>;
  /** fieldViolations are the BadRequest violations, in the server's order. */
  fieldViolations?: FieldViolation[];
  /** cause is the raw @grpc/grpc-js error, when there is one. */
  cause?: unknown;
}

/**
 * A sessiond call failed.
 *
 * code is the gRPC status code (grpc.status), codeName its name
 * ("NOT_FOUND"); reason the ErrorInfo reason, "" when the server sent none
 * (for example when the connection failed before reaching it); domain the
 * ErrorInfo domain; metadata the ErrorInfo metadata; fieldViolations the
 * BadRequest violations.
 */
export class SessiondError extends Error {
  readonly code: grpc.status;
  readonly reason: string;
  readonly domain: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly fieldViolations: readonly FieldViolation[];

  constructor(init: SessiondErrorInit) {
    const name = grpc.status[init.code] ?? String(init.code);
    super(init.message ? `${name}: ${init.message}` : name, { cause: init.cause });
    this.name = new.target.name;
    this.code = init.code;
    this.reason = init.reason ?? "";
    this.domain = init.domain ?? "";
    this.metadata = { ...init.metadata };
    this.fieldViolations = [...(init.fieldViolations ?? [])];
  }

  /** codeName is the name of the status code, for example "NOT_FOUND". */
  get codeName(): string {
    return grpc.status[this.code] ?? String(this.code);
  }
}

/** INVALID_ARGUMENT: the request is malformed; see fieldViolations. */
export class InvalidArgumentError extends SessiondError {}
/** NOT_FOUND: the session does not exist or is outside the caller's scope. */
export class NotFoundError extends SessiondError {}
/** ALREADY_EXISTS: an id is taken by something with different content. */
export class AlreadyExistsError extends SessiondError {}
/** FAILED_PRECONDITION: the target's state forbids the call (ended, empty). */
export class FailedPreconditionError extends SessiondError {}
/** ABORTED: an optimistic-concurrency guard (etag, expected seq) failed. */
export class AbortedError extends SessiondError {}
/** RESOURCE_EXHAUSTED: a server limit (watches, message size, rate) was reached. */
export class ResourceExhaustedError extends SessiondError {}
/** UNAVAILABLE: the server could not be reached or is shutting down. */
export class UnavailableError extends SessiondError {}
/** UNAUTHENTICATED: the API key is missing or not accepted. */
export class UnauthenticatedError extends SessiondError {}
/** PERMISSION_DENIED: the API key does not allow the call. */
export class PermissionDeniedError extends SessiondError {}
/** DEADLINE_EXCEEDED: the call did not finish within its deadline. */
export class DeadlineExceededError extends SessiondError {}
/** CANCELLED: the call was cancelled (an AbortSignal fired, or close()). */
export class CancelledError extends SessiondError {}

/**
 * A watch asked for revisions the server no longer keeps (FAILED_PRECONDITION
 * with reason REVISION_COMPACTED): list again, then watch from the list's
 * revision + 1. compactedRevision is the highest revision removed from the
 * change log (0 when the server did not say).
 */
export class RelistRequiredError extends FailedPreconditionError {
  readonly compactedRevision: bigint;

  constructor(init: SessiondErrorInit) {
    super(init);
    let compacted = 0n;
    try {
      compacted = BigInt(this.metadata["compacted_revision"] ?? "0");
    } catch {
      compacted = 0n;
    }
    this.compactedRevision = compacted;
  }
}

const CLASS_BY_CODE: ReadonlyMap<grpc.status, new (init: SessiondErrorInit) => SessiondError> = new Map([
  [grpc.status.INVALID_ARGUMENT, InvalidArgumentError],
  [grpc.status.NOT_FOUND, NotFoundError],
  [grpc.status.ALREADY_EXISTS, AlreadyExistsError],
  [grpc.status.FAILED_PRECONDITION, FailedPreconditionError],
  [grpc.status.ABORTED, AbortedError],
  [grpc.status.RESOURCE_EXHAUSTED, ResourceExhaustedError],
  [grpc.status.UNAVAILABLE, UnavailableError],
  [grpc.status.UNAUTHENTICATED, UnauthenticatedError],
  [grpc.status.PERMISSION_DENIED, PermissionDeniedError],
  [grpc.status.DEADLINE_EXCEEDED, DeadlineExceededError],
  [grpc.status.CANCELLED, CancelledError],
]);

/** sessiondError builds the SessiondError subclass that matches code and reason. */
export function sessiondError(init: SessiondErrorInit): SessiondError {
  if (init.code === grpc.status.FAILED_PRECONDITION && init.reason === REASON_REVISION_COMPACTED) {
    return new RelistRequiredError(init);
  }
  const cls = CLASS_BY_CODE.get(init.code) ?? SessiondError;
  return new cls(init);
}

/**
 * toSessiondError converts what a @grpc/grpc-js call failed with into the
 * matching SessiondError; a SessiondError is returned as it is, and anything
 * that is not a gRPC error becomes UNKNOWN with its text.
 */
export function toSessiondError(err: unknown): SessiondError {
  if (err instanceof SessiondError) {
    return err;
  }
  const raw = err as Partial<grpc.ServiceError> | undefined;
  if (typeof raw?.code !== "number") {
    return new SessiondError({ code: grpc.status.UNKNOWN, message: String(err), cause: err });
  }
  const details = errorDetails(err);
  // A status whose code disagrees with the call's is not trusted.
  const trusted = details !== undefined && details.status.code === raw.code ? details : undefined;
  return sessiondError({
    code: raw.code,
    message: trusted?.status.message || raw.details || "",
    reason: trusted?.errorInfo?.reason ?? "",
    domain: trusted?.errorInfo?.domain ?? "",
    metadata: trusted?.errorInfo?.metadata ?? {},
    fieldViolations: (trusted?.badRequest?.fieldViolations ?? []).map((v) => ({
      field: v.field,
      description: v.description,
    })),
    cause: err,
  });
}
