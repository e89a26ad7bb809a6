package sessiond

import (
	"context"
	"crypto/tls"
	"math/rand/v2"
	"time"

	v1 "github.com/sessiond/sessiond/client/go/sessiondv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

// DefaultAddress is where `sessiond serve` listens by default.
const DefaultAddress = "127.0.0.1:50051"

// DefaultTimeout is the deadline of a unary call, retries included, when its
// context has none.
const DefaultTimeout = 10 * time.Second

// DefaultWatchMaxBackoff caps the wait between a watch's reconnections.
const DefaultWatchMaxBackoff = 30 * time.Second

// MaxResponseBytes is the largest response the client accepts: the server's
// send limit. gRPC's default of 4 MiB is too small for an AppendMessages
// answer, which echoes up to the server's max_request_bytes (8 MiB).
const MaxResponseBytes = 64 << 20

// DefaultMaxJoinBytes bounds the events of one fragmented revision that a
// watch joins before delivering it.
const DefaultMaxJoinBytes = 64 << 20

// Option configures a Client.
type Option func(*settings)

type settings struct {
	apiKey          string
	tls             *tls.Config
	timeout         time.Duration
	retry           RetryPolicy
	watchMaxBackoff time.Duration
	maxJoinBytes    int
	dialOptions     []grpc.DialOption
	random          func() float64
	sleep           func(context.Context, time.Duration) error
}

// WithAPIKey sends key on every call, watches included, as the metadata
// "authorization: Bearer <key>".
func WithAPIKey(key string) Option { return func(s *settings) { s.apiKey = key } }

// WithTLS makes the connection TLS. A nil config verifies the server against
// the system roots; set RootCAs for a private CA and Certificates for mutual
// TLS. Without this option the connection is plain text.
func WithTLS(config *tls.Config) Option {
	return func(s *settings) {
		if config == nil {
			config = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		s.tls = config
	}
}

// WithTimeout sets the default deadline of a unary call, retries included,
// used when the call's context has no deadline of its own (default 10 s; 0
// leaves such calls without a deadline).
func WithTimeout(timeout time.Duration) Option { return func(s *settings) { s.timeout = timeout } }

// WithRetryPolicy replaces DefaultRetryPolicy; MaxRetries 0 turns retries off.
func WithRetryPolicy(policy RetryPolicy) Option { return func(s *settings) { s.retry = policy } }

// WithWatchMaxBackoff caps the wait between a watch's reconnections (30 s).
func WithWatchMaxBackoff(maximum time.Duration) Option {
	return func(s *settings) { s.watchMaxBackoff = maximum }
}

// WithMaxJoinBytes bounds the bytes of one fragmented revision a watch joins
// (64 MiB); a larger revision ends the watch with RESOURCE_EXHAUSTED.
func WithMaxJoinBytes(limit int) Option { return func(s *settings) { s.maxJoinBytes = limit } }

// WithDialOptions adds gRPC dial options (interceptors, keepalive, ...); they
// come after the client's own, so they win.
func WithDialOptions(options ...grpc.DialOption) Option {
	return func(s *settings) { s.dialOptions = append(s.dialOptions, options...) }
}

// Client is a sessiond client: one connection pool to a server, safe for
// concurrent use. Build it with New and release it with Close.
type Client struct {
	conn     *grpc.ClientConn
	sessions v1.SessionServiceClient
	messages v1.MessageServiceClient
	stats    v1.StatsServiceClient
	settings settings
}

// New returns a client of the server at address ("host:port"). It does not
// connect yet: the first call does, and a server that is down makes calls
// fail with UNAVAILABLE (retried where safe), not New.
func New(address string, options ...Option) (*Client, error) {
	s := settings{
		timeout:         DefaultTimeout,
		retry:           DefaultRetryPolicy,
		watchMaxBackoff: DefaultWatchMaxBackoff,
		maxJoinBytes:    DefaultMaxJoinBytes,
		random:          rand.Float64,
		sleep:           sleepContext,
	}
	for _, option := range options {
		option(&s)
	}
	transport := insecure.NewCredentials()
	if s.tls != nil {
		transport = credentials.NewTLS(s.tls)
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(transport),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxResponseBytes)),
		// Reconnect to a restarted server on the client's own backoff rather
		// than gRPC's default (1 s growing to 120 s), so that a retry or a
		// watch is not held back by a connection still waiting to redial.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  s.retry.Backoff.Initial,
				Multiplier: s.retry.Backoff.Multiplier,
				Jitter:     0.2,
				MaxDelay:   s.retry.Backoff.Maximum,
			},
			MinConnectTimeout: 20 * time.Second,
		}),
	}
	if s.apiKey != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearer{key: s.apiKey, secure: s.tls != nil}))
	}
	conn, err := grpc.NewClient(address, append(dial, s.dialOptions...)...)
	if err != nil {
		return nil, clientError(codes.InvalidArgument, "address %q: %v", address, err)
	}
	return &Client{
		conn:     conn,
		sessions: v1.NewSessionServiceClient(conn),
		messages: v1.NewMessageServiceClient(conn),
		stats:    v1.NewStatsServiceClient(conn),
		settings: s,
	}, nil
}

// Close closes the connection; calls and watches in flight end with CANCELED.
func (c *Client) Close() error { return c.conn.Close() }

// Conn is the underlying connection, for the generated stubs of sessiondv1.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// invoke sends one unary call with the default deadline, retries and error
// conversion of docs/clients.md (§1–§3).
func invoke[Req proto.Message, Resp any](
	ctx context.Context, c *Client, req Req,
	method func(context.Context, Req, ...grpc.CallOption) (Resp, error),
) (Resp, error) {
	if _, ok := ctx.Deadline(); !ok && c.settings.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.settings.timeout)
		defer cancel()
	}
	mayRetry := RetryIsSafe(req)
	policy := c.settings.retry
	for attempt := 0; ; attempt++ {
		resp, err := method(ctx, req)
		if err == nil {
			return resp, nil
		}
		converted := errorFrom(err).(*Error)
		if !mayRetry || converted.Code != codes.Unavailable || attempt >= policy.MaxRetries {
			return resp, converted
		}
		delay := policy.Backoff.Delay(attempt, c.settings.random)
		if deadline, ok := ctx.Deadline(); ok && !time.Now().Add(delay).Before(deadline) {
			return resp, converted
		}
		if c.settings.sleep(ctx, delay) != nil {
			return resp, converted
		}
	}
}

// sleepContext waits for d, or less when ctx ends first (then ctx.Err()).
func sleepContext(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// bearer sends the API key as "authorization: Bearer <key>" on every call.
type bearer struct {
	key    string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.key}, nil
}

// RequireTransportSecurity is true with TLS, so a TLS client never sends its
// key in the clear; without TLS the caller chose plain text (a loopback server).
func (b bearer) RequireTransportSecurity() bool { return b.secure }
