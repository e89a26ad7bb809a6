package sessiond

import (
	"context"
	"iter"

	v1 "github.com/sessiond/sessiond/client/go/sessiondv1"
	"google.golang.org/protobuf/proto"
)

// Sessions walks every session ListSessions returns for req, page after page
// (the request's page_token is where it starts; the rest is kept as given,
// but skip_total_size is set: a walker has no use for the count).
// Each page is one call with its own deadline and retries. An error is
// yielded once, after the sessions already yielded, and ends the walk;
// stopping the loop early sends no further request.
func (c *Client) Sessions(ctx context.Context, req *v1.ListSessionsRequest) iter.Seq2[*v1.Session, error] {
	page := &v1.ListSessionsRequest{}
	if req != nil {
		page = proto.Clone(req).(*v1.ListSessionsRequest)
	}
	// A walker yields sessions, not the count: the server need not count them.
	page.SkipTotalSize = true
	return walk(ctx, page, c.ListSessions,
		func(page *v1.ListSessionsResponse) ([]*v1.Session, string) {
			return page.GetSessions(), page.GetNextPageToken()
		},
		func(next *v1.ListSessionsRequest, token string) { next.PageToken = token })
}

// Messages walks every message ListMessages returns for req, page after page,
// like Sessions. (A request for the last N messages or turns is one page.)
func (c *Client) Messages(ctx context.Context, req *v1.ListMessagesRequest) iter.Seq2[*v1.Message, error] {
	if req == nil {
		req = &v1.ListMessagesRequest{}
	}
	return walk(ctx, req, c.ListMessages,
		func(page *v1.ListMessagesResponse) ([]*v1.Message, string) {
			return page.GetMessages(), page.GetNextPageToken()
		},
		func(next *v1.ListMessagesRequest, token string) { next.PageToken = token })
}

// walk is the page loop both walkers share: call, yield the items, follow
// next_page_token until it is empty.
func walk[Req proto.Message, Resp any, Item any](
	ctx context.Context, req Req,
	list func(context.Context, Req) (Resp, error),
	items func(Resp) ([]Item, string),
	setToken func(Req, string),
) iter.Seq2[Item, error] {
	return func(yield func(Item, error) bool) {
		page := proto.Clone(req).(Req)
		for {
			resp, err := list(ctx, page)
			if err != nil {
				var zero Item
				yield(zero, err)
				return
			}
			got, next := items(resp)
			for _, item := range got {
				if !yield(item, nil) {
					return
				}
			}
			if next == "" {
				return
			}
			setToken(page, next)
		}
	}
}
