package sessiond

import (
	"math"
	"time"

	v1 "github.com/sessiond/sessiond/client/go/sessiondv1"
	"google.golang.org/protobuf/proto"
)

// Backoff is exponential backoff with jitter: the delay before retry (or
// reconnection) n, counted from 0, is min(Maximum, Initial*Multiplier^n)
// scaled by a random factor in [1-Jitter, 1], so that clients cut off at
// once do not come back in step.
type Backoff struct {
	Initial    time.Duration
	Maximum    time.Duration
	Multiplier float64
	Jitter     float64
}

// DefaultBackoff is the backoff of docs/clients.md: 100 ms, doubling, at most
// 5 s, jitter 0.5.
var DefaultBackoff = Backoff{Initial: 100 * time.Millisecond, Maximum: 5 * time.Second, Multiplier: 2, Jitter: 0.5}

// Delay is the wait after the attempt-th consecutive failure (from 0); random
// returns a number in [0, 1).
func (b Backoff) Delay(attempt int, random func() float64) time.Duration {
	// Cap the exponent first: a long outage must not overflow.
	base := math.Min(float64(b.Maximum), float64(b.Initial)*math.Pow(b.Multiplier, float64(min(attempt, 64))))
	return time.Duration(base * (1 - b.Jitter*random()))
}

// RetryPolicy bounds the retries of a retry-safe unary call that failed with
// UNAVAILABLE: at most MaxRetries more attempts, spaced by Backoff, all inside
// the call's one deadline.
type RetryPolicy struct {
	MaxRetries int
	Backoff    Backoff
}

// DefaultRetryPolicy is 3 retries with DefaultBackoff.
var DefaultRetryPolicy = RetryPolicy{MaxRetries: 3, Backoff: DefaultBackoff}

// RetryIsSafe reports whether sending req a second time cannot apply a change
// twice, which is when the client may retry it (docs/clients.md, §2). Reads
// are always safe. Writes are safe when the server recognises a repeat: a
// client-chosen id (session, fork, every message id, usage request_id), a
// target state that is the same on every attempt (touch, end, runtime state),
// or an etag that a first success would have made stale. Anything else
// (deletes, pops, clears, update-last, reconcile, purge, appends without ids)
// is never retried.
func RetryIsSafe(req proto.Message) bool {
	switch r := req.(type) {
	case *v1.GetSessionRequest, *v1.ListSessionsRequest, *v1.ListMessagesRequest,
		*v1.SearchMessagesRequest, *v1.GetStatsRequest, *v1.CostByModelRequest,
		*v1.TouchSessionRequest, *v1.EndSessionRequest, *v1.SetRuntimeStateRequest,
		*v1.GetSharedStateRequest, *v1.UpdateSharedStateRequest, *v1.DeleteMessagesRequest:
		return true
	case *v1.CreateSessionRequest:
		return r.GetSession().GetId() != ""
	case *v1.ForkSessionRequest:
		return r.GetNewSessionId() != ""
	case *v1.UpdateSessionRequest:
		return r.GetEtag() != ""
	case *v1.AppendMessagesRequest:
		if len(r.GetMessages()) == 0 {
			return false
		}
		for _, m := range r.GetMessages() {
			if m.GetId() == "" {
				return false
			}
		}
		return true
	case *v1.RecordUsageRequest:
		return r.GetRequestId() != ""
	case *v1.ReplaceMessagesRequest:
		for _, m := range r.GetMessages() {
			if m.GetId() == "" {
				return false
			}
		}
		return true
	}
	return false
}
