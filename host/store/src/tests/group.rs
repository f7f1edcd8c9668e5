//! Units of work committed together (group commit): each unit gets its own
//! result and is applied all-or-nothing; a group whose COMMIT fails fails
//! every unit of it; a caller that stops waiting loses nothing.

use std::time::Duration;

use super::*;

/// Guards: in a group, a duplicate id (of a committed message, and the same
/// id twice at once), a stale base version and a value PostgreSQL refuses
/// each fail alone with their own error, and only the good units are
/// applied (inbox row, document, event). On SQLite the NUL value is stored.
/// Without the savepoint fallback of `postgres/group.rs` the refused or
/// stale unit would take the whole group down with it.
pub(super) async fn mixed_units_at_once_each_get_their_own_result(store: Store) {
    let refuses_nul = matches!(store, Store::Postgres(_));
    store
        .commit(&commit("old", &[put("stale", "1", 0)], &[]))
        .await
        .unwrap();
    let outcomes = commit_mix(&store).await;
    check_mix(&store, outcomes, refuses_nul).await;
}

/// What a unit of [`commit_mix`] is, and how it ended.
type Outcomes = Vec<(String, Result<(), StoreError>)>;

/// Commits at once: 20 good units, a duplicate of `old`, the id `twin`
/// twice, 3 stale writes and one value with `\u0000`.
async fn commit_mix(store: &Store) -> Outcomes {
    let mut tasks = tokio::task::JoinSet::new();
    let mut spawn = |name: String, id: String, writes: Vec<Write>| {
        let store = store.clone();
        tasks.spawn(async move {
            let events = [event(&format!("{name}-event"), "mix", "{}")];
            let result = store.commit(&commit(&id, &writes, &events)).await;
            (name, result)
        });
    };
    for i in 0..20 {
        let key = format!("good-{i:02}");
        spawn(key.clone(), key.clone(), vec![put(&key, "1", 0)]);
    }
    spawn(
        "old-again".into(),
        "old".into(),
        vec![put("old-again", "1", 0)],
    );
    for twin in ["twin-a", "twin-b"] {
        spawn(twin.into(), "twin".into(), vec![put(twin, "1", 0)]);
    }
    for i in 0..3 {
        let own = format!("stale-own-{i}");
        let writes = vec![put(&own, "1", 0), put("stale", "2", 7)];
        spawn(own.clone(), own, writes);
    }
    spawn(
        "nul".into(),
        "nul".into(),
        vec![put("nul", r#"{"name":"a\u0000b"}"#, 0)],
    );
    let mut outcomes = Vec::new();
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done.unwrap());
    }
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    outcomes
}

async fn check_mix(store: &Store, outcomes: Outcomes, refuses_nul: bool) {
    let mut applied = Vec::new();
    let mut twins_committed = 0;
    for (name, result) in &outcomes {
        match (name.as_str(), result) {
            (n, Ok(())) if n.starts_with("good-") => applied.push(n.to_string()),
            ("old-again", Err(StoreError::Duplicate)) => {}
            ("twin-a" | "twin-b", Ok(())) => {
                twins_committed += 1;
                applied.push(name.clone());
            }
            ("twin-a" | "twin-b", Err(StoreError::Duplicate)) => {}
            (n, Err(StoreError::Conflict { key, .. })) if n.starts_with("stale-own-") => {
                assert_eq!(key, "stale");
            }
            ("nul", Err(StoreError::Refused(_))) if refuses_nul => {}
            ("nul", Ok(())) if !refuses_nul => applied.push(name.clone()),
            (n, r) => panic!("unit {n}: unexpected {r:?}"),
        }
    }
    assert_eq!(twins_committed, 1, "one id twice at once commits once");
    applied.sort();
    // Documents: exactly the applied units' keys (the stale write's
    // document keeps version 1).
    let mut written: Vec<String> = Vec::new();
    for prefix in ["good-", "old-again", "twin-", "stale-own-", "nul"] {
        let found = store
            .scan("inventory", "stock", prefix, 100, usize::MAX)
            .await
            .unwrap();
        written.extend(found.into_iter().map(|(k, _)| k));
    }
    written.sort();
    assert_eq!(written, applied);
    assert_eq!(version(store, "stale").await, Some(1));
    // Events: exactly the applied units'.
    let mut logged = whole_log(store, &["mix"]).await;
    logged.sort();
    let expected: Vec<String> = applied.iter().map(|n| format!("{n}-event")).collect();
    assert_eq!(logged, expected);
    // Inbox rows: the applied units' and the first `old`; none of a failed unit.
    for i in 0..3 {
        let id = format!("stale-own-{i}");
        assert_eq!(store.inbox_answer("inventory", &id).await.unwrap(), None);
    }
    assert_eq!(
        store
            .inbox_answer("inventory", "nul")
            .await
            .unwrap()
            .is_some(),
        !refuses_nul
    );
    assert!(
        store
            .inbox_answer("inventory", "twin")
            .await
            .unwrap()
            .is_some()
    );
}

/// A PostgreSQL store with one committer, so that [`hold_committer`] holds
/// every unit queued meanwhile in the queue.
async fn one_committer(db: &TestDatabase) -> Store {
    let options = StoreOptions {
        committers: 1,
        ..StoreOptions::default()
    };
    Store::connect_with(&db.url, &options).await.unwrap()
}

/// Makes the (only) committer wait on a row lock that the returned
/// transaction holds: units committed until it is rolled back queue up and
/// then go as one group.
async fn hold_committer(store: &Store) -> sqlx::Transaction<'static, sqlx::Postgres> {
    store
        .commit(&commit("gate-0", &[put("gate", "0", 0)], &[]))
        .await
        .unwrap();
    let pool = pool_of(store);
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("UPDATE documents SET updated_at = now() WHERE key = 'gate'")
        .execute(&mut *holder)
        .await
        .unwrap();
    let gated = store.clone();
    tokio::spawn(async move {
        let writes = [put("gate", "1", 1)];
        gated.commit(&commit("gate-1", &writes, &[])).await.unwrap();
    });
    // Until the committer waits on the lock.
    for _ in 0..100 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting > 0 {
            return holder;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the committer never waited on the gate");
}

/// Lets units spawned a moment ago reach the committers' queue.
async fn queued() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// PostgreSQL only. Guards that the mix of
/// [`mixed_units_at_once_each_get_their_own_result`] is right when it is
/// certainly one group: the good units' inbox rows share one transaction
/// start (`now()`), which one transaction per unit would not give (this
/// assertion fails on the store before group commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_group_of_mixed_units_gives_each_its_own_result() {
    let db = TestDatabase::create().await;
    let store = one_committer(&db).await;
    store
        .commit(&commit("old", &[put("stale", "1", 0)], &[]))
        .await
        .unwrap();
    let holder = hold_committer(&store).await;
    let mix = {
        let store = store.clone();
        tokio::spawn(async move { commit_mix(&store).await })
    };
    queued().await;
    holder.rollback().await.unwrap();
    let outcomes = mix.await.unwrap();
    check_mix(&store, outcomes, true).await;
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT created_at) FROM inbox
         WHERE message_id LIKE 'good-%' OR message_id = 'twin'",
    )
    .fetch_one(&pool_of(&store))
    .await
    .unwrap();
    assert_eq!(
        transactions, 1,
        "the good units committed in one transaction"
    );
    db.drop_database().await;
}

/// PostgreSQL only. Guards: when the COMMIT of a group fails (here a
/// deferred constraint trigger refuses one unit's document at commit time),
/// every unit of the group gets an error and none of them is stored, not
/// only the unit that caused it (one transaction per unit would fail only
/// that one: this test fails on the store before group commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_failed_group_commit_fails_every_unit_of_it() {
    let db = TestDatabase::create().await;
    let store = one_committer(&db).await;
    let pool = pool_of(&store);
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.key = 'poison' THEN RAISE EXCEPTION 'poison at commit'; END IF;
           RETURN NULL;
         END $$;
         CREATE CONSTRAINT TRIGGER poison AFTER INSERT ON documents
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let holder = hold_committer(&store).await;
    let mut tasks = tokio::task::JoinSet::new();
    for key in ["a", "b", "poison", "c", "d"] {
        let store = store.clone();
        tasks.spawn(async move {
            let writes = [put(key, "1", 0)];
            let events = [event(&format!("{key}-event"), "poisoned", "{}")];
            store.commit(&commit(key, &writes, &events)).await
        });
    }
    queued().await;
    holder.rollback().await.unwrap();
    while let Some(done) = tasks.join_next().await {
        let result = done.unwrap();
        assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
    }
    for key in ["a", "b", "poison", "c", "d"] {
        assert_eq!(version(&store, key).await, None);
        assert_eq!(store.inbox_answer("inventory", key).await.unwrap(), None);
    }
    assert!(whole_log(&store, &["poisoned"]).await.is_empty());
    // The committer goes on.
    store
        .commit(&commit("after", &[put("after", "1", 0)], &[]))
        .await
        .unwrap();
    db.drop_database().await;
}

/// PostgreSQL only. Guards: a caller that stops waiting after its unit was
/// queued loses nothing and applies nothing twice: the unit commits once,
/// and a redelivery of the message is a duplicate. (With one transaction
/// per unit, `max_group` 1, the dropped caller's transaction rolls back
/// instead, which is as safe, the message being redelivered: this test
/// fails there at "the queued unit was lost".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_caller_that_stops_waiting_neither_loses_nor_repeats_its_unit() {
    let db = TestDatabase::create().await;
    let store = one_committer(&db).await;
    let holder = hold_committer(&store).await;
    let caller = {
        let store = store.clone();
        tokio::spawn(async move {
            let writes = [put("left", "1", 0)];
            let events = [event("left-event", "left", "{}")];
            store.commit(&commit("left", &writes, &events)).await
        })
    };
    queued().await;
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    holder.rollback().await.unwrap();
    // The queued unit still commits, in the committer's own time.
    let mut committed = false;
    for _ in 0..100 {
        if store
            .inbox_answer("inventory", "left")
            .await
            .unwrap()
            .is_some()
        {
            committed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(committed, "the queued unit was lost");
    let writes = [put("left", "1", 0)];
    let events = [event("left-event", "left", "{}")];
    let again = store.commit(&commit("left", &writes, &events)).await;
    assert!(matches!(again, Err(StoreError::Duplicate)), "{again:?}");
    assert_eq!(version(&store, "left").await, Some(1));
    assert_eq!(whole_log(&store, &["left"]).await, ["left-event"]);
    db.drop_database().await;
}

/// Guards: three stores ("hosts") on one database with the outbox as the
/// log, all read-modify-writing one document and emitting an event. A
/// single unit used to take the log lock after its row lock while a group
/// took it before, so the two could deadlock, and a deadlock that ended a
/// group's transaction failed every unit of it as `Backend` (a 503). Now
/// every unit ends `Ok` or `Conflict` (rerun on fresh state), and the
/// document counts exactly the units that committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hosts_racing_on_one_document_only_ever_conflict() {
    let db = TestDatabase::create().await;
    let options = StoreOptions {
        ordered_log: true,
        ..StoreOptions::default()
    };
    let mut hosts = Vec::new();
    for _ in 0..3 {
        hosts.push(Store::connect_with(&db.url, &options).await.unwrap());
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (h, store) in hosts.iter().enumerate() {
        for worker in 0..24 {
            let store = store.clone();
            tasks.spawn(async move {
                let mut committed = 0u64;
                for n in 0..15 {
                    let id = format!("h{h}-w{worker}-{n}");
                    let (value, base) = match store.get("inventory", "stock", "hot").await.unwrap()
                    {
                        Some(doc) => {
                            let count: u64 = doc.value.parse().unwrap();
                            ((count + 1).to_string(), doc.version)
                        }
                        None => ("1".to_string(), 0),
                    };
                    let writes = [put("hot", &value, base)];
                    let events = [event(&format!("{id}-event"), "hot.events", "{}")];
                    match store.commit(&commit(&id, &writes, &events)).await {
                        Ok(()) => committed += 1,
                        Err(StoreError::Conflict { .. }) => {}
                        Err(e) => panic!("{id}: {e}"),
                    }
                }
                committed
            });
        }
    }
    let mut committed = 0;
    while let Some(result) = tasks.join_next().await {
        committed += result.unwrap();
    }
    let doc = hosts[0]
        .get("inventory", "stock", "hot")
        .await
        .unwrap()
        .expect("written");
    assert_eq!(doc.value, committed.to_string());
    assert_eq!(doc.version, committed);
    drop(hosts);
    db.drop_database().await;
}
