//! The rules of the client layer that need no server: the retry rule and
//! the backoff, the watch cursor (resume point, replay filter, fragment
//! joining and its bound, initial-state resend), and what the client
//! refuses to build or print. Part of the `interop` target so that the
//! harness (scripts/interop.sh) runs them with the rest.

use std::time::Duration;

use sessiond_client::v1::*;
use sessiond_client::{Backoff, Client, Code, RetrySafe, WatchCursor, WatchUpdate};

#[test]
fn delay_grows_by_the_multiplier_up_to_the_maximum() {
    let b = Backoff::default();
    assert_eq!(b.delay_with(0, 0.0), Duration::from_millis(100));
    assert_eq!(b.delay_with(3, 0.0), Duration::from_millis(800));
    assert_eq!(b.delay_with(10, 0.0), Duration::from_secs(5));
    assert_eq!(b.delay_with(u32::MAX, 0.0), Duration::from_secs(5));
}

#[test]
fn jitter_takes_off_at_most_its_fraction() {
    let b = Backoff::default();
    assert_eq!(b.delay_with(0, 0.999_999).as_millis(), 50);
    let d = b.delay(2);
    assert!(
        d >= Duration::from_millis(200) && d <= Duration::from_millis(400),
        "{d:?}"
    );
}

#[test]
fn appends_are_retry_safe_only_when_every_message_has_an_id() {
    let with_ids = AppendMessagesRequest {
        messages: vec![Message {
            id: "m1".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut one_without = with_ids.clone();
    one_without.messages.push(Message::default());
    assert!(with_ids.retry_is_safe());
    assert!(!one_without.retry_is_safe());
    assert!(!AppendMessagesRequest::default().retry_is_safe());
}

#[test]
fn writes_without_a_client_chosen_key_are_not_retry_safe() {
    assert!(!CreateSessionRequest::default().retry_is_safe());
    assert!(!RecordUsageRequest::default().retry_is_safe());
    assert!(!UpdateSessionRequest::default().retry_is_safe());
    assert!(!ForkSessionRequest::default().retry_is_safe());
    assert!(!PopMessageRequest::default().retry_is_safe());
    assert!(!DeleteSessionRequest::default().retry_is_safe());
    assert!(EndSessionRequest::default().retry_is_safe());
    assert!(
        CreateSessionRequest {
            session: Some(Session {
                id: "s".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
        .retry_is_safe()
    );
}

fn response(
    kind: WatchResponseType,
    revision: i64,
    events: &[i64],
    fragment: bool,
) -> WatchSessionsResponse {
    WatchSessionsResponse {
        r#type: kind as i32,
        revision,
        events: events
            .iter()
            .map(|r| SessionEvent {
                revision: *r,
                session_id: format!("s{r}"),
                ..Default::default()
            })
            .collect(),
        fragment,
        ..Default::default()
    }
}

fn revisions(update: Option<WatchUpdate>) -> Vec<i64> {
    match update {
        Some(WatchUpdate::Events { events, .. }) => events.iter().map(|e| e.revision).collect(),
        other => panic!("expected events, got {other:?}"),
    }
}

#[test]
fn a_from_now_watch_resumes_after_the_created_revision() {
    let mut cursor = WatchCursor::new(WatchSessionsRequest::default(), 1 << 20).unwrap();
    let created = cursor
        .accept(response(WatchResponseType::Created, 41, &[], false))
        .unwrap();
    assert!(matches!(
        created,
        Some(WatchUpdate::Created { revision: 41, .. })
    ));
    assert_eq!(cursor.request().start_revision, 42);
    // A reconnection's Created is not delivered again.
    assert_eq!(
        cursor
            .accept(response(WatchResponseType::Created, 50, &[], false))
            .unwrap(),
        None
    );
    assert_eq!(cursor.request().start_revision, 42);
}

#[test]
fn replayed_revisions_are_dropped_and_the_rest_delivered_once() {
    let request = WatchSessionsRequest {
        start_revision: 10,
        ..Default::default()
    };
    let mut cursor = WatchCursor::new(request, 1 << 20).unwrap();
    assert_eq!(
        revisions(
            cursor
                .accept(response(WatchResponseType::Events, 11, &[10, 11], false))
                .unwrap()
        ),
        [10, 11]
    );
    assert_eq!(cursor.request().start_revision, 12);
    assert_eq!(
        cursor
            .accept(response(WatchResponseType::Events, 11, &[11], false))
            .unwrap(),
        None
    );
    assert_eq!(
        revisions(
            cursor
                .accept(response(
                    WatchResponseType::Events,
                    13,
                    &[11, 12, 13],
                    false
                ))
                .unwrap()
        ),
        [12, 13]
    );
}

#[test]
fn fragments_are_joined_into_one_revision() {
    let request = WatchSessionsRequest {
        start_revision: 5,
        ..Default::default()
    };
    let mut cursor = WatchCursor::new(request, 1 << 20).unwrap();
    assert_eq!(
        cursor
            .accept(response(WatchResponseType::Events, 5, &[5, 5], true))
            .unwrap(),
        None
    );
    assert_eq!(
        cursor
            .accept(response(WatchResponseType::Events, 5, &[5], true))
            .unwrap(),
        None
    );
    // Nothing of revision 5 was delivered, so a resume asks for it again.
    assert_eq!(cursor.request().start_revision, 5);
    assert_eq!(
        revisions(
            cursor
                .accept(response(WatchResponseType::Events, 5, &[5, 5], false))
                .unwrap()
        ),
        [5, 5, 5, 5, 5]
    );
    assert_eq!(cursor.request().start_revision, 6);
}

#[test]
fn fragments_of_a_broken_stream_are_forgotten_and_sent_again() {
    let request = WatchSessionsRequest {
        start_revision: 5,
        ..Default::default()
    };
    let mut cursor = WatchCursor::new(request, 1 << 20).unwrap();
    assert_eq!(
        cursor
            .accept(response(WatchResponseType::Events, 5, &[5, 5], true))
            .unwrap(),
        None
    );
    cursor.disconnected();
    assert_eq!(
        cursor
            .accept(response(WatchResponseType::Events, 5, &[5, 5], true))
            .unwrap(),
        None
    );
    assert_eq!(
        revisions(
            cursor
                .accept(response(WatchResponseType::Events, 5, &[5], false))
                .unwrap()
        ),
        [5, 5, 5]
    );
}

#[test]
fn a_revision_larger_than_the_bound_fails_with_resource_exhausted() {
    let request = WatchSessionsRequest {
        start_revision: 5,
        ..Default::default()
    };
    let mut cursor = WatchCursor::new(request, 20).unwrap();
    assert_eq!(
        cursor
            .accept(response(WatchResponseType::Events, 5, &[5], true))
            .unwrap(),
        None
    );
    let error = cursor
        .accept(response(WatchResponseType::Events, 5, &[5, 5, 5, 5], true))
        .unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted);
    assert!(
        error.message().contains("max_watch_revision_bytes"),
        "{error}"
    );
}

#[test]
fn fragments_mixed_with_another_revision_are_an_error() {
    let request = WatchSessionsRequest {
        start_revision: 5,
        ..Default::default()
    };
    let mut cursor = WatchCursor::new(request, 1 << 20).unwrap();
    assert_eq!(
        cursor
            .accept(response(WatchResponseType::Events, 5, &[5], true))
            .unwrap(),
        None
    );
    let error = cursor
        .accept(response(WatchResponseType::Events, 6, &[6], false))
        .unwrap_err();
    assert_eq!(error.code(), Code::Internal);
}

#[test]
fn initial_state_is_resent_until_complete_then_the_watch_continues_after_it() {
    let request = WatchSessionsRequest {
        include_initial: true,
        ..Default::default()
    };
    let mut cursor = WatchCursor::new(request, 1 << 20).unwrap();
    assert!(
        cursor
            .accept(response(WatchResponseType::Created, 7, &[], false))
            .unwrap()
            .is_some()
    );
    assert!(matches!(
        cursor
            .accept(response(WatchResponseType::Initial, 0, &[3], false))
            .unwrap(),
        Some(WatchUpdate::Initial { .. })
    ));
    // Broken before InitialComplete: the next request asks for the initial state again.
    assert!(cursor.request().include_initial);
    assert_eq!(
        cursor
            .accept(response(WatchResponseType::Progress, 7, &[], false))
            .unwrap(),
        None
    );
    assert_eq!(
        cursor
            .accept(response(WatchResponseType::InitialComplete, 7, &[], false))
            .unwrap(),
        Some(WatchUpdate::InitialComplete { revision: 7 })
    );
    let next = cursor.request();
    assert!(!next.include_initial);
    assert_eq!(next.start_revision, 8);
}

#[test]
fn include_initial_with_a_start_revision_is_refused() {
    let request = WatchSessionsRequest {
        include_initial: true,
        start_revision: 3,
        ..Default::default()
    };
    let error = WatchCursor::new(request, 1 << 20).unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().starts_with("start_revision"));
}

#[test]
fn progress_behind_what_was_delivered_is_dropped() {
    let request = WatchSessionsRequest {
        start_revision: 10,
        ..Default::default()
    };
    let mut cursor = WatchCursor::new(request, 1 << 20).unwrap();
    assert_eq!(
        cursor
            .accept(response(WatchResponseType::Progress, 8, &[], false))
            .unwrap(),
        None
    );
    assert_eq!(
        cursor
            .accept(response(WatchResponseType::Progress, 12, &[], false))
            .unwrap(),
        Some(WatchUpdate::Progress { revision: 12 })
    );
    assert_eq!(cursor.request().start_revision, 13);
}

#[tokio::test]
async fn the_api_key_is_never_printed() {
    let builder = Client::builder("127.0.0.1:1").api_key("sk_secret_value");
    assert!(!format!("{builder:?}").contains("sk_secret_value"));
    let client = builder.build().unwrap();
    assert!(!format!("{client:?}").contains("sk_secret_value"));
}

#[tokio::test]
async fn options_that_cannot_work_are_invalid_arguments_naming_the_option() {
    let bad_key = Client::builder("127.0.0.1:1")
        .api_key("line\nbreak")
        .build()
        .unwrap_err();
    assert_eq!(bad_key.code(), Code::InvalidArgument);
    assert!(bad_key.message().starts_with("api_key"), "{bad_key}");
    let bad_address = Client::new("http://[::1").unwrap_err();
    assert_eq!(bad_address.code(), Code::InvalidArgument);
    assert!(
        bad_address.message().starts_with("address"),
        "{bad_address}"
    );
}
