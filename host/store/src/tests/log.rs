//! The outbox as log and relay queue: emit order, cursors, a reader racing
//! writers, and relays' claims.

use std::collections::HashSet;
use std::sync::Arc;

use super::*;

pub(super) async fn the_log_keeps_emit_order_and_cursors_only_move_forward(store: Store) {
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

pub(super) async fn a_log_reader_racing_concurrent_commits_misses_nothing(store: Store) {
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

pub(super) async fn published_entries_leave_the_relay_queue_and_dropped_claims_return(
    store: Store,
) {
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
