//! Soak (ignored; README "Tests"): the host is SIGKILLed ten times at random
//! moments while it consumes 20,000 Redis restocks and a module that traps
//! on one message in ten; after the last restart every restock is applied
//! exactly once and every trapping message is dead-lettered exactly once.
//!
//! `cargo test --all-features --test e2e soak -- --ignored --nocapture`
//! (`SOAK_SEED=<n>` repeats a run's kill moments; the seed is printed).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::redis_streams::{Streams, project_with};
use crate::support::{FAULTY, INVENTORY_ALONE, spawn_host, try_query_count};

const RESTOCKS: usize = 20_000;
const SKUS: usize = 100;
const FAULTY_MESSAGES: usize = 1_000;
/// One faulty message in this many traps (on every attempt).
const TRAP_EVERY: usize = 10;
const KILLS: usize = 10;

/// A small xorshift generator: the kill moments, repeatable from the seed.
struct Moments(u64);

impl Moments {
    /// Milliseconds in `low..high`.
    fn next_ms(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + self.0 % (high - low)
    }
}

async fn fill(streams: &Streams) {
    let mut conn = streams.conn.clone();
    let inventory = format!("{}inventory", streams.prefix);
    let faulty = format!("{}faulty", streams.prefix);
    let mut pipe = redis::pipe();
    for n in 0..RESTOCKS {
        let sku = format!("sku-{}", n % SKUS);
        let body = format!(r#"{{"sku":"{sku}","qty":1}}"#);
        let id = format!("restock-{n}");
        pipe.xadd(
            &inventory,
            "*",
            &[
                ("id", id.as_str()),
                ("subtopic", "restock"),
                ("body", body.as_str()),
                ("partition-key", sku.as_str()),
            ],
        )
        .ignore();
        if n.is_multiple_of(RESTOCKS / FAULTY_MESSAGES) {
            let k = n / (RESTOCKS / FAULTY_MESSAGES);
            let then = if k.is_multiple_of(TRAP_EVERY) {
                "trap"
            } else {
                "ok"
            };
            let body = format!(r#"{{"key":"note-{k}","then":"{then}"}}"#);
            let id = format!("faulty-{k}");
            pipe.xadd(
                &faulty,
                "*",
                &[
                    ("id", id.as_str()),
                    ("subtopic", "write-then"),
                    ("body", body.as_str()),
                ],
            )
            .ignore();
        }
    }
    let () = pipe.query_async(&mut conn).await.expect("XADD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: about a minute; run it with --ignored"]
async fn ten_sigkills_while_consuming_lose_nothing_and_apply_nothing_twice() {
    let streams = Streams::new().await;
    let project = project_with(
        &streams,
        &["inventory", "faulty"],
        &format!("{INVENTORY_ALONE}{FAULTY}"),
        1_000,
    );
    fill(&streams).await;
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 | 1)
                .unwrap_or(0x9e37_79b9)
        });
    eprintln!("soak: SOAK_SEED={seed}");
    let mut moments = Moments(seed);
    let db = project.db_url();
    let count = |sql: &'static str| {
        let db = db.clone();
        let file = project.dir.path().join("switchyard.db");
        async move {
            if !file.exists() {
                return 0;
            }
            try_query_count(&db, sql).await.unwrap_or(0)
        }
    };
    let applied = || count("SELECT COUNT(*) FROM inbox WHERE module = 'inventory'");

    for kill in 1..=KILLS {
        let mut host = spawn_host(&project, &format!("host-{kill}"));
        let alive = moments.next_ms(300, 3_000);
        tokio::time::sleep(Duration::from_millis(alive)).await;
        host.kill().expect("SIGKILL");
        host.wait().expect("reaped");
        eprintln!(
            "soak: kill {kill} after {alive} ms, {} restocks applied",
            applied().await
        );
    }

    let mut last = spawn_host(&project, "host-last");
    let started = Instant::now();
    let traps = FAULTY_MESSAGES / TRAP_EVERY;
    let done = loop {
        let restocks = applied().await;
        let notes = count("SELECT COUNT(*) FROM inbox WHERE module = 'faulty'").await;
        let letters = count("SELECT COUNT(*) FROM dead_letters WHERE module = 'faulty'").await;
        if restocks as usize == RESTOCKS
            && notes as usize == FAULTY_MESSAGES - traps
            && letters as usize == traps
        {
            break true;
        }
        if started.elapsed() > Duration::from_secs(300) {
            eprintln!("soak: stuck at {restocks} restocks, {notes} notes, {letters} dead letters");
            break false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Anything still in flight would show up as more than expected.
    tokio::time::sleep(Duration::from_secs(2)).await;
    last.kill().expect("SIGKILL");
    last.wait().expect("reaped");
    assert!(
        done,
        "not everything was handled after the last restart (seed {seed})"
    );

    // The `faulty.dlq` stream copy is at least once: a host killed between
    // recording a dead letter and acknowledging its entry copies it again.
    let mut conn = streams.conn.clone();
    let copies: usize =
        redis::AsyncCommands::xlen(&mut conn, format!("{}faulty.dlq", streams.prefix))
            .await
            .expect("XLEN");
    eprintln!("soak: {copies} dead-letter copies in faulty.dlq for {traps} dead letters");

    let pool = sqlx::SqlitePool::connect(&db).await.expect("database");
    let values: Vec<String> = sqlx::query_scalar(
        "SELECT value FROM documents WHERE module = 'inventory' AND collection = 'stock'",
    )
    .fetch_all(&pool)
    .await
    .expect("stock");
    let total: u64 = values
        .iter()
        .map(|v| {
            serde_json::from_str::<Value>(v).expect("stock JSON")["available"]
                .as_u64()
                .expect("available")
        })
        .sum();
    assert_eq!(values.len(), SKUS, "one stock document per sku");
    assert_eq!(
        total, RESTOCKS as u64,
        "every restock applied exactly once (seed {seed})"
    );
    let letters: Vec<(String, i64)> = sqlx::query_as(
        "SELECT message_id, COUNT(*) FROM dead_letters WHERE module = 'faulty' GROUP BY message_id",
    )
    .fetch_all(&pool)
    .await
    .expect("dead letters");
    assert_eq!(letters.len(), traps, "every trapping message dead-lettered");
    assert!(
        letters
            .iter()
            .all(|(id, n)| *n == 1 && id.starts_with("faulty-")),
        "each dead-lettered once: {letters:?}"
    );
    let notes: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM documents WHERE module = 'faulty' AND collection = 'notes'",
    )
    .fetch_one(&pool)
    .await
    .expect("notes");
    assert_eq!(
        notes as usize,
        FAULTY_MESSAGES - traps,
        "a trapping message leaves no note behind"
    );
    pool.close().await;
}
