//! `cargo bench --bench budgets`: how much one hostile message makes the
//! host's resident memory grow (SQLite store, release build), for the three
//! per-message budgets of the threat model:
//!
//! - `writes`: `put`s 1,000 documents of 1 MiB (each under the value cap),
//!   then fails;
//! - `scan`: a `scan` asking for every document of 300 of 1 MiB;
//! - `answer`: `handle` answering a 50 MiB string (`max-memory-mb = 256`
//!   so the guest can build it).
//!
//! Each scenario runs in a process of its own (this binary with
//! `--scenario NAME`) after one small warm-up message: the figures are the
//! RSS before the message, its peak while the message ran (`VmHWM` after
//! resetting it through `/proc/self/clear_refs`) and the RSS once it ended.
//! The peak includes the guest's own linear memory (up to `max-memory-mb`),
//! which lives in the host process: `guest` is the largest linear memory
//! the instance reached, `host` the peak growth beyond it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use switchyard::dispatch::Dispatcher;
use switchyard::envelope::Envelope;
use switchyard::manifest::Manifest;
use switchyard::metrics::Metrics;
use switchyard::outcome::Outcome;
use switchyard::registry::Registry;
use switchyard::sandbox::engine::Engine;
use switchyard::store::{Commit, Store, Write};

const SCENARIOS: &[&str] = &["writes", "scan", "answer"];
const MIB: usize = 1 << 20;

mod support;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--scenario") {
        let name = args.get(i + 1).context("--scenario NAME")?.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(scenario(&name));
    }
    let wasm = support::module_built("hostile")?;
    println!("budgets benchmark: host RSS for one hostile message (MiB)");
    println!(
        "  {:<8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  outcome",
        "scenario", "before", "peak", "after", "guest", "host", "seconds"
    );
    for name in SCENARIOS {
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(["--scenario", name])
            .env("BUDGETS_BENCH_WASM", &wasm)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(
            out.status.success(),
            "scenario {name} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("{text}");
    }
    Ok(())
}

/// Resident and peak resident memory of this process, in bytes.
fn rss() -> anyhow::Result<(usize, usize)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> anyhow::Result<usize> {
        let line = (status.lines().find(|l| l.starts_with(name)))
            .with_context(|| format!("{name} in /proc/self/status"))?;
        let kib: usize = line
            .split_whitespace()
            .nth(1)
            .context("a number")?
            .parse()?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn envelope(id: &str, subtopic: &str, body: &str) -> anyhow::Result<Envelope> {
    Ok(Envelope::new(
        id.into(),
        "hostile".into(),
        subtopic.into(),
        BTreeMap::new(),
        body,
    )?)
}

async fn scenario(name: &str) -> anyhow::Result<()> {
    let wasm = std::env::var("BUDGETS_BENCH_WASM").context("BUDGETS_BENCH_WASM")?;
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("plugins"))?;
    std::fs::copy(&wasm, dir.path().join("plugins/hostile.wasm"))?;
    let manifest_text = "[modules.hostile]\nfile = \"hostile.wasm\"\ntopics = [\"hostile\"]\n\
         max-memory-mb = 256\ntimeout-ms = 60000\nmax-attempts = 1\n";
    let manifest = Manifest::parse(&dir.path().join("plugins.toml"), manifest_text)?;
    let store = Store::connect(&manifest.host.database).await?;
    let engine = Arc::new(Engine::new()?);
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(Registry::new(metrics.clone()));
    let routes = registry.load(&engine, &manifest, None).await;
    anyhow::ensure!(routes.problems.is_empty(), "{:?}", routes.problems);
    let module = routes.modules.get("hostile").cloned().context("hostile")?;
    registry.replace(routes);
    let dispatcher = Dispatcher::new(engine, Arc::new(store.clone()), registry, metrics);

    let (subtopic, body) = match name {
        "writes" => ("fill", r#"{"values":1000,"kib":1024,"fail":true}"#),
        "scan" => {
            seed(&store, 300).await?;
            ("scan-all", "{}")
        }
        "answer" => ("big-answer", r#"{"kib":51200}"#),
        other => anyhow::bail!("no scenario {other}"),
    };
    let warm = envelope("warm-up", "fill", r#"{"values":1,"kib":1}"#)?;
    dispatcher.deliver(&module, &warm).await;
    std::fs::write("/proc/self/clear_refs", "5")?;
    let (before, _) = rss()?;
    let started = Instant::now();
    let outcome = dispatcher
        .deliver(&module, &envelope(name, subtopic, body)?)
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let said = match &outcome {
        Outcome::Processed(a) => format!("processed: {:.120}", a.output.get()),
        Outcome::Duplicate(_) => "duplicate".into(),
        Outcome::Failed(f) => format!("{}: {:.120}", f.kind.as_str(), f.message),
    };
    drop(outcome);
    let (after, peak) = rss()?;
    let guest = module.stats.peak_memory.load(Ordering::Relaxed);
    let guest = usize::try_from(guest).unwrap_or(usize::MAX);
    let mib = |b: usize| b as f64 / MIB as f64;
    println!(
        "  {name:<8} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {seconds:>8.2}  {said}",
        mib(before),
        mib(peak),
        mib(after),
        mib(guest),
        mib(peak.saturating_sub(before).saturating_sub(guest)),
    );
    Ok(())
}

/// `count` documents of 1 MiB in `hostile`'s `blobs`, committed in batches.
async fn seed(store: &Store, count: usize) -> anyhow::Result<()> {
    let value = format!("\"{}\"", "x".repeat(MIB - 2));
    for batch in 0..count.div_ceil(10) {
        let writes: Vec<Write> = (batch * 10..((batch + 1) * 10).min(count))
            .map(|i| Write::Put {
                collection: "blobs".into(),
                key: format!("b{i:05}"),
                value: value.clone(),
                base_version: 0,
            })
            .collect();
        let id = format!("seed-{batch}");
        let commit = Commit {
            module: "hostile",
            message_id: &id,
            answer: "{}",
            writes: &writes,
            events: &[],
        };
        store.commit(&commit).await?;
    }
    Ok(())
}
