//! `cargo bench --bench http` (needs `wrk`: `apt-get install wrk`): the
//! host's HTTP ingress under load from a second process, beside a bare axum
//! route in the same process that parses the same JSON body and answers a
//! fixed JSON (the floor of HTTP + JSON on this machine).
//!
//! 1. Throughput: `inventory/get` as fast as 64 connections go.
//! 2. Latency: `POST /v1/messages` restock (one read, one write, one event,
//!    committed to SQLite) at a steady 1,000 requests/s, p50/p99.
//! 3. Memory: the process's peak RSS while 1,000 connections keep a restock
//!    in flight each.
//! 4. Shadow: the restock latency of 2. with a candidate of inventory in its
//!    shadow (every restock also run by the candidate, off the live path),
//!    between two runs without one (`HTTP_BENCH_ONLY_SHADOW=1`: this alone).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use switchyard::manifest::Manifest;

fn main() -> anyhow::Result<()> {
    // RUST_LOG=switchyard=debug shows what the host does under the load.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

/// Seconds each wrk run lasts (`HTTP_BENCH_SECONDS`, default 10).
fn seconds() -> u64 {
    std::env::var("HTTP_BENCH_SECONDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10)
}

async fn run() -> anyhow::Result<()> {
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is not installed (Debian: apt-get install wrk)");
    }
    let project = project()?;
    let manifest = Manifest::load(&project.path().join("plugins.toml"))?;
    let host = switchyard::app::server::start(
        manifest,
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    )
    .await?;
    let base = format!("http://{}", host.addr());
    let client = reqwest::Client::new();
    seed(&client, &base).await?;
    let bare_base = bare_axum().await?;
    let scripts = Scripts::write()?;
    let secs = seconds();
    println!("http benchmark: wrk, {secs} s per run, 127.0.0.1");

    if std::env::var_os("HTTP_BENCH_ONLY_SHADOW").is_none() {
        throughput(&scripts, &base, &bare_base, secs)?;
        steady_latency(&scripts, &base, &bare_base, secs)?;
        memory_under_load(&scripts, &base, secs)?;
    }
    shadow_overhead(&scripts, &client, &base, project.path(), secs).await?;
    host.stop().await;
    Ok(())
}

/// The modules the benchmark's project loads.
const MODULES: [&str; 2] = ["inventory", "orders"];

/// A project folder with [`MODULES`] built (release, wasm32-wasip2) into
/// its plugins folder and a `plugins.toml` that loads them.
fn project() -> anyhow::Result<tempfile::TempDir> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let project = tempfile::tempdir()?;
    let plugins = project.path().join("plugins");
    std::fs::create_dir_all(&plugins)?;
    for module in MODULES {
        switchyard::builder::run_command(
            &format!(
                "cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml -p {module}"
            ),
            &root,
            module,
        )?;
        std::fs::copy(
            root.join(format!(
                "plugins/target/wasm32-wasip2/release/{module}.wasm"
            )),
            plugins.join(format!("{module}.wasm")),
        )?;
    }
    let manifest_text = "[host]\nlisten = \"127.0.0.1:0\"\n\
        [modules.inventory]\nfile = \"inventory.wasm\"\ntopics = [\"inventory\"]\n\
        subscribes = [\"orders.events\"]\nemits = [\"inventory.events\"]\n\
        [modules.orders]\nfile = \"orders.wasm\"\ntopics = [\"orders\"]\n\
        subscribes = [\"inventory.events\"]\nemits = [\"orders.events\"]\nreads = [\"inventory\"]\n";
    std::fs::write(project.path().join("plugins.toml"), manifest_text)?;
    Ok(project)
}

/// Restocks the sku the `get` runs read.
async fn seed(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let seeded = client
        .post(format!("{base}/v1/topics/inventory/restock"))
        .body(r#"{"sku":"apple","qty":5}"#)
        .header("content-type", "application/json")
        .send()
        .await?;
    if !seeded.status().is_success() {
        bail!("seeding failed: {}", seeded.text().await?);
    }
    Ok(())
}

/// The baseline: the same request shape, parsed, answered with a fixed
/// processed answer; no module, no store. Its base URL.
async fn bare_axum() -> anyhow::Result<String> {
    let bare = axum::Router::new().route(
        "/v1/topics/inventory/get",
        axum::routing::post(|body: axum::body::Bytes| async move {
            let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            axum::Json(serde_json::json!({
                "id": "0198c0de-0000-7000-8000-000000000000",
                "status": "processed",
                "output": {"sku": parsed["sku"], "available": 5},
                "events": []
            }))
        }),
    );
    let bare_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_base = format!("http://{}", bare_listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(bare_listener, bare).await;
    });
    Ok(bare_base)
}

/// The wrk scripts of the runs, in a temporary folder.
struct Scripts {
    /// `inventory/get` as fast as the connections go.
    get: PathBuf,
    /// `inventory/get`, each connection one request per 20 ms.
    paced_get: PathBuf,
    /// A restock of a fresh sku per request, one per 20 ms per connection.
    restock_paced: PathBuf,
    /// A restock of a fresh sku per request, as fast as the connections go.
    restock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Scripts {
    fn write() -> anyhow::Result<Scripts> {
        let dir = tempfile::tempdir()?;
        let get_body = r#"{"sku":"apple"}"#;
        let get = script(
            dir.path(),
            "get.lua",
            get_body,
            None,
            "/v1/topics/inventory/get",
        )?;
        // 20 connections, one request each per 20 ms: 1,000 requests/s.
        let paced_get = script(
            dir.path(),
            "paced.lua",
            get_body,
            Some(20),
            "/v1/topics/inventory/get",
        )?;
        // `{n}` becomes a number unique to the request: one sku per restock.
        let restock_body =
            r#"{"topic":"inventory","subtopic":"restock","body":{"sku":"pear-{n}","qty":1}}"#;
        let restock_paced = script(
            dir.path(),
            "restock-paced.lua",
            restock_body,
            Some(20),
            "/v1/messages",
        )?;
        let restock = script(
            dir.path(),
            "restock.lua",
            restock_body,
            None,
            "/v1/messages",
        )?;
        Ok(Scripts {
            get,
            paced_get,
            restock_paced,
            restock,
            _dir: dir,
        })
    }
}

/// 1. Throughput: `inventory/get` over 64 connections, the bare axum route
///    then the host; (host, bare).
fn throughput(
    scripts: &Scripts,
    base: &str,
    bare_base: &str,
    secs: u64,
) -> anyhow::Result<(WrkRun, WrkRun)> {
    let floor = wrk(&scripts.get, bare_base, 64, secs)?;
    let gets = wrk(&scripts.get, base, 64, secs)?;
    println!(
        "  inventory/get, 64 connections:      host {:>8.0} req/s (p99 {:.2} ms)   bare axum {:>8.0} req/s (p99 {:.2} ms)   ratio {:.3}",
        gets.rps,
        gets.p99_ms,
        floor.rps,
        floor.p99_ms,
        gets.rps / floor.rps
    );
    Ok((gets, floor))
}

/// 2. Latency at a steady ~1,000 requests/s: the bare axum route's `get`,
///    then the host's restock; (host, bare).
fn steady_latency(
    scripts: &Scripts,
    base: &str,
    bare_base: &str,
    secs: u64,
) -> anyhow::Result<(WrkRun, WrkRun)> {
    let floor = wrk(&scripts.paced_get, bare_base, 20, secs)?;
    let paced_restock = wrk(&scripts.restock_paced, base, 20, secs)?;
    println!(
        "  restock at ~1,000 req/s (host {:.0}/s): p50 {:.2} ms, p99 {:.2} ms   bare axum: p50 {:.2} ms, p99 {:.2} ms",
        paced_restock.rps, paced_restock.p50_ms, paced_restock.p99_ms, floor.p50_ms, floor.p99_ms
    );
    Ok((paced_restock, floor))
}

/// 4. What a shadow costs live traffic: restock latency at ~1,000 req/s
///    without, with and again without a candidate of inventory (the same
///    code) in its shadow. The candidate file is dropped into the plugins
///    folder and removed again, as an operator would; the watcher reloads.
async fn shadow_overhead(
    scripts: &Scripts,
    client: &reqwest::Client,
    base: &str,
    project: &Path,
    secs: u64,
) -> anyhow::Result<()> {
    let shadow = |present: bool| async move {
        for _ in 0..200 {
            let status = client
                .get(format!("{base}/v1/modules/inventory/shadow"))
                .send()
                .await?
                .status();
            if status.is_success() == present {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "the shadow did not {}",
            if present { "start" } else { "stop" }
        )
    };
    let candidate = project.join("plugins/inventory.shadow.wasm");
    let before = wrk(&scripts.restock_paced, base, 20, secs)?;
    std::fs::copy(project.join("plugins/inventory.wasm"), &candidate)?;
    shadow(true).await?;
    let with = wrk(&scripts.restock_paced, base, 20, secs)?;
    let status: serde_json::Value = client
        .get(format!("{base}/v1/modules/inventory/shadow"))
        .send()
        .await?
        .json()
        .await?;
    std::fs::remove_file(&candidate)?;
    shadow(false).await?;
    let after = wrk(&scripts.restock_paced, base, 20, secs)?;
    let without = (before.p99_ms + after.p99_ms) / 2.0;
    println!(
        "  restock at ~1,000 req/s with a shadow: p50 {:.2} ms, p99 {:.2} ms   without (before / after): p99 {:.2} / {:.2} ms   p99 ratio {:.2}   (shadow compared {}, matched {}, skipped {})",
        with.p50_ms,
        with.p99_ms,
        before.p99_ms,
        after.p99_ms,
        with.p99_ms / without,
        status["counts"]["compared"],
        status["counts"]["matched"],
        status["counts"]["skipped"],
    );
    Ok(())
}

/// 3. Memory: this process's RSS before and at its peak (KiB) while 1,000
///    connections keep a restock in flight each; (run, idle, peak).
fn memory_under_load(
    scripts: &Scripts,
    base: &str,
    secs: u64,
) -> anyhow::Result<(WrkRun, u64, u64)> {
    let idle_rss = rss_kib()?;
    let peak = Arc::new(AtomicU64::new(idle_rss));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                if let Ok(kib) = rss_kib() {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let flood = wrk(&scripts.restock, base, 1_000, secs)?;
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let peak = peak.load(Ordering::Relaxed);
    println!(
        "  restock, 1,000 connections in flight: {:.0} req/s, p99 {:.1} ms, {} errors; RSS idle {:.1} MB, peak {:.1} MB",
        flood.rps,
        flood.p99_ms,
        flood.errors,
        idle_rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    Ok((flood, idle_rss, peak))
}

/// A wrk script: POST `body` as JSON to `path`, optionally one request per
/// `delay_ms` per connection.
fn script(
    dir: &Path,
    name: &str,
    body: &str,
    delay_ms: Option<u64>,
    path: &str,
) -> anyhow::Result<PathBuf> {
    let escaped = body.replace('\\', "\\\\").replace('\'', "\\'");
    let mut text = format!(
        "wrk.method = 'POST'\nwrk.path = '{path}'\nwrk.body = '{escaped}'\n\
         wrk.headers['Content-Type'] = 'application/json'\n"
    );
    if let Some(ms) = delay_ms {
        text.push_str(&format!("function delay() return {ms} end\n"));
    }
    if body.contains("{n}") {
        // A fresh value per request (e.g. one sku each): restocks of one
        // document would all conflict and measure the retry path instead.
        let (before, after) = body.split_once("{n}").unwrap_or((body, ""));
        text.push_str(&format!(
            "local threads = 0\n\
             function setup(thread)\n  threads = threads + 1\n  thread:set('id', threads)\nend\n\
             local n = 0\n\
             function request()\n  n = n + 1\n  \
             return wrk.format(nil, nil, nil, '{}' .. id .. '-' .. n .. '{}')\nend\n",
            before.replace('\'', "\\'"),
            after.replace('\'', "\\'")
        ));
    }
    let file = dir.join(name);
    std::fs::write(&file, text)?;
    Ok(file)
}

struct WrkRun {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// Runs wrk (2 threads) and reads its summary.
fn wrk(script: &Path, base: &str, connections: u32, secs: u64) -> anyhow::Result<WrkRun> {
    let out = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{secs}s")])
        .args(["--timeout", "10s", "--latency", "-s"])
        .arg(script)
        .arg(base)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix).map(str::trim).map(str::to_string))
    };
    let rps: f64 = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Requests/sec in {text}"))?;
    let p50_ms = field("50%")
        .and_then(|v| duration_ms(&v))
        .with_context(|| format!("no p50 in {text}"))?;
    let p99_ms = field("99%")
        .and_then(|v| duration_ms(&v))
        .with_context(|| format!("no p99 in {text}"))?;
    // "Non-2xx or 3xx responses: N" and "Socket errors: connect A, read B, write C, timeout D".
    let mut errors: u64 = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if let Some(socket) = field("Socket errors:") {
        errors += socket
            .split(',')
            .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(WrkRun {
        rps,
        p50_ms,
        p99_ms,
        errors,
    })
}

/// wrk's durations: `812.00us`, `1.23ms`, `2.01s`.
fn duration_ms(text: &str) -> Option<f64> {
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic())?);
    let value: f64 = number.parse().ok()?;
    match unit {
        "us" => Some(value / 1_000.0),
        "ms" => Some(value),
        "s" => Some(value * 1_000.0),
        "m" => Some(value * 60_000.0),
        _ => None,
    }
}

/// This process's resident set, in KiB.
fn rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/self/status")
}
