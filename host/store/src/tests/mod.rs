//! One behaviour suite, run against both backends: each test is a function
//! taking a fresh [`Store`]; `store_tests!` runs it on a new SQLite file and
//! on a new PostgreSQL database (127.0.0.1:5432, or `SWITCHYARD_TEST_POSTGRES`
//! naming a server URL whose user may CREATE DATABASE).
//!
//! The suite's functions live in one file per area and are listed in the
//! `store_tests!` call below; tests that only one backend can run sit with
//! their area, as plain `#[tokio::test]`s.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use super::*;

mod dead_letters;
mod documents;
mod group;
mod log;
mod retention;

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
    ($($area:ident::$name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _dir) = super::sqlite_store().await;
                    super::$area::$name(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::TestDatabase::create().await;
                    let store = super::Store::connect(&db.url).await.unwrap();
                    super::$area::$name(store).await;
                    db.drop_database().await;
                }
            )*
        }
    };
}

store_tests!(
    documents::stale_versions_conflict_and_roll_back_the_whole_unit,
    documents::concurrent_read_modify_write_loses_no_update,
    documents::a_message_id_commits_once_and_keeps_its_first_answer,
    documents::the_inbox_says_when_a_message_was_committed,
    documents::concurrent_deliveries_of_one_id_commit_once,
    documents::units_committed_together_fail_alone,
    documents::prefix_scans_are_bytewise_and_bounded,
    group::mixed_units_at_once_each_get_their_own_result,
    log::the_log_keeps_emit_order_and_cursors_only_move_forward,
    log::a_log_reader_racing_concurrent_commits_misses_nothing,
    log::published_entries_leave_the_relay_queue_and_dropped_claims_return,
    dead_letters::dead_letters_are_listed_replaced_and_marked_replayed,
    dead_letters::a_failure_holding_nul_characters_is_recorded,
    retention::pruning_forgets_old_ids_and_keeps_what_a_reader_still_needs,
);
