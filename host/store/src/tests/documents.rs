//! Documents and units of work: versions and conflicts, duplicate message
//! ids, group commit, prefix scans.

use super::*;

pub(super) async fn stale_versions_conflict_and_roll_back_the_whole_unit(store: Store) {
    store
        .commit(&commit("m1", &[put("apple", r#"{"n":1}"#, 0)], &[]))
        .await
        .unwrap();
    assert_eq!(version(&store, "apple").await, Some(1));

    // Creating what exists, updating or deleting from an old version: each a
    // conflict, and nothing of that unit of work stays (inbox, other writes, events).
    for (i, stale) in [
        put("apple", r#"{"n":9}"#, 0),
        put("apple", r#"{"n":9}"#, 7),
        Write::Delete {
            collection: "stock".into(),
            key: "apple".into(),
            base_version: 2,
        },
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("stale-{i}");
        let writes = [put(&format!("other-{i}"), "1", 0), stale];
        let events = [event(&format!("e-stale-{i}"), "stock.events", "{}")];
        let err = store.commit(&commit(&id, &writes, &events)).await;
        assert!(
            matches!(err, Err(StoreError::Conflict { ref key, .. }) if key == "apple"),
            "{err:?}"
        );
        assert_eq!(store.inbox_answer("inventory", &id).await.unwrap(), None);
        assert_eq!(version(&store, &format!("other-{i}")).await, None);
    }
    assert!(whole_log(&store, &["stock.events"]).await.is_empty());

    let doc = store
        .get("inventory", "stock", "apple")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&doc.value).unwrap(),
        serde_json::json!({"n": 1})
    );
    store
        .commit(&commit("m2", &[put("apple", r#"{"n":2}"#, 1)], &[]))
        .await
        .unwrap();
    assert_eq!(version(&store, "apple").await, Some(2));
    let delete = Write::Delete {
        collection: "stock".into(),
        key: "apple".into(),
        base_version: 2,
    };
    store.commit(&commit("m3", &[delete], &[])).await.unwrap();
    assert_eq!(version(&store, "apple").await, None);
}

pub(super) async fn concurrent_read_modify_write_loses_no_update(store: Store) {
    // 40 writers increment one counter, retrying on conflict as the
    // dispatcher does: every increment lands exactly once.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let store = store.clone();
        tasks.spawn(async move {
            loop {
                let current = store.get("inventory", "stock", "counter").await.unwrap();
                let (n, base) = match &current {
                    Some(d) => (d.value.trim().parse::<u64>().unwrap(), d.version),
                    None => (0, 0),
                };
                let writes = [put("counter", &(n + 1).to_string(), base)];
                match store
                    .commit(&commit(&format!("inc-{i}"), &writes, &[]))
                    .await
                {
                    Ok(()) => return,
                    Err(StoreError::Conflict { .. }) => tokio::task::yield_now().await,
                    Err(e) => panic!("{e}"),
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let doc = store
        .get("inventory", "stock", "counter")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((doc.value.trim(), doc.version), ("40", 40));
}

pub(super) async fn a_message_id_commits_once_and_keeps_its_first_answer(store: Store) {
    let first = [put("pear", "4", 0)];
    let events = [event("e1", "stock.events", r#"{"qty":4}"#)];
    store
        .commit(&commit("restock-1", &first, &events))
        .await
        .unwrap();
    let again = [put("plum", "1", 0)];
    let again_events = [event("e2", "stock.events", "{}")];
    let replay = Commit {
        answer: r#"{"other":true}"#,
        ..commit("restock-1", &again, &again_events)
    };
    assert!(matches!(
        store.commit(&replay).await,
        Err(StoreError::Duplicate)
    ));
    assert_eq!(
        store
            .inbox_answer("inventory", "restock-1")
            .await
            .unwrap()
            .as_deref(),
        Some(r#"{"ok":true}"#)
    );
    assert_eq!(version(&store, "plum").await, None);
    assert_eq!(whole_log(&store, &["stock.events"]).await, ["e1"]);
    // The inbox is per module: another module may handle the same id.
    let other = Commit {
        module: "orders",
        ..commit("restock-1", &[], &[])
    };
    store.commit(&other).await.unwrap();
}

/// The time of an inbox row (the Kafka ingress compares it with a record's
/// timestamp): when the unit of work committed, to the millisecond.
pub(super) async fn the_inbox_says_when_a_message_was_committed(store: Store) {
    let now = || (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let before = now();
    store.commit(&commit("restock-9", &[], &[])).await.unwrap();
    let after = now();
    let at = store
        .inbox_committed_at("inventory", "restock-9")
        .await
        .unwrap()
        .expect("committed");
    // PostgreSQL's now() is the transaction's start, and its clock the
    // server's: allow a second either way.
    assert!(
        (before - 1_000..=after + 1_000).contains(&at),
        "{before} <= {at} <= {after}"
    );
    assert_eq!(
        store
            .inbox_committed_at("orders", "restock-9")
            .await
            .unwrap(),
        None,
        "per module"
    );
    assert_eq!(
        store.inbox_committed_at("inventory", "nope").await.unwrap(),
        None
    );
}

pub(super) async fn concurrent_deliveries_of_one_id_commit_once(store: Store) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            let writes = [put(&format!("copy-{i}"), "1", 0)];
            store.commit(&commit("same-id", &writes, &[])).await
        });
    }
    let mut committed = 0;
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(()) => committed += 1,
            Err(StoreError::Duplicate) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(committed, 1);
    let copies = store
        .scan("inventory", "stock", "copy-", 100, usize::MAX)
        .await
        .unwrap();
    assert_eq!(copies.len(), 1);
}

pub(super) async fn units_committed_together_fail_alone(store: Store) {
    // Many units at once: on SQLite they share transactions (group commit).
    // Every third one ends with a stale write after a good one; it must
    // leave nothing (no write, inbox row or event) while the others commit.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut writes = vec![put(&format!("unit-{i:03}"), "1", 0)];
            if i % 3 == 0 {
                writes.push(put("never-written", "1", 7));
            }
            let events = [event(&format!("unit-event-{i}"), "units", "{}")];
            let id = format!("unit-{i}");
            (i, store.commit(&commit(&id, &writes, &events)).await)
        });
    }
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            (i, Ok(())) => assert_ne!(i % 3, 0, "unit {i} should have conflicted"),
            (i, Err(StoreError::Conflict { key, .. })) => {
                assert_eq!((i % 3, key.as_str()), (0, "never-written"));
            }
            (i, Err(e)) => panic!("unit {i}: {e}"),
        }
    }
    let written: Vec<String> = store
        .scan("inventory", "stock", "unit-", 1_000, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    let expected: Vec<String> = (0..300)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("unit-{i:03}"))
        .collect();
    assert_eq!(written, expected);
    let mut logged = whole_log(&store, &["units"]).await;
    logged.sort();
    let mut expected_events: Vec<String> = (0..300)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("unit-event-{i}"))
        .collect();
    expected_events.sort();
    assert_eq!(logged, expected_events);
    for i in [0, 3, 150, 297] {
        let id = format!("unit-{i}");
        assert_eq!(store.inbox_answer("inventory", &id).await.unwrap(), None);
    }
    assert!(
        store
            .inbox_answer("inventory", "unit-1")
            .await
            .unwrap()
            .is_some()
    );
}

pub(super) async fn prefix_scans_are_bytewise_and_bounded(store: Store) {
    let writes: Vec<Write> = ["a-b", "ab", "a-a", "a.c", "a-", "b-a", "A-z"]
        .iter()
        .map(|k| put(k, "0", 0))
        .collect();
    store.commit(&commit("m", &writes, &[])).await.unwrap();
    let keys = |found: Vec<(String, Document)>| -> Vec<String> {
        found.into_iter().map(|(k, _)| k).collect()
    };
    let found = store
        .scan("inventory", "stock", "a-", 10, usize::MAX)
        .await
        .unwrap();
    assert_eq!(keys(found), ["a-", "a-a", "a-b"]);
    let found = store
        .scan("inventory", "stock", "a", 2, usize::MAX)
        .await
        .unwrap();
    assert_eq!(keys(found), ["a-", "a-a"]);
    let found = store
        .scan("inventory", "stock", "", 100, usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        keys(found),
        ["A-z", "a-", "a-a", "a-b", "a.c", "ab", "b-a"],
        "byte order"
    );
    assert!(
        store
            .scan("orders", "stock", "", 10, usize::MAX)
            .await
            .unwrap()
            .is_empty(),
        "modules do not see each other's documents"
    );
    // Loading stops after the row that takes keys + values past the byte
    // budget ("a-0" is 3 bytes, "a-a0" 4): the caller sees the cut as a
    // total over its budget.
    let found = store.scan("inventory", "stock", "a-", 10, 4).await.unwrap();
    assert_eq!(keys(found), ["a-", "a-a"]);
    let found = store.scan("inventory", "stock", "a-", 10, 7).await.unwrap();
    assert_eq!(keys(found), ["a-", "a-a", "a-b"]);
}

/// PostgreSQL only: JSONB cannot hold `\u0000`; that is the module's data,
/// refused as such (not "database unavailable", which would redeliver it for
/// ever), and nothing of the unit of work stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_what_jsonb_cannot_hold() {
    let db = TestDatabase::create().await;
    let store = Store::connect(&db.url).await.unwrap();
    let writes = [put("nul", r#"{"name":"a\u0000b"}"#, 0)];
    let events = [event("e-nul", "x.events", "{}")];
    let err = store.commit(&commit("m-nul", &writes, &events)).await;
    assert!(matches!(err, Err(StoreError::Refused(_))), "{err:?}");
    assert_eq!(
        store.inbox_answer("inventory", "m-nul").await.unwrap(),
        None
    );
    assert!(whole_log(&store, &["x.events"]).await.is_empty());
    db.drop_database().await;
}
