//! One behaviour suite, run against both backends: each test is a function
//! taking a fresh [`Store`]; `store_tests!` runs it on a new SQLite file and
//! on a new PostgreSQL database (127.0.0.1:5432, or `SWITCHYARD_TEST_POSTGRES`
//! naming a server URL whose user may CREATE DATABASE).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::*;

fn event(id: &str, topic: &str, body: &str) -> Envelope {
    Envelope::new(
        id.into(),
        topic.into(),
        "happened".into(),
        BTreeMap::new(),
        body,
    )
    .unwrap()
}

fn put(key: &str, value: &str, base_version: u64) -> Write {
    Write::Put {
        collection: "stock".into(),
        key: key.into(),
        value: value.into(),
        base_version,
    }
}

fn commit<'a>(message_id: &'a str, writes: &'a [Write], events: &'a [Envelope]) -> Commit<'a> {
    Commit {
        module: "inventory",
        message_id,
        answer: r#"{"ok":true}"#,
        writes,
        events,
    }
}

async fn version(store: &Store, key: &str) -> Option<u64> {
    store
        .get("inventory", "stock", key)
        .await
        .unwrap()
        .map(|d| d.version)
}

async fn whole_log(store: &Store, topics: &[&str]) -> Vec<String> {
    let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    store
        .read_log(0, &topics, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.envelope.id)
        .collect()
}

async fn stale_versions_conflict_and_roll_back_the_whole_unit(store: Store) {
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

async fn concurrent_read_modify_write_loses_no_update(store: Store) {
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

async fn a_message_id_commits_once_and_keeps_its_first_answer(store: Store) {
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

async fn concurrent_deliveries_of_one_id_commit_once(store: Store) {
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
        .scan("inventory", "stock", "copy-", 100)
        .await
        .unwrap();
    assert_eq!(copies.len(), 1);
}

async fn units_committed_together_fail_alone(store: Store) {
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
        .scan("inventory", "stock", "unit-", 1_000)
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

async fn the_log_keeps_emit_order_and_cursors_only_move_forward(store: Store) {
    let a = [
        event("a1", "orders.events", "1"),
        event("a2", "stock.events", "2"),
        event("a3", "orders.events", "3"),
    ];
    store.commit(&commit("ma", &[], &a)).await.unwrap();
    // A consumer seen for the first time starts at the end of the log.
    assert_eq!(
        store.cursor("late").await.unwrap(),
        store
            .read_log(0, &["orders.events".into(), "stock.events".into()], 100)
            .await
            .unwrap()
            .last()
            .unwrap()
            .seq
    );
    let b = [event("b1", "orders.events", "4")];
    store.commit(&commit("mb", &[], &b)).await.unwrap();
    store
        .append(&[event("c1", "orders.events", "5")], "http")
        .await
        .unwrap();
    // An id already in the log is not appended twice.
    store
        .append(&[event("c1", "orders.events", "5")], "http")
        .await
        .unwrap();

    assert_eq!(
        whole_log(&store, &["orders.events"]).await,
        ["a1", "a3", "b1", "c1"]
    );
    let position = store.cursor("late").await.unwrap();
    let unseen = store
        .read_log(position, &["orders.events".into()], 100)
        .await
        .unwrap();
    let ids: Vec<&str> = unseen.iter().map(|e| e.envelope.id.as_str()).collect();
    assert_eq!(ids, ["b1", "c1"]);
    assert_eq!(unseen[0].envelope.body_text(), "4");

    let last = unseen[1].seq;
    store.set_cursor("late", last).await.unwrap();
    store.set_cursor("late", position).await.unwrap();
    assert_eq!(
        store.cursor("late").await.unwrap(),
        last,
        "never moves back"
    );
}

async fn a_log_reader_racing_concurrent_commits_misses_nothing(store: Store) {
    // Writers commit events concurrently while a reader follows the log with
    // a cursor, as the embedded log does. A row committed after a later seq
    // was read would be skipped for ever; every event must be read once.
    const WRITERS: usize = 6;
    const EACH: usize = 40;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let topics = ["race.events".to_string()];
            let mut cursor = 0;
            let mut seen = Vec::new();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let entries = store.read_log(cursor, &topics, 7).await.unwrap();
                if entries.is_empty() && finished {
                    return seen;
                }
                for e in entries {
                    cursor = e.seq;
                    seen.push(e.envelope.id);
                }
            }
        })
    };
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.spawn(async move {
            for i in 0..EACH {
                let id = format!("w{w}-{i}");
                let events = [event(&id, "race.events", "{}")];
                let writes = [put(&id, "1", 0)];
                store.commit(&commit(&id, &writes, &events)).await.unwrap();
            }
        });
    }
    while let Some(w) = writers.join_next().await {
        w.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = reader.await.unwrap();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "read twice");
    assert_eq!(seen.len(), WRITERS * EACH, "the reader skipped events");
}

async fn dead_letters_are_listed_replaced_and_marked_replayed(store: Store) {
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

async fn published_entries_leave_the_relay_queue_and_dropped_claims_return(store: Store) {
    let events = [event("p1", "x.events", "1"), event("p2", "x.events", "2")];
    store.commit(&commit("m", &[], &events)).await.unwrap();
    let claim = store.claim_unpublished(10).await.unwrap();
    assert_eq!(claim.entries.len(), 2);
    claim.release().await; // e.g. the broker was down: nothing marked
    let claim = store.claim_unpublished(1).await.unwrap();
    assert_eq!(claim.entries[0].envelope.id, "p1", "oldest first");
    claim.published().await.unwrap();
    let claim = store.claim_unpublished(10).await.unwrap();
    let ids: Vec<&str> = claim
        .entries
        .iter()
        .map(|e| e.envelope.id.as_str())
        .collect();
    assert_eq!(ids, ["p2"]);
    claim.published().await.unwrap();
    assert!(
        store
            .claim_unpublished(10)
            .await
            .unwrap()
            .entries
            .is_empty()
    );
    // Published entries are still the embedded log.
    assert_eq!(whole_log(&store, &["x.events"]).await, ["p1", "p2"]);
}

async fn prefix_scans_are_bytewise_and_bounded(store: Store) {
    let writes: Vec<Write> = ["a-b", "ab", "a-a", "a.c", "a-", "b-a", "A-z"]
        .iter()
        .map(|k| put(k, "0", 0))
        .collect();
    store.commit(&commit("m", &writes, &[])).await.unwrap();
    let keys = |found: Vec<(String, Document)>| -> Vec<String> {
        found.into_iter().map(|(k, _)| k).collect()
    };
    let found = store.scan("inventory", "stock", "a-", 10).await.unwrap();
    assert_eq!(keys(found), ["a-", "a-a", "a-b"]);
    let found = store.scan("inventory", "stock", "a", 2).await.unwrap();
    assert_eq!(keys(found), ["a-", "a-a"]);
    let found = store.scan("inventory", "stock", "", 100).await.unwrap();
    assert_eq!(
        keys(found),
        ["A-z", "a-", "a-a", "a-b", "a.c", "ab", "b-a"],
        "byte order"
    );
    assert!(
        store
            .scan("orders", "stock", "", 10)
            .await
            .unwrap()
            .is_empty(),
        "modules do not see each other's documents"
    );
}

async fn pruning_forgets_old_ids_and_keeps_what_a_reader_still_needs(store: Store) {
    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);
    const NOW: std::time::Duration = std::time::Duration::ZERO;
    let read_up_to = |topic: &str, seq: i64| {
        OutboxReaders::EmbeddedLog([(topic.to_string(), seq)].into_iter().collect())
    };
    store
        .commit(&commit("m1", &[], &[event("e1", "t", "1")]))
        .await
        .unwrap();
    // e2 on the read topic, u1 on a topic nobody consumes.
    let events = [event("e2", "t", "2"), event("u1", "u", "3")];
    store.commit(&commit("m2", &[], &events)).await.unwrap();
    let log = store.read_log(0, &["t".to_string()], 10).await.unwrap();
    let (e1, e2) = (log[0].seq, log[1].seq);
    // The readers of `t` have read e1, not e2.
    let readers = read_up_to("t", e1);

    // Nothing is an hour old yet.
    assert_eq!(store.prune_inbox(HOUR, 100).await.unwrap(), 0);
    assert_eq!(store.prune_outbox(HOUR, 100, &readers).await.unwrap(), 0);

    // Inbox: in batches of `limit`, until nothing is left.
    assert_eq!(store.prune_inbox(NOW, 1).await.unwrap(), 1);
    assert_eq!(store.prune_inbox(NOW, 100).await.unwrap(), 1);
    assert_eq!(store.prune_inbox(NOW, 100).await.unwrap(), 0);
    assert_eq!(store.inbox_answer("inventory", "m1").await.unwrap(), None);
    // A forgotten id is a new message again.
    store.commit(&commit("m1", &[], &[])).await.unwrap();

    // Embedded log: e1 is read, u1 has no reader, e2 is still to be read.
    assert_eq!(store.prune_outbox(NOW, 100, &readers).await.unwrap(), 2);
    assert_eq!(whole_log(&store, &["t", "u"]).await, ["e2"]);
    // With a broker, what the relay has not sent stays, whatever its age.
    let relay = OutboxReaders::Relay;
    assert_eq!(store.prune_outbox(NOW, 100, &relay).await.unwrap(), 0);
    store.mark_published(&[e2]).await.unwrap();
    assert_eq!(store.prune_outbox(NOW, 100, &relay).await.unwrap(), 1);
    assert!(whole_log(&store, &["t"]).await.is_empty());
    // Seqs are never reused, so positions stay valid after pruning.
    store
        .commit(&commit("m3", &[], &[event("e3", "t", "3")]))
        .await
        .unwrap();
    let log = store.read_log(e2, &["t".to_string()], 10).await.unwrap();
    assert_eq!(log.len(), 1);
    assert!(log[0].seq > e2, "{} after {e2}", log[0].seq);
    let unread = read_up_to("t", log[0].seq - 1);
    assert_eq!(store.prune_outbox(NOW, 100, &unread).await.unwrap(), 0);
    // No consumer at all: nobody will read it (a new one starts at the end).
    let nobody = OutboxReaders::EmbeddedLog(Default::default());
    assert_eq!(store.prune_outbox(NOW, 100, &nobody).await.unwrap(), 1);
}

async fn sqlite_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    (Store::connect(&url).await.unwrap(), dir)
}

fn pool_of(store: &Store) -> sqlx::PgPool {
    match store {
        Store::Postgres(pg) => pg.pool().clone(),
        Store::Sqlite(_) => panic!("not PostgreSQL"),
    }
}

/// A PostgreSQL database of its own, so tests run in parallel and repeat
/// without cleanup; dropped when the test passes.
pub(crate) struct TestDatabase {
    pub url: String,
    server: String,
    name: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        use sqlx::Connection;
        let server = std::env::var("SWITCHYARD_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("switchyard_test_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(&server)
            .await
            .expect("PostgreSQL is running on 127.0.0.1:5432 (see .ci/run)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
        Self {
            url: format!("{base}/{name}"),
            server: server.clone(),
            name,
        }
    }

    pub async fn drop_database(self) {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&self.server).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut admin)
        .await
        .unwrap();
    }
}

macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _dir) = super::sqlite_store().await;
                    super::$name(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::TestDatabase::create().await;
                    let store = super::Store::connect(&db.url).await.unwrap();
                    super::$name(store).await;
                    db.drop_database().await;
                }
            )*
        }
    };
}

store_tests!(
    stale_versions_conflict_and_roll_back_the_whole_unit,
    concurrent_read_modify_write_loses_no_update,
    a_message_id_commits_once_and_keeps_its_first_answer,
    concurrent_deliveries_of_one_id_commit_once,
    units_committed_together_fail_alone,
    the_log_keeps_emit_order_and_cursors_only_move_forward,
    a_log_reader_racing_concurrent_commits_misses_nothing,
    dead_letters_are_listed_replaced_and_marked_replayed,
    published_entries_leave_the_relay_queue_and_dropped_claims_return,
    prefix_scans_are_bytewise_and_bounded,
    pruning_forgets_old_ids_and_keeps_what_a_reader_still_needs,
);

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

/// PostgreSQL only (SQLite serves one host): two hosts' relays never claim
/// the same entry, and a claimer's death frees its entries at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_relay_claims_are_exclusive_and_die_with_the_claimer() {
    let db = TestDatabase::create().await;
    // Two pools stand for two hosts.
    let host_a = Store::connect(&db.url).await.unwrap();
    let host_b = Store::connect(&db.url).await.unwrap();
    let events: Vec<Envelope> = (0..10)
        .map(|i| event(&format!("e{i}"), "x.events", "{}"))
        .collect();
    host_a.commit(&commit("m", &[], &events)).await.unwrap();

    let claim_a = host_a.claim_unpublished(4).await.unwrap();
    let claim_b = host_b.claim_unpublished(100).await.unwrap();
    let a: HashSet<String> = claim_a
        .entries
        .iter()
        .map(|e| e.envelope.id.clone())
        .collect();
    let b: HashSet<String> = claim_b
        .entries
        .iter()
        .map(|e| e.envelope.id.clone())
        .collect();
    assert_eq!((a.len(), b.len()), (4, 6));
    assert!(a.is_disjoint(&b));
    claim_b.published().await.unwrap();

    // Host A dies holding its claim: its session ends, and so do its locks.
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND state = 'idle in transaction'",
    )
    .fetch_all(&pool_of(&host_b))
    .await
    .unwrap();
    assert_eq!(killed, [true], "one session held a claim");
    let mut rest = HashSet::new();
    for _ in 0..100 {
        let claim = host_b.claim_unpublished(100).await.unwrap();
        rest = claim
            .entries
            .iter()
            .map(|e| e.envelope.id.clone())
            .collect();
        if !rest.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(rest, a);
    claim_a.release().await;
    db.drop_database().await;
}
