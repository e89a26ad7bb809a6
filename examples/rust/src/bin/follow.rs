//! Follows sessions over a watch and prints every change of status or
//! runtime state, as a dashboard or a supervisor would.
//!
//! It starts from the current state of the sessions (include_initial), says
//! "watching" once that state is complete, then prints one line per change.
//! The client's watch reconnects by itself after a lost connection or a
//! server restart, with no gap and no repeat; when the server no longer
//! holds the revision to resume from, this program starts over from the
//! current state, as the error asks.
//!
//!     follow [--address HOST:PORT] [--session ID] [--until-idle]
//!
//! The session defaults to $SESSIOND_EXAMPLE_SESSION, else every session.
//! With --until-idle it exits once the session has gone from running back
//! to idle.

use std::collections::HashMap;

use futures_util::StreamExt;
use sessiond_client::v1::*;
use sessiond_client::{Error, WatchUpdate};
use sessiond_examples::{Args, short_name};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse(&["until-idle"]);
    let session_id = args.value("session", "SESSIOND_EXAMPLE_SESSION");
    let until_idle = args.switch("until-idle");
    let client = args.client()?;
    let filter = WatchFilter {
        session_ids: session_id.into_iter().collect(),
        ..Default::default()
    };

    // What was printed last per session: (status, runtime state).
    let mut known: HashMap<String, (String, String)> = HashMap::new();
    let mut was_running = false;
    loop {
        let mut watch = client.watch(WatchSessionsRequest {
            filter: Some(filter.clone()),
            include_initial: true,
            ..Default::default()
        });
        while let Some(update) = watch.next().await {
            let events = match update {
                Ok(WatchUpdate::InitialComplete { revision }) => {
                    println!("watching from revision {revision}");
                    continue;
                }
                Ok(WatchUpdate::Initial { events }) | Ok(WatchUpdate::Events { events, .. }) => {
                    events
                }
                Ok(_) => continue,
                Err(e) if e.relist_required().is_some() => {
                    println!(
                        "the change log moved past this watch: starting over from the current state"
                    );
                    break;
                }
                Err(e) => return Err(e),
            };
            for event in events {
                let Some(session) = event.session else {
                    continue;
                };
                let now = (
                    short_name(session.status().as_str_name(), "SESSION_STATUS_"),
                    short_name(session.runtime_state().as_str_name(), "RUNTIME_STATE_"),
                );
                if known.get(&event.session_id) == Some(&now) {
                    continue;
                }
                println!(
                    "revision {}: {} {} {}",
                    event.revision, event.session_id, now.0, now.1
                );
                known.insert(event.session_id, now.clone());
                if now.1 == "running" {
                    was_running = true;
                } else if until_idle && was_running && now.1 == "idle" {
                    return Ok(());
                }
            }
        }
    }
}
