//! A WatchSessions stream that survives restarts and lost connections.
//!
//! A raw WatchSessions call ends when the server restarts or the connection
//! drops. [`Client::watch`] reconnects by itself, with jittered exponential
//! backoff, and resumes at the revision after the last one it delivered, so
//! the consumer sees one ordered stream in which no revision is missing and
//! none comes twice (etcd's resumable watch, driven from the client).
//!
//! The stream yields [`WatchUpdate`]s:
//!
//! * [`WatchUpdate::Created`] once, when the first connection is confirmed
//!   (reconnections are invisible). Writes made after it arrived are sure to
//!   be seen.
//! * [`WatchUpdate::Initial`] and then [`WatchUpdate::InitialComplete`] with
//!   `include_initial`. If the connection drops before InitialComplete the
//!   initial state is sent again from the start, so treat Initial events as a
//!   snapshot that is complete only at InitialComplete.
//! * [`WatchUpdate::Events`] with whole revisions, each at most once. A
//!   revision the server sent in fragments (`WatchSessionsResponse.fragment`)
//!   is joined first; the memory for that is bounded
//!   ([`crate::ClientBuilder::max_watch_revision_bytes`]).
//! * [`WatchUpdate::Progress`] bookmarks, never below a delivered revision.
//!
//! The stream reconnects when the call fails with UNAVAILABLE (a broken
//! connection counts as that) or ends without an error, and ends with the
//! error otherwise. When the resume point has left the change log it ends
//! with an [`Error`] whose [`Error::relist_required`] is Some: list again
//! and watch from the list's revision + 1.
//!
//! [`WatchCursor`] is the state machine, apart from gRPC, so its rules are
//! tested without a server.

use futures_core::Stream;
use prost::Message as _;
use tokio::time::Instant;
use tonic::Code;

use crate::client::Client;
use crate::error::Error;
use crate::result_stream::ResultStream;
use crate::v1::*;

/// WatchUpdate is one thing a watch delivers.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchUpdate {
    /// Created confirms the watch, once: `revision` is the store revision at
    /// that moment, `compacted_revision` the highest revision the change log
    /// no longer holds (0 when none).
    Created {
        /// revision is the store revision when the watch was created.
        revision: i64,
        /// compacted_revision is the highest revision removed from the change log.
        compacted_revision: i64,
    },
    /// Initial carries part of the initial state (INITIAL events).
    Initial {
        /// events are INITIAL events, one per matching session.
        events: Vec<SessionEvent>,
    },
    /// InitialComplete ends the initial state, read at `revision`.
    InitialComplete {
        /// revision is the store revision the initial state was read at.
        revision: i64,
    },
    /// Events carries whole revisions, in order, each delivered once.
    Events {
        /// revision is the highest revision among the events.
        revision: i64,
        /// events are the events, in revision order.
        events: Vec<SessionEvent>,
    },
    /// Progress is a bookmark: nothing at or below `revision` is still to come.
    Progress {
        /// revision is the revision up to which everything was delivered.
        revision: i64,
    },
}

impl WatchUpdate {
    /// response_type is the WatchSessionsResponse type this update stands for.
    pub fn response_type(&self) -> WatchResponseType {
        match self {
            WatchUpdate::Created { .. } => WatchResponseType::Created,
            WatchUpdate::Initial { .. } => WatchResponseType::Initial,
            WatchUpdate::InitialComplete { .. } => WatchResponseType::InitialComplete,
            WatchUpdate::Events { .. } => WatchResponseType::Events,
            WatchUpdate::Progress { .. } => WatchResponseType::Progress,
        }
    }
}

/// WatchCursor is the resume point of a watch, the filter that keeps
/// delivery exact, and the joiner of fragmented revisions.
///
/// [`WatchCursor::request`] is what to send on each (re)connection;
/// [`WatchCursor::accept`] advances past a response and returns what to hand
/// to the consumer, None when the response holds nothing new (a repeated
/// Created, a replayed revision, a bookmark behind what was delivered, a
/// fragment still waiting for the rest of its revision).
#[derive(Debug)]
pub struct WatchCursor {
    template: WatchSessionsRequest,
    /// next_revision is the first revision not yet delivered; 0 means "from
    /// now", until the first Created tells what now is.
    next_revision: i64,
    initial_pending: bool,
    created_seen: bool,
    fragments: Vec<SessionEvent>,
    fragment_revision: i64,
    fragment_bytes: usize,
    max_revision_bytes: usize,
}

impl WatchCursor {
    /// new starts a cursor for `request`; `max_revision_bytes` bounds the
    /// fragments held for one revision. include_initial needs start_revision 0.
    pub fn new(
        request: WatchSessionsRequest,
        max_revision_bytes: usize,
    ) -> Result<WatchCursor, Error> {
        if request.include_initial && request.start_revision != 0 {
            return Err(Error::local(
                Code::InvalidArgument,
                "start_revision: must be 0 when include_initial is set",
            ));
        }
        Ok(WatchCursor {
            next_revision: request.start_revision,
            initial_pending: request.include_initial,
            template: request,
            created_seen: false,
            fragments: Vec::new(),
            fragment_revision: 0,
            fragment_bytes: 0,
            max_revision_bytes,
        })
    }

    /// next_revision is the first revision not yet delivered (0 before a
    /// "from now" watch was created).
    pub fn next_revision(&self) -> i64 {
        self.next_revision
    }

    /// request is what resumes the watch where delivery stopped.
    pub fn request(&self) -> WatchSessionsRequest {
        let mut request = self.template.clone();
        if self.initial_pending {
            request.start_revision = 0;
            request.include_initial = true;
        } else {
            request.start_revision = self.next_revision;
            request.include_initial = false;
        }
        request
    }

    /// disconnected forgets the fragments of a revision that the broken
    /// stream did not finish; the resumed stream sends it again whole.
    pub fn disconnected(&mut self) {
        self.fragments.clear();
        self.fragment_bytes = 0;
    }

    /// accept advances the resume point past `response` and returns what to
    /// deliver. It fails only when a fragmented revision outgrows the bound
    /// or the fragments break their rule (parts of two revisions mixed).
    pub fn accept(
        &mut self,
        response: WatchSessionsResponse,
    ) -> Result<Option<WatchUpdate>, Error> {
        Ok(match response.r#type() {
            WatchResponseType::Created => {
                let first = !self.created_seen;
                self.created_seen = true;
                if self.next_revision == 0 && !self.initial_pending {
                    // "From now": events after the revision current at
                    // creation follow, so a reconnect resumes right after it.
                    self.next_revision = response.revision + 1;
                }
                first.then_some(WatchUpdate::Created {
                    revision: response.revision,
                    compacted_revision: response.compacted_revision,
                })
            }
            WatchResponseType::Initial => self.initial_pending.then_some(WatchUpdate::Initial {
                events: response.events,
            }),
            WatchResponseType::InitialComplete => {
                if !self.initial_pending {
                    return Ok(None);
                }
                self.initial_pending = false;
                self.next_revision = response.revision + 1;
                Some(WatchUpdate::InitialComplete {
                    revision: response.revision,
                })
            }
            WatchResponseType::Events => {
                let Some((revision, events)) = self.join(response)? else {
                    return Ok(None);
                };
                let fresh: Vec<SessionEvent> = events
                    .into_iter()
                    .filter(|e| e.revision >= self.next_revision)
                    .collect();
                let Some(last) = fresh.last() else {
                    return Ok(None);
                };
                let revision = revision.max(last.revision);
                self.next_revision = revision + 1;
                Some(WatchUpdate::Events {
                    revision,
                    events: fresh,
                })
            }
            WatchResponseType::Progress => {
                if self.initial_pending || response.revision + 1 < self.next_revision {
                    return Ok(None);
                }
                self.next_revision = response.revision + 1;
                Some(WatchUpdate::Progress {
                    revision: response.revision,
                })
            }
            WatchResponseType::Unspecified => None,
        })
    }

    /// join returns the events of a whole response: a response that is not a
    /// fragment as it is (joined to the parts before it when it ends a
    /// fragmented revision), None for a part that waits for the rest.
    fn join(
        &mut self,
        response: WatchSessionsResponse,
    ) -> Result<Option<(i64, Vec<SessionEvent>)>, Error> {
        if self.fragments.is_empty() && !response.fragment {
            return Ok(Some((response.revision, response.events)));
        }
        if !self.fragments.is_empty() && response.revision != self.fragment_revision {
            return Err(Error::local(
                Code::Internal,
                format!(
                    "watch fragments of revision {} interrupted by revision {}",
                    self.fragment_revision, response.revision
                ),
            ));
        }
        self.fragment_revision = response.revision;
        self.fragment_bytes += response
            .events
            .iter()
            .map(|e| e.encoded_len())
            .sum::<usize>();
        if self.fragment_bytes > self.max_revision_bytes {
            let bytes = self.fragment_bytes;
            self.disconnected();
            return Err(Error::local(
                Code::ResourceExhausted,
                format!(
                    "revision {} exceeds max_watch_revision_bytes ({} bytes so far, limit {})",
                    response.revision, bytes, self.max_revision_bytes
                ),
            ));
        }
        self.fragments.extend(response.events);
        if response.fragment {
            return Ok(None);
        }
        self.fragment_bytes = 0;
        Ok(Some((
            response.revision,
            std::mem::take(&mut self.fragments),
        )))
    }
}

/// Watch is the stream [`Client::watch`] returns; dropping it cancels the call.
pub type Watch = ResultStream<WatchUpdate>;

impl Client {
    /// watch follows WatchSessions as an endless stream that resumes by
    /// itself (see the [module](crate::watch) for what it yields). Dropping
    /// the stream cancels the call. `request.start_revision` 0 means from
    /// now; N replays from revision N; `include_initial` needs 0.
    pub fn watch(&self, request: WatchSessionsRequest) -> Watch {
        ResultStream::new(self.watch_stream(request, None))
    }

    /// watch_until is [`Client::watch`] that ends with DEADLINE_EXCEEDED at
    /// `deadline`: each (re)connection is sent with the time that remains,
    /// and no reconnection is made past it.
    pub fn watch_until(&self, request: WatchSessionsRequest, deadline: Instant) -> Watch {
        ResultStream::new(self.watch_stream(request, Some(deadline)))
    }

    fn watch_stream(
        &self,
        request: WatchSessionsRequest,
        deadline: Option<Instant>,
    ) -> impl Stream<Item = Result<WatchUpdate, Error>> + Send + 'static {
        let client = self.clone();
        async_stream::try_stream! {
            let mut cursor = WatchCursor::new(request, client.max_watch_revision_bytes())?;
            let backoff = client.watch_backoff();
            let mut failures: u32 = 0;
            loop {
                let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let opened = client
                    .guard(deadline, client.session_stub().watch_sessions(client.request(cursor.request(), remaining)))
                    .await?;
                match opened {
                    Err(status) => reconnect_or_fail(status)?,
                    Ok(response) => {
                        let mut stream = response.into_inner();
                        loop {
                            match client.guard(deadline, stream.message()).await? {
                                Ok(Some(response)) => {
                                    if response.r#type() == WatchResponseType::Created {
                                        failures = 0;
                                    }
                                    if let Some(update) = cursor.accept(response)? {
                                        yield update;
                                    }
                                }
                                // The server ended the stream: come back later.
                                Ok(None) => break,
                                Err(status) => {
                                    reconnect_or_fail(status)?;
                                    break;
                                }
                            }
                        }
                    }
                }
                cursor.disconnected();
                let delay = backoff.delay(failures);
                if deadline.is_some_and(|d| Instant::now() + delay >= d) {
                    Err(Error::local(Code::DeadlineExceeded, "the watch reached its deadline"))?;
                }
                client.guard(None, tokio::time::sleep(delay)).await?;
                failures = failures.saturating_add(1);
            }
        }
    }
}

/// reconnect_or_fail is Ok for a connection loss (UNAVAILABLE) and the
/// decoded error for anything else, which ends the watch.
fn reconnect_or_fail(status: tonic::Status) -> Result<(), Error> {
    let error = Error::from(status);
    if error.code() == Code::Unavailable {
        Ok(())
    } else {
        Err(error)
    }
}
