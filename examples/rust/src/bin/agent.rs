//! One turn of a small agent runtime kept in sessiond.
//!
//! It touches its session (creating it on first use), records the runtime
//! state RUNNING, appends the user's message, reads the last 20 messages as
//! the model's context, appends the assistant's reply with a tool call and
//! the tool's result, records the model usage, and sets the state back to
//! IDLE. Every write carries an id derived from the turn, so running the
//! same turn again (a crashed runtime retrying it) stores nothing twice.
//!
//!     agent [SESSION_ID] [TURN] [USER_TEXT]
//!
//! The server is $SESSIOND_ADDRESS (default 127.0.0.1:50051); the API key,
//! if the server wants one, is $SESSIOND_API_KEY.

use sessiond_client::v1::*;
use sessiond_client::{Client, DEFAULT_ADDRESS, Error, Reason};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let session_id = args.next().unwrap_or_else(|| "example-rust".into());
    let turn = args.next().unwrap_or_else(|| "1".into());
    let text = args.next().unwrap_or_else(|| "How many words are in this question?".into());

    let address = std::env::var("SESSIOND_ADDRESS").unwrap_or_else(|_| DEFAULT_ADDRESS.into());
    let mut builder = Client::builder(address);
    if let Ok(key) = std::env::var("SESSIOND_API_KEY") {
        builder = builder.api_key(key);
    }
    let client = builder.build()?;

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
    match touched {
        Ok(_) => {}
        Err(e) if e.reason() == Some(&Reason::SessionEnded) => {
            eprintln!("session {session_id} has ended; start another one");
            return Err(e);
        }
        Err(e) => return Err(e),
    }

    let turn_id = format!("turn-{turn}");
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
        })
        .await?;

    // The model's context: the last 20 messages, oldest first.
    let context = client
        .list_messages(ListMessagesRequest { session_id: session_id.clone(), last_n: 20, ..Default::default() })
        .await?
        .messages;
    println!("context: {} message(s), last seq {}", context.len(), context.last().map_or(0, |m| m.seq));

    // A stand-in for the model: it calls a word-counting tool and answers.
    let call_id = format!("{turn_id}-call");
    let words = text.split_whitespace().count();
    let replied = client
        .append_messages(AppendMessagesRequest {
            session_id: session_id.clone(),
            messages: vec![
                Message {
                    id: format!("{turn_id}-assistant"),
                    role: Role::Assistant as i32,
                    content: "Let me count.".into(),
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
                Message {
                    id: format!("{turn_id}-answer"),
                    role: Role::Assistant as i32,
                    content: format!("Your question has {words} words."),
                    ..Default::default()
                },
            ],
            expected_last_seq: None,
        })
        .await?;

    // Usage in micro-dollars; request_id makes a retried record count once.
    let recorded = client
        .record_usage(RecordUsageRequest {
            session_id: session_id.clone(),
            model: "example-model".into(),
            request_id: format!("{turn_id}-usage"),
            usage: Some(Usage { prompt_tokens: 120, completion_tokens: 30, cost_micros: 450, ..Default::default() }),
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
    println!(
        "session {}: {} messages, {} turns, {} tool calls, cost {} micro-dollars{}, state {}",
        session.id,
        session.message_count,
        session.turn_count,
        session.tool_call_count,
        session.usage.map_or(0, |u| u.cost_micros),
        if recorded.duplicate { " (usage already recorded)" } else { "" },
        session.runtime_state().as_str_name(),
    );
    println!("reply seqs: {:?}", replied.messages.iter().map(|m| m.seq).collect::<Vec<_>>());
    Ok(())
}
