//! [`Client`]: one `async fn` per sessiond RPC over one HTTP/2 channel, with
//! what every caller would otherwise write around the generated stubs:
//!
//! * the API key as `authorization: Bearer <key>` on every call;
//! * a deadline on every call (sent as `grpc-timeout` and enforced locally),
//!   covering all its attempts;
//! * retries with jittered exponential backoff, only on UNAVAILABLE and only
//!   for requests that [`RetrySafe`] accepts;
//! * [`Error`] with the decoded reason instead of a raw [`tonic::Status`];
//! * page streams ([`Client::sessions`], [`Client::messages`]) and a watch
//!   that resumes by itself ([`Client::watch`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::error::Error;
use crate::retry::{Backoff, RetryPolicy, RetrySafe};
use crate::v1::message_service_client::MessageServiceClient;
use crate::v1::session_service_client::SessionServiceClient;
use crate::v1::stats_service_client::StatsServiceClient;
use crate::v1::*;

/// DEFAULT_ADDRESS is where `sessiond serve` listens unless told otherwise.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:50051";

/// ClientBuilder collects the options of a [`Client`]; see [`Client::builder`].
#[derive(Clone)]
pub struct ClientBuilder {
    address: String,
    api_key: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    retry: RetryPolicy,
    watch_max_backoff: Duration,
    max_response_bytes: usize,
    max_watch_revision_bytes: usize,
    #[cfg(feature = "tls")]
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl ClientBuilder {
    /// api_key is sent as `authorization: Bearer <key>` on every call.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// timeout is the default deadline of each call, retries included
    /// (default 10 s); [`Client::with_timeout`] changes it for some calls.
    /// A watch has no deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// connect_timeout bounds each attempt to open the connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// retry sets how many times and how far apart a retry-safe call that
    /// failed with UNAVAILABLE is sent again; its backoff also spaces a
    /// watch's reconnections.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// watch_max_backoff caps the delay between a watch's reconnections
    /// (default 30 s); the first waits min(100 ms, this), like
    /// `retry.backoff.initial`, growing by its multiplier with its jitter.
    pub fn watch_max_backoff(mut self, maximum: Duration) -> Self {
        self.watch_max_backoff = maximum;
        self
    }

    /// max_response_bytes is the largest response accepted (default 64 MiB,
    /// the most the server sends).
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// max_watch_revision_bytes bounds the memory a watch spends joining the
    /// fragments of one revision (default 64 MiB of encoded events); a larger
    /// revision ends the watch with RESOURCE_EXHAUSTED.
    pub fn max_watch_revision_bytes(mut self, bytes: usize) -> Self {
        self.max_watch_revision_bytes = bytes;
        self
    }

    /// tls makes the connection TLS with this configuration, used as given:
    /// `ClientTlsConfig::new().ca_certificate(ca)` trusts only that CA,
    /// `.with_native_roots()` the system's roots; `.domain_name(..)` and
    /// `.identity(..)` (mutual TLS) as needed. An address without a scheme
    /// then means `https://`. An `https://` address without this option
    /// verifies the server against the system's roots.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: tonic::transport::ClientTlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// build makes the client. The connection is opened on the first call
    /// and reopened after it breaks, so a server that is not up yet is not
    /// an error here. Must run inside a Tokio runtime.
    pub fn build(self) -> Result<Client, Error> {
        #[cfg(feature = "tls")]
        let secure = self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        let secure = false;
        let uri = if self.address.contains("://") {
            self.address.clone()
        } else if secure {
            format!("https://{}", self.address)
        } else {
            format!("http://{}", self.address)
        };
        let invalid = |what: &str, e: &dyn std::fmt::Display| {
            Error::local(Code::InvalidArgument, format!("{what}: {e}"))
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| invalid(&format!("address {:?}", self.address), &e))?
            .connect_timeout(self.connect_timeout)
            // Pings only while calls are open (the server refuses idle pings):
            // a watch on a connection that died silently fails within 50 s
            // and reconnects, instead of waiting forever.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        #[cfg(feature = "tls")]
        let endpoint = match self.tls {
            Some(config) => endpoint
                .tls_config(config)
                .map_err(|e| invalid("tls", &e))?,
            None if endpoint.uri().scheme_str() == Some("https") => endpoint
                .tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())
                .map_err(|e| invalid("tls", &e))?,
            None => endpoint,
        };
        let authorization = match &self.api_key {
            None => None,
            Some(key) => Some(
                MetadataValue::try_from(format!("Bearer {key}"))
                    .map_err(|e| invalid("api_key", &e))?,
            ),
        };
        Ok(Client {
            inner: Arc::new(Inner {
                channel: endpoint.connect_lazy(),
                authorization,
                retry: self.retry,
                watch_max_backoff: self.watch_max_backoff,
                closed: CancellationToken::new(),
                max_response_bytes: self.max_response_bytes,
                max_watch_revision_bytes: self.max_watch_revision_bytes,
            }),
            timeout: self.timeout,
        })
    }
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The API key is a credential: it is never printed.
        f.debug_struct("ClientBuilder")
            .field("address", &self.address)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

struct Inner {
    channel: Channel,
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    retry: RetryPolicy,
    watch_max_backoff: Duration,
    closed: CancellationToken,
    max_response_bytes: usize,
    max_watch_revision_bytes: usize,
}

/// Client is a sessiond client. Cloning is cheap and clones share the
/// connection. The connection closes when the last clone and every stream
/// made from it are dropped; [`Client::close`] ends everything at once.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("timeout", &self.timeout)
            .field("retry", &self.inner.retry)
            .field(
                "api_key",
                &self.inner.authorization.as_ref().map(|_| "<set>"),
            )
            .finish_non_exhaustive()
    }
}

impl Client {
    /// builder starts the options of a client of the server at `address`:
    /// `host:port` (plain text, or TLS once [`ClientBuilder::tls`] is set),
    /// or a URI `http://host:port` / `https://host:port`.
    pub fn builder(address: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            address: address.into(),
            api_key: None,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            watch_max_backoff: Duration::from_secs(30),
            max_response_bytes: 64 << 20,
            max_watch_revision_bytes: 64 << 20,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// new is a client of the server at `address` with the default options.
    pub fn new(address: impl Into<String>) -> Result<Client, Error> {
        Client::builder(address).build()
    }

    /// with_timeout is this client with another default deadline, sharing
    /// the connection: `client.with_timeout(d).list_sessions(r)`.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            inner: self.inner.clone(),
            timeout,
        }
    }

    /// timeout is the deadline each call of this client gets.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// close cancels every call and watch in flight on this client and its
    /// clones, and makes later calls fail at once, with CANCELLED.
    pub fn close(&self) {
        self.inner.closed.cancel();
    }

    pub(crate) fn max_watch_revision_bytes(&self) -> usize {
        self.inner.max_watch_revision_bytes
    }

    /// watch_backoff is the retry backoff with the watch's own cap.
    pub(crate) fn watch_backoff(&self) -> Backoff {
        let maximum = self.inner.watch_max_backoff;
        Backoff {
            initial: self.inner.retry.backoff.initial.min(maximum),
            maximum,
            ..self.inner.retry.backoff
        }
    }

    /// guard runs `work` unless the client is closed first (CANCELLED) or
    /// `deadline` passes first (DEADLINE_EXCEEDED).
    pub(crate) async fn guard<T>(
        &self,
        deadline: Option<Instant>,
        work: impl Future<Output = T>,
    ) -> Result<T, Error> {
        let timed = async {
            match deadline {
                None => Ok(work.await),
                Some(d) => tokio::time::timeout_at(d, work).await.map_err(|_| {
                    Error::local(Code::DeadlineExceeded, "no answer within the deadline")
                }),
            }
        };
        tokio::select! {
            biased;
            () = self.inner.closed.cancelled() => {
                Err(Error::local(Code::Cancelled, "the client was closed"))
            }
            outcome = timed => outcome,
        }
    }

    /// request wraps a message with the API key and, when given, a deadline.
    pub(crate) fn request<T>(&self, message: T, timeout: Option<Duration>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(value) = &self.inner.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        request
    }

    pub(crate) fn session_stub(&self) -> SessionServiceClient<Channel> {
        SessionServiceClient::new(self.inner.channel.clone())
            .max_decoding_message_size(self.inner.max_response_bytes)
    }

    fn message_stub(&self) -> MessageServiceClient<Channel> {
        MessageServiceClient::new(self.inner.channel.clone())
            .max_decoding_message_size(self.inner.max_response_bytes)
    }

    fn stats_stub(&self) -> StatsServiceClient<Channel> {
        StatsServiceClient::new(self.inner.channel.clone())
            .max_decoding_message_size(self.inner.max_response_bytes)
    }

    /// unary sends one call with deadline, retries and error decoding.
    async fn unary<Req, Resp, Fut>(
        &self,
        message: Req,
        send: impl Fn(tonic::Request<Req>) -> Fut,
    ) -> Result<Resp, Error>
    where
        Req: RetrySafe + Clone,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let may_retry = message.retry_is_safe();
        let policy = self.inner.retry;
        let mut attempt = 0;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let request = self.request(message.clone(), Some(remaining));
            // The server enforces grpc-timeout; the local timer covers a
            // connection that hangs without an answer.
            let error = match self.guard(Some(deadline), send(request)).await? {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => Error::from(status),
            };
            if !(may_retry && error.code() == Code::Unavailable) || attempt >= policy.max_retries {
                return Err(error);
            }
            let delay = policy.backoff.delay(attempt);
            if Instant::now() + delay >= deadline {
                return Err(error);
            }
            attempt += 1;
            self.guard(None, tokio::time::sleep(delay)).await?;
        }
    }
}

/// unary_rpcs writes one method per unary RPC: the same body around a
/// different stub method, so the retry and deadline rules stay in `unary`.
macro_rules! unary_rpcs {
    ($($(#[$doc:meta])* $method:ident: $stub:ident($request:ty) -> $response:ty;)*) => {
        impl Client {
            $(
                $(#[$doc])*
                pub async fn $method(&self, request: $request) -> Result<$response, Error> {
                    self.unary(request, |r| {
                        let mut stub = self.$stub();
                        async move { stub.$method(r).await }
                    })
                    .await
                }
            )*
        }
    };
}

unary_rpcs! {
    /// CreateSession; retried when `session.id` is set.
    create_session: session_stub(CreateSessionRequest) -> CreateSessionResponse;
    /// GetSession.
    get_session: session_stub(GetSessionRequest) -> GetSessionResponse;
    /// UpdateSession; retried only when `etag` is set.
    update_session: session_stub(UpdateSessionRequest) -> UpdateSessionResponse;
    /// DeleteSession; never retried.
    delete_session: session_stub(DeleteSessionRequest) -> DeleteSessionResponse;
    /// ListSessions: one page; [`Client::sessions`] walks them all.
    list_sessions: session_stub(ListSessionsRequest) -> ListSessionsResponse;
    /// TouchSession; retried.
    touch_session: session_stub(TouchSessionRequest) -> TouchSessionResponse;
    /// EndSession; retried.
    end_session: session_stub(EndSessionRequest) -> EndSessionResponse;
    /// SetRuntimeState; retried.
    set_runtime_state: session_stub(SetRuntimeStateRequest) -> SetRuntimeStateResponse;
    /// ForkSession; retried when `new_session_id` is set.
    fork_session: session_stub(ForkSessionRequest) -> ForkSessionResponse;
    /// ReconcileSessions; never retried.
    reconcile_sessions: session_stub(ReconcileSessionsRequest) -> ReconcileSessionsResponse;
    /// PurgeSessions; never retried.
    purge_sessions: session_stub(PurgeSessionsRequest) -> PurgeSessionsResponse;
    /// GetSharedState; retried.
    get_shared_state: session_stub(GetSharedStateRequest) -> GetSharedStateResponse;
    /// UpdateSharedState; retried (a delta applied twice is applied once).
    update_shared_state: session_stub(UpdateSharedStateRequest) -> UpdateSharedStateResponse;
    /// AppendMessages; retried when every message has an id.
    append_messages: message_stub(AppendMessagesRequest) -> AppendMessagesResponse;
    /// ListMessages: one page, or the last N messages or turns;
    /// [`Client::messages`] walks every page.
    list_messages: message_stub(ListMessagesRequest) -> ListMessagesResponse;
    /// PopMessage; never retried.
    pop_message: message_stub(PopMessageRequest) -> PopMessageResponse;
    /// UpdateLastMessage; never retried.
    update_last_message: message_stub(UpdateLastMessageRequest) -> UpdateLastMessageResponse;
    /// ClearMessages; never retried.
    clear_messages: message_stub(ClearMessagesRequest) -> ClearMessagesResponse;
    /// SearchMessages: one page of matches, newest first.
    search_messages: message_stub(SearchMessagesRequest) -> SearchMessagesResponse;
    /// ReplaceMessages; retried when every new message has an id.
    replace_messages: message_stub(ReplaceMessagesRequest) -> ReplaceMessagesResponse;
    /// DeleteMessages; retried (a repeat finds nothing left to delete).
    delete_messages: message_stub(DeleteMessagesRequest) -> DeleteMessagesResponse;
    /// RecordUsage; retried when `request_id` is set.
    record_usage: stats_stub(RecordUsageRequest) -> RecordUsageResponse;
    /// GetStats.
    get_stats: stats_stub(GetStatsRequest) -> GetStatsResponse;
    /// CostByModel.
    cost_by_model: stats_stub(CostByModelRequest) -> CostByModelResponse;
}
