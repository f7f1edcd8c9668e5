//! `cargo bench --bench stream` (needs Redis on 127.0.0.1:6379 or
//! `SWITCHYARD_BENCH_REDIS`): N restock entries preloaded into a stream, time
//! until the host has applied them all (one read, one write, one event each,
//! SQLite), beside, in the same run, a bare XREADGROUP + XACK loop over the
//! same entries and a bare store loop committing the same rows; then the
//! XADD-to-commit latency at a steady rate. `STREAM_BENCH_ONLY_HOST=1` runs
//! the host phase alone (for `perf record`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use redis::AsyncCommands;
use redis::streams::StreamReadReply;
use switchyard::envelope::{self, Envelope};
use switchyard::manifest::Manifest;
use switchyard::store::{Commit, Store, Write};

const BATCH: usize = 100;

mod support;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

fn count() -> usize {
    std::env::var("STREAM_BENCH_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
}

async fn run() -> anyhow::Result<()> {
    let n = count();
    let url =
        std::env::var("SWITCHYARD_BENCH_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(url.as_str())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .context("redis")?;
    let wasm = support::module_built("inventory")?;
    let tag = envelope::new_id().replace('-', "");
    println!("stream benchmark: {n} restock entries, batches of {BATCH}");

    if std::env::var_os("STREAM_BENCH_ONLY_HOST").is_some() {
        // For profiling the host's phase alone (`perf record`).
        let hosted = host_stream(&mut conn, &url, &tag, &wasm, n).await?;
        hosted.host.stop().await;
        return Ok(());
    }
    let bare_key = format!("bench{tag}:bare");
    let bare = bare_redis(&mut conn, &bare_key, n).await?;
    // The stores stay open to the end: closing one stops its writer and
    // checkpoint threads and checkpoints its WAL beside the next phase.
    let dir = tempfile::tempdir()?;
    let store = store_at(dir.path(), "bare.db").await?;
    let store_time = bare_store(&store, n).await?;
    let batched_time = bare_sqlx_batched(&dir.path().join("batched.db"), n).await?;
    let grouped = store_at(dir.path(), "grouped.db").await?;
    let grouped_time = store_group_commit(&grouped, n).await?;
    let hosted = host_stream(&mut conn, &url, &tag, &wasm, n).await?;
    let host_time = hosted.took;
    println!(
        "  ratios: host/bare-redis {:.3}, host/bare-store-1-per-tx {:.3}, \
         host/bare-sqlx-batched {:.3}, host/store-group-commit {:.3}",
        bare.as_secs_f64() / host_time.as_secs_f64(),
        store_time.as_secs_f64() / host_time.as_secs_f64(),
        batched_time.as_secs_f64() / host_time.as_secs_f64(),
        grouped_time.as_secs_f64() / host_time.as_secs_f64()
    );
    steady_latency(&mut conn, &hosted.pool, &hosted.key, n).await?;
    hosted.host.stop().await;
    let _: () = redis::cmd("DEL")
        .arg(&bare_key)
        .arg(&hosted.key)
        // The stream the host's relay published the restocks' events to.
        .arg(format!("{}.events", hosted.key))
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// 1. The broker alone: read and ack every entry of `key`.
async fn bare_redis(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    n: usize,
) -> anyhow::Result<Duration> {
    preload(conn, key, n, 0).await?;
    let bare = bare_consume(conn, key, n).await?;
    report("bare XREADGROUP + XACK loop", n, bare);
    Ok(bare)
}

/// A store on a new SQLite file `name` in `dir`.
async fn store_at(dir: &Path, name: &str) -> anyhow::Result<Store> {
    Ok(Store::connect(&format!("sqlite://{}", dir.join(name).display())).await?)
}

/// 2. The store alone: the same rows (document, inbox, outbox), one
///    transaction per message as the host commits them today.
async fn bare_store(store: &Store, n: usize) -> anyhow::Result<Duration> {
    let start = Instant::now();
    for i in 0..n {
        commit_restock(store, i).await?;
    }
    let store_time = start.elapsed();
    report("bare store loop (1 message per transaction)", n, store_time);
    Ok(store_time)
}

/// 2c. The store's own group commit: BATCH messages in flight at once
///     through `Store::commit`, as the host's consumers run them.
async fn store_group_commit(grouped: &Store, n: usize) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut in_flight = tokio::task::JoinSet::new();
    for i in 0..n {
        if in_flight.len() >= BATCH
            && let Some(done) = in_flight.join_next().await
        {
            done??;
        }
        let store = grouped.clone();
        in_flight.spawn(async move { commit_restock(&store, i).await });
    }
    while let Some(done) = in_flight.join_next().await {
        done??;
    }
    let grouped_time = start.elapsed();
    report(
        &format!("store group commit ({BATCH} messages in flight)"),
        n,
        grouped_time,
    );
    Ok(grouped_time)
}

/// A host started by [`host_stream`], still serving.
struct Hosted {
    host: switchyard::app::server::Host,
    /// The host's database.
    pool: sqlx::SqlitePool,
    /// The stream the host consumes.
    key: String,
    /// From start to the last of the preloaded entries acked.
    took: Duration,
    /// The project folder (plugins, plugins.toml, database), kept to the end.
    _project: tempfile::TempDir,
}

/// 3. The host: Redis -> module -> SQLite -> ack, over `n` preloaded entries.
async fn host_stream(
    conn: &mut redis::aio::MultiplexedConnection,
    url: &str,
    tag: &str,
    wasm: &Path,
    n: usize,
) -> anyhow::Result<Hosted> {
    let prefix = format!("bench{tag}:");
    let concurrency: usize = std::env::var("STREAM_BENCH_CONCURRENCY")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(switchyard::manifest::DEFAULT_REDIS_CONCURRENCY);
    println!("  (host: [redis] concurrency = {concurrency})");
    let project = tempfile::tempdir()?;
    std::fs::create_dir_all(project.path().join("plugins"))?;
    std::fs::copy(wasm, project.path().join("plugins/inventory.wasm"))?;
    let manifest_text = format!(
        "[host]\nlisten = \"127.0.0.1:0\"\n[redis]\nurl = \"{url}\"\ngroup = \"g{tag}\"\nprefix = \"{prefix}\"\nblock-ms = 100\nconcurrency = {concurrency}\n\
         [modules.inventory]\nfile = \"inventory.wasm\"\ntopics = [\"inventory\"]\nsubscribes = []\nemits = [\"inventory.events\"]\n"
    );
    std::fs::write(project.path().join("plugins.toml"), &manifest_text)?;
    let manifest = Manifest::load(&project.path().join("plugins.toml"))?;
    let db = manifest.host.database.clone();
    let key = format!("{prefix}inventory");
    preload(conn, &key, n, 0).await?;
    let start = Instant::now();
    let host = switchyard::app::server::start(
        manifest,
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    )
    .await?;
    // Every entry acked (an entry is acked only after its commit), read
    // from Redis: counting the inbox rows would take CPU from the host.
    wait_acked(conn, &key, &format!("g{tag}.inventory"), n).await?;
    let took = start.elapsed();
    let pool = sqlx::SqlitePool::connect(&db).await?;
    wait_applied(&pool, n).await?;
    report(
        "host: XREADGROUP -> module -> SQLite commit -> XACK",
        n,
        took,
    );
    Ok(Hosted {
        host,
        pool,
        key,
        took,
        _project: project,
    })
}

/// 4. Latency at a steady rate: XADD time -> commit time of each document,
///    through the running host consuming `key` (`n` entries applied before).
async fn steady_latency(
    conn: &mut redis::aio::MultiplexedConnection,
    pool: &sqlx::SqlitePool,
    key: &str,
    n: usize,
) -> anyhow::Result<()> {
    let rate = 1_000u64;
    let seconds = 5u64;
    let mut sent: HashMap<String, SystemTime> = HashMap::new();
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100) as usize;
    let mut interval = tokio::time::interval(tick);
    for t in 0..(seconds * 100) as usize {
        interval.tick().await;
        let mut pipe = redis::pipe();
        for j in 0..per_tick {
            let sku = format!("lat-{t}-{j}");
            let body = format!(r#"{{"sku":"{sku}","qty":1}}"#);
            pipe.xadd(
                key,
                "*",
                &[("subtopic", "restock"), ("body", body.as_str())],
            )
            .ignore();
            sent.insert(sku, SystemTime::now());
        }
        let () = pipe.query_async(conn).await?;
    }
    wait_applied(pool, n + sent.len()).await?;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT key, updated_at FROM documents WHERE key LIKE 'lat-%'")
            .fetch_all(pool)
            .await?;
    let mut latencies: Vec<f64> = rows
        .iter()
        .filter_map(|(k, at)| {
            let committed =
                time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                    .ok()?;
            let committed = UNIX_EPOCH
                + Duration::from_nanos(u64::try_from(committed.unix_timestamp_nanos()).ok()?);
            Some(committed.duration_since(*sent.get(k)?).ok()?.as_secs_f64() * 1e3)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    println!(
        "  XADD -> commit at a steady {rate} msgs/s for {seconds} s: p50 {:.1} ms, p99 {:.1} ms ({} samples)",
        pct(0.5),
        pct(0.99),
        latencies.len()
    );
    Ok(())
}

fn report(what: &str, n: usize, took: Duration) {
    println!(
        "  {what:<52} {:>9.0} msgs/s ({:.2} s)",
        n as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    );
}

async fn preload(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    n: usize,
    offset: usize,
) -> anyhow::Result<()> {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let body = format!(r#"{{"sku":"sku-{}","qty":1}}"#, i + offset);
            pipe.xadd(
                key,
                "*",
                &[("subtopic", "restock"), ("body", body.as_str())],
            )
            .ignore();
        }
        let () = pipe.query_async(conn).await?;
    }
    Ok(())
}

async fn bare_consume(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    n: usize,
) -> anyhow::Result<Duration> {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg("bare")
        .arg("0")
        .query_async(conn)
        .await?;
    let start = Instant::now();
    let mut seen = 0;
    while seen < n {
        let reply: StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("bare")
            .arg("c")
            .arg("COUNT")
            .arg(BATCH)
            .arg("STREAMS")
            .arg(key)
            .arg(">")
            .query_async(conn)
            .await?;
        let ids: Vec<String> = reply
            .keys
            .into_iter()
            .flat_map(|k| k.ids)
            .map(|i| i.id)
            .collect();
        seen += ids.len();
        if !ids.is_empty() {
            let _: i64 = conn.xack(key, "bare", &ids).await?;
        }
    }
    Ok(start.elapsed())
}

async fn commit_restock(store: &Store, i: usize) -> anyhow::Result<()> {
    let id = envelope::new_id();
    let sku = format!("sku-{i}");
    let value = format!(r#"{{"sku":"{sku}","available":1}}"#);
    let event = Envelope::new(
        envelope::new_id(),
        "inventory.events".into(),
        "restocked".into(),
        BTreeMap::new(),
        &format!(r#"{{"sku":"{sku}","qty":1,"available":1}}"#),
    )?;
    let _ = store.inbox_answer("bench", &id).await?;
    let _ = store.get("bench", "stock", &sku).await?;
    let writes = [Write::Put {
        collection: "stock".into(),
        key: sku,
        value,
        base_version: 0,
    }];
    let events = [event];
    let answer = r#"{"output":null,"events":[]}"#;
    store
        .commit(&Commit {
            module: "bench",
            message_id: &id,
            answer,
            writes: &writes,
            events: &events,
        })
        .await?;
    Ok(())
}

/// 2b. The store's ceiling as the performance issue defines it: a bare sqlx
///     loop writing the rows one restock commits (inbox check, document
///     read and write, outbox row, inbox row), BATCH messages per
///     transaction.
async fn bare_sqlx_batched(file: &Path, n: usize) -> anyhow::Result<Duration> {
    let url = format!("sqlite://{}", file.display());
    // Opening a store creates the schema; then it is closed again.
    drop(Store::connect(&url).await?);
    let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&url)?
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let now = envelope::now_rfc3339();
    let start = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(BATCH) {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        for i in chunk {
            let id = envelope::new_id();
            let sku = format!("sku-{i}");
            let seen: Option<String> =
                sqlx::query_scalar("SELECT answer FROM inbox WHERE module = ? AND message_id = ?")
                    .bind("bench")
                    .bind(&id)
                    .fetch_optional(&mut *tx)
                    .await?;
            anyhow::ensure!(seen.is_none());
            let _: Option<(String, i64)> = sqlx::query_as(
                "SELECT value, version FROM documents WHERE module = ? AND collection = ? AND key = ?",
            )
            .bind("bench")
            .bind("stock")
            .bind(&sku)
            .fetch_optional(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO documents (module, collection, key, value, version, updated_at)
                 VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT DO NOTHING",
            )
            .bind("bench")
            .bind("stock")
            .bind(&sku)
            .bind(format!(r#"{{"sku":"{sku}","available":1}}"#))
            .bind(&now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO outbox (id, topic, subtopic, headers, body, source, created_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(envelope::new_id())
            .bind("inventory.events")
            .bind("restocked")
            .bind("{}")
            .bind(format!(r#"{{"sku":"{sku}","qty":1,"available":1}}"#))
            .bind("bench")
            .bind(&now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO inbox (module, message_id, answer, created_at) VALUES (?, ?, ?, ?)",
            )
            .bind("bench")
            .bind(&id)
            .bind(r#"{"output":null,"events":[]}"#)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    }
    let took = start.elapsed();
    pool.close().await;
    report(
        &format!("bare sqlx loop ({BATCH} messages per transaction)"),
        n,
        took,
    );
    Ok(took)
}

/// Waits until `group` has read `n` entries of `key` and none is pending.
async fn wait_acked(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    group: &str,
    n: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(key)
            .query_async(conn)
            .await?;
        let state = groups
            .groups
            .iter()
            .find(|g| g.name == group)
            .map(|g| (g.entries_read.unwrap_or(0), g.pending));
        if let Some((read, 0)) = state
            && read >= n
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "not all acked: {state:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_applied(pool: &sqlx::SqlitePool, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM inbox")
            .fetch_one(pool)
            .await
            .unwrap_or(0);
        if done as usize >= n {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "only {done} of {n} applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
