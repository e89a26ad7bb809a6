//! The interop scenario (../SCENARIO.md) played through the Rust client layer
//! (`sessiond_client::Client`: its methods, typed errors, page stream and
//! resuming watch) against the server at $SESSIOND_ADDRESS. What it observed
//! goes to $SESSIOND_INTEROP_OUT for scripts/interop.sh to compare with the
//! Python reference; the guarantees are asserted here too, so a run alone
//! still fails on a broken server or client. Built as the `interop` test
//! target of client/rust.

mod layer;
mod rules;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::{Value, json};
use sessiond_client::v1::*;
use sessiond_client::{Client, Code, Error, Reason, Watch, WatchUpdate, code_name};
use tokio::time::Instant;

const WALK_SESSIONS: usize = 1000;
const WALK_PAGE_SIZE: i32 = 128;
const COMPACTION_POLLS: usize = 300;
const COMPACTION_POLL: Duration = Duration::from_millis(200);

/// serial makes the tests that run servers take turns: on a small machine a
/// scenario sharing the CPU with other servers could miss its 300 ms step.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
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

fn reason(e: &Error) -> &str {
    e.reason().map(Reason::as_str).unwrap_or("")
}

/// error is the line of a failed call: code, reason, sorted violated fields.
fn error(e: &Error) -> Value {
    let mut out = json!({"code": code_name(e.code()), "reason": reason(e)});
    if !e.field_violations().is_empty() {
        let mut fields: Vec<&str> = e
            .field_violations()
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        fields.sort();
        out["field_violations"] = json!(fields);
    }
    out
}

/// next reads the next update of a watch, failing the test on an error or an end.
async fn next(watch: &mut Watch) -> WatchUpdate {
    match watch.next().await {
        Some(Ok(update)) => update,
        Some(Err(e)) => panic!("the watch failed: {e}"),
        None => panic!("the watch ended"),
    }
}

fn user(id: &str, content: &str) -> Message {
    Message {
        id: id.into(),
        role: Role::User as i32,
        content: content.into(),
        ..Default::default()
    }
}

/// Delivery is what the watch of watch_restart was sent and delivered.
#[derive(Default)]
struct Delivery {
    /// written are the revisions of the step's writes, in order.
    written: Vec<i64>,
    /// delivered are the revisions the watch delivered, in order.
    delivered: Vec<i64>,
    events: Vec<Value>,
    created: usize,
}

struct Scenario {
    client: Client,
    address: String,
    run: String,
    labels: HashMap<String, String>,
    lines: Vec<String>,
    /// Revisions of this run's writes, in the order they were made.
    written: Vec<i64>,
    /// The revision of the run's first write (CreateSession a).
    first_revision: i64,
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

    fn id(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.run)
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
                id: self.id("a"),
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
            id: self.id(suffix),
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

    fn watch_filter(&self) -> Option<WatchFilter> {
        Some(WatchFilter {
            labels: self.labels.clone(),
            ..Default::default()
        })
    }

    fn session_filter(&self) -> Option<SessionFilter> {
        Some(SessionFilter {
            labels: self.labels.clone(),
            ..Default::default()
        })
    }

    fn watch_from(&self, start_revision: i64) -> Watch {
        self.client.watch(WatchSessionsRequest {
            start_revision,
            filter: self.watch_filter(),
            ..Default::default()
        })
    }

    async fn end(&self, client: &Client, suffix: &str, reason: &str) -> i64 {
        let ended = client
            .end_session(EndSessionRequest {
                session_id: self.id(suffix),
                status: SessionStatus::Completed as i32,
                reason: reason.into(),
                ended_at: None,
            })
            .await
            .expect("EndSession");
        ended.revision
    }

    async fn play(&mut self) {
        self.play_calls().await;
        self.play_watch_restart().await;
        self.play_append_unavailable().await;
        self.play_page_walk().await;
        self.play_compacted().await;
        self.play_relist().await;
    }

    async fn play_calls(&mut self) {
        let c = self.client.clone();
        let a = self.id("a");

        let created = c
            .create_session(CreateSessionRequest {
                session: Some(self.new_session("a")),
                ..Default::default()
            })
            .await
            .expect("CreateSession a");
        self.wrote(created.revision);
        self.first_revision = created.revision;
        let summary = self.session(created.session.as_ref());
        self.emit(
            "create_session",
            json!({"created": created.created, "revision_positive": created.revision > 0, "session": summary}),
        );

        let mut first_watch = self.watch_from(created.revision);
        let opened = next(&mut first_watch).await;
        assert!(matches!(opened, WatchUpdate::Created { .. }), "{opened:?}");

        let again = c
            .create_session(CreateSessionRequest {
                session: Some(self.new_session("a")),
                ..Default::default()
            })
            .await
            .expect("CreateSession a again");
        self.emit(
            "create_session_again",
            json!({"created": again.created, "revision": again.revision}),
        );

        let got = c
            .get_session(GetSessionRequest {
                session_id: a.clone(),
            })
            .await
            .expect("GetSession");
        let summary = self.session(got.session.as_ref());
        self.emit("get_session", json!({ "session": summary }));

        let appended = c
            .append_messages(AppendMessagesRequest {
                session_id: a.clone(),
                messages: vec![
                    user("m1", "hello"),
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
                ..Default::default()
            })
            .await
            .expect("AppendMessages");
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

        let retry = c
            .append_messages(AppendMessagesRequest {
                session_id: a.clone(),
                messages: vec![user("m1", "hello")],
                expected_last_seq: None,
                ..Default::default()
            })
            .await
            .expect("AppendMessages again");
        let seqs: Vec<i64> = retry.messages.iter().map(|m| m.seq).collect();
        self.emit(
            "append_retry",
            json!({"seqs": seqs, "revision": retry.revision}),
        );

        let mut flags = Vec::new();
        for suffix in ["b", "c", "d", "e", "f"] {
            let more = c
                .create_session(CreateSessionRequest {
                    session: Some(self.new_session(suffix)),
                    ..Default::default()
                })
                .await
                .expect("CreateSession");
            self.wrote(more.revision);
            flags.push(more.created);
        }
        self.emit("create_more", json!({ "created": flags }));

        // One call per page, not the walker: the pages are what is observed.
        let mut pages: Vec<Vec<String>> = Vec::new();
        let mut totals: Vec<i64> = Vec::new();
        let mut token = String::new();
        loop {
            let page = c
                .list_sessions(ListSessionsRequest {
                    filter: self.session_filter(),
                    order_by: SessionOrderField::StartedAt as i32,
                    ascending: true,
                    page_size: 4,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .expect("ListSessions");
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
        let recorded = c
            .record_usage(usage_request.clone())
            .await
            .expect("RecordUsage");
        self.wrote(recorded.revision);
        self.emit(
            "record_usage",
            json!({
                "duplicate": recorded.duplicate,
                "session_usage": usage(recorded.session_usage.as_ref()),
                "model_usage": usage(recorded.model_usage.as_ref()),
            }),
        );
        let duplicate = c
            .record_usage(usage_request)
            .await
            .expect("RecordUsage again");
        self.emit(
            "record_usage_retry",
            json!({"duplicate": duplicate.duplicate, "same_revision": duplicate.revision == recorded.revision}),
        );
        let errored = c
            .record_usage(RecordUsageRequest {
                session_id: a.clone(),
                model: "model-b".into(),
                request_id: "u2".into(),
                errored: true,
                usage: Some(Usage {
                    prompt_tokens: 10,
                    cost_micros: 7,
                    ..Default::default()
                }),
            })
            .await
            .expect("RecordUsage errored");
        self.wrote(errored.revision);
        self.emit(
            "record_usage_errored",
            json!({
                "duplicate": errored.duplicate,
                "session_usage": usage(errored.session_usage.as_ref()),
                "model_usage": usage(errored.model_usage.as_ref()),
            }),
        );

        let stats = c
            .get_stats(GetStatsRequest {
                filter: self.session_filter(),
            })
            .await
            .expect("GetStats")
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

        let missing = c
            .get_session(GetSessionRequest {
                session_id: self.id("missing"),
            })
            .await
            .expect_err("GetSession of a missing session succeeded");
        let matched =
            missing.code() == Code::NotFound && missing.reason() == Some(&Reason::SessionNotFound);
        let mut line = error(&missing);
        line["matched"] = json!(matched);
        self.emit("error_not_found", line);

        let invalid = c
            .list_sessions(ListSessionsRequest {
                page_size: -1,
                ..Default::default()
            })
            .await
            .expect_err("ListSessions with page_size -1 succeeded");
        self.emit("error_invalid_argument", error(&invalid));

        // A watch with a deadline: the Rust layer's watch_until.
        let mut idle: Watch = c.watch_until(
            WatchSessionsRequest {
                filter: Some(WatchFilter {
                    session_ids: vec![self.id("idle")],
                    ..Default::default()
                }),
                ..Default::default()
            },
            Instant::now() + Duration::from_millis(300),
        );
        let mut first_type = "";
        let ended = loop {
            match idle.next().await {
                Some(Ok(update)) => {
                    if first_type.is_empty() {
                        first_type = update.response_type().as_str_name();
                    }
                }
                Some(Err(e)) => break e,
                None => panic!("a watch with a deadline ended without an error"),
            }
        };
        self.emit(
            "deadline",
            json!({"first_response": first_type, "code": code_name(ended.code())}),
        );

        // Watch: the first stream up to the append, closed, then a second one
        // from the last revision seen + 1.
        let mut seen: Vec<Value> = Vec::new();
        let mut revisions: Vec<i64> = Vec::new();
        while revisions.last().is_none_or(|last| *last < append_revision) {
            let update = next(&mut first_watch).await;
            self.take(update, &mut revisions, &mut seen);
        }
        drop(first_watch); // cancels the call
        let last_seen = *revisions.last().unwrap();

        let mut second = self.watch_from(last_seen + 1);
        let opened = next(&mut second).await;
        assert!(matches!(opened, WatchUpdate::Created { .. }), "{opened:?}");
        let ended = self.end(&c, "b", "done").await;
        self.wrote(ended);
        let last_written = *self.written.last().unwrap();
        while *revisions.last().unwrap() < last_written {
            let update = next(&mut second).await;
            self.take(update, &mut revisions, &mut seen);
        }
        drop(second);
        assert_eq!(
            revisions, self.written,
            "the watches saw exactly this run's writes, once, in order"
        );
        self.emit(
            "watch",
            json!({"resumed": last_seen < last_written, "events": seen}),
        );
    }

    /// take records the events of an update as [index among this run's
    /// writes, type, session, message count], asserting revision order.
    fn take(&self, update: WatchUpdate, revisions: &mut Vec<i64>, seen: &mut Vec<Value>) {
        let WatchUpdate::Events { events, .. } = update else {
            panic!("expected events, got {update:?}");
        };
        for e in events {
            if revisions.last() != Some(&e.revision) {
                if let Some(last) = revisions.last() {
                    assert!(e.revision > *last, "revision {} after {last}", e.revision);
                }
                revisions.push(e.revision);
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
            seen.push(json!([
                index,
                e.r#type().as_str_name(),
                self.short(&e.session_id),
                e.messages.len()
            ]));
        }
    }

    async fn play_watch_restart(&mut self) {
        let a = self.id("a");
        let mut watch: Watch = self.client.watch(WatchSessionsRequest {
            filter: self.watch_filter(),
            include_initial: true,
            ..Default::default()
        });
        let mut seen = Delivery::default();
        let mut initial: Vec<(String, String)> = Vec::new();
        loop {
            match next(&mut watch).await {
                WatchUpdate::Created { .. } => seen.created += 1,
                WatchUpdate::Initial { events } => initial.extend(events.iter().map(|e| {
                    let status = e.session.as_ref().map(|s| s.status()).unwrap_or_default();
                    (self.short(&e.session_id), status.as_str_name().to_string())
                })),
                WatchUpdate::InitialComplete { .. } => break,
                other => panic!("before INITIAL_COMPLETE: {other:?}"),
            }
        }

        let running = self
            .client
            .set_runtime_state(SetRuntimeStateRequest {
                session_id: a.clone(),
                state: RuntimeState::Running as i32,
                ..Default::default()
            })
            .await
            .expect("SetRuntimeState RUNNING");
        seen.written.push(running.revision);
        self.read_until(&mut watch, running.revision, &mut seen)
            .await;

        // The watch is not read while the server is killed and restarted.
        let restart = std::env::var("SESSIOND_INTEROP_RESTART").expect("SESSIOND_INTEROP_RESTART");
        let status = tokio::process::Command::new(&restart)
            .status()
            .await
            .expect("the restart command");
        assert!(status.success(), "the restart command failed: {status}");

        // A runtime that restarted with the server has a new client.
        let writer = Client::new(self.address.clone()).expect("a client");
        let idle = writer
            .set_runtime_state(SetRuntimeStateRequest {
                session_id: a.clone(),
                state: RuntimeState::Idle as i32,
                ..Default::default()
            })
            .await
            .expect("SetRuntimeState IDLE");
        seen.written.push(idle.revision);
        let appended = writer
            .append_messages(AppendMessagesRequest {
                session_id: a.clone(),
                messages: vec![user("m4", "after restart")],
                expected_last_seq: None,
                ..Default::default()
            })
            .await
            .expect("AppendMessages m4");
        seen.written.push(appended.revision);
        seen.written.push(self.end(&writer, "c", "").await);
        drop(writer);
        let last = *seen.written.last().unwrap();
        self.read_until(&mut watch, last, &mut seen).await;
        drop(watch);
        assert_eq!(seen.created, 1, "CREATED delivered {} times", seen.created);
        assert_eq!(
            seen.delivered, seen.written,
            "the watch delivered each write once across the restart"
        );
        initial.sort();
        self.emit(
            "watch_restart",
            json!({"initial": initial, "events": seen.events}),
        );
    }

    /// read_until reads the watch until `revision` is delivered, recording
    /// each event as [index among `seen.written`, type, session, messages].
    async fn read_until(&self, watch: &mut Watch, revision: i64, seen: &mut Delivery) {
        while seen.delivered.last().is_none_or(|last| *last < revision) {
            match next(watch).await {
                WatchUpdate::Created { .. } => seen.created += 1,
                WatchUpdate::Events { events, .. } => {
                    for e in events {
                        if seen.delivered.last() != Some(&e.revision) {
                            seen.delivered.push(e.revision);
                        }
                        let index = seen
                            .written
                            .iter()
                            .position(|w| *w == e.revision)
                            .unwrap_or_else(|| {
                                panic!("event of revision {} that was not written", e.revision)
                            });
                        seen.events.push(json!([
                            index,
                            e.r#type().as_str_name(),
                            self.short(&e.session_id),
                            e.messages.len()
                        ]));
                    }
                }
                WatchUpdate::Progress { .. } => {}
                other => panic!("after INITIAL_COMPLETE: {other:?}"),
            }
        }
    }

    async fn play_append_unavailable(&mut self) {
        let a = self.id("a");
        let proxy = std::env::var("SESSIOND_INTEROP_PROXY").expect("SESSIOND_INTEROP_PROXY");
        let lossy = Client::new(proxy).expect("a client of the proxy");
        let appended = lossy
            .append_messages(AppendMessagesRequest {
                session_id: a.clone(),
                messages: vec![
                    user("m5", "once"),
                    Message {
                        id: "m6".into(),
                        role: Role::Assistant as i32,
                        content: "stored once".into(),
                        ..Default::default()
                    },
                ],
                expected_last_seq: None,
                ..Default::default()
            })
            .await
            .expect("AppendMessages through the lossy proxy");
        lossy.close();
        let listed = self
            .client
            .list_messages(ListMessagesRequest {
                session_id: a.clone(),
                last_n: 10,
                ..Default::default()
            })
            .await
            .expect("ListMessages")
            .messages;
        let stored: Vec<usize> = ["m5", "m6"]
            .iter()
            .map(|wanted| listed.iter().filter(|m| m.id == *wanted).count())
            .collect();
        let count = self
            .client
            .get_session(GetSessionRequest { session_id: a })
            .await
            .expect("GetSession")
            .session
            .expect("a session")
            .message_count;
        let seqs: Vec<i64> = appended.messages.iter().map(|m| m.seq).collect();
        self.emit(
            "append_unavailable",
            json!({"seqs": seqs, "revision": appended.revision, "stored": stored, "message_count": count}),
        );
    }

    async fn play_page_walk(&mut self) {
        let walk_labels = HashMap::from([("interop_walk".to_string(), self.run.clone())]);
        let ids: Vec<String> = (0..WALK_SESSIONS)
            .map(|i| self.id(&format!("w{i:04}")))
            .collect();
        for id in &ids {
            self.client
                .create_session(CreateSessionRequest {
                    session: Some(Session {
                        id: id.clone(),
                        kind: SessionKind::Autonomous as i32,
                        channel: "walk".into(),
                        agent: "interop-agent".into(),
                        labels: walk_labels.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .expect("CreateSession for the walk");
        }
        let walked: Vec<String> = self
            .client
            .sessions(ListSessionsRequest {
                filter: Some(SessionFilter {
                    labels: walk_labels,
                    ..Default::default()
                }),
                order_by: SessionOrderField::StartedAt as i32,
                ascending: true,
                page_size: WALK_PAGE_SIZE,
                page_token: String::new(),
                ..Default::default()
            })
            .map(|s| s.expect("a page of the walk").id)
            .collect()
            .await;
        let unique: HashSet<&String> = walked.iter().collect();
        self.emit(
            "page_walk",
            json!({"count": walked.len(), "unique": unique.len(), "in_order": walked == ids}),
        );
    }

    async fn play_compacted(&mut self) {
        for _ in 0..COMPACTION_POLLS {
            let mut watch = self.watch_from(self.first_revision);
            let first = next(&mut watch).await;
            let WatchUpdate::Created {
                compacted_revision, ..
            } = first
            else {
                panic!("the first update is not CREATED: {first:?}");
            };
            if compacted_revision < self.first_revision {
                drop(watch); // the compactor has not run yet
                tokio::time::sleep(COMPACTION_POLL).await;
                continue;
            }
            let e = match watch.next().await {
                Some(Err(e)) => e,
                other => panic!("a compacted watch delivered {other:?}"),
            };
            assert!(
                watch.next().await.is_none(),
                "the watch ends after its error"
            );
            let relist = e.relist_required();
            self.emit(
                "compacted",
                json!({
                    "first_response": first.response_type().as_str_name(),
                    "code": code_name(e.code()),
                    "reason": reason(&e),
                    "relist": relist.is_some(),
                    "compacted_at_or_after_start": relist.unwrap_or(-1) >= self.first_revision,
                }),
            );
            return;
        }
        panic!("the change log was never compacted past the first revision");
    }

    async fn play_relist(&mut self) {
        let listed = self
            .client
            .list_sessions(ListSessionsRequest {
                filter: self.session_filter(),
                ..Default::default()
            })
            .await
            .expect("ListSessions");
        let mut sessions: Vec<(String, &str)> = listed
            .sessions
            .iter()
            .map(|s| (self.short(&s.id), s.status().as_str_name()))
            .collect();
        sessions.sort();
        let mut watch = self.watch_from(listed.revision + 1);
        let opened = next(&mut watch).await;
        assert!(matches!(opened, WatchUpdate::Created { .. }), "{opened:?}");
        let ended = self.end(&self.client, "d", "").await;
        let mut events: Vec<Value> = Vec::new();
        loop {
            let WatchUpdate::Events {
                revision,
                events: batch,
            } = next(&mut watch).await
            else {
                continue;
            };
            events.extend(
                batch
                    .iter()
                    .map(|e| json!([e.r#type().as_str_name(), self.short(&e.session_id)])),
            );
            if revision >= ended {
                break;
            }
        }
        self.emit("relist", json!({"sessions": sessions, "events": events}));
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
    let _serial = serial().await;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let run = format!(
        "interop-rust-{:08x}",
        nanos ^ std::process::id().rotate_left(16)
    );
    let mut scenario = Scenario {
        client: Client::new(address.clone()).expect("a client"),
        address,
        labels: HashMap::from([("interop_run".to_string(), run.clone())]),
        run,
        lines: Vec::new(),
        written: Vec::new(),
        first_revision: 0,
    };
    // The lines are written even when a step fails, so compare.py shows where.
    let outcome = tokio::spawn(async move {
        let played = std::panic::AssertUnwindSafe(async {
            scenario.play().await;
        });
        let result = futures_util::FutureExt::catch_unwind(played).await;
        (scenario.lines, result)
    })
    .await
    .expect("the scenario task");
    if let Ok(path) = std::env::var("SESSIOND_INTEROP_OUT") {
        let mut f = std::fs::File::create(path).expect("the output file");
        for line in &outcome.0 {
            writeln!(f, "{line}").expect("a write");
        }
    }
    if let Err(panic) = outcome.1 {
        std::panic::resume_unwind(panic);
    }
}
