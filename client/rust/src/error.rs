//! What a failed call means: one [`Error`] type carrying the gRPC code, the
//! server's `google.rpc.ErrorInfo` reason as a [`Reason`] the caller can match
//! on, its metadata, and the `BadRequest` field violations.
//!
//! The server answers every failure with a `google.rpc.Status` (ErrorInfo
//! domain `sessiond.v1`, reason in UPPER_SNAKE_CASE). Raw tonic hands that
//! over as bytes in the `grpc-status-details-bin` trailer; here it is decoded
//! once, so callers write `Some(Reason::SessionNotFound)` instead of parsing.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use prost::Message as _;
use tonic::{Code, Status};
use tonic_types::RpcStatusExt;

/// ERROR_DOMAIN is the ErrorInfo domain of the errors sessiond itself raises.
pub const ERROR_DOMAIN: &str = "sessiond.v1";

/// Reason is the ErrorInfo reason of a failure, as sent by the server.
///
/// The known reasons get their own variant; a reason this version of the
/// crate does not know arrives as [`Reason::Other`] with its text, so a newer
/// server never makes a call fail to decode. The enum is `non_exhaustive`:
/// a later version may move a reason from `Other` to a variant of its own.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// BAD_REQUEST: a field breaks its rule; see [`Error::field_violations`].
    BadRequest,
    /// MALFORMED_REQUEST: the request bytes could not be decoded.
    MalformedRequest,
    /// SESSION_NOT_FOUND: no such session in the caller's scope.
    SessionNotFound,
    /// SESSION_EXISTS: the id is taken by a session with other content.
    SessionExists,
    /// SESSION_ENDED: the session is in a terminal status.
    SessionEnded,
    /// SESSION_EMPTY: the session has no message to pop or update.
    SessionEmpty,
    /// ETAG_MISMATCH: the etag sent is stale.
    EtagMismatch,
    /// LAST_SEQ_MISMATCH: expected_last_seq / expected_seq is stale.
    LastSeqMismatch,
    /// MESSAGE_ID_CONFLICT: a message id is taken by a message with other content.
    MessageIdConflict,
    /// USAGE_OVERFLOW: a usage counter would exceed its maximum.
    UsageOverflow,
    /// REVISION_COMPACTED: a watch asked for revisions the change log no
    /// longer holds; list again (see [`Error::relist_required`]).
    RevisionCompacted,
    /// TOO_MANY_WATCHES: the server's or the caller's watch limit is reached.
    TooManyWatches,
    /// RATE_LIMITED: the caller exceeds its request rate; see [`Error::retry_delay`].
    RateLimited,
    /// STORAGE_UNAVAILABLE: the server's database cannot answer for now.
    StorageUnavailable,
    /// SHUTTING_DOWN: the server is stopping.
    ShuttingDown,
    /// UNAUTHENTICATED: the call carries no API key and the server needs one.
    Unauthenticated,
    /// UNKNOWN_API_KEY: the API key is not accepted.
    UnknownApiKey,
    /// PERMISSION_DENIED: the key's role does not allow the RPC.
    PermissionDenied,
    /// OWNER_NOT_ALLOWED: the key may not act for that owner.
    OwnerNotAllowed,
    /// DATASET_NOT_ALLOWED: the key may not reach that dataset.
    DatasetNotAllowed,
    /// STORE_ERROR: the store failed in a way it could not classify.
    StoreError,
    /// INTERNAL: the server failed; its log says why.
    Internal,
    /// Any other reason, spelled as the server sent it.
    Other(String),
}

impl Reason {
    /// parse maps a reason string to its variant ([`Reason::Other`] when unknown).
    pub fn parse(reason: &str) -> Reason {
        match reason {
            "BAD_REQUEST" => Reason::BadRequest,
            "MALFORMED_REQUEST" => Reason::MalformedRequest,
            "SESSION_NOT_FOUND" => Reason::SessionNotFound,
            "SESSION_EXISTS" => Reason::SessionExists,
            "SESSION_ENDED" => Reason::SessionEnded,
            "SESSION_EMPTY" => Reason::SessionEmpty,
            "ETAG_MISMATCH" => Reason::EtagMismatch,
            "LAST_SEQ_MISMATCH" => Reason::LastSeqMismatch,
            "MESSAGE_ID_CONFLICT" => Reason::MessageIdConflict,
            "USAGE_OVERFLOW" => Reason::UsageOverflow,
            "REVISION_COMPACTED" => Reason::RevisionCompacted,
            "TOO_MANY_WATCHES" => Reason::TooManyWatches,
            "RATE_LIMITED" => Reason::RateLimited,
            "STORAGE_UNAVAILABLE" => Reason::StorageUnavailable,
            "SHUTTING_DOWN" => Reason::ShuttingDown,
            "UNAUTHENTICATED" => Reason::Unauthenticated,
            "UNKNOWN_API_KEY" => Reason::UnknownApiKey,
            "PERMISSION_DENIED" => Reason::PermissionDenied,
            "OWNER_NOT_ALLOWED" => Reason::OwnerNotAllowed,
            "DATASET_NOT_ALLOWED" => Reason::DatasetNotAllowed,
            "STORE_ERROR" => Reason::StoreError,
            "INTERNAL" => Reason::Internal,
            other => Reason::Other(other.to_string()),
        }
    }

    /// as_str spells the reason as the server does (`SESSION_NOT_FOUND`).
    pub fn as_str(&self) -> &str {
        match self {
            Reason::BadRequest => "BAD_REQUEST",
            Reason::MalformedRequest => "MALFORMED_REQUEST",
            Reason::SessionNotFound => "SESSION_NOT_FOUND",
            Reason::SessionExists => "SESSION_EXISTS",
            Reason::SessionEnded => "SESSION_ENDED",
            Reason::SessionEmpty => "SESSION_EMPTY",
            Reason::EtagMismatch => "ETAG_MISMATCH",
            Reason::LastSeqMismatch => "LAST_SEQ_MISMATCH",
            Reason::MessageIdConflict => "MESSAGE_ID_CONFLICT",
            Reason::UsageOverflow => "USAGE_OVERFLOW",
            Reason::RevisionCompacted => "REVISION_COMPACTED",
            Reason::TooManyWatches => "TOO_MANY_WATCHES",
            Reason::RateLimited => "RATE_LIMITED",
            Reason::StorageUnavailable => "STORAGE_UNAVAILABLE",
            Reason::ShuttingDown => "SHUTTING_DOWN",
            Reason::Unauthenticated => "UNAUTHENTICATED",
            Reason::UnknownApiKey => "UNKNOWN_API_KEY",
            Reason::PermissionDenied => "PERMISSION_DENIED",
            Reason::OwnerNotAllowed => "OWNER_NOT_ALLOWED",
            Reason::DatasetNotAllowed => "DATASET_NOT_ALLOWED",
            Reason::StoreError => "STORE_ERROR",
            Reason::Internal => "INTERNAL",
            Reason::Other(reason) => reason,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// FieldViolation names a request field that broke its rule (BadRequest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    /// field is the path of the field, as in the proto (`session.labels`).
    pub field: String,
    /// description says which rule and which limit.
    pub description: String,
}

/// Error is a failed sessiond call.
///
/// Errors the server sent carry its code, message and details. Errors that
/// never reached it carry a code too: UNAVAILABLE for a connection that
/// could not be made or broke, DEADLINE_EXCEEDED for a call that ran out of
/// time, INVALID_ARGUMENT for client options that cannot work (a bad
/// address or API key), RESOURCE_EXHAUSTED for a watch revision larger than
/// the client's bound; those have no reason.
#[derive(Clone, Debug)]
pub struct Error(Box<Details>);

/// Details is what an [`Error`] holds, boxed so that a `Result` stays small.
#[derive(Clone, Debug)]
struct Details {
    code: Code,
    message: String,
    domain: String,
    reason: Option<Reason>,
    metadata: HashMap<String, String>,
    field_violations: Vec<FieldViolation>,
    retry_delay: Option<Duration>,
}

impl Error {
    /// local builds an error that the client raised itself.
    pub(crate) fn local(code: Code, message: impl Into<String>) -> Error {
        Error(Box::new(Details {
            code,
            message: message.into(),
            domain: String::new(),
            reason: None,
            metadata: HashMap::new(),
            field_violations: Vec::new(),
            retry_delay: None,
        }))
    }

    /// code is the gRPC status code.
    pub fn code(&self) -> Code {
        self.0.code
    }

    /// message is the status message (for people, not for matching).
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// reason is the ErrorInfo reason, None when the server sent none (for
    /// example when the connection failed before reaching it).
    pub fn reason(&self) -> Option<&Reason> {
        self.0.reason.as_ref()
    }

    /// domain is the ErrorInfo domain ([`ERROR_DOMAIN`] for sessiond's own
    /// errors), empty without an ErrorInfo.
    pub fn domain(&self) -> &str {
        &self.0.domain
    }

    /// metadata is the ErrorInfo metadata (`compacted_revision`, limits).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.0.metadata
    }

    /// field_violations are the BadRequest violations, in the server's order.
    pub fn field_violations(&self) -> &[FieldViolation] {
        &self.0.field_violations
    }

    /// retry_delay is the RetryInfo delay the server asked for (RATE_LIMITED).
    pub fn retry_delay(&self) -> Option<Duration> {
        self.0.retry_delay
    }

    /// relist_required is Some(compacted revision) when a watch asked for
    /// revisions that the change log no longer holds (FAILED_PRECONDITION,
    /// reason REVISION_COMPACTED): list again, then watch from the list's
    /// revision + 1. The compacted revision is 0 if the server did not say.
    pub fn relist_required(&self) -> Option<i64> {
        (self.0.code == Code::FailedPrecondition
            && self.0.reason == Some(Reason::RevisionCompacted))
        .then(|| {
            self.0
                .metadata
                .get("compacted_revision")
                .and_then(|r| r.parse().ok())
                .unwrap_or(0)
        })
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Error {
        let mut error = Error::local(connection_code(&status), status.message());
        // The google.rpc.Status of the grpc-status-details-bin trailer. One
        // that does not decode, or whose code disagrees with the call's, is
        // ignored: the call's code and message stand.
        let Ok(rich) = tonic_types::Status::decode(status.details()) else {
            return error;
        };
        if rich.code != status.code() as i32 {
            return error;
        }
        let Ok(details) = rich.check_error_details() else {
            return error;
        };
        if !rich.message.is_empty() {
            error.0.message = rich.message.clone();
        }
        if let Some(info) = details.error_info() {
            error.0.domain = info.domain.clone();
            error.0.reason = Some(Reason::parse(&info.reason));
            error.0.metadata = info.metadata.clone();
        }
        if let Some(bad_request) = details.bad_request() {
            error.0.field_violations = bad_request
                .field_violations
                .iter()
                .map(|v| FieldViolation {
                    field: v.field.clone(),
                    description: v.description.clone(),
                })
                .collect();
        }
        error.0.retry_delay = details.retry_info().and_then(|info| info.retry_delay);
        error
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(code_name(self.0.code))?;
        if let Some(reason) = &self.0.reason {
            write!(f, " ({reason})")?;
        }
        if !self.0.message.is_empty() {
            write!(f, ": {}", self.0.message)?;
        }
        for v in &self.0.field_violations {
            write!(f, "; {}: {}", v.field, v.description)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// connection_code is the code of a status, with a broken connection made
/// UNAVAILABLE. tonic reports a connection that died under a call (server
/// killed, connection reset) as UNKNOWN, INTERNAL or CANCELLED with the
/// transport error as its source; a status the server sent never has a
/// source. Calling those UNAVAILABLE lets one rule decide both retries and a
/// watch's reconnection.
fn connection_code(status: &Status) -> Code {
    let transport = std::error::Error::source(status).is_some();
    match status.code() {
        Code::Unknown | Code::Internal | Code::Cancelled if transport => Code::Unavailable,
        code => code,
    }
}

/// code_name spells a status code as the gRPC specification does (`NOT_FOUND`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
