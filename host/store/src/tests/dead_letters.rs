//! Dead letters: recorded with their failure event, listed, replaced by a
//! later failure of the same message, marked replayed.

use super::*;

pub(super) async fn dead_letters_are_listed_replaced_and_marked_replayed(store: Store) {
    let letter = DeadLetter {
        id: "dl-1".into(),
        module: "orders".into(),
        message_id: "m-9".into(),
        topic: "orders".into(),
        subtopic: "place".into(),
        envelope: serde_json::json!({"id": "m-9", "topic": "orders", "body": {"qty": 1}}),
        error_kind: "invalid".into(),
        error_message: "qty must be positive".into(),
        attempts: 1,
        created_at: String::new(),
        replayed_at: None,
    };
    let failed = event("f-1", "orders.failed", r#"{"kind":"invalid"}"#);
    store
        .record_failure(Some(&letter), Some(&failed))
        .await
        .unwrap();
    store
        .record_failure(
            Some(&DeadLetter {
                id: "dl-2".into(),
                topic: "inventory".into(),
                module: "inventory".into(),
                ..letter.clone()
            }),
            None,
        )
        .await
        .unwrap();

    let listed = store.dead_letters(Some("orders"), 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    let d = &listed[0];
    assert_eq!(
        (d.id.as_str(), d.error_kind.as_str(), d.attempts),
        ("dl-1", "invalid", 1)
    );
    assert_eq!(d.envelope["body"]["qty"], 1);
    assert!(d.created_at.ends_with('Z'), "{}", d.created_at);
    assert_eq!(store.dead_letters(None, 10).await.unwrap().len(), 2);
    assert_eq!(whole_log(&store, &["orders.failed"]).await, ["f-1"]);

    store.mark_replayed("dl-1").await.unwrap();
    let replayed = store.dead_letter("dl-1").await.unwrap().unwrap();
    assert!(replayed.replayed_at.is_some());
    // The same message failing again replaces its letter, un-replayed.
    store
        .record_failure(
            Some(&DeadLetter {
                id: "dl-3".into(),
                attempts: 5,
                error_kind: "transient".into(),
                ..letter
            }),
            None,
        )
        .await
        .unwrap();
    let listed = store.dead_letters(Some("orders"), 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].attempts,
            listed[0].error_kind.as_str(),
            listed[0].replayed_at.is_none()
        ),
        (5, "transient", true)
    );
    assert!(store.dead_letter("nope").await.unwrap().is_none());
}

/// Guards: a message holding NUL characters (valid JSON `\u0000`, a NUL in
/// the error text or a header) is still recorded as a dead letter with its
/// failure event. PostgreSQL's `jsonb` and `text` refuse NUL; the failure
/// used to stay unrecorded (a store error), so a stream redelivered the
/// message for ever. Both stores record it; PostgreSQL with U+FFFD in place
/// of each NUL.
pub(super) async fn a_failure_holding_nul_characters_is_recorded(store: Store) {
    let letter = DeadLetter {
        id: "dl-nul".into(),
        module: "orders".into(),
        message_id: "m-nul".into(),
        topic: "orders".into(),
        subtopic: "place".into(),
        envelope: serde_json::json!({"id": "m-nul", "topic": "orders", "body": {"sku": "a\u{0}b"}}),
        error_kind: "invalid".into(),
        error_message: "unknown sku a\u{0}b".into(),
        attempts: 1,
        created_at: String::new(),
        replayed_at: None,
    };
    let mut failed = event(
        "f-nul",
        "orders.failed",
        r#"{"message":"unknown sku a\u0000b"}"#,
    );
    failed.headers.insert("cause".into(), "a\u{0}b".into());
    store
        .record_failure(Some(&letter), Some(&failed))
        .await
        .unwrap();
    let listed = store
        .dead_letter("dl-nul")
        .await
        .unwrap()
        .expect("recorded");
    let sku = listed.envelope["body"]["sku"].as_str().unwrap_or_default();
    assert!(sku == "a\u{0}b" || sku == "a\u{FFFD}b", "{sku:?}");
    assert!(listed.error_message.starts_with("unknown sku a"));
    assert_eq!(whole_log(&store, &["orders.failed"]).await, ["f-nul"]);
}
