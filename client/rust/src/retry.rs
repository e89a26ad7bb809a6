//! When a failed call may be sent again, and how long to wait first.
//!
//! A call is retried only when it failed with UNAVAILABLE (the server could
//! not be reached, is stopping, or its database could not answer) and only
//! when sending it twice cannot apply a change twice ([`RetrySafe`]). The
//! same rule holds in every sessiond client; docs/clients.md states it once.

use std::time::Duration;

use crate::v1::*;

/// Backoff is exponential backoff with jitter: how long to wait before the
/// next attempt after `n` consecutive failures.
///
/// The n-th delay (n from 0) is `initial * multiplier^n`, capped at
/// `maximum`, then scaled by a random factor in `[1 - jitter, 1]`, so that
/// many clients cut off at once do not come back in step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// initial is the first delay (before jitter). Default 100 ms.
    pub initial: Duration,
    /// maximum caps every delay (before jitter). Default 5 s.
    pub maximum: Duration,
    /// multiplier grows the delay per failure. Default 2.
    pub multiplier: f64,
    /// jitter is the largest fraction taken off a delay, in [0, 1]. Default 0.5.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            maximum: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// delay is the wait after the `attempt`-th consecutive failure (from 0).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, fastrand::f64())
    }

    /// delay_with is [`Backoff::delay`] with the random draw given, a number
    /// in [0, 1): 0 waits the whole delay, values near 1 take off `jitter`.
    pub fn delay_with(&self, attempt: u32, random: f64) -> Duration {
        // Cap the exponent first: a long outage must not overflow the float.
        let grown = self.initial.as_secs_f64() * self.multiplier.powi(attempt.min(64) as i32);
        let base = grown.min(self.maximum.as_secs_f64());
        let scale = 1.0 - self.jitter.clamp(0.0, 1.0) * random.clamp(0.0, 1.0);
        Duration::try_from_secs_f64(base * scale).unwrap_or(self.maximum)
    }
}

/// RetryPolicy bounds the retries of a retry-safe call that failed with
/// UNAVAILABLE: at most `max_retries` more attempts, spaced by `backoff`,
/// and never past the call's deadline (which covers all attempts).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// max_retries is the number of attempts after the first. Default 3; 0
    /// turns retries off.
    pub max_retries: u32,
    /// backoff spaces the attempts (and a watch's reconnections).
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            backoff: Backoff::default(),
        }
    }
}

/// RetrySafe says whether sending a request a second time cannot apply a
/// change twice.
///
/// Reads are always safe. Writes are safe when the server recognises a
/// repeat: a client-chosen id (session, fork, message ids, usage
/// request_id), a target state that is the same on every attempt (touch,
/// end, runtime state), or an etag that a first success would have made
/// stale. Anything else (appends without ids, pops, clears, deletes,
/// purges, reconciles) could act twice, so it is never retried.
pub trait RetrySafe {
    /// retry_is_safe is true when a repeat of this request changes nothing more.
    fn retry_is_safe(&self) -> bool;
}

macro_rules! retry_safe {
    ($($request:ty => |$r:ident| $rule:expr;)*) => {
        $(impl RetrySafe for $request {
            fn retry_is_safe(&self) -> bool {
                let $r = self;
                $rule
            }
        })*
    };
}

retry_safe! {
    GetSessionRequest => |_r| true;
    ListSessionsRequest => |_r| true;
    ListMessagesRequest => |_r| true;
    SearchMessagesRequest => |_r| true;
    GetStatsRequest => |_r| true;
    CostByModelRequest => |_r| true;
    TouchSessionRequest => |_r| true;
    EndSessionRequest => |_r| true;
    SetRuntimeStateRequest => |_r| true;
    GetSharedStateRequest => |_r| true;
    UpdateSharedStateRequest => |_r| true;
    DeleteMessagesRequest => |_r| true;
    CreateSessionRequest => |r| r.session.as_ref().is_some_and(|s| !s.id.is_empty());
    ForkSessionRequest => |r| !r.new_session_id.is_empty();
    UpdateSessionRequest => |r| !r.etag.is_empty();
    AppendMessagesRequest => |r| !r.messages.is_empty() && r.messages.iter().all(|m| !m.id.is_empty());
    RecordUsageRequest => |r| !r.request_id.is_empty();
    ReplaceMessagesRequest => |r| r.messages.iter().all(|m| !m.id.is_empty());
    DeleteSessionRequest => |_r| false;
    ReconcileSessionsRequest => |_r| false;
    PurgeSessionsRequest => |_r| false;
    PopMessageRequest => |_r| false;
    UpdateLastMessageRequest => |_r| false;
    ClearMessagesRequest => |_r| false;
}
