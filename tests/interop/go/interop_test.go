// Package interop runs the interop scenario (../SCENARIO.md) with the
// generated Go client against the server at $SESSIOND_ADDRESS and writes what
// it observed to $SESSIOND_INTEROP_OUT, for scripts/interop.sh to compare
// with the Python reference.
package interop

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	v1 "github.com/sessiond/sessiond/client/go/sessiondv1"
)

const callTimeout = 10 * time.Second

type scenario struct {
	t        *testing.T
	sessions v1.SessionServiceClient
	messages v1.MessageServiceClient
	stats    v1.StatsServiceClient
	run      string
	labels   map[string]string
	out      io.Writer
	written  []int64 // revisions of this run's writes, in order
}

type obj = map[string]any

func (s *scenario) emit(step string, fields obj) {
	fields["step"] = step
	line, err := json.Marshal(fields) // map keys are sorted
	if err != nil {
		s.t.Fatal(err)
	}
	fmt.Println(string(line))
	fmt.Fprintln(s.out, string(line))
}

func (s *scenario) short(id string) string {
	if !strings.HasPrefix(id, s.run+"-") {
		s.t.Fatalf("session %q is not of this run", id)
	}
	return strings.TrimPrefix(id, s.run+"-")
}

func (s *scenario) wrote(revision int64) {
	if revision <= 0 {
		s.t.Fatalf("a write that changed something has a revision, got %d", revision)
	}
	s.written = append(s.written, revision)
}

func usage(u *v1.Usage) obj {
	return obj{
		"prompt_tokens":      u.GetPromptTokens(),
		"completion_tokens":  u.GetCompletionTokens(),
		"reasoning_tokens":   u.GetReasoningTokens(),
		"cache_read_tokens":  u.GetCacheReadTokens(),
		"cache_write_tokens": u.GetCacheWriteTokens(),
		"cost_micros":        u.GetCostMicros(),
		"request_count":      u.GetRequestCount(),
		"error_count":        u.GetErrorCount(),
		"total_tokens":       u.GetTotalTokens(),
	}
}

func (s *scenario) session(x *v1.Session) obj {
	return obj{
		"id":              s.short(x.GetId()),
		"tenant":          x.GetTenant(),
		"kind":            x.GetKind().String(),
		"channel":         x.GetChannel(),
		"agent":           x.GetAgent(),
		"model":           x.GetModel(),
		"display_name":    x.GetDisplayName(),
		"status":          x.GetStatus().String(),
		"runtime_state":   x.GetRuntimeState().String(),
		"message_count":   x.GetMessageCount(),
		"turn_count":      x.GetTurnCount(),
		"tool_call_count": x.GetToolCallCount(),
		"last_seq":        x.GetLastSeq(),
		"usage":           usage(x.GetUsage()),
		"has_started_at":  x.GetStartedAt() != nil,
		"has_etag":        x.GetEtag() != "",
	}
}

func (s *scenario) newSession(suffix string) *v1.Session {
	if suffix == "a" {
		return &v1.Session{
			Id: s.run + "-a", Kind: v1.SessionKind_SESSION_KIND_INTERACTIVE, Channel: "cli",
			Agent: "interop-agent", Model: "model-a", DisplayName: "A", Labels: s.labels,
		}
	}
	return &v1.Session{
		Id: s.run + "-" + suffix, Kind: v1.SessionKind_SESSION_KIND_AUTONOMOUS,
		Channel: "discord.interop", Agent: "interop-agent", Model: "model-b",
		DisplayName: strings.ToUpper(suffix), Goal: "prove interop", Labels: s.labels,
	}
}

// rpcError reads the code and the google.rpc.Status details of a failed call.
func (s *scenario) rpcError(err error) obj {
	st, ok := status.FromError(err)
	if !ok {
		s.t.Fatalf("not a gRPC status: %v", err)
	}
	out := obj{"code": codeName(st.Code())}
	found := false
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			found = true
			out["domain"] = d.GetDomain()
			out["reason"] = d.GetReason()
		case *errdetails.BadRequest:
			fields := []string{}
			for _, v := range d.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
			slices.Sort(fields)
			out["field_violations"] = fields
		}
	}
	if !found {
		s.t.Fatalf("no ErrorInfo in the status details of %v", err)
	}
	return out
}

// codeName spells a code as in the gRPC spec (NOT_FOUND), like Python's.
func codeName(c codes.Code) string {
	names := map[codes.Code]string{
		codes.NotFound: "NOT_FOUND", codes.InvalidArgument: "INVALID_ARGUMENT",
		codes.DeadlineExceeded: "DEADLINE_EXCEEDED", codes.FailedPrecondition: "FAILED_PRECONDITION",
		codes.AlreadyExists: "ALREADY_EXISTS", codes.Aborted: "ABORTED", codes.Canceled: "CANCELLED",
	}
	if n, ok := names[c]; ok {
		return n
	}
	return c.String()
}

func call[T any](s *scenario, f func(ctx context.Context) (T, error)) T {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	r, err := f(ctx)
	if err != nil {
		s.t.Fatalf("call failed: %v", err)
	}
	return r
}

// watchLog collects the events of this run's watches and checks order.
type watchLog struct {
	s         *scenario
	seen      []any
	revisions []int64
}

func (w *watchLog) take(r *v1.WatchSessionsResponse) {
	s := w.s
	if r.GetType() != v1.WatchResponseType_WATCH_RESPONSE_TYPE_EVENTS {
		s.t.Fatalf("unexpected watch response %v", r)
	}
	for _, e := range r.GetEvents() {
		n := len(w.revisions)
		if n == 0 || w.revisions[n-1] != e.GetRevision() {
			if n > 0 && e.GetRevision() < w.revisions[n-1] {
				s.t.Fatalf("revision %d after %d", e.GetRevision(), w.revisions[n-1])
			}
			w.revisions = append(w.revisions, e.GetRevision())
		}
		index := slices.Index(s.written, e.GetRevision())
		if index < 0 {
			s.t.Fatalf("event of revision %d that this run did not write (%v)", e.GetRevision(), s.written)
		}
		w.seen = append(w.seen, []any{index, e.GetType().String(), s.short(e.GetSessionId()), len(e.GetMessages())})
	}
}

func (w *watchLog) last() int64 { return w.revisions[len(w.revisions)-1] }

func TestInteropScenario(t *testing.T) {
	address := os.Getenv("SESSIOND_ADDRESS")
	if address == "" {
		t.Skip("SESSIOND_ADDRESS is not set: scripts/interop.sh starts a server and sets it")
	}
	conn, err := grpc.NewClient(address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	out := io.Discard
	if path := os.Getenv("SESSIOND_INTEROP_OUT"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		out = f
	}
	random := make([]byte, 4)
	_, _ = rand.Read(random)
	run := "interop-go-" + hex.EncodeToString(random)
	s := &scenario{
		t: t, sessions: v1.NewSessionServiceClient(conn), messages: v1.NewMessageServiceClient(conn),
		stats: v1.NewStatsServiceClient(conn), run: run, labels: map[string]string{"interop_run": run}, out: out,
	}
	s.play()
}

func (s *scenario) play() {
	t := s.t
	a := s.run + "-a"

	created := call(s, func(ctx context.Context) (*v1.CreateSessionResponse, error) {
		return s.sessions.CreateSession(ctx, &v1.CreateSessionRequest{Session: s.newSession("a")})
	})
	s.wrote(created.GetRevision())
	s.emit("create_session", obj{
		"created": created.GetCreated(), "revision_positive": created.GetRevision() > 0,
		"session": s.session(created.GetSession()),
	})

	watchFilter := &v1.WatchFilter{Labels: s.labels}
	firstCtx, cancelFirst := context.WithTimeout(context.Background(), time.Minute)
	defer cancelFirst()
	firstWatch, err := s.sessions.WatchSessions(firstCtx, &v1.WatchSessionsRequest{
		StartRevision: created.GetRevision(), Filter: watchFilter,
	})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := firstWatch.Recv(); err != nil || r.GetType() != v1.WatchResponseType_WATCH_RESPONSE_TYPE_CREATED {
		t.Fatalf("first watch response: %v, %v", r, err)
	}

	again := call(s, func(ctx context.Context) (*v1.CreateSessionResponse, error) {
		return s.sessions.CreateSession(ctx, &v1.CreateSessionRequest{Session: s.newSession("a")})
	})
	s.emit("create_session_again", obj{"created": again.GetCreated(), "revision": again.GetRevision()})

	got := call(s, func(ctx context.Context) (*v1.GetSessionResponse, error) {
		return s.sessions.GetSession(ctx, &v1.GetSessionRequest{SessionId: a})
	})
	s.emit("get_session", obj{"session": s.session(got.GetSession())})

	appended := call(s, func(ctx context.Context) (*v1.AppendMessagesResponse, error) {
		return s.messages.AppendMessages(ctx, &v1.AppendMessagesRequest{SessionId: a, Messages: []*v1.Message{
			{Id: "m1", Role: v1.Role_ROLE_USER, Content: "hello"},
			{Id: "m2", Role: v1.Role_ROLE_ASSISTANT, Content: "calling a tool", ToolCalls: []*v1.ToolCall{
				{Id: "call-1", Name: "search", ArgumentsJson: `{"q":"x"}`},
			}},
			{Id: "m3", Role: v1.Role_ROLE_TOOL, Content: "result", Name: "search", ToolCallId: "call-1"},
		}})
	})
	s.wrote(appended.GetRevision())
	appendRevision := appended.GetRevision()
	seqs := []int64{}
	roles := []string{}
	for _, m := range appended.GetMessages() {
		seqs = append(seqs, m.GetSeq())
		roles = append(roles, m.GetRole().String())
	}
	s.emit("append_messages", obj{"seqs": seqs, "roles": roles, "session": s.session(appended.GetSession())})

	retry := call(s, func(ctx context.Context) (*v1.AppendMessagesResponse, error) {
		return s.messages.AppendMessages(ctx, &v1.AppendMessagesRequest{SessionId: a, Messages: []*v1.Message{
			{Id: "m1", Role: v1.Role_ROLE_USER, Content: "hello"},
		}})
	})
	retrySeqs := []int64{}
	for _, m := range retry.GetMessages() {
		retrySeqs = append(retrySeqs, m.GetSeq())
	}
	s.emit("append_retry", obj{"seqs": retrySeqs, "revision": retry.GetRevision()})

	flags := []bool{}
	for _, suffix := range []string{"b", "c", "d", "e", "f"} {
		more := call(s, func(ctx context.Context) (*v1.CreateSessionResponse, error) {
			return s.sessions.CreateSession(ctx, &v1.CreateSessionRequest{Session: s.newSession(suffix)})
		})
		s.wrote(more.GetRevision())
		flags = append(flags, more.GetCreated())
	}
	s.emit("create_more", obj{"created": flags})

	pages := [][]string{}
	totals := []int64{}
	token := ""
	for {
		page := call(s, func(ctx context.Context) (*v1.ListSessionsResponse, error) {
			return s.sessions.ListSessions(ctx, &v1.ListSessionsRequest{
				Filter:  &v1.SessionFilter{Labels: s.labels},
				OrderBy: v1.SessionOrderField_SESSION_ORDER_FIELD_STARTED_AT, Ascending: true,
				PageSize: 4, PageToken: token,
			})
		})
		ids := []string{}
		for _, x := range page.GetSessions() {
			ids = append(ids, s.short(x.GetId()))
		}
		pages = append(pages, ids)
		totals = append(totals, page.GetTotalSize())
		token = page.GetNextPageToken()
		if token == "" {
			break
		}
		if len(pages) >= 10 {
			t.Fatal("pagination does not end")
		}
	}
	s.emit("list_sessions", obj{"pages": pages, "total_size": totals})

	usageRequest := &v1.RecordUsageRequest{
		SessionId: a, Model: "model-a", RequestId: "u1",
		Usage: &v1.Usage{
			PromptTokens: 100, CompletionTokens: 50, ReasoningTokens: 10,
			CacheReadTokens: 20, CacheWriteTokens: 5, CostMicros: 1234,
		},
	}
	recorded := call(s, func(ctx context.Context) (*v1.RecordUsageResponse, error) {
		return s.stats.RecordUsage(ctx, usageRequest)
	})
	s.wrote(recorded.GetRevision())
	s.emit("record_usage", obj{
		"duplicate": recorded.GetDuplicate(), "session_usage": usage(recorded.GetSessionUsage()),
		"model_usage": usage(recorded.GetModelUsage()),
	})
	duplicate := call(s, func(ctx context.Context) (*v1.RecordUsageResponse, error) {
		return s.stats.RecordUsage(ctx, usageRequest)
	})
	s.emit("record_usage_retry", obj{
		"duplicate": duplicate.GetDuplicate(), "same_revision": duplicate.GetRevision() == recorded.GetRevision(),
	})
	errored := call(s, func(ctx context.Context) (*v1.RecordUsageResponse, error) {
		return s.stats.RecordUsage(ctx, &v1.RecordUsageRequest{
			SessionId: a, Model: "model-b", RequestId: "u2", Errored: true,
			Usage: &v1.Usage{PromptTokens: 10, CostMicros: 7},
		})
	})
	s.wrote(errored.GetRevision())
	s.emit("record_usage_errored", obj{
		"duplicate": errored.GetDuplicate(), "session_usage": usage(errored.GetSessionUsage()),
		"model_usage": usage(errored.GetModelUsage()),
	})

	stats := call(s, func(ctx context.Context) (*v1.GetStatsResponse, error) {
		return s.stats.GetStats(ctx, &v1.GetStatsRequest{Filter: &v1.SessionFilter{Labels: s.labels}})
	}).GetStats()
	s.emit("get_stats", obj{
		"usage": usage(stats.GetUsage()), "session_count": stats.GetSessionCount(),
		"average_cost_micros": stats.GetAverageCostMicros(), "active_count": stats.GetActiveCount(),
		"running_count": stats.GetRunningCount(), "abandoned_count": stats.GetAbandonedCount(),
		"completed_count": stats.GetCompletedCount(), "failed_count": stats.GetFailedCount(),
		"cancelled_count": stats.GetCancelledCount(), "unknown_count": stats.GetUnknownCount(),
		"message_count": stats.GetMessageCount(), "success_rate": stats.GetSuccessRate(),
	})

	{
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		_, err := s.sessions.GetSession(ctx, &v1.GetSessionRequest{SessionId: s.run + "-missing"})
		cancel()
		if err == nil {
			t.Fatal("GetSession of a missing session succeeded")
		}
		s.emit("error_not_found", s.rpcError(err))
	}
	{
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		_, err := s.sessions.ListSessions(ctx, &v1.ListSessionsRequest{PageSize: -1})
		cancel()
		if err == nil {
			t.Fatal("ListSessions with page_size -1 succeeded")
		}
		s.emit("error_invalid_argument", s.rpcError(err))
	}
	{
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		idle, err := s.sessions.WatchSessions(ctx, &v1.WatchSessionsRequest{
			Filter: &v1.WatchFilter{SessionIds: []string{s.run + "-idle"}},
		})
		firstType := ""
		for err == nil {
			var r *v1.WatchSessionsResponse
			r, err = idle.Recv()
			if err == nil && firstType == "" {
				firstType = r.GetType().String()
			}
		}
		cancel()
		if errors.Is(err, io.EOF) {
			t.Fatal("a watch with a deadline ended without an error")
		}
		s.emit("deadline", obj{"first_response": firstType, "code": codeName(status.Code(err))})
	}

	// Watch: the first stream up to the append, cancelled, then resumed.
	w := &watchLog{s: s}
	for len(w.revisions) == 0 || w.last() < appendRevision {
		r, err := firstWatch.Recv()
		if err != nil {
			t.Fatalf("first watch: %v", err)
		}
		w.take(r)
	}
	cancelFirst()
	lastSeen := w.last()

	secondCtx, cancelSecond := context.WithTimeout(context.Background(), time.Minute)
	defer cancelSecond()
	secondWatch, err := s.sessions.WatchSessions(secondCtx, &v1.WatchSessionsRequest{
		StartRevision: lastSeen + 1, Filter: watchFilter,
	})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := secondWatch.Recv(); err != nil || r.GetType() != v1.WatchResponseType_WATCH_RESPONSE_TYPE_CREATED {
		t.Fatalf("second watch first response: %v, %v", r, err)
	}
	ended := call(s, func(ctx context.Context) (*v1.EndSessionResponse, error) {
		return s.sessions.EndSession(ctx, &v1.EndSessionRequest{
			SessionId: s.run + "-b", Status: v1.SessionStatus_SESSION_STATUS_COMPLETED, Reason: "done",
		})
	})
	s.wrote(ended.GetRevision())
	for w.last() < s.written[len(s.written)-1] {
		r, err := secondWatch.Recv()
		if err != nil {
			t.Fatalf("second watch: %v", err)
		}
		w.take(r)
	}
	cancelSecond()
	if !slices.Equal(w.revisions, s.written) {
		t.Fatalf("watch saw revisions %v, this run wrote %v", w.revisions, s.written)
	}
	s.emit("watch", obj{"resumed": lastSeen < s.written[len(s.written)-1], "events": w.seen})
}
