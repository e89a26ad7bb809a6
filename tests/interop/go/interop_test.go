// Package interop runs the interop scenario (../SCENARIO.md) with the Go
// client layer (github.com/sessiond/sessiond/client/go) against the server at
// $SESSIOND_ADDRESS and writes what it observed to $SESSIOND_INTEROP_OUT, for
// scripts/interop.sh to compare with the Python reference.
package interop

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	sessiond "github.com/sessiond/sessiond/client/go"
	v1 "github.com/sessiond/sessiond/client/go/sessiondv1"
	"google.golang.org/grpc/codes"
)

const (
	walkSessions          = 1000
	walkPageSize          = 128
	compactionPolls       = 300
	compactionPollEvery   = 200 * time.Millisecond
	watchStepTimeout      = 2 * time.Minute
	responseCreated       = v1.WatchResponseType_WATCH_RESPONSE_TYPE_CREATED
	responseEvents        = v1.WatchResponseType_WATCH_RESPONSE_TYPE_EVENTS
	responseInitial       = v1.WatchResponseType_WATCH_RESPONSE_TYPE_INITIAL
	responseInitialDone   = v1.WatchResponseType_WATCH_RESPONSE_TYPE_INITIAL_COMPLETE
	sessionStatusComplete = v1.SessionStatus_SESSION_STATUS_COMPLETED
)

type scenario struct {
	t             *testing.T
	client        *sessiond.Client
	address       string
	run           string
	labels        map[string]string
	out           io.Writer
	written       []int64 // revisions of this run's writes, in order
	firstRevision int64   // the revision of CreateSession a
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

// typedError is the scenario's view of a failed call: it must be a *sessiond.Error.
func (s *scenario) typedError(err error) (*sessiond.Error, obj) {
	var e *sessiond.Error
	if !errors.As(err, &e) {
		s.t.Fatalf("not a *sessiond.Error: %v", err)
	}
	out := obj{"code": codeName(e.Code), "reason": string(e.Reason)}
	if len(e.FieldViolations) > 0 {
		fields := []string{}
		for _, v := range e.FieldViolations {
			fields = append(fields, v.Field)
		}
		slices.Sort(fields)
		out["field_violations"] = fields
	}
	return e, out
}

// current is the running test, for must.
var current *testing.T

// must returns the result of a call that has to succeed.
func must[T any](value T, err error) T {
	current.Helper()
	if err != nil {
		current.Fatalf("call failed: %v", err)
	}
	return value
}

// watchStream reads a resuming watch one response at a time.
type watchStream struct {
	s      *scenario
	next   func() (*v1.WatchSessionsResponse, error, bool)
	stop   func()
	cancel context.CancelFunc
}

func (s *scenario) openWatch(req *v1.WatchSessionsRequest) *watchStream {
	ctx, cancel := context.WithTimeout(context.Background(), watchStepTimeout)
	next, stop := iter.Pull2(s.client.Watch(ctx, req))
	return &watchStream{s: s, next: next, stop: stop, cancel: cancel}
}

func (w *watchStream) recv() (*v1.WatchSessionsResponse, error) {
	response, err, ok := w.next()
	if !ok {
		w.s.t.Fatal("the watch ended without an error")
	}
	return response, err
}

func (w *watchStream) must() *v1.WatchSessionsResponse {
	response, err := w.recv()
	if err != nil {
		w.s.t.Fatalf("watch: %v", err)
	}
	return response
}

func (w *watchStream) close() { w.stop(); w.cancel() }

// eventLog collects the events a watch delivered, indexed by the writes they
// belong to, and checks their order.
type eventLog struct {
	s         *scenario
	written   *[]int64
	seen      []any
	revisions []int64
}

func (l *eventLog) take(r *v1.WatchSessionsResponse) {
	s := l.s
	if r.GetType() != responseEvents || r.GetFragment() {
		s.t.Fatalf("unexpected watch response %v", r)
	}
	for _, e := range r.GetEvents() {
		n := len(l.revisions)
		if n == 0 || l.revisions[n-1] != e.GetRevision() {
			if n > 0 && e.GetRevision() < l.revisions[n-1] {
				s.t.Fatalf("revision %d after %d", e.GetRevision(), l.revisions[n-1])
			}
			l.revisions = append(l.revisions, e.GetRevision())
		}
		index := slices.Index(*l.written, e.GetRevision())
		if index < 0 {
			s.t.Fatalf("event of revision %d that this step did not write (%v)", e.GetRevision(), *l.written)
		}
		l.seen = append(l.seen, []any{index, e.GetType().String(), s.short(e.GetSessionId()), len(e.GetMessages())})
	}
}

func (l *eventLog) last() int64 {
	if len(l.revisions) == 0 {
		return 0
	}
	return l.revisions[len(l.revisions)-1]
}

func TestInteropScenario(t *testing.T) {
	current = t
	address := os.Getenv("SESSIOND_ADDRESS")
	if address == "" {
		t.Skip("SESSIOND_ADDRESS is not set; run scripts/interop.sh")
	}
	out := io.Discard
	if path := os.Getenv("SESSIOND_INTEROP_OUT"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		out = f
	}
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		t.Fatal(err)
	}
	client, err := sessiond.New(address)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	run := "interop-go-" + hex.EncodeToString(suffix)
	s := &scenario{t: t, client: client, address: address, run: run,
		labels: map[string]string{"interop_run": run}, out: out}
	s.playCalls()
	s.playWatchRestart()
	s.playAppendUnavailable()
	s.playPageWalk()
	s.playCompacted()
	s.playRelist()
}

func (s *scenario) playCalls() {
	t, c, ctx := s.t, s.client, context.Background()
	a := s.run + "-a"

	created := must(c.CreateSession(ctx, &v1.CreateSessionRequest{Session: s.newSession("a")}))
	s.wrote(created.GetRevision())
	s.firstRevision = created.GetRevision()
	s.emit("create_session", obj{
		"created":           created.GetCreated(),
		"revision_positive": created.GetRevision() > 0,
		"session":           s.session(created.GetSession()),
	})

	watchFilter := &v1.WatchFilter{Labels: s.labels}
	first := s.openWatch(&v1.WatchSessionsRequest{StartRevision: created.GetRevision(), Filter: watchFilter})
	defer first.close()
	if r := first.must(); r.GetType() != responseCreated {
		t.Fatalf("first watch response: %v", r)
	}

	again := must(c.CreateSession(ctx, &v1.CreateSessionRequest{Session: s.newSession("a")}))
	s.emit("create_session_again", obj{"created": again.GetCreated(), "revision": again.GetRevision()})

	got := must(c.GetSession(ctx, &v1.GetSessionRequest{SessionId: a}))
	s.emit("get_session", obj{"session": s.session(got.GetSession())})

	appended := must(c.AppendMessages(ctx, &v1.AppendMessagesRequest{SessionId: a, Messages: []*v1.Message{
		{Id: "m1", Role: v1.Role_ROLE_USER, Content: "hello"},
		{Id: "m2", Role: v1.Role_ROLE_ASSISTANT, Content: "calling a tool",
			ToolCalls: []*v1.ToolCall{{Id: "call-1", Name: "search", ArgumentsJson: `{"q":"x"}`}}},
		{Id: "m3", Role: v1.Role_ROLE_TOOL, Content: "result", Name: "search", ToolCallId: "call-1"},
	}}))
	s.wrote(appended.GetRevision())
	appendRevision := appended.GetRevision()
	seqs, roles := []int64{}, []string{}
	for _, m := range appended.GetMessages() {
		seqs = append(seqs, m.GetSeq())
		roles = append(roles, m.GetRole().String())
	}
	s.emit("append_messages", obj{"seqs": seqs, "roles": roles, "session": s.session(appended.GetSession())})

	retry := must(c.AppendMessages(ctx, &v1.AppendMessagesRequest{SessionId: a, Messages: []*v1.Message{
		{Id: "m1", Role: v1.Role_ROLE_USER, Content: "hello"},
	}}))
	retrySeqs := []int64{}
	for _, m := range retry.GetMessages() {
		retrySeqs = append(retrySeqs, m.GetSeq())
	}
	s.emit("append_retry", obj{"seqs": retrySeqs, "revision": retry.GetRevision()})

	flags := []bool{}
	for _, suffix := range []string{"b", "c", "d", "e", "f"} {
		more := must(c.CreateSession(ctx, &v1.CreateSessionRequest{Session: s.newSession(suffix)}))
		s.wrote(more.GetRevision())
		flags = append(flags, more.GetCreated())
	}
	s.emit("create_more", obj{"created": flags})

	pages, totals := [][]string{}, []int64{}
	token := ""
	for {
		page := must(c.ListSessions(ctx, &v1.ListSessionsRequest{
			Filter:  &v1.SessionFilter{Labels: s.labels},
			OrderBy: v1.SessionOrderField_SESSION_ORDER_FIELD_STARTED_AT, Ascending: true,
			PageSize: 4, PageToken: token,
		}))
		ids := []string{}
		for _, x := range page.GetSessions() {
			ids = append(ids, s.short(x.GetId()))
		}
		pages = append(pages, ids)
		totals = append(totals, page.GetTotalSize())
		if token = page.GetNextPageToken(); token == "" {
			break
		}
		if len(pages) >= 10 {
			t.Fatal("pagination does not end")
		}
	}
	s.emit("list_sessions", obj{"pages": pages, "total_size": totals})

	usageRequest := &v1.RecordUsageRequest{
		SessionId: a, Model: "model-a", RequestId: "u1",
		Usage: &v1.Usage{PromptTokens: 100, CompletionTokens: 50, ReasoningTokens: 10,
			CacheReadTokens: 20, CacheWriteTokens: 5, CostMicros: 1234},
	}
	recorded := must(c.RecordUsage(ctx, usageRequest))
	s.wrote(recorded.GetRevision())
	s.emit("record_usage", obj{
		"duplicate":     recorded.GetDuplicate(),
		"session_usage": usage(recorded.GetSessionUsage()),
		"model_usage":   usage(recorded.GetModelUsage()),
	})
	duplicate := must(c.RecordUsage(ctx, usageRequest))
	s.emit("record_usage_retry", obj{
		"duplicate":     duplicate.GetDuplicate(),
		"same_revision": duplicate.GetRevision() == recorded.GetRevision(),
	})
	errored := must(c.RecordUsage(ctx, &v1.RecordUsageRequest{
		SessionId: a, Model: "model-b", RequestId: "u2", Errored: true,
		Usage: &v1.Usage{PromptTokens: 10, CostMicros: 7},
	}))
	s.wrote(errored.GetRevision())
	s.emit("record_usage_errored", obj{
		"duplicate":     errored.GetDuplicate(),
		"session_usage": usage(errored.GetSessionUsage()),
		"model_usage":   usage(errored.GetModelUsage()),
	})

	stats := must(c.GetStats(ctx, &v1.GetStatsRequest{Filter: &v1.SessionFilter{Labels: s.labels}})).GetStats()
	s.emit("get_stats", obj{
		"usage":               usage(stats.GetUsage()),
		"session_count":       stats.GetSessionCount(),
		"average_cost_micros": stats.GetAverageCostMicros(),
		"active_count":        stats.GetActiveCount(),
		"running_count":       stats.GetRunningCount(),
		"abandoned_count":     stats.GetAbandonedCount(),
		"completed_count":     stats.GetCompletedCount(),
		"failed_count":        stats.GetFailedCount(),
		"cancelled_count":     stats.GetCancelledCount(),
		"unknown_count":       stats.GetUnknownCount(),
		"message_count":       stats.GetMessageCount(),
		"success_rate":        stats.GetSuccessRate(),
	})

	_, err := c.GetSession(ctx, &v1.GetSessionRequest{SessionId: s.run + "-missing"})
	if err == nil {
		t.Fatal("GetSession of a missing session succeeded")
	}
	_, notFound := s.typedError(err)
	notFound["matched"] = errors.Is(err, sessiond.ReasonSessionNotFound)
	s.emit("error_not_found", notFound)

	_, err = c.ListSessions(ctx, &v1.ListSessionsRequest{PageSize: -1})
	if err == nil {
		t.Fatal("ListSessions with page_size -1 succeeded")
	}
	_, invalid := s.typedError(err)
	s.emit("error_invalid_argument", invalid)

	// A watch's deadline is its context's.
	idleCtx, cancelIdle := context.WithTimeout(ctx, 300*time.Millisecond)
	firstType := ""
	var idleErr error
	for r, err := range c.Watch(idleCtx, &v1.WatchSessionsRequest{
		Filter: &v1.WatchFilter{SessionIds: []string{s.run + "-idle"}},
	}) {
		if err != nil {
			idleErr = err
			break
		}
		if firstType == "" {
			firstType = r.GetType().String()
		}
	}
	cancelIdle()
	if idleErr == nil {
		t.Fatal("a watch with a deadline ended without an error")
	}
	idle, _ := s.typedError(idleErr)
	s.emit("deadline", obj{"first_response": firstType, "code": codeName(idle.Code)})

	// Watch: the first stream up to the append, closed, then a second one
	// from the last revision seen + 1.
	log := &eventLog{s: s, written: &s.written}
	for log.last() < appendRevision {
		log.take(first.must())
	}
	first.close()
	lastSeen := log.last()

	second := s.openWatch(&v1.WatchSessionsRequest{StartRevision: lastSeen + 1, Filter: watchFilter})
	defer second.close()
	if r := second.must(); r.GetType() != responseCreated {
		t.Fatalf("second watch first response: %v", r)
	}
	ended := must(c.EndSession(ctx, &v1.EndSessionRequest{
		SessionId: s.run + "-b", Status: sessionStatusComplete, Reason: "done",
	}))
	s.wrote(ended.GetRevision())
	for log.last() < s.written[len(s.written)-1] {
		log.take(second.must())
	}
	second.close()
	if !slices.Equal(log.revisions, s.written) {
		t.Fatalf("watch saw revisions %v, this run wrote %v", log.revisions, s.written)
	}
	s.emit("watch", obj{"resumed": lastSeen < s.written[len(s.written)-1], "events": log.seen})
}

func (s *scenario) playWatchRestart() {
	t, ctx := s.t, context.Background()
	a := s.run + "-a"
	watch := s.openWatch(&v1.WatchSessionsRequest{IncludeInitial: true, Filter: &v1.WatchFilter{Labels: s.labels}})
	defer watch.close()
	created := 0
	initial := [][]string{}
	for done := false; !done; {
		r := watch.must()
		switch r.GetType() {
		case responseCreated:
			created++
		case responseInitial:
			for _, e := range r.GetEvents() {
				initial = append(initial, []string{s.short(e.GetSessionId()), e.GetSession().GetStatus().String()})
			}
		case responseInitialDone:
			done = true
		}
	}
	slices.SortFunc(initial, func(x, y []string) int { return slices.Compare(x, y) })

	written := []int64{}
	log := &eventLog{s: s, written: &written}
	readUntil := func(revision int64) {
		for log.last() < revision {
			r := watch.must()
			if r.GetType() == responseCreated {
				created++
				continue
			}
			log.take(r)
		}
	}

	running := must(s.client.SetRuntimeState(ctx, &v1.SetRuntimeStateRequest{
		SessionId: a, State: v1.RuntimeState_RUNTIME_STATE_RUNNING}))
	written = append(written, running.GetRevision())
	readUntil(running.GetRevision())

	restart := exec.Command(os.Getenv("SESSIOND_INTEROP_RESTART"))
	restart.Stdout, restart.Stderr = os.Stderr, os.Stderr
	if err := restart.Run(); err != nil {
		t.Fatalf("restarting the server: %v", err)
	}

	writer, err := sessiond.New(s.address)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close()
	idle := must(writer.SetRuntimeState(ctx, &v1.SetRuntimeStateRequest{
		SessionId: a, State: v1.RuntimeState_RUNTIME_STATE_IDLE}))
	written = append(written, idle.GetRevision())
	appended := must(writer.AppendMessages(ctx, &v1.AppendMessagesRequest{SessionId: a, Messages: []*v1.Message{
		{Id: "m4", Role: v1.Role_ROLE_USER, Content: "after restart"},
	}}))
	written = append(written, appended.GetRevision())
	ended := must(writer.EndSession(ctx, &v1.EndSessionRequest{SessionId: s.run + "-c", Status: sessionStatusComplete}))
	written = append(written, ended.GetRevision())
	readUntil(ended.GetRevision())
	watch.close()

	if created != 1 {
		t.Fatalf("CREATED delivered %d times", created)
	}
	if !slices.Equal(log.revisions, written) {
		t.Fatalf("watch delivered %v, wrote %v", log.revisions, written)
	}
	s.emit("watch_restart", obj{"initial": initial, "events": log.seen})
}

func (s *scenario) playAppendUnavailable() {
	ctx := context.Background()
	a := s.run + "-a"
	lossy, err := sessiond.New(os.Getenv("SESSIOND_INTEROP_PROXY"))
	if err != nil {
		s.t.Fatal(err)
	}
	defer lossy.Close()
	appended := must(lossy.AppendMessages(ctx, &v1.AppendMessagesRequest{SessionId: a, Messages: []*v1.Message{
		{Id: "m5", Role: v1.Role_ROLE_USER, Content: "once"},
		{Id: "m6", Role: v1.Role_ROLE_ASSISTANT, Content: "stored once"},
	}}))
	seqs := []int64{}
	for _, m := range appended.GetMessages() {
		seqs = append(seqs, m.GetSeq())
	}
	listed := must(s.client.ListMessages(ctx, &v1.ListMessagesRequest{SessionId: a, LastN: 10})).GetMessages()
	stored := []int{0, 0}
	for _, m := range listed {
		switch m.GetId() {
		case "m5":
			stored[0]++
		case "m6":
			stored[1]++
		}
	}
	count := must(s.client.GetSession(ctx, &v1.GetSessionRequest{SessionId: a})).GetSession().GetMessageCount()
	s.emit("append_unavailable", obj{
		"seqs": seqs, "revision": appended.GetRevision(), "stored": stored, "message_count": count,
	})
}

func (s *scenario) playPageWalk() {
	ctx := context.Background()
	labels := map[string]string{"interop_walk": s.run}
	ids := make([]string, walkSessions)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-w%04d", s.run, i)
		must(s.client.CreateSession(ctx, &v1.CreateSessionRequest{Session: &v1.Session{
			Id: ids[i], Kind: v1.SessionKind_SESSION_KIND_AUTONOMOUS, Channel: "walk",
			Agent: "interop-agent", Labels: labels,
		}}))
	}
	walked := []string{}
	unique := map[string]bool{}
	for x, err := range s.client.Sessions(ctx, &v1.ListSessionsRequest{
		Filter:  &v1.SessionFilter{Labels: labels},
		OrderBy: v1.SessionOrderField_SESSION_ORDER_FIELD_STARTED_AT, Ascending: true, PageSize: walkPageSize,
	}) {
		if err != nil {
			s.t.Fatalf("page walk: %v", err)
		}
		walked = append(walked, x.GetId())
		unique[x.GetId()] = true
	}
	s.emit("page_walk", obj{"count": len(walked), "unique": len(unique), "in_order": slices.Equal(walked, ids)})
}

func (s *scenario) playCompacted() {
	filter := &v1.WatchFilter{Labels: s.labels}
	for range compactionPolls {
		watch := s.openWatch(&v1.WatchSessionsRequest{StartRevision: s.firstRevision, Filter: filter})
		first := watch.must()
		if first.GetCompactedRevision() < s.firstRevision {
			watch.close() // the compactor has not run yet
			time.Sleep(compactionPollEvery)
			continue
		}
		r, err := watch.recv()
		watch.close()
		if err == nil {
			s.t.Fatalf("a compacted watch delivered %v", r)
		}
		e, _ := s.typedError(err)
		s.emit("compacted", obj{
			"first_response":              first.GetType().String(),
			"code":                        codeName(e.Code),
			"reason":                      string(e.Reason),
			"relist":                      errors.Is(err, sessiond.ErrRelistRequired),
			"compacted_at_or_after_start": e.CompactedRevision() >= s.firstRevision,
		})
		return
	}
	s.t.Fatal("the change log was never compacted past the first revision")
}

func (s *scenario) playRelist() {
	ctx := context.Background()
	listed := must(s.client.ListSessions(ctx, &v1.ListSessionsRequest{Filter: &v1.SessionFilter{Labels: s.labels}}))
	sessions := [][]string{}
	for _, x := range listed.GetSessions() {
		sessions = append(sessions, []string{s.short(x.GetId()), x.GetStatus().String()})
	}
	slices.SortFunc(sessions, func(x, y []string) int { return slices.Compare(x, y) })
	watch := s.openWatch(&v1.WatchSessionsRequest{StartRevision: listed.GetRevision() + 1, Filter: &v1.WatchFilter{Labels: s.labels}})
	defer watch.close()
	if r := watch.must(); r.GetType() != responseCreated {
		s.t.Fatalf("relist watch first response: %v", r)
	}
	ended := must(s.client.EndSession(ctx, &v1.EndSessionRequest{SessionId: s.run + "-d", Status: sessionStatusComplete}))
	events := [][]string{}
	for {
		r := watch.must()
		for _, e := range r.GetEvents() {
			events = append(events, []string{e.GetType().String(), s.short(e.GetSessionId())})
		}
		if r.GetRevision() >= ended.GetRevision() {
			break
		}
	}
	s.emit("relist", obj{"sessions": sessions, "events": events})
}
