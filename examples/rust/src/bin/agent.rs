//! One turn of a small agent runtime kept in sessiond.
//!
//! It touches its session (creating it on first use), records the runtime
//! state RUNNING, appends the user's message, reads the last 20 messages as
//! the model's context, appends the assistant's reply with a tool call and
//! the tool's result, records the model usage, and sets the state back to
//! IDLE. Every write carries an id derived from the turn, so running the
//! same turn again (a runtime that crashed mid-turn and retries it) stores
//! nothing twice.
//!
//!     agent [--address HOST:PORT] [--session ID] [--turn TURN] [USER_TEXT]
//!
//! The session defaults to $SESSIOND_EXAMPLE_SESSION, else `example:rust`.

use sessiond_client::v1::*;
use sessiond_client::{Error, Reason};
use sessiond_examples::{Args, short_name};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse(&[]);
    let session_id = args
        .value("session", "SESSIOND_EXAMPLE_SESSION")
        .unwrap_or_else(|| "example:rust".into());
    let turn_id = args
        .value("turn", "SESSIOND_EXAMPLE_TURN")
        .unwrap_or_else(|| "t1".into());
    let text = args
        .positional
        .first()
        .cloned()
        .unwrap_or_else(|| "How many words are in this question?".into());
    let client = args.client()?;

    // The session exists from the first turn on; later turns only touch it.
    let touched = client
        .touch_session(TouchSessionRequest {
            session: Some(Session {
                id: session_id.clone(),
                kind: SessionKind::Interactive as i32,
                channel: "cli".into(),
                agent: "example-agent".into(),
                model: "example-model".into(),
                ..Default::default()
            }),
        })
        .await;
    if let Err(e) = touched {
        if e.reason() == Some(&Reason::SessionEnded) {
            eprintln!("session {session_id} has ended; start another one");
        }
        return Err(e);
    }

    client
        .set_runtime_state(SetRuntimeStateRequest {
            session_id: session_id.clone(),
            state: RuntimeState::Running as i32,
            turn_id: turn_id.clone(),
            ..Default::default()
        })
        .await?;

    client
        .append_messages(AppendMessagesRequest {
            session_id: session_id.clone(),
            messages: vec![Message {
                id: format!("{turn_id}-user"),
                role: Role::User as i32,
                content: text.clone(),
                ..Default::default()
            }],
            expected_last_seq: None,
            ..Default::default()
        })
        .await?;

    // The model's context: the last 20 messages, oldest first.
    let context = client
        .list_messages(ListMessagesRequest {
            session_id: session_id.clone(),
            last_n: 20,
            ..Default::default()
        })
        .await?
        .messages;
    println!(
        "context: {} message(s), the last at seq {}",
        context.len(),
        context.last().map_or(0, |m| m.seq)
    );

    // A stand-in for the model: it calls a word-counting tool.
    let call_id = format!("{turn_id}-call");
    let words = text.split_whitespace().count();
    let replied = client
        .append_messages(AppendMessagesRequest {
            session_id: session_id.clone(),
            messages: vec![
                Message {
                    id: format!("{turn_id}-assistant"),
                    role: Role::Assistant as i32,
                    content: "Let me count the words.".into(),
                    tool_calls: vec![ToolCall {
                        id: call_id.clone(),
                        name: "count_words".into(),
                        arguments_json: format!("{{\"text\":{text:?}}}"),
                    }],
                    ..Default::default()
                },
                Message {
                    id: format!("{turn_id}-tool"),
                    role: Role::Tool as i32,
                    name: "count_words".into(),
                    tool_call_id: call_id,
                    content: words.to_string(),
                    ..Default::default()
                },
            ],
            expected_last_seq: None,
            ..Default::default()
        })
        .await?;

    // Usage in micro-dollars; request_id makes a repeated record count once.
    let recorded = client
        .record_usage(RecordUsageRequest {
            session_id: session_id.clone(),
            model: "example-model".into(),
            request_id: format!("{turn_id}-usage"),
            usage: Some(Usage {
                prompt_tokens: 812,
                completion_tokens: 95,
                cost_micros: 3_180,
                ..Default::default()
            }),
            errored: false,
        })
        .await?;

    let idle = client
        .set_runtime_state(SetRuntimeStateRequest {
            session_id: session_id.clone(),
            state: RuntimeState::Idle as i32,
            ..Default::default()
        })
        .await?;

    let session = idle.session.unwrap_or_default();
    let usage = session.usage.unwrap_or_default();
    println!(
        "{}: {} messages, {} tool call(s), {} tokens, {} micro-dollars{}, {}; reply at seqs {:?}",
        session.id,
        session.message_count,
        session.tool_call_count,
        usage.total_tokens,
        usage.cost_micros,
        if recorded.duplicate {
            " (usage already recorded)"
        } else {
            ""
        },
        short_name(session.runtime_state().as_str_name(), "RUNTIME_STATE_"),
        replied.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
    );
    Ok(())
}
