//! Follows sessions over a watch and prints every change of status or
//! runtime state, as a dashboard or a supervisor would.
//!
//! It starts with the current state of every session (include_initial), then
//! prints one line per change. The client's watch reconnects by itself after
//! a lost connection or a server restart, without a gap or a repeat; when the
//! server no longer holds the revision to resume from, it starts over from
//! the current state, as the error asks.
//!
//!     follow [SESSION_ID] [CHANGES]
//!
//! With SESSION_ID it follows that session only; with CHANGES it exits after
//! printing that many changes (the first state of a session counts as one).
//! The server is $SESSIOND_ADDRESS (default 127.0.0.1:50051); the API key,
//! if the server wants one, is $SESSIOND_API_KEY.

use std::collections::HashMap;

use futures_util::StreamExt;
use sessiond_client::v1::*;
use sessiond_client::{Client, DEFAULT_ADDRESS, Error, WatchUpdate};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let session_id = args.next().filter(|s| !s.is_empty());
    let limit: Option<usize> = args.next().map(|n| n.parse().expect("CHANGES is a number"));

    let address = std::env::var("SESSIOND_ADDRESS").unwrap_or_else(|_| DEFAULT_ADDRESS.into());
    let mut builder = Client::builder(address);
    if let Ok(key) = std::env::var("SESSIOND_API_KEY") {
        builder = builder.api_key(key);
    }
    let client = builder.build()?;
    let filter = WatchFilter { session_ids: session_id.into_iter().collect(), ..Default::default() };

    // What was printed last per session: (status, runtime state).
    let mut known: HashMap<String, (SessionStatus, RuntimeState)> = HashMap::new();
    let mut printed = 0;
    loop {
        let mut watch = Box::pin(client.watch(WatchSessionsRequest {
            filter: Some(filter.clone()),
            include_initial: true,
            ..Default::default()
        }));
        while let Some(update) = watch.next().await {
            let events = match update {
                Ok(WatchUpdate::Created { revision, .. }) => {
                    println!("watching from revision {revision}");
                    continue;
                }
                Ok(WatchUpdate::Initial { events }) | Ok(WatchUpdate::Events { events, .. }) => events,
                Ok(_) => continue,
                Err(e) if e.relist_required().is_some() => {
                    println!("the change log moved past this watch: starting over from the current state");
                    break;
                }
                Err(e) => return Err(e),
            };
            for event in events {
                let Some(session) = event.session else { continue };
                let now = (session.status(), session.runtime_state());
                if known.get(&event.session_id) == Some(&now) {
                    continue;
                }
                known.insert(event.session_id.clone(), now);
                println!(
                    "revision {}: {} {} {}",
                    event.revision,
                    event.session_id,
                    now.0.as_str_name(),
                    now.1.as_str_name()
                );
                printed += 1;
                if limit.is_some_and(|l| printed >= l) {
                    return Ok(());
                }
            }
        }
    }
}
