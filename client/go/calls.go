package sessiond

import (
	"context"

	v1 "github.com/sessiond/sessiond/client/go/sessiondv1"
)

// One method per unary RPC: the request and response are the generated
// messages, so the proto comments (docs/api.md) document each call. Every
// method applies the default deadline when ctx has none, retries only what
// RetryIsSafe accepts, and returns failures as *Error.

// CreateSession creates a session (idempotent on session.id); retried on UNAVAILABLE when session.id is set.
func (c *Client) CreateSession(ctx context.Context, req *v1.CreateSessionRequest) (*v1.CreateSessionResponse, error) {
	return invoke(ctx, c, req, c.sessions.CreateSession)
}

// GetSession reads one session; retried on UNAVAILABLE.
func (c *Client) GetSession(ctx context.Context, req *v1.GetSessionRequest) (*v1.GetSessionResponse, error) {
	return invoke(ctx, c, req, c.sessions.GetSession)
}

// UpdateSession changes a session's fields; retried on UNAVAILABLE only when etag is set.
func (c *Client) UpdateSession(ctx context.Context, req *v1.UpdateSessionRequest) (*v1.UpdateSessionResponse, error) {
	return invoke(ctx, c, req, c.sessions.UpdateSession)
}

// DeleteSession deletes a session and its messages; never retried.
func (c *Client) DeleteSession(ctx context.Context, req *v1.DeleteSessionRequest) (*v1.DeleteSessionResponse, error) {
	return invoke(ctx, c, req, c.sessions.DeleteSession)
}

// ListSessions reads one page of sessions; retried on UNAVAILABLE. Sessions walks every page.
func (c *Client) ListSessions(ctx context.Context, req *v1.ListSessionsRequest) (*v1.ListSessionsResponse, error) {
	return invoke(ctx, c, req, c.sessions.ListSessions)
}

// TouchSession records activity, creating the session on demand; retried on UNAVAILABLE.
func (c *Client) TouchSession(ctx context.Context, req *v1.TouchSessionRequest) (*v1.TouchSessionResponse, error) {
	return invoke(ctx, c, req, c.sessions.TouchSession)
}

// EndSession ends a session with a terminal status; retried on UNAVAILABLE.
func (c *Client) EndSession(ctx context.Context, req *v1.EndSessionRequest) (*v1.EndSessionResponse, error) {
	return invoke(ctx, c, req, c.sessions.EndSession)
}

// SetRuntimeState records the runtime state (idle, running, error); retried on UNAVAILABLE.
func (c *Client) SetRuntimeState(ctx context.Context, req *v1.SetRuntimeStateRequest) (*v1.SetRuntimeStateResponse, error) {
	return invoke(ctx, c, req, c.sessions.SetRuntimeState)
}

// ForkSession copies a session into a new one; retried on UNAVAILABLE when new_session_id is set.
func (c *Client) ForkSession(ctx context.Context, req *v1.ForkSessionRequest) (*v1.ForkSessionResponse, error) {
	return invoke(ctx, c, req, c.sessions.ForkSession)
}

// ReconcileSessions marks the sessions a crashed runtime left running; never retried.
func (c *Client) ReconcileSessions(ctx context.Context, req *v1.ReconcileSessionsRequest) (*v1.ReconcileSessionsResponse, error) {
	return invoke(ctx, c, req, c.sessions.ReconcileSessions)
}

// PurgeSessions deletes sessions by age or count; never retried.
func (c *Client) PurgeSessions(ctx context.Context, req *v1.PurgeSessionsRequest) (*v1.PurgeSessionsResponse, error) {
	return invoke(ctx, c, req, c.sessions.PurgeSessions)
}

// GetSharedState reads the state shared by an application or one of its users; retried on UNAVAILABLE.
func (c *Client) GetSharedState(ctx context.Context, req *v1.GetSharedStateRequest) (*v1.GetSharedStateResponse, error) {
	return invoke(ctx, c, req, c.sessions.GetSharedState)
}

// UpdateSharedState changes shared state (compare-and-set with etag); retried on UNAVAILABLE.
func (c *Client) UpdateSharedState(ctx context.Context, req *v1.UpdateSharedStateRequest) (*v1.UpdateSharedStateResponse, error) {
	return invoke(ctx, c, req, c.sessions.UpdateSharedState)
}

// AppendMessages appends messages (idempotent by message id); retried on UNAVAILABLE when every message has an id.
func (c *Client) AppendMessages(ctx context.Context, req *v1.AppendMessagesRequest) (*v1.AppendMessagesResponse, error) {
	return invoke(ctx, c, req, c.messages.AppendMessages)
}

// ListMessages reads one page of messages, or the last N messages or turns; retried on UNAVAILABLE. Messages walks every page.
func (c *Client) ListMessages(ctx context.Context, req *v1.ListMessagesRequest) (*v1.ListMessagesResponse, error) {
	return invoke(ctx, c, req, c.messages.ListMessages)
}

// PopMessage removes the last message; never retried.
func (c *Client) PopMessage(ctx context.Context, req *v1.PopMessageRequest) (*v1.PopMessageResponse, error) {
	return invoke(ctx, c, req, c.messages.PopMessage)
}

// UpdateLastMessage replaces fields of the last message (streaming replies); never retried.
func (c *Client) UpdateLastMessage(ctx context.Context, req *v1.UpdateLastMessageRequest) (*v1.UpdateLastMessageResponse, error) {
	return invoke(ctx, c, req, c.messages.UpdateLastMessage)
}

// ClearMessages removes every message of a session; never retried.
func (c *Client) ClearMessages(ctx context.Context, req *v1.ClearMessagesRequest) (*v1.ClearMessagesResponse, error) {
	return invoke(ctx, c, req, c.messages.ClearMessages)
}

// SearchMessages searches message text; retried on UNAVAILABLE.
func (c *Client) SearchMessages(ctx context.Context, req *v1.SearchMessagesRequest) (*v1.SearchMessagesResponse, error) {
	return invoke(ctx, c, req, c.messages.SearchMessages)
}

// ReplaceMessages replaces every message after a seq (compaction); retried on UNAVAILABLE when every message has an id.
func (c *Client) ReplaceMessages(ctx context.Context, req *v1.ReplaceMessagesRequest) (*v1.ReplaceMessagesResponse, error) {
	return invoke(ctx, c, req, c.messages.ReplaceMessages)
}

// DeleteMessages removes every message up to a seq; retried on UNAVAILABLE.
func (c *Client) DeleteMessages(ctx context.Context, req *v1.DeleteMessagesRequest) (*v1.DeleteMessagesResponse, error) {
	return invoke(ctx, c, req, c.messages.DeleteMessages)
}

// RecordUsage adds token and cost usage (idempotent on request_id); retried on UNAVAILABLE when request_id is set.
func (c *Client) RecordUsage(ctx context.Context, req *v1.RecordUsageRequest) (*v1.RecordUsageResponse, error) {
	return invoke(ctx, c, req, c.stats.RecordUsage)
}

// GetStats reads aggregate counts, tokens and cost; retried on UNAVAILABLE.
func (c *Client) GetStats(ctx context.Context, req *v1.GetStatsRequest) (*v1.GetStatsResponse, error) {
	return invoke(ctx, c, req, c.stats.GetStats)
}

// CostByModel reads usage and cost per model; retried on UNAVAILABLE.
func (c *Client) CostByModel(ctx context.Context, req *v1.CostByModelRequest) (*v1.CostByModelResponse, error) {
	return invoke(ctx, c, req, c.stats.CostByModel)
}
