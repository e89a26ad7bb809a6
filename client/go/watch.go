package sessiond

import (
	"context"
	"errors"
	"io"
	"iter"

	v1 "github.com/sessiond/sessiond/client/go/sessiondv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

const (
	responseCreated         = v1.WatchResponseType_WATCH_RESPONSE_TYPE_CREATED
	responseEvents          = v1.WatchResponseType_WATCH_RESPONSE_TYPE_EVENTS
	responseInitial         = v1.WatchResponseType_WATCH_RESPONSE_TYPE_INITIAL
	responseInitialComplete = v1.WatchResponseType_WATCH_RESPONSE_TYPE_INITIAL_COMPLETE
	responseProgress        = v1.WatchResponseType_WATCH_RESPONSE_TYPE_PROGRESS
)

// Watch follows WatchSessions as one stream that survives lost connections
// and server restarts (docs/clients.md, §5). It yields:
//
//   - CREATED once, when the first connection is confirmed (reconnections are
//     invisible); writes made after it has been yielded are sure to be seen;
//   - with IncludeInitial, INITIAL responses and then INITIAL_COMPLETE (if the
//     connection drops before INITIAL_COMPLETE the initial state is sent again
//     from the start: it is a snapshot complete only at INITIAL_COMPLETE);
//   - EVENTS with whole revisions, each revision once and in order, fragments
//     already joined (Fragment is always false);
//   - PROGRESS bookmarks, never behind a revision already yielded.
//
// After a failure with UNAVAILABLE, or a stream the server ended, it waits
// (jittered exponential backoff up to WithWatchMaxBackoff) and resumes at the
// revision after the last one it yielded. Any other error is yielded once and
// ends the watch: ErrRelistRequired (errors.Is) when the resume point was
// compacted, CANCELED or DEADLINE_EXCEEDED when ctx ends, and so on. Breaking
// out of the loop cancels the call.
func (c *Client) Watch(ctx context.Context, req *v1.WatchSessionsRequest) iter.Seq2[*v1.WatchSessionsResponse, error] {
	return func(yield func(*v1.WatchSessionsResponse, error) bool) {
		if req == nil {
			req = &v1.WatchSessionsRequest{}
		}
		if req.GetIncludeInitial() && req.GetStartRevision() != 0 {
			yield(nil, clientError(codes.InvalidArgument, "watch: include_initial requires start_revision 0"))
			return
		}
		policy := c.settings.retry.Backoff
		reconnect := Backoff{
			Initial:    min(policy.Initial, c.settings.watchMaxBackoff),
			Maximum:    c.settings.watchMaxBackoff,
			Multiplier: policy.Multiplier,
			Jitter:     policy.Jitter,
		}
		cursor := newWatchCursor(req, c.settings.maxJoinBytes)
		failures := 0
		for {
			err := c.watchOnce(ctx, cursor, &failures, yield)
			if err == errStopped {
				return
			}
			if err != nil {
				yield(nil, err)
				return
			}
			// The connection was lost or the stream ended: come back later.
			if sleepErr := c.settings.sleep(ctx, reconnect.Delay(failures, c.settings.random)); sleepErr != nil {
				yield(nil, contextStatus(sleepErr))
				return
			}
			failures++
		}
	}
}

// errStopped says the consumer stopped the loop; nothing more is yielded.
var errStopped = errors.New("watch stopped by its consumer")

// watchOnce runs one WatchSessions call. It returns nil when the watch should
// reconnect, errStopped when the consumer stopped, or the error to end with.
func (c *Client) watchOnce(
	ctx context.Context, cursor *watchCursor, failures *int,
	yield func(*v1.WatchSessionsResponse, error) bool,
) error {
	callCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer cursor.dropPartial()
	stream, err := c.sessions.WatchSessions(callCtx, cursor.request())
	for err == nil {
		var response *v1.WatchSessionsResponse
		if response, err = stream.Recv(); err != nil {
			break
		}
		if response.GetType() == responseCreated {
			*failures = 0
		}
		delivered, acceptErr := cursor.accept(response)
		if acceptErr != nil {
			return acceptErr
		}
		if delivered != nil && !yield(delivered, nil) {
			return errStopped
		}
	}
	if err == io.EOF {
		return nil
	}
	converted := errorFrom(err).(*Error)
	if converted.Code == codes.Unavailable {
		return nil
	}
	return converted
}

// contextStatus turns ctx.Err() into the gRPC status error a call would have
// ended with.
func contextStatus(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return clientError(codes.DeadlineExceeded, "watch: %v", err)
	}
	return clientError(codes.Canceled, "watch: %v", err)
}

// watchCursor is the resume point of a watch and the filter that keeps
// delivery exact; it knows nothing of gRPC. request() is what to send on each
// (re)connection; accept(response) moves the resume point and returns what to
// deliver, or nil when the response holds nothing new (a repeated CREATED, a
// replayed revision, a bookmark behind what was delivered, a fragment).
type watchCursor struct {
	template *v1.WatchSessionsRequest
	// next is the first revision not yet delivered; 0 means "from now",
	// until the first CREATED says what now is.
	next           int64
	initialPending bool
	createdSeen    bool
	// partial holds the fragments of one revision until its last part.
	partial      []*v1.SessionEvent
	partialBytes int
	maxJoinBytes int
}

func newWatchCursor(req *v1.WatchSessionsRequest, maxJoinBytes int) *watchCursor {
	return &watchCursor{
		template:       proto.Clone(req).(*v1.WatchSessionsRequest),
		next:           req.GetStartRevision(),
		initialPending: req.GetIncludeInitial(),
		maxJoinBytes:   maxJoinBytes,
	}
}

func (w *watchCursor) request() *v1.WatchSessionsRequest {
	req := proto.Clone(w.template).(*v1.WatchSessionsRequest)
	if w.initialPending {
		req.StartRevision, req.IncludeInitial = 0, true
	} else {
		req.StartRevision, req.IncludeInitial = w.next, false
	}
	return req
}

// dropPartial forgets the fragments of a revision whose stream broke; the
// resume point did not move, so the server sends it again from its first part.
func (w *watchCursor) dropPartial() { w.partial, w.partialBytes = nil, 0 }

func (w *watchCursor) accept(r *v1.WatchSessionsResponse) (*v1.WatchSessionsResponse, error) {
	switch r.GetType() {
	case responseCreated:
		first := !w.createdSeen
		w.createdSeen = true
		if w.next == 0 && !w.initialPending {
			w.next = r.GetRevision() + 1
		}
		if first {
			return r, nil
		}
	case responseInitial:
		if w.initialPending {
			return r, nil
		}
	case responseInitialComplete:
		if w.initialPending {
			w.initialPending = false
			w.next = r.GetRevision() + 1
			return r, nil
		}
	case responseEvents:
		return w.acceptEvents(r)
	case responseProgress:
		if !w.initialPending && r.GetRevision()+1 >= w.next {
			w.next = r.GetRevision() + 1
			return r, nil
		}
	}
	return nil, nil
}

func (w *watchCursor) acceptEvents(r *v1.WatchSessionsResponse) (*v1.WatchSessionsResponse, error) {
	if r.GetFragment() {
		w.partial = append(w.partial, r.GetEvents()...)
		w.partialBytes += proto.Size(r)
		if w.partialBytes > w.maxJoinBytes {
			return nil, clientError(codes.ResourceExhausted,
				"watch: revision %d is larger than the join bound of %d bytes", r.GetRevision(), w.maxJoinBytes)
		}
		return nil, nil
	}
	events, joined := r.GetEvents(), len(w.partial) > 0
	if joined {
		events = append(w.partial, events...)
		w.dropPartial()
	}
	fresh := make([]*v1.SessionEvent, 0, len(events))
	for _, event := range events {
		if event.GetRevision() >= w.next {
			fresh = append(fresh, event)
		}
	}
	if len(fresh) == 0 {
		return nil, nil
	}
	w.next = max(r.GetRevision(), fresh[len(fresh)-1].GetRevision()) + 1
	if !joined && len(fresh) == len(r.GetEvents()) {
		return r, nil
	}
	return &v1.WatchSessionsResponse{
		Type:              r.GetType(),
		Revision:          r.GetRevision(),
		Events:            fresh,
		CompactedRevision: r.GetCompactedRevision(),
		Time:              r.GetTime(),
	}, nil
}
