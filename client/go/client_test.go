package sessiond

// These tests run the client over a real gRPC channel against an in-process
// server whose answers each test scripts: the failures they need (a response
// lost, a stream broken between the fragments of a revision) cannot be made
// to happen on demand in the real server. The interop suite
// (tests/interop/go) runs the same client against the real server.

import (
	"context"
	"errors"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/sessiond/sessiond/client/go/sessiondv1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
)

// scriptedServer answers AppendMessages, GetSession and WatchSessions as the
// test says, and records what it was sent.
type scriptedServer struct {
	v1.UnimplementedSessionServiceServer
	v1.UnimplementedMessageServiceServer

	mu             sync.Mutex
	appendFailures int // AppendMessages answers UNAVAILABLE this many times first
	appends        int
	authorization  []string
	getError       error
	listTokens     []string // the page_token of each ListSessions call
	watchScripts   []func(v1.SessionService_WatchSessionsServer) error
	watchRequests  []*v1.WatchSessionsRequest
}

func (s *scriptedServer) AppendMessages(ctx context.Context, req *v1.AppendMessagesRequest) (*v1.AppendMessagesResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.appends++
	if s.appends <= s.appendFailures {
		return nil, status.Error(codes.Unavailable, "connection lost")
	}
	return &v1.AppendMessagesResponse{Messages: req.GetMessages()}, nil
}

func (s *scriptedServer) GetSession(ctx context.Context, req *v1.GetSessionRequest) (*v1.GetSessionResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	s.mu.Lock()
	s.authorization = append(s.authorization, md.Get("authorization")...)
	s.mu.Unlock()
	return nil, s.getError
}

// ListSessions serves three pages of two sessions: p1, p2, then the last.
func (s *scriptedServer) ListSessions(ctx context.Context, req *v1.ListSessionsRequest) (*v1.ListSessionsResponse, error) {
	s.mu.Lock()
	s.listTokens = append(s.listTokens, req.GetPageToken())
	s.mu.Unlock()
	next := map[string]string{"": "p1", "p1": "p2", "p2": ""}[req.GetPageToken()]
	page := &v1.ListSessionsResponse{NextPageToken: next}
	for i := range 2 {
		page.Sessions = append(page.Sessions, &v1.Session{Id: req.GetPageToken() + "/" + strconv.Itoa(i)})
	}
	return page, nil
}

func (s *scriptedServer) WatchSessions(req *v1.WatchSessionsRequest, stream v1.SessionService_WatchSessionsServer) error {
	s.mu.Lock()
	s.watchRequests = append(s.watchRequests, req)
	if len(s.watchScripts) == 0 {
		s.mu.Unlock()
		<-stream.Context().Done()
		return stream.Context().Err()
	}
	script := s.watchScripts[0]
	s.watchScripts = s.watchScripts[1:]
	s.mu.Unlock()
	return script(stream)
}

// start serves s on a loopback port and returns a client of it whose retry
// and reconnection waits are recorded instead of slept.
func start(t *testing.T, s *scriptedServer, options ...Option) (*Client, *[]time.Duration) {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer()
	v1.RegisterSessionServiceServer(server, s)
	v1.RegisterMessageServiceServer(server, s)
	go func() { _ = server.Serve(listener) }()
	t.Cleanup(server.Stop)
	waits := &[]time.Duration{}
	recordWaits := func(st *settings) {
		st.random = func() float64 { return 0 }
		st.sleep = func(_ context.Context, d time.Duration) error { *waits = append(*waits, d); return nil }
	}
	client, err := New(listener.Addr().String(), append(options, recordWaits)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client, waits
}

func richError(code codes.Code, reason Reason, metadata map[string]string, fields ...string) error {
	st := status.New(code, "scripted failure")
	details := []protoadapt.MessageV1{protoadapt.MessageV1Of(
		&errdetails.ErrorInfo{Reason: string(reason), Domain: ErrorDomain, Metadata: metadata})}
	if len(fields) > 0 {
		bad := &errdetails.BadRequest{}
		for _, f := range fields {
			bad.FieldViolations = append(bad.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: f, Description: "bad"})
		}
		details = append(details, protoadapt.MessageV1Of(bad))
	}
	withDetails, err := st.WithDetails(details...)
	if err != nil {
		panic(err)
	}
	return withDetails.Err()
}

func TestAnAppendWithEveryMessageIDIsRetriedAfterUnavailable(t *testing.T) {
	server := &scriptedServer{appendFailures: 1}
	client, waits := start(t, server)
	resp, err := client.AppendMessages(context.Background(), &v1.AppendMessagesRequest{
		SessionId: "s", Messages: []*v1.Message{{Id: "m1", Content: "hi"}},
	})
	if err != nil || len(resp.GetMessages()) != 1 {
		t.Fatalf("append = %v, %v; want the retry's success", resp, err)
	}
	if server.appends != 2 || !slices.Equal(*waits, []time.Duration{100 * time.Millisecond}) {
		t.Fatalf("%d attempts after waits %v; want 2 after [100ms]", server.appends, *waits)
	}
}

func TestAnAppendWithoutIDsIsNeverRetried(t *testing.T) {
	server := &scriptedServer{appendFailures: 1}
	client, _ := start(t, server)
	_, err := client.AppendMessages(context.Background(), &v1.AppendMessagesRequest{
		SessionId: "s", Messages: []*v1.Message{{Content: "hi"}},
	})
	if status.Code(err) != codes.Unavailable || server.appends != 1 {
		t.Fatalf("append = %v after %d attempts; want UNAVAILABLE after 1", err, server.appends)
	}
}

func TestRetriesStopAfterMaxRetries(t *testing.T) {
	server := &scriptedServer{appendFailures: 100}
	client, waits := start(t, server)
	_, err := client.AppendMessages(context.Background(), &v1.AppendMessagesRequest{
		SessionId: "s", Messages: []*v1.Message{{Id: "m1"}},
	})
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}
	if status.Code(err) != codes.Unavailable || server.appends != 4 || !slices.Equal(*waits, want) {
		t.Fatalf("append = %v after %d attempts, waits %v; want UNAVAILABLE after 4, waits %v", err, server.appends, *waits, want)
	}
}

func TestErrorsMatchTheirReasonAndCarryFieldViolations(t *testing.T) {
	server := &scriptedServer{getError: richError(codes.InvalidArgument, ReasonBadRequest, nil, "session_id", "filter.labels")}
	client, _ := start(t, server, WithAPIKey("k1"))
	_, err := client.GetSession(context.Background(), &v1.GetSessionRequest{})
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %T is not an *Error", err)
	}
	if !errors.Is(err, ReasonBadRequest) || errors.Is(err, ReasonSessionNotFound) || errors.Is(err, ErrRelistRequired) {
		t.Fatalf("errors.Is does not match the reason alone: %v", err)
	}
	want := []FieldViolation{{"session_id", "bad"}, {"filter.labels", "bad"}}
	if e.Code != codes.InvalidArgument || e.Domain != ErrorDomain || !slices.Equal(e.FieldViolations, want) {
		t.Fatalf("error = %+v", e)
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("status.Code = %v", status.Code(err))
	}
	if !slices.Equal(server.authorization, []string{"Bearer k1"}) {
		t.Fatalf("authorization metadata = %v", server.authorization)
	}
}

func TestSessionsWalksEveryPageAndAnEarlyStopAsksForNoMore(t *testing.T) {
	server := &scriptedServer{}
	client, _ := start(t, server)
	ids := []string{}
	for session, err := range client.Sessions(context.Background(), &v1.ListSessionsRequest{PageSize: 2}) {
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, session.GetId())
	}
	if want := []string{"/0", "/1", "p1/0", "p1/1", "p2/0", "p2/1"}; !slices.Equal(ids, want) {
		t.Fatalf("walked %v, want %v", ids, want)
	}
	server.listTokens = nil
	for session := range client.Sessions(context.Background(), nil) {
		if session.GetId() == "p1/0" {
			break
		}
	}
	if !slices.Equal(server.listTokens, []string{"", "p1"}) {
		t.Fatalf("an early stop still asked for pages %v", server.listTokens)
	}
}

func events(revision int64, sessions ...string) []*v1.SessionEvent {
	out := []*v1.SessionEvent{}
	for _, id := range sessions {
		out = append(out, &v1.SessionEvent{Revision: revision, SessionId: id})
	}
	return out
}

func send(stream v1.SessionService_WatchSessionsServer, responses ...*v1.WatchSessionsResponse) error {
	for _, r := range responses {
		if err := stream.Send(r); err != nil {
			return err
		}
	}
	return nil
}

func created(revision int64) *v1.WatchSessionsResponse {
	return &v1.WatchSessionsResponse{Type: responseCreated, Revision: revision}
}

func part(revision int64, last bool, sessions ...string) *v1.WatchSessionsResponse {
	return &v1.WatchSessionsResponse{Type: responseEvents, Revision: revision, Events: events(revision, sessions...), Fragment: !last}
}

// collect reads the watch until it ends and says what was delivered, as
// "type:revision:sessions", and the error it ended with.
func collect(t *testing.T, client *Client, req *v1.WatchSessionsRequest) ([]string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	got := []string{}
	for r, err := range client.Watch(ctx, req) {
		if err != nil {
			return got, err
		}
		line := strings.TrimPrefix(r.GetType().String(), "WATCH_RESPONSE_TYPE_") + ":" + strconv.FormatInt(r.GetRevision(), 10) + ":"
		for _, e := range r.GetEvents() {
			line += e.GetSessionId()
		}
		if r.GetFragment() {
			line += ":fragment"
		}
		got = append(got, line)
	}
	t.Fatal("the watch ended without an error")
	return nil, nil
}

func TestWatchJoinsFragmentsAndResumesABrokenRevisionFromItsFirstPart(t *testing.T) {
	server := &scriptedServer{watchScripts: []func(v1.SessionService_WatchSessionsServer) error{
		func(s v1.SessionService_WatchSessionsServer) error {
			if err := send(s, created(10), part(11, true, "a"), part(12, false, "x")); err != nil {
				return err
			}
			return status.Error(codes.Unavailable, "server restarting") // between the parts of 12
		},
		func(s v1.SessionService_WatchSessionsServer) error {
			// 11 is sent again by a careless server: it must not be delivered twice.
			return send(s, created(12), part(11, true, "a"), part(12, false, "x"), part(12, false, "y"),
				part(12, true, "z"), &v1.WatchSessionsResponse{Type: responseProgress, Revision: 13})
			// The stream ends without an error: the watch reconnects.
		},
		func(s v1.SessionService_WatchSessionsServer) error {
			return richError(codes.FailedPrecondition, ReasonRevisionCompacted, map[string]string{"compacted_revision": "20"})
		},
	}}
	client, waits := start(t, server)
	got, err := collect(t, client, &v1.WatchSessionsRequest{})
	want := []string{"CREATED:10:", "EVENTS:11:a", "EVENTS:12:xyz", "PROGRESS:13:"}
	if !slices.Equal(got, want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
	var e *Error
	if !errors.Is(err, ErrRelistRequired) || !errors.As(err, &e) || e.CompactedRevision() != 20 {
		t.Fatalf("the watch ended with %v, want relist required at 20", err)
	}
	starts := []int64{}
	for _, r := range server.watchRequests {
		starts = append(starts, r.GetStartRevision())
	}
	if !slices.Equal(starts, []int64{0, 12, 14}) {
		t.Fatalf("start revisions %v, want [0 12 14]", starts)
	}
	// The second connection brought a CREATED, so the third waits the first delay again.
	if !slices.Equal(*waits, []time.Duration{100 * time.Millisecond, 100 * time.Millisecond}) {
		t.Fatalf("reconnection waits %v", *waits)
	}
}

func TestWatchSendsTheInitialStateAgainWhenBrokenBeforeItsEnd(t *testing.T) {
	initial := &v1.WatchSessionsResponse{Type: responseInitial, Revision: 5, Events: events(5, "a")}
	server := &scriptedServer{watchScripts: []func(v1.SessionService_WatchSessionsServer) error{
		func(s v1.SessionService_WatchSessionsServer) error {
			if err := send(s, created(5), initial); err != nil {
				return err
			}
			return status.Error(codes.Unavailable, "gone")
		},
		func(s v1.SessionService_WatchSessionsServer) error {
			if err := send(s, created(5), initial, &v1.WatchSessionsResponse{Type: responseInitialComplete, Revision: 5}); err != nil {
				return err
			}
			return status.Error(codes.Unavailable, "gone again")
		},
		func(s v1.SessionService_WatchSessionsServer) error {
			return status.Error(codes.PermissionDenied, "not yours")
		},
	}}
	client, _ := start(t, server)
	got, err := collect(t, client, &v1.WatchSessionsRequest{IncludeInitial: true})
	want := []string{"CREATED:5:", "INITIAL:5:a", "INITIAL:5:a", "INITIAL_COMPLETE:5:"}
	if !slices.Equal(got, want) || status.Code(err) != codes.PermissionDenied {
		t.Fatalf("delivered %v and %v, want %v and PERMISSION_DENIED", got, err, want)
	}
	r := server.watchRequests
	if !r[0].GetIncludeInitial() || !r[1].GetIncludeInitial() || r[2].GetIncludeInitial() || r[2].GetStartRevision() != 6 {
		t.Fatalf("requests %v", r)
	}
}

func TestWatchEndsWhenARevisionExceedsTheJoinBound(t *testing.T) {
	server := &scriptedServer{watchScripts: []func(v1.SessionService_WatchSessionsServer) error{
		func(s v1.SessionService_WatchSessionsServer) error {
			return send(s, created(1), part(2, false, "aaaaaaaa"), part(2, false, "bbbbbbbb"), part(2, true, "c"))
		},
	}}
	client, _ := start(t, server, WithMaxJoinBytes(16))
	got, err := collect(t, client, &v1.WatchSessionsRequest{})
	if !slices.Equal(got, []string{"CREATED:1:"}) || status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("delivered %v and %v, want CREATED and RESOURCE_EXHAUSTED", got, err)
	}
}

func TestWatchRefusesIncludeInitialWithAStartRevision(t *testing.T) {
	client, _ := start(t, &scriptedServer{})
	_, err := collect(t, client, &v1.WatchSessionsRequest{IncludeInitial: true, StartRevision: 3})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("got %v, want INVALID_ARGUMENT before any call", err)
	}
}
