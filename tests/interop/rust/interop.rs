//! The interop scenario (../SCENARIO.md) with the generated Rust client
//! against the server at $SESSIOND_ADDRESS; what it observed goes to
//! $SESSIOND_INTEROP_OUT for scripts/interop.sh to compare with the Python
//! reference. Built as the `interop` test target of client/rust.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sessiond_client::StatusExt;
use sessiond_client::tonic::transport::Channel;
use sessiond_client::tonic::{Code, Request, Status, Streaming};
use sessiond_client::v1::message_service_client::MessageServiceClient;
use sessiond_client::v1::session_service_client::SessionServiceClient;
use sessiond_client::v1::stats_service_client::StatsServiceClient;
use sessiond_client::v1::*;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// request wraps a message with the call deadline (the grpc-timeout header).
fn request<T>(message: T, timeout: Duration) -> Request<T> {
    let mut r = Request::new(message);
    r.set_timeout(timeout);
    r
}

/// code_name spells a code as in the gRPC spec (NOT_FOUND), like Python's.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn usage(u: Option<&Usage>) -> Value {
    let u = u.cloned().unwrap_or_default();
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "reasoning_tokens": u.reasoning_tokens,
        "cache_read_tokens": u.cache_read_tokens,
        "cache_write_tokens": u.cache_write_tokens,
        "cost_micros": u.cost_micros,
        "request_count": u.request_count,
        "error_count": u.error_count,
        "total_tokens": u.total_tokens,
    })
}

struct Scenario {
    sessions: SessionServiceClient<Channel>,
    messages: MessageServiceClient<Channel>,
    stats: StatsServiceClient<Channel>,
    run: String,
    labels: HashMap<String, String>,
    lines: Vec<String>,
    /// Revisions of this run's writes, in the order they were made.
    written: Vec<i64>,
    seen: Vec<Value>,
    revisions: Vec<i64>,
}

impl Scenario {
    fn emit(&mut self, step: &str, mut fields: Value) {
        fields["step"] = json!(step);
        let line = fields.to_string(); // serde_json's map is sorted by key
        println!("{line}");
        self.lines.push(line);
    }

    fn short(&self, id: &str) -> String {
        id.strip_prefix(&format!("{}-", self.run))
            .unwrap_or_else(|| panic!("session {id} is not of this run"))
            .to_string()
    }

    fn wrote(&mut self, revision: i64) {
        assert!(
            revision > 0,
            "a write that changed something has a revision"
        );
        self.written.push(revision);
    }

    fn session(&self, s: Option<&Session>) -> Value {
        let s = s.expect("a session");
        json!({
            "id": self.short(&s.id),
            "tenant": s.tenant,
            "kind": s.kind().as_str_name(),
            "channel": s.channel,
            "agent": s.agent,
            "model": s.model,
            "display_name": s.display_name,
            "status": s.status().as_str_name(),
            "runtime_state": s.runtime_state().as_str_name(),
            "message_count": s.message_count,
            "turn_count": s.turn_count,
            "tool_call_count": s.tool_call_count,
            "last_seq": s.last_seq,
            "usage": usage(s.usage.as_ref()),
            "has_started_at": s.started_at.is_some(),
            "has_etag": !s.etag.is_empty(),
        })
    }

    fn new_session(&self, suffix: &str) -> Session {
        if suffix == "a" {
            return Session {
                id: format!("{}-a", self.run),
                kind: SessionKind::Interactive as i32,
                channel: "cli".into(),
                agent: "interop-agent".into(),
                model: "model-a".into(),
                display_name: "A".into(),
                labels: self.labels.clone(),
                ..Default::default()
            };
        }
        Session {
            id: format!("{}-{suffix}", self.run),
            kind: SessionKind::Autonomous as i32,
            channel: "discord.interop".into(),
            agent: "interop-agent".into(),
            model: "model-b".into(),
            display_name: suffix.to_uppercase(),
            goal: "prove interop".into(),
            labels: self.labels.clone(),
            ..Default::default()
        }
    }

    /// rpc_error reads the code and the google.rpc.Status details.
    fn rpc_error(status: &Status) -> Value {
        let details = status.get_error_details();
        let info = details
            .error_info()
            .expect("an ErrorInfo in the status details");
        let mut out = json!({
            "code": code_name(status.code()),
            "domain": info.domain,
            "reason": info.reason,
        });
        if let Some(bad) = details.bad_request() {
            let mut fields: Vec<&str> = bad
                .field_violations
                .iter()
                .map(|v| v.field.as_str())
                .collect();
            fields.sort();
            out["field_violations"] = json!(fields);
        }
        out
    }

    fn take(&mut self, r: WatchSessionsResponse) {
        assert_eq!(r.r#type(), WatchResponseType::Events, "{r:?}");
        for e in r.events {
            if self.revisions.last() != Some(&e.revision) {
                if let Some(last) = self.revisions.last() {
                    assert!(e.revision > *last, "revision {} after {last}", e.revision);
                }
                self.revisions.push(e.revision);
            }
            let index = self
                .written
                .iter()
                .position(|w| *w == e.revision)
                .unwrap_or_else(|| {
                    panic!(
                        "event of revision {} that this run did not write",
                        e.revision
                    )
                });
            let event = json!([
                index,
                e.r#type().as_str_name(),
                self.short(&e.session_id),
                e.messages.len()
            ]);
            self.seen.push(event);
        }
    }

    async fn play(&mut self) -> Result<(), Status> {
        let a = format!("{}-a", self.run);

        let created = self
            .sessions
            .create_session(request(
                CreateSessionRequest {
                    session: Some(self.new_session("a")),
                },
                CALL_TIMEOUT,
            ))
            .await?
            .into_inner();
        self.wrote(created.revision);
        let summary = self.session(created.session.as_ref());
        self.emit(
            "create_session",
            json!({"created": created.created, "revision_positive": created.revision > 0, "session": summary}),
        );

        let watch_filter = WatchFilter {
            labels: self.labels.clone(),
            ..Default::default()
        };
        let mut first_watch: Streaming<WatchSessionsResponse> = self
            .sessions
            .watch_sessions(request(
                WatchSessionsRequest {
                    start_revision: created.revision,
                    filter: Some(watch_filter.clone()),
                    ..Default::default()
                },
                Duration::from_secs(60),
            ))
            .await?
            .into_inner();
        let opened = first_watch
            .message()
            .await?
            .expect("a first watch response");
        assert_eq!(opened.r#type(), WatchResponseType::Created);

        let again = self
            .sessions
            .create_session(request(
                CreateSessionRequest {
                    session: Some(self.new_session("a")),
                },
                CALL_TIMEOUT,
            ))
            .await?
            .into_inner();
        self.emit(
            "create_session_again",
            json!({"created": again.created, "revision": again.revision}),
        );

        let got = self
            .sessions
            .get_session(request(
                GetSessionRequest {
                    session_id: a.clone(),
                },
                CALL_TIMEOUT,
            ))
            .await?
            .into_inner();
        let summary = self.session(got.session.as_ref());
        self.emit("get_session", json!({ "session": summary }));

        let appended = self
            .messages
            .append_messages(request(
                AppendMessagesRequest {
                    session_id: a.clone(),
                    messages: vec![
                        Message {
                            id: "m1".into(),
                            role: Role::User as i32,
                            content: "hello".into(),
                            ..Default::default()
                        },
                        Message {
                            id: "m2".into(),
                            role: Role::Assistant as i32,
                            content: "calling a tool".into(),
                            tool_calls: vec![ToolCall {
                                id: "call-1".into(),
                                name: "search".into(),
                                arguments_json: r#"{"q":"x"}"#.into(),
                            }],
                            ..Default::default()
                        },
                        Message {
                            id: "m3".into(),
                            role: Role::Tool as i32,
                            content: "result".into(),
                            name: "search".into(),
                            tool_call_id: "call-1".into(),
                            ..Default::default()
                        },
                    ],
                    expected_last_seq: None,
                },
                CALL_TIMEOUT,
            ))
            .await?
            .into_inner();
        self.wrote(appended.revision);
        let append_revision = appended.revision;
        let seqs: Vec<i64> = appended.messages.iter().map(|m| m.seq).collect();
        let roles: Vec<&str> = appended
            .messages
            .iter()
            .map(|m| m.role().as_str_name())
            .collect();
        let summary = self.session(appended.session.as_ref());
        self.emit(
            "append_messages",
            json!({"seqs": seqs, "roles": roles, "session": summary}),
        );

        let retry = self
            .messages
            .append_messages(request(
                AppendMessagesRequest {
                    session_id: a.clone(),
                    messages: vec![Message {
                        id: "m1".into(),
                        role: Role::User as i32,
                        content: "hello".into(),
                        ..Default::default()
                    }],
                    expected_last_seq: None,
                },
                CALL_TIMEOUT,
            ))
            .await?
            .into_inner();
        let seqs: Vec<i64> = retry.messages.iter().map(|m| m.seq).collect();
        self.emit(
            "append_retry",
            json!({"seqs": seqs, "revision": retry.revision}),
        );

        let mut flags = Vec::new();
        for suffix in ["b", "c", "d", "e", "f"] {
            let more = self
                .sessions
                .create_session(request(
                    CreateSessionRequest {
                        session: Some(self.new_session(suffix)),
                    },
                    CALL_TIMEOUT,
                ))
                .await?
                .into_inner();
            self.wrote(more.revision);
            flags.push(more.created);
        }
        self.emit("create_more", json!({ "created": flags }));

        let mut pages: Vec<Vec<String>> = Vec::new();
        let mut totals: Vec<i64> = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .sessions
                .list_sessions(request(
                    ListSessionsRequest {
                        filter: Some(SessionFilter {
                            labels: self.labels.clone(),
                            ..Default::default()
                        }),
                        order_by: SessionOrderField::StartedAt as i32,
                        ascending: true,
                        page_size: 4,
                        page_token: token.clone(),
                    },
                    CALL_TIMEOUT,
                ))
                .await?
                .into_inner();
            pages.push(page.sessions.iter().map(|s| self.short(&s.id)).collect());
            totals.push(page.total_size);
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
            assert!(pages.len() < 10, "pagination does not end");
        }
        self.emit(
            "list_sessions",
            json!({"pages": pages, "total_size": totals}),
        );

        let usage_request = RecordUsageRequest {
            session_id: a.clone(),
            model: "model-a".into(),
            request_id: "u1".into(),
            usage: Some(Usage {
                prompt_tokens: 100,
                completion_tokens: 50,
                reasoning_tokens: 10,
                cache_read_tokens: 20,
                cache_write_tokens: 5,
                cost_micros: 1234,
                ..Default::default()
            }),
            errored: false,
        };
        let recorded = self
            .stats
            .record_usage(request(usage_request.clone(), CALL_TIMEOUT))
            .await?
            .into_inner();
        self.wrote(recorded.revision);
        self.emit(
            "record_usage",
            json!({
                "duplicate": recorded.duplicate,
                "session_usage": usage(recorded.session_usage.as_ref()),
                "model_usage": usage(recorded.model_usage.as_ref()),
            }),
        );
        let duplicate = self
            .stats
            .record_usage(request(usage_request, CALL_TIMEOUT))
            .await?
            .into_inner();
        self.emit(
            "record_usage_retry",
            json!({"duplicate": duplicate.duplicate, "same_revision": duplicate.revision == recorded.revision}),
        );
        let errored = self
            .stats
            .record_usage(request(
                RecordUsageRequest {
                    session_id: a.clone(),
                    model: "model-b".into(),
                    request_id: "u2".into(),
                    errored: true,
                    usage: Some(Usage {
                        prompt_tokens: 10,
                        cost_micros: 7,
                        ..Default::default()
                    }),
                },
                CALL_TIMEOUT,
            ))
            .await?
            .into_inner();
        self.wrote(errored.revision);
        self.emit(
            "record_usage_errored",
            json!({
                "duplicate": errored.duplicate,
                "session_usage": usage(errored.session_usage.as_ref()),
                "model_usage": usage(errored.model_usage.as_ref()),
            }),
        );

        let stats = self
            .stats
            .get_stats(request(
                GetStatsRequest {
                    filter: Some(SessionFilter {
                        labels: self.labels.clone(),
                        ..Default::default()
                    }),
                },
                CALL_TIMEOUT,
            ))
            .await?
            .into_inner()
            .stats
            .expect("stats");
        self.emit(
            "get_stats",
            json!({
                "usage": usage(stats.usage.as_ref()),
                "session_count": stats.session_count,
                "average_cost_micros": stats.average_cost_micros,
                "active_count": stats.active_count,
                "running_count": stats.running_count,
                "abandoned_count": stats.abandoned_count,
                "completed_count": stats.completed_count,
                "failed_count": stats.failed_count,
                "cancelled_count": stats.cancelled_count,
                "unknown_count": stats.unknown_count,
                "message_count": stats.message_count,
                "success_rate": stats.success_rate,
            }),
        );

        let missing = self
            .sessions
            .get_session(request(
                GetSessionRequest {
                    session_id: format!("{}-missing", self.run),
                },
                CALL_TIMEOUT,
            ))
            .await
            .expect_err("GetSession of a missing session succeeded");
        self.emit("error_not_found", Self::rpc_error(&missing));

        let invalid = self
            .sessions
            .list_sessions(request(
                ListSessionsRequest {
                    page_size: -1,
                    ..Default::default()
                },
                CALL_TIMEOUT,
            ))
            .await
            .expect_err("ListSessions with page_size -1 succeeded");
        self.emit("error_invalid_argument", Self::rpc_error(&invalid));

        {
            let mut first_type = String::new();
            let result = async {
                let mut idle = self
                    .sessions
                    .watch_sessions(request(
                        WatchSessionsRequest {
                            filter: Some(WatchFilter {
                                session_ids: vec![format!("{}-idle", self.run)],
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        Duration::from_millis(300),
                    ))
                    .await?
                    .into_inner();
                while let Some(r) = idle.message().await? {
                    if first_type.is_empty() {
                        first_type = r.r#type().as_str_name().to_string();
                    }
                }
                Ok::<(), Status>(())
            }
            .await;
            let err = result.expect_err("a watch with a deadline ended without an error");
            self.emit(
                "deadline",
                json!({"first_response": first_type, "code": code_name(err.code())}),
            );
        }

        // Watch: the first stream up to the append, cancelled, then resumed.
        while self
            .revisions
            .last()
            .is_none_or(|last| *last < append_revision)
        {
            let r = first_watch.message().await?.expect("the first watch ended");
            self.take(r);
        }
        drop(first_watch); // cancels the call
        let last_seen = *self.revisions.last().unwrap();

        let mut second_watch = self
            .sessions
            .watch_sessions(request(
                WatchSessionsRequest {
                    start_revision: last_seen + 1,
                    filter: Some(watch_filter),
                    ..Default::default()
                },
                Duration::from_secs(60),
            ))
            .await?
            .into_inner();
        let opened = second_watch
            .message()
            .await?
            .expect("a first watch response");
        assert_eq!(opened.r#type(), WatchResponseType::Created);
        let ended = self
            .sessions
            .end_session(request(
                EndSessionRequest {
                    session_id: format!("{}-b", self.run),
                    status: SessionStatus::Completed as i32,
                    reason: "done".into(),
                    ended_at: None,
                },
                CALL_TIMEOUT,
            ))
            .await?
            .into_inner();
        self.wrote(ended.revision);
        let last_written = *self.written.last().unwrap();
        while *self.revisions.last().unwrap() < last_written {
            let r = second_watch
                .message()
                .await?
                .expect("the second watch ended");
            self.take(r);
        }
        drop(second_watch);
        assert_eq!(
            self.revisions, self.written,
            "the watches saw exactly this run's writes, once, in order"
        );
        let events = std::mem::take(&mut self.seen);
        self.emit(
            "watch",
            json!({"resumed": last_seen < last_written, "events": events}),
        );
        Ok(())
    }
}

#[tokio::test]
async fn interop_scenario_against_the_python_server() {
    let Ok(address) = std::env::var("SESSIOND_ADDRESS") else {
        eprintln!(
            "skipped: SESSIOND_ADDRESS is not set (scripts/interop.sh starts a server and sets it)"
        );
        return;
    };
    let channel = Channel::from_shared(format!("http://{address}"))
        .expect("an address")
        .connect()
        .await
        .expect("a connection to the server");
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let run = format!(
        "interop-rust-{:08x}",
        nanos ^ std::process::id().rotate_left(16)
    );
    let mut scenario = Scenario {
        sessions: SessionServiceClient::new(channel.clone()),
        messages: MessageServiceClient::new(channel.clone()),
        stats: StatsServiceClient::new(channel),
        labels: HashMap::from([("interop_run".to_string(), run.clone())]),
        run,
        lines: Vec::new(),
        written: Vec::new(),
        seen: Vec::new(),
        revisions: Vec::new(),
    };
    let result = scenario.play().await;
    if let Ok(path) = std::env::var("SESSIOND_INTEROP_OUT") {
        let mut f = std::fs::File::create(path).expect("the output file");
        for line in &scenario.lines {
            writeln!(f, "{line}").expect("a write");
        }
    }
    if let Err(status) = result {
        panic!("call failed: {status:?}");
    }
}
