//! `cargo bench --bench reload`: hot-reload latency, from the rename of a new
//! `inventory.wasm` into a serving host's plugins folder to the first message
//! handled by the new version (watcher, debounce, compile or cache, link,
//! describe, swap, one `inventory/restock`). Median of 20 swaps, cold (every
//! version new: Cranelift) and warm (the same versions again: the
//! compiled-component cache); beside it, a restart's load of the module with
//! an empty and with a filled cache.
//!
//! The fixed part is the watcher's quiet period (`watch::QUIET`, 250 ms).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sha2::{Digest, Sha256};
use switchyard::envelope::{self, Envelope};
use switchyard::manifest::Manifest;
use switchyard::outcome::Outcome;
use switchyard::registry::Registry;
use switchyard::sandbox::engine::Engine;

const SWAPS: usize = 20;
const RESTARTS: usize = 5;
/// Between two swaps, so one swap's file events never merge into the next.
const SETTLE: Duration = Duration::from_millis(400);

mod support;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

/// The same component with one more custom section: same code, new sha256.
fn variant(component: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = u8::try_from(n & 0x7f).unwrap_or(0);
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"switchyard-bench-variant";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = component.to_vec();
    out.push(0);
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const MANIFEST: &str = "[modules.inventory]\nfile = \"inventory.wasm\"\ntopics = [\"inventory\"]\nemits = [\"inventory.events\"]\n";

async fn run() -> anyhow::Result<()> {
    let wasm = std::fs::read(support::module_built("inventory")?)?;
    let dir = tempfile::tempdir()?;
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins)?;
    std::fs::write(plugins.join("inventory.wasm"), &wasm)?;
    let manifest_path = dir.path().join("plugins.toml");
    std::fs::write(&manifest_path, MANIFEST)?;
    let manifest = Manifest::load(&manifest_path)?;

    println!(
        "reload benchmark ({} build): rename into plugins-dir -> first message served by the new version",
        if cfg!(debug_assertions) {
            "DEBUG"
        } else {
            "release"
        }
    );
    restarts(&manifest, &wasm).await?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let host = switchyard::app::server::start(manifest, listener).await?;
    let versions: Vec<Vec<u8>> = (0..SWAPS)
        .map(|i| variant(&wasm, &format!("v{i}")))
        .collect();
    let mut n = 0u64;
    for label in ["cold (Cranelift)", "warm (cache)"] {
        let mut times = Vec::with_capacity(SWAPS);
        for bytes in &versions {
            tokio::time::sleep(SETTLE).await;
            n += 1;
            times.push(swap(&host, &plugins, bytes, n).await?);
        }
        report(label, &mut times);
    }
    host.stop().await;
    Ok(())
}

/// Renames `bytes` into place and waits for the first message it serves.
async fn swap(
    host: &switchyard::app::server::Host,
    plugins: &Path,
    bytes: &[u8],
    n: u64,
) -> anyhow::Result<Duration> {
    let sha = sha256(bytes);
    let tmp = plugins.join("inventory.wasm.partial");
    std::fs::write(&tmp, bytes)?;
    let started = Instant::now();
    std::fs::rename(&tmp, plugins.join("inventory.wasm"))?;
    let dispatcher = host.dispatcher();
    loop {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "version {sha} never served"
        );
        let module = dispatcher.owner("inventory");
        let Some(module) = module.filter(|m| m.sha256 == sha) else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let envelope = Envelope::new(
            envelope::new_id(),
            "inventory".into(),
            "restock".into(),
            BTreeMap::new(),
            &format!(r#"{{"sku":"bench","qty":{n}}}"#),
        )?;
        return match dispatcher.deliver(&module, &envelope).await {
            Outcome::Processed(_) => Ok(started.elapsed()),
            other => anyhow::bail!("the new version did not serve: {other:?}"),
        };
    }
}

/// A restart's load of the module: empty cache (Cranelift) vs filled cache.
async fn restarts(manifest: &Manifest, wasm: &[u8]) -> anyhow::Result<()> {
    let engine = Arc::new(Engine::new().context("engine")?);
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for i in 0..RESTARTS {
        // A version never seen, so the first load compiles it.
        std::fs::write(
            manifest.host.plugins_dir.join("inventory.wasm"),
            variant(wasm, &format!("restart-{i}")),
        )?;
        for times in [&mut cold, &mut warm] {
            let started = Instant::now();
            let routes = Registry::default().load(&engine, manifest, None).await;
            times.push(started.elapsed());
            anyhow::ensure!(routes.problems.is_empty(), "{:?}", routes.problems);
        }
    }
    std::fs::write(manifest.host.plugins_dir.join("inventory.wasm"), wasm)?;
    report("restart: load with empty cache", &mut cold);
    report("restart: load with filled cache", &mut warm);
    Ok(())
}

fn report(label: &str, times: &mut [Duration]) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "  {label:<34} median {:>7.1} ms  min {:>7.1} ms  max {:>7.1} ms  (n = {})",
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1]),
        times.len()
    );
}
