package sessiond

import (
	"testing"
	"time"

	v1 "github.com/sessiond/sessiond/client/go/sessiondv1"
	"google.golang.org/protobuf/proto"
)

func TestRetryIsSafeFollowsTheSpecTable(t *testing.T) {
	cases := []struct {
		name string
		req  proto.Message
		safe bool
	}{
		{"reads", &v1.ListMessagesRequest{}, true},
		{"end is the same on every attempt", &v1.EndSessionRequest{}, true},
		{"create with an id", &v1.CreateSessionRequest{Session: &v1.Session{Id: "s"}}, true},
		{"create without an id", &v1.CreateSessionRequest{Session: &v1.Session{}}, false},
		{"fork with a new id", &v1.ForkSessionRequest{NewSessionId: "n"}, true},
		{"fork without one", &v1.ForkSessionRequest{}, false},
		{"update with an etag", &v1.UpdateSessionRequest{Etag: "e"}, true},
		{"update without one", &v1.UpdateSessionRequest{}, false},
		{"append, every message with an id", &v1.AppendMessagesRequest{Messages: []*v1.Message{{Id: "1"}, {Id: "2"}}}, true},
		{"append, one message without an id", &v1.AppendMessagesRequest{Messages: []*v1.Message{{Id: "1"}, {}}}, false},
		{"append of nothing", &v1.AppendMessagesRequest{}, false},
		{"usage with a request id", &v1.RecordUsageRequest{RequestId: "r"}, true},
		{"usage without one", &v1.RecordUsageRequest{}, false},
		{"pop", &v1.PopMessageRequest{}, false},
		{"delete", &v1.DeleteSessionRequest{}, false},
		{"purge", &v1.PurgeSessionsRequest{}, false},
		{"watch is not a unary retry", &v1.WatchSessionsRequest{}, false},
	}
	for _, c := range cases {
		if got := RetryIsSafe(c.req); got != c.safe {
			t.Errorf("%s: RetryIsSafe = %v, want %v", c.name, got, c.safe)
		}
	}
}

func TestBackoffDoublesUpToItsMaximumAndJittersDownward(t *testing.T) {
	b := DefaultBackoff
	noJitter := func() float64 { return 0 }
	fullJitter := func() float64 { return 1 }
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}
	for attempt, delay := range want {
		if got := b.Delay(attempt, noJitter); got != delay {
			t.Errorf("delay(%d) = %v, want %v", attempt, got, delay)
		}
		if got := b.Delay(attempt, fullJitter); got != delay/2 {
			t.Errorf("delay(%d) with full jitter = %v, want %v", attempt, got, delay/2)
		}
	}
	if got := b.Delay(1_000_000, noJitter); got != b.Maximum {
		t.Errorf("a long outage waits %v, want the maximum %v", got, b.Maximum)
	}
}
