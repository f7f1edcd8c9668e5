//! `cargo bench -p switchyard-store --bench commit` (needs PostgreSQL on
//! 127.0.0.1:5432, trust auth, or `SWITCHYARD_BENCH_POSTGRES` naming a
//! server URL whose user may CREATE DATABASE): units of work per second
//! through `Store::commit` on PostgreSQL with 1, 32 and 128 concurrent
//! committers, each unit a restock (an inbox row, one document updated from
//! its base version, one outbox event), committed one transaction per unit
//! (`max_group` 1, the store before group commit) and in groups (the
//! store's defaults), interleaved in one run, with the ratio.
//!
//! Knobs: `COMMIT_BENCH_SECONDS` (each measurement, default 3),
//! `COMMIT_BENCH_ROUNDS` (default 3; the median is printed),
//! `COMMIT_BENCH_CONCURRENCY` (comma-separated, default `1,32,128`),
//! `COMMIT_BENCH_MAX_GROUP` and `COMMIT_BENCH_COMMITTERS` (the grouped
//! store's settings), `COMMIT_BENCH_ORDERED=1` (the outbox as the embedded
//! log, `OUTBOX_LOCK` taken; off by default, as with a broker).

use std::collections::BTreeMap;
use std::error::Error;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;
use switchyard_model::envelope::Envelope;
use switchyard_store::{Commit, Store, StoreError, StoreOptions, Write};

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

fn env<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run() -> Result<()> {
    let seconds: f64 = env("COMMIT_BENCH_SECONDS", 3.0);
    let rounds: usize = env("COMMIT_BENCH_ROUNDS", 3);
    let concurrency: Vec<usize> = std::env::var("COMMIT_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,32,128".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let ordered_log = env("COMMIT_BENCH_ORDERED", 0u8) == 1;
    let grouped_options = StoreOptions {
        ordered_log,
        max_group: env(
            "COMMIT_BENCH_MAX_GROUP",
            switchyard_store::DEFAULT_MAX_GROUP,
        ),
        committers: env(
            "COMMIT_BENCH_COMMITTERS",
            switchyard_store::DEFAULT_COMMITTERS,
        ),
        ..StoreOptions::default()
    };
    let single_options = StoreOptions {
        ordered_log,
        max_group: 1,
        ..StoreOptions::default()
    };
    let server = std::env::var("SWITCHYARD_BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    println!(
        "commit benchmark, PostgreSQL: restock units (inbox row + 1 document update + 1 event), \
         {seconds} s per figure, median of {rounds} rounds, pool {} connections, ordered log {ordered_log}; \
         grouped: max-group {}, committers {}",
        switchyard_store::StoreOptions::default()
            .max_connections
            .map_or("default (10)".to_string(), |n| n.to_string()),
        grouped_options.max_group,
        grouped_options.committers,
    );

    let single_db = Database::create(&server, "single").await?;
    let grouped_db = Database::create(&server, "grouped").await?;
    let single = Store::connect_with(&single_db.url, &single_options).await?;
    let grouped = Store::connect_with(&grouped_db.url, &grouped_options).await?;

    let mut figures: BTreeMap<usize, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let duration = Duration::from_secs_f64(seconds);
    for round in 0..rounds {
        for &n in &concurrency {
            // Alternate which goes first, so neither always runs on a
            // warmer (or busier) machine.
            let tag = format!("r{round}c{n}");
            let (a, b) = if round % 2 == 0 {
                let a = restocks(&single, n, duration, &tag).await?;
                let b = restocks(&grouped, n, duration, &tag).await?;
                (a, b)
            } else {
                let b = restocks(&grouped, n, duration, &tag).await?;
                let a = restocks(&single, n, duration, &tag).await?;
                (a, b)
            };
            println!(
                "  round {round}, {n:>3} in flight: one transaction per unit {a:>8.0}/s, grouped {b:>8.0}/s"
            );
            let entry = figures.entry(n).or_default();
            entry.0.push(a);
            entry.1.push(b);
        }
    }
    println!();
    println!("| in flight | one transaction per unit | group commit | ratio |");
    println!("|---|---|---|---|");
    for (n, (single, grouped)) in figures {
        let (a, b) = (median(single), median(grouped));
        println!(
            "| {n} | {a:.0} units/s | {b:.0} units/s | {:.2}x |",
            b / a.max(1.0)
        );
    }
    drop((single, grouped));
    single_db.drop_database().await?;
    grouped_db.drop_database().await?;
    Ok(())
}

/// `workers` tasks each commit restocks of their own sku for `duration`;
/// units of work committed per second.
async fn restocks(store: &Store, workers: usize, duration: Duration, tag: &str) -> Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (store, stop, done) = (store.clone(), stop.clone(), done.clone());
        let sku = format!("{tag}-sku-{w}");
        tasks.spawn(async move {
            let mut version = 0u64;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("{sku}-{i}");
                i += 1;
                let writes = [Write::Put {
                    collection: "stock".into(),
                    key: sku.clone(),
                    value: format!(r#"{{"sku":"{sku}","qty":{i}}}"#),
                    base_version: version,
                }];
                let body = format!(r#"{{"sku":"{sku}","added":1,"qty":{i}}}"#);
                let events = [Envelope::new(
                    format!("{id}-event"),
                    "inventory.events".into(),
                    "restocked".into(),
                    BTreeMap::new(),
                    &body,
                )?];
                let commit = Commit {
                    module: "inventory",
                    message_id: &id,
                    answer: r#"{"ok":true}"#,
                    writes: &writes,
                    events: &events,
                };
                match store.commit(&commit).await {
                    Ok(()) => {
                        version += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e @ (StoreError::Conflict { .. } | StoreError::Duplicate)) => {
                        return Err(format!("unit {id}: {e} (each worker owns its sku)").into());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok::<_, Box<dyn Error + Send + Sync>>(())
        });
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    // Units finishing after the stop still count, over the time they took.
    stop.store(true, Ordering::Relaxed);
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    let took = started.elapsed().as_secs_f64();
    Ok(done.load(Ordering::Relaxed) as f64 / took)
}

fn median(mut figures: Vec<f64>) -> f64 {
    figures.sort_by(f64::total_cmp);
    figures.get(figures.len() / 2).copied().unwrap_or(0.0)
}

/// A database of the benchmark's own, dropped at the end.
struct Database {
    url: String,
    server: String,
    name: String,
}

impl Database {
    async fn create(server: &str, what: &str) -> Result<Self> {
        let name = format!("switchyard_bench_{what}_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(server).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let base = server.rsplit_once('/').map_or(server, |(b, _)| b);
        Ok(Self {
            url: format!("{base}/{name}"),
            server: server.to_string(),
            name,
        })
    }

    async fn drop_database(self) -> Result<()> {
        let mut admin = sqlx::PgConnection::connect(&self.server).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut admin)
        .await?;
        Ok(())
    }
}
