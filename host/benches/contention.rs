//! `cargo bench --bench contention`: restocks of one sku with no partition
//! key (a hot key: every message reads and writes the same document) against
//! the same number spread over 100 skus, through the dispatcher with 32
//! messages in flight per host, on SQLite and on PostgreSQL, with 1 host and
//! with 3. "3 hosts" are three dispatchers in this process, each with its
//! own engine, store connection and queues: they share only the database,
//! as three host processes do. Prints msgs/s hot and spread, their ratio,
//! and the tries rerun after a version conflict per message.
//!
//! PostgreSQL: `SWITCHYARD_BENCH_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); the bench creates a
//! database of its own per run and fails when it cannot connect.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::Connection;
use switchyard::dispatch::Dispatcher;
use switchyard::envelope::{self, Envelope};
use switchyard::metrics::{CONFLICTS, Metrics};
use switchyard::outcome::Outcome;
use switchyard::registry::LoadedModule;

const MESSAGES: usize = 3_000;
const SKUS: usize = 100;
const IN_FLIGHT: usize = 32;

mod support;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let wasm = support::module_built("inventory")?;
    println!(
        "contention benchmark: {MESSAGES} inventory/restock, one sku (hot) vs {SKUS} skus (spread), {IN_FLIGHT} in flight per host"
    );
    let dir = tempfile::tempdir()?;
    let databases = [
        (
            "SQLite",
            format!("sqlite://{}", dir.path().join("bench.db").display()),
        ),
        (
            "PostgreSQL",
            postgres_database()
                .await
                .context("PostgreSQL (SWITCHYARD_BENCH_POSTGRES; .ci/run starts it)")?,
        ),
    ];
    let mut run = 0usize;
    for (name, url) in &databases {
        for hosts in [1, 3] {
            let group = Hosts::start(&wasm, url, hosts).await?;
            run += 1;
            let spread = group.round(run, SKUS).await;
            run += 1;
            let hot = group.round(run, 1).await;
            println!(
                "  {name:<10} {hosts} host{}: spread {:>6.0} msgs/s ({:.2} reruns/msg), hot {:>6.0} msgs/s ({:.2} reruns/msg), hot/spread {:.2}",
                if hosts == 1 { " " } else { "s" },
                spread.rate,
                spread.reruns,
                hot.rate,
                hot.reruns,
                hot.rate / spread.rate
            );
        }
    }
    Ok(())
}

/// A database of this run's own on the PostgreSQL server.
async fn postgres_database() -> anyhow::Result<String> {
    let admin = std::env::var("SWITCHYARD_BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .context("connect")?;
    let name = format!("bench_contention_{}", envelope::new_id().replace('-', ""));
    // The name is this function's own (a fixed prefix and a UUID).
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let mut url = url::Url::parse(&admin)?;
    url.set_path(&name);
    Ok(url.to_string())
}

/// One "host": a dispatcher over its own engine, registry and store
/// connection.
struct Host {
    dispatcher: Arc<Dispatcher>,
    module: Arc<LoadedModule>,
    metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

struct Hosts(Vec<Host>);

struct Figures {
    rate: f64,
    reruns: f64,
}

impl Hosts {
    async fn start(wasm: &Path, database: &str, hosts: usize) -> anyhow::Result<Self> {
        let mut group = Vec::new();
        for _ in 0..hosts {
            group.push(Host::start(wasm, database).await?);
        }
        Ok(Self(group))
    }

    /// `MESSAGES` restocks over `skus` skus, shared out among the hosts.
    async fn round(&self, run: usize, skus: usize) -> Figures {
        let before: u64 = self.0.iter().map(|h| h.conflicts()).sum();
        let hosts = self.0.len();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for (h, host) in self.0.iter().enumerate() {
            for worker in 0..IN_FLIGHT {
                let (dispatcher, module) = (host.dispatcher.clone(), host.module.clone());
                let first = h * IN_FLIGHT + worker;
                tasks.push(tokio::spawn(async move {
                    for i in (first..MESSAGES).step_by(hosts * IN_FLIGHT) {
                        let outcome = dispatcher.deliver(&module, &restock(run, i % skus)).await;
                        assert!(matches!(outcome, Outcome::Processed(_)), "{outcome:?}");
                    }
                }));
            }
        }
        for t in tasks {
            t.await.expect("worker");
        }
        let took = start.elapsed();
        let after: u64 = self.0.iter().map(|h| h.conflicts()).sum();
        Figures {
            rate: MESSAGES as f64
                / took
                    .as_secs_f64()
                    .max(Duration::from_micros(1).as_secs_f64()),
            reruns: (after - before) as f64 / MESSAGES as f64,
        }
    }
}

impl Host {
    async fn start(wasm: &Path, database: &str) -> anyhow::Result<Self> {
        let manifest = format!(
            "[host]\ndatabase = \"{database}\"\n[modules.inventory]\nfile = \"inventory.wasm\"\nemits = [\"inventory.events\"]\nbackoff-ms = 1\n"
        );
        let support::Loaded {
            engine,
            store,
            registry,
            metrics,
            module,
            dir,
        } = support::load(wasm, "inventory", &manifest).await?;
        let dispatcher = Arc::new(Dispatcher::new(
            engine,
            Arc::new(store),
            registry,
            metrics.clone(),
        ));
        Ok(Self {
            dispatcher,
            module,
            metrics,
            _dir: dir,
        })
    }

    fn conflicts(&self) -> u64 {
        self.metrics
            .render()
            .lines()
            .filter(|l| l.starts_with(CONFLICTS))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

/// Restock `sku` of run `run` by 1, with an id of its own.
fn restock(run: usize, sku: usize) -> Envelope {
    let body = format!(r#"{{"sku":"sku-{run}-{sku}","qty":1}}"#);
    Envelope::new(
        envelope::new_id(),
        "inventory".into(),
        "restock".into(),
        BTreeMap::new(),
        &body,
    )
    .expect("valid envelope")
}
