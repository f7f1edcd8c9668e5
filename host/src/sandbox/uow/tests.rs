//! The unit of work against an in-memory store: what a handler reads, what
//! it sees of its own writes, what it may touch, and what it hands the
//! commit.

#![allow(clippy::unwrap_used)]

mod budgets;

use std::sync::Arc;

use super::*;
use switchyard_model::envelope::{CAUSATION_ID, CORRELATION_ID, TIMESTAMP};
use switchyard_model::trace::TRACEPARENT;
use switchyard_store::{Commit, MemoryStore};

const TRACEPARENT_OF_MESSAGE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn grants(name: &str, emits: &[&str], reads: &[&str]) -> Arc<Grants> {
    Arc::new(Grants {
        name: name.into(),
        emits: emits.iter().map(|s| s.to_string()).collect(),
        reads: reads.iter().map(|s| s.to_string()).collect(),
        ..Grants::default()
    })
}

fn meta() -> MessageMeta {
    MessageMeta {
        id: "msg-1".into(),
        correlation_id: "corr-1".into(),
        traceparent: TRACEPARENT_OF_MESSAGE.into(),
    }
}

/// A unit of work of module `inventory` (emits `inventory.events`, reads nothing).
fn unit(store: &Arc<MemoryStore>) -> UnitOfWork {
    unit_of(store, grants("inventory", &["inventory.events"], &[]))
}

fn unit_of(store: &Arc<MemoryStore>, grants: Arc<Grants>) -> UnitOfWork {
    UnitOfWork::new(grants, store.clone(), meta())
}

fn keys(rows: &[(String, Document)]) -> Vec<&str> {
    rows.iter().map(|(k, _)| k.as_str()).collect()
}

/// (collection, key, value or None for a delete, base version) of each write.
fn summary(writes: &[Write]) -> Vec<(&str, &str, Option<&str>, u64)> {
    writes
        .iter()
        .map(|w| match w {
            Write::Put {
                collection,
                key,
                value,
                base_version,
            } => (
                collection.as_str(),
                key.as_str(),
                Some(value.as_str()),
                *base_version,
            ),
            Write::Delete {
                collection,
                key,
                base_version,
            } => (collection.as_str(), key.as_str(), None, *base_version),
        })
        .collect()
}

async fn commit(store: &MemoryStore, id: &str, writes: &[Write]) -> Result<(), StoreError> {
    let commit = Commit {
        module: "inventory",
        message_id: id,
        answer: "{}",
        writes,
        events: &[],
    };
    store.commit(&commit).await
}

#[tokio::test]
async fn a_read_is_remembered_while_the_store_moves_on() {
    let store = Arc::new(MemoryStore::new());
    store.put("inventory", "stock", "apple", r#"{"n":1}"#);
    let mut uow = unit(&store);
    let first = uow.get("stock", "apple").await.unwrap().unwrap();
    assert_eq!((first.value.as_str(), first.version), (r#"{"n":1}"#, 1));

    // Another host commits a new version meanwhile.
    assert_eq!(store.put("inventory", "stock", "apple", r#"{"n":2}"#), 2);
    let second = uow.get("stock", "apple").await.unwrap().unwrap();
    assert_eq!(
        second, first,
        "the handler keeps seeing the version it read"
    );

    // Even an absent document stays absent for this message.
    assert_eq!(uow.get("stock", "pear").await.unwrap(), None);
    store.put("inventory", "stock", "pear", "{}");
    assert_eq!(uow.get("stock", "pear").await.unwrap(), None);

    // A read remembered before the store went away still answers.
    store.set_down(true);
    assert_eq!(uow.get("stock", "apple").await.unwrap(), Some(first));
    assert_eq!(uow.store_error, None);
}

#[tokio::test]
async fn own_writes_are_visible_to_get_with_the_next_version() {
    let store = Arc::new(MemoryStore::new());
    store.put("inventory", "stock", "apple", r#"{"n":1}"#);
    let mut uow = unit(&store);

    assert_eq!(
        uow.put("stock", "apple", r#"{"n":5}"#.into(), Some(1))
            .await,
        Ok(2)
    );
    let doc = uow.get("stock", "apple").await.unwrap().unwrap();
    assert_eq!((doc.value.as_str(), doc.version), (r#"{"n":5}"#, 2));
    // A second write in the same message is still one step past what it read.
    assert_eq!(
        uow.put("stock", "apple", r#"{"n":6}"#.into(), Some(2))
            .await,
        Ok(2)
    );
    assert_eq!(
        uow.get("stock", "apple").await.unwrap().unwrap().value,
        r#"{"n":6}"#
    );

    assert_eq!(uow.put("stock", "kiwi", "7".into(), Some(0)).await, Ok(1));
    assert_eq!(uow.get("stock", "kiwi").await.unwrap().unwrap().version, 1);

    assert_eq!(uow.delete("stock", "apple", Some(2)).await, Ok(true));
    assert_eq!(uow.get("stock", "apple").await.unwrap(), None);
    // Nothing reached the store.
    assert_eq!(
        store
            .document("inventory", "stock", "apple")
            .unwrap()
            .version,
        1
    );
    assert_eq!(store.document("inventory", "stock", "kiwi"), None);
}

#[tokio::test]
async fn scan_merges_buffered_writes_and_deletes_in_key_order() {
    let store = Arc::new(MemoryStore::new());
    for key in ["a1", "a3", "a5", "b1"] {
        store.put("inventory", "stock", key, r#""stored""#);
    }
    store.put("inventory", "other", "a0", "0");
    store.put("orders", "stock", "a0", "0");
    let mut uow = unit(&store);
    uow.put("stock", "a4", r#""new""#.into(), None)
        .await
        .unwrap();
    uow.put("stock", "a3", r#""changed""#.into(), None)
        .await
        .unwrap();
    uow.delete("stock", "a5", None).await.unwrap();
    uow.put("stock", "b0", r#""new""#.into(), None)
        .await
        .unwrap();

    let rows = uow.scan("stock", "a", 10).await.unwrap();
    assert_eq!(keys(&rows), ["a1", "a3", "a4"]);
    assert_eq!(rows[1].1.value, r#""changed""#);
    assert_eq!(rows[1].1.version, 2);
    assert_eq!(
        (rows[2].1.value.as_str(), rows[2].1.version),
        (r#""new""#, 1)
    );

    // The limit counts merged rows: deletes do not leave it short.
    assert_eq!(
        keys(&uow.scan("stock", "a", 2).await.unwrap()),
        ["a1", "a3"]
    );
    assert_eq!(
        keys(&uow.scan("stock", "a", 3).await.unwrap()),
        ["a1", "a3", "a4"]
    );
    assert_eq!(
        keys(&uow.scan("stock", "", 10).await.unwrap()),
        ["a1", "a3", "a4", "b0", "b1"]
    );
    assert!(uow.scan("stock", "a", 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn scan_is_not_cut_short_by_buffered_deletes() {
    let store = Arc::new(MemoryStore::new());
    for key in ["a1", "a2", "a3", "a4"] {
        store.put("inventory", "stock", key, "0");
    }
    let mut uow = unit(&store);
    uow.delete("stock", "a1", None).await.unwrap();
    uow.delete("stock", "a2", None).await.unwrap();
    assert_eq!(keys(&uow.scan("stock", "a", 1).await.unwrap()), ["a3"]);
    assert_eq!(
        keys(&uow.scan("stock", "a", 2).await.unwrap()),
        ["a3", "a4"]
    );
}

#[tokio::test]
async fn scan_clamps_a_guest_limit() {
    let store = Arc::new(MemoryStore::new());
    for i in 0..=MAX_SCAN_LIMIT {
        store.put("inventory", "stock", &format!("k{i:05}"), "0");
    }
    let mut uow = unit(&store);
    let rows = uow.scan("stock", "k", u32::MAX).await.unwrap();
    assert_eq!(rows.len(), MAX_SCAN_LIMIT as usize);
}

#[tokio::test]
async fn a_stale_expected_version_is_a_conflict() {
    let store = Arc::new(MemoryStore::new());
    store.put("inventory", "stock", "apple", "1");
    let mut uow = unit(&store);
    assert_eq!(uow.conflicted, None);
    assert_eq!(
        uow.put("stock", "apple", "2".into(), Some(0)).await,
        Err(RepoFailure::VersionConflict(1))
    );
    assert_eq!(
        uow.conflicted,
        Some(("stock".to_string(), "apple".to_string())),
        "the dispatcher retries a conflicted unit, behind that document"
    );
    assert_eq!(
        uow.put("stock", "pear", "2".into(), Some(3)).await,
        Err(RepoFailure::VersionConflict(0))
    );
    assert_eq!(
        uow.delete("stock", "apple", Some(7)).await,
        Err(RepoFailure::VersionConflict(1))
    );
    // Refused writes were not buffered.
    assert!(uow.into_parts().0.is_empty());
}

#[tokio::test]
async fn deleting_an_absent_document() {
    let store = Arc::new(MemoryStore::new());
    let mut uow = unit(&store);
    assert_eq!(uow.delete("stock", "ghost", None).await, Ok(false));
    assert_eq!(uow.delete("stock", "ghost", Some(0)).await, Ok(false));
    assert_eq!(
        uow.delete("stock", "ghost", Some(2)).await,
        Err(RepoFailure::NotFound)
    );
    // Created and deleted in one message: nothing to commit.
    uow.put("stock", "brief", "1".into(), None).await.unwrap();
    assert_eq!(uow.delete("stock", "brief", None).await, Ok(true));
    assert_eq!(uow.get("stock", "brief").await.unwrap(), None);
    assert_eq!(uow.delete("stock", "brief", None).await, Ok(false));
    assert!(uow.into_parts().0.is_empty());
}

#[tokio::test]
async fn another_modules_collection_needs_a_reads_grant() {
    let store = Arc::new(MemoryStore::new());
    store.put("inventory", "stock", "apple", r#"{"available":5}"#);

    let mut ungranted = unit_of(&store, grants("orders", &[], &[]));
    let refused = ungranted.read("inventory", "stock", "apple").await;
    assert!(
        matches!(&refused, Err(RepoFailure::NotPermitted(m)) if m.contains("reads")),
        "{refused:?}"
    );
    let refused = ungranted.read_scan("inventory", "stock", "", 10).await;
    assert!(matches!(refused, Err(RepoFailure::NotPermitted(_))));

    let mut granted = unit_of(&store, grants("orders", &[], &["inventory"]));
    let doc = granted.read("inventory", "stock", "apple").await.unwrap();
    assert_eq!(doc.unwrap().value, r#"{"available":5}"#);
    let rows = granted
        .read_scan("inventory", "stock", "ap", 10)
        .await
        .unwrap();
    assert_eq!(keys(&rows), ["apple"]);

    // Its own collection of that name is another one, and writes go there.
    assert_eq!(granted.get("stock", "apple").await.unwrap(), None);
    granted
        .put("stock", "apple", "0".into(), None)
        .await
        .unwrap();
    let (writes, _) = granted.into_parts();
    let commit = Commit {
        module: "orders",
        message_id: "msg-1",
        answer: "{}",
        writes: &writes,
        events: &[],
    };
    store.commit(&commit).await.unwrap();
    let theirs = store.document("inventory", "stock", "apple").unwrap();
    assert_eq!(
        (theirs.value.as_str(), theirs.version),
        (r#"{"available":5}"#, 1)
    );
    assert_eq!(
        store.document("orders", "stock", "apple").unwrap().value,
        "0"
    );
}

#[tokio::test]
async fn reading_itself_by_name_sees_its_own_writes() {
    let store = Arc::new(MemoryStore::new());
    let mut uow = unit(&store);
    uow.put("stock", "apple", "3".into(), None).await.unwrap();
    let doc = uow.read("inventory", "stock", "apple").await.unwrap();
    assert_eq!(doc.unwrap().value, "3");
    let rows = uow.read_scan("inventory", "stock", "", 10).await.unwrap();
    assert_eq!(keys(&rows), ["apple"]);
}

#[tokio::test]
async fn an_event_outside_emits_is_refused() {
    let store = Arc::new(MemoryStore::new());
    let mut uow = unit(&store);
    let refused = uow.emit("orders.events".into(), "placed".into(), "{}".into(), vec![]);
    assert!(
        matches!(&refused, Err(EmitFailure::NotPermitted(m)) if m.contains("emits")),
        "{refused:?}"
    );
    assert!(uow.into_parts().1.is_empty());
}

#[tokio::test]
async fn an_event_carries_the_context_of_its_cause() {
    let store = Arc::new(MemoryStore::new());
    let mut uow = unit(&store);
    let headers = vec![
        ("partition-key".to_string(), "apple".to_string()),
        // The host's headers win over a module's.
        (CORRELATION_ID.to_string(), "forged".to_string()),
    ];
    let id = uow
        .emit(
            "inventory.events".into(),
            "restocked".into(),
            r#"{"sku":"apple"}"#.into(),
            headers,
        )
        .unwrap();
    let (_, events) = uow.into_parts();
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.id, id);
    assert_ne!(event.id, "msg-1");
    assert_eq!(
        (event.topic.as_str(), event.subtopic.as_str()),
        ("inventory.events", "restocked")
    );
    assert_eq!(event.body_text(), r#"{"sku":"apple"}"#);
    assert_eq!(event.header(CORRELATION_ID), Some("corr-1"));
    assert_eq!(event.header(CAUSATION_ID), Some("msg-1"));
    assert_eq!(event.header(TRACEPARENT), Some(TRACEPARENT_OF_MESSAGE));
    assert_eq!(event.header("partition-key"), Some("apple"));
    assert!(event.header(TIMESTAMP).is_some_and(|t| t.contains('T')));
}

#[tokio::test]
async fn an_event_must_be_a_valid_envelope() {
    let store = Arc::new(MemoryStore::new());
    let mut uow = unit(&store);
    let topic = || "inventory.events".to_string();
    let not_json = uow.emit(topic(), "x".into(), "{nope".into(), vec![]);
    assert!(
        matches!(not_json, Err(EmitFailure::Invalid(_))),
        "{not_json:?}"
    );
    let no_subtopic = uow.emit(topic(), String::new(), "{}".into(), vec![]);
    assert!(
        matches!(no_subtopic, Err(EmitFailure::Invalid(_))),
        "{no_subtopic:?}"
    );
    assert!(uow.into_parts().1.is_empty());
}

#[tokio::test]
async fn events_of_one_message_are_bounded() {
    let store = Arc::new(MemoryStore::new());
    let mut uow = unit(&store);
    let big = format!("\"{}\"", "x".repeat(Budgets::default().write_bytes / 2));
    let emit = |uow: &mut UnitOfWork, body: &str| {
        uow.emit("inventory.events".into(), "e".into(), body.into(), vec![])
    };
    emit(&mut uow, &big).unwrap();
    let over = emit(&mut uow, &big);
    assert!(matches!(over, Err(EmitFailure::TooLarge(_))), "{over:?}");

    let mut uow = unit(&store);
    for _ in 0..MAX_EVENTS {
        emit(&mut uow, "1").unwrap();
    }
    let over = emit(&mut uow, "1");
    assert!(matches!(over, Err(EmitFailure::TooLarge(_))), "{over:?}");
    assert_eq!(uow.into_parts().1.len(), MAX_EVENTS);
}

#[tokio::test]
async fn values_must_be_json_and_fit() {
    let store = Arc::new(MemoryStore::new());
    let mut uow = unit(&store);
    let not_json = uow.put("stock", "k", "{oops".into(), None).await;
    assert!(
        matches!(not_json, Err(RepoFailure::Invalid(_))),
        "{not_json:?}"
    );
    let huge = format!("\"{}\"", "x".repeat(MAX_VALUE_BYTES));
    let too_large = uow.put("stock", "k", huge, None).await;
    assert!(
        matches!(too_large, Err(RepoFailure::TooLarge(_))),
        "{too_large:?}"
    );
    let fits = format!("\"{}\"", "x".repeat(MAX_VALUE_BYTES - 2));
    assert_eq!(uow.put("stock", "k", fits, None).await, Ok(1));
}

#[tokio::test]
async fn collection_and_key_names_are_checked() {
    let store = Arc::new(MemoryStore::new());
    let mut uow = unit(&store);
    for bad in ["", "a/b", "with space", "ünï"] {
        let r = uow.get(bad, "k").await;
        assert!(matches!(r, Err(RepoFailure::Invalid(_))), "{bad:?}: {r:?}");
    }
    let longest = "c".repeat(MAX_COLLECTION_LEN);
    assert_eq!(uow.get(&longest, "k").await, Ok(None));
    let r = uow.get(&format!("{longest}c"), "k").await;
    assert!(matches!(r, Err(RepoFailure::TooLarge(_))), "{r:?}");

    let longest = "k".repeat(MAX_KEY_LEN);
    assert_eq!(uow.put("stock", &longest, "1".into(), None).await, Ok(1));
    let long = format!("{longest}k");
    let r = uow.put("stock", &long, "1".into(), None).await;
    assert!(matches!(r, Err(RepoFailure::TooLarge(_))), "{r:?}");
    let r = uow.scan("stock", &long, 1).await;
    assert!(matches!(r, Err(RepoFailure::TooLarge(_))), "{r:?}");
    let r = uow.delete("no/such", "k", None).await;
    assert!(matches!(r, Err(RepoFailure::Invalid(_))), "{r:?}");
    // Only the valid put was buffered.
    assert_eq!(uow.into_parts().0.len(), 1);
}

#[tokio::test]
async fn one_message_writes_a_bounded_number_of_documents() {
    let store = Arc::new(MemoryStore::new());
    let mut uow = unit(&store);
    for i in 0..MAX_WRITES {
        uow.put("stock", &format!("k{i}"), "1".into(), None)
            .await
            .unwrap();
    }
    // Writing a document again is not another document.
    assert_eq!(uow.put("stock", "k0", "2".into(), None).await, Ok(1));
    let over = uow.put("stock", "one-more", "1".into(), None).await;
    assert!(matches!(over, Err(RepoFailure::TooLarge(_))), "{over:?}");
}

#[tokio::test]
async fn a_store_that_is_down_fails_the_call_and_marks_the_unit() {
    let store = Arc::new(MemoryStore::new());
    store.set_down(true);
    let mut uow = unit_of(&store, grants("orders", &[], &["inventory"]));
    let calls = [
        uow.get("stock", "apple").await.map(|_| ()),
        uow.scan("stock", "", 10).await.map(|_| ()),
        uow.put("stock", "apple", "1".into(), None)
            .await
            .map(|_| ()),
        uow.delete("stock", "apple", None).await.map(|_| ()),
        uow.read("inventory", "stock", "apple").await.map(|_| ()),
        uow.read_scan("inventory", "stock", "", 1).await.map(|_| ()),
    ];
    for (i, r) in calls.iter().enumerate() {
        assert!(
            matches!(r, Err(RepoFailure::Unavailable(_))),
            "call {i}: {r:?}"
        );
    }
    let error = uow.store_error.as_deref().unwrap();
    assert!(error.contains("down"), "{error}");
    assert!(uow.into_parts().0.is_empty());
}

#[tokio::test]
async fn a_detached_unit_refuses_everything_without_blaming_the_store() {
    let mut uow = UnitOfWork::detached(grants("inventory", &["inventory.events"], &[]));
    let r = uow.get("stock", "apple").await;
    assert!(matches!(r, Err(RepoFailure::Unavailable(_))), "{r:?}");
    assert_eq!(uow.store_error, None);
    let r = uow.emit("inventory.events".into(), "e".into(), "{}".into(), vec![]);
    assert!(matches!(r, Err(EmitFailure::Invalid(_))), "{r:?}");
}

#[tokio::test]
async fn into_parts_bases_each_write_on_the_version_read() {
    let store = Arc::new(MemoryStore::new());
    store.put("inventory", "stock", "a", "1");
    store.put("inventory", "stock", "b", "1");
    store.put("inventory", "stock", "b", "2");
    let mut uow = unit(&store);
    uow.put("stock", "c", "10".into(), None).await.unwrap();
    uow.put("stock", "a", "10".into(), None).await.unwrap();
    uow.put("stock", "a", "11".into(), None).await.unwrap();
    uow.delete("stock", "b", None).await.unwrap();
    let (writes, events) = uow.into_parts();
    assert!(events.is_empty());
    assert_eq!(
        summary(&writes),
        [
            ("stock", "a", Some("11"), 1),
            ("stock", "b", None, 2),
            ("stock", "c", Some("10"), 0),
        ]
    );
    commit(&store, "m1", &writes).await.unwrap();
    let a = store.document("inventory", "stock", "a").unwrap();
    assert_eq!((a.value.as_str(), a.version), ("11", 2));
    assert_eq!(store.document("inventory", "stock", "b"), None);
    assert_eq!(
        store.document("inventory", "stock", "c").unwrap().version,
        1
    );
}

#[tokio::test]
async fn a_write_based_on_a_version_that_moved_on_does_not_commit() {
    let store = Arc::new(MemoryStore::new());
    store.put("inventory", "stock", "a", "1");
    let mut uow = unit(&store);
    uow.put("stock", "a", "2".into(), None).await.unwrap();
    // Another message commits first.
    store.put("inventory", "stock", "a", "9");
    let (writes, _) = uow.into_parts();
    assert_eq!(summary(&writes), [("stock", "a", Some("2"), 1)]);
    let err = commit(&store, "m1", &writes).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(
        store.document("inventory", "stock", "a").unwrap().value,
        "9"
    );
}
