//! `cargo bench --bench responsive`: how long `GET /healthz` takes while
//! eight guests spin to their 1 s timeout, on a runtime of two worker
//! threads (this machine's cores).
//!
//! 1. The host as it runs: `hostile/spin` eight at a time over HTTP, with
//!    `/healthz` asked every 10 ms on the same listener.
//! 2. The same eight guests called straight through the engine, beside a
//!    bare axum `/healthz` in the same runtime: once with the host's time
//!    slices (guest code yields to tokio at every epoch tick), once with the
//!    store set up as before them (the epoch deadline traps, nothing yields),
//!    so both figures come from one run.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use switchyard::grants::Grants;
use switchyard::manifest::Manifest;
use switchyard::sandbox::bindings::GuestPre;
use switchyard::sandbox::bindings::switchyard::module::types::Envelope;
use switchyard::sandbox::engine::{EPOCH_TICK, Engine};
use switchyard::sandbox::state::HostState;
use switchyard::sandbox::uow::UnitOfWork;

/// Guests spinning at once.
const SPINNING: usize = 8;
/// Their `timeout-ms`.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Waves of spinning guests per measurement (`RESPONSIVE_BENCH_ROUNDS`).
fn rounds() -> usize {
    std::env::var("RESPONSIVE_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
}
/// Pause between two `/healthz` requests.
const POLL_EVERY: Duration = Duration::from_millis(10);

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    switchyard::builder::run_command(
        "cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml -p hostile -p inventory",
        &root,
        "hostile, inventory",
    )?;
    let wasm = |m: &str| root.join(format!("plugins/target/wasm32-wasip2/release/{m}.wasm"));
    println!(
        "GET /healthz while {SPINNING} guests spin to their {TIMEOUT:?} timeout \
         (2 worker threads, {} rounds):",
        rounds()
    );
    let host = host_figures(&wasm("hostile"), &wasm("inventory")).await?;
    print_latencies("  the host (HTTP spins, time slices) ", &host);

    let engine = Engine::new()?;
    let component = engine.compile(&std::fs::read(wasm("hostile"))?)?;
    let pre = engine.prepare(&component)?;
    let engine = Arc::new(engine);
    let sliced = engine_figures(&engine, &pre, true).await?;
    print_latencies("  engine only, time slices           ", &sliced);
    let before = engine_figures(&engine, &pre, false).await?;
    print_latencies("  engine only, trap at deadline (old)", &before);
    Ok(())
}

fn print_latencies(label: &str, samples: &[Duration]) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let at = |q: f64| {
        let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted.get(i).copied().unwrap_or_default()
    };
    println!(
        "{label}  n={:>4}  median {:>7.1} ms  p99 {:>7.1} ms  worst {:>7.1} ms",
        sorted.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        sorted.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

/// The real host: spins over HTTP, `/healthz` on the same listener.
async fn host_figures(hostile: &Path, inventory: &Path) -> anyhow::Result<Vec<Duration>> {
    let project = tempfile::tempdir()?;
    let plugins = project.path().join("plugins");
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(hostile, plugins.join("hostile.wasm"))?;
    std::fs::copy(inventory, plugins.join("inventory.wasm"))?;
    let manifest = format!(
        "[host]\nlisten = \"127.0.0.1:0\"\n\
         [modules.hostile]\nfile = \"hostile.wasm\"\ntimeout-ms = {}\nmax-attempts = 1\n\
         [modules.inventory]\nfile = \"inventory.wasm\"\ntopics = [\"inventory\"]\n",
        TIMEOUT.as_millis()
    );
    std::fs::write(project.path().join("plugins.toml"), manifest)?;
    let manifest = Manifest::load(&project.path().join("plugins.toml"))?;
    let host = switchyard::app::server::start(
        manifest,
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    )
    .await?;
    let base = format!("http://{}", host.addr());
    let client = reqwest::Client::new();
    let mut samples = Vec::new();
    for _ in 0..rounds() {
        let probe = Probe::start(&base);
        let spins: Vec<_> = (0..SPINNING)
            .map(|_| {
                let request = client
                    .post(format!("{base}/v1/topics/hostile/spin"))
                    .header("content-type", "application/json")
                    .body("{}")
                    .send();
                tokio::spawn(async move {
                    let answer = request.await?;
                    if answer.status() != 504 {
                        bail!("a spin answered {}", answer.status());
                    }
                    Ok(())
                })
            })
            .collect();
        samples.extend(probe.until_done(spins).await?);
    }
    host.stop().await;
    Ok(samples)
}

/// Asks `/healthz` every [`POLL_EVERY`] from a thread and runtime of its
/// own (as a load balancer would, from outside the host's runtime), so it
/// keeps asking even while the host's workers are held.
struct Probe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<Vec<Duration>>>,
}

impl Probe {
    fn start(base: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let base = base.to_string();
        let thread = std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let client = reqwest::Client::new();
                let mut samples = Vec::new();
                // The first question once the guests have started.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while !stopped.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let answer = client.get(format!("{base}/healthz")).send().await?;
                    if !answer.status().is_success() {
                        bail!("/healthz answered {}", answer.status());
                    }
                    answer.bytes().await?;
                    samples.push(started.elapsed());
                    tokio::time::sleep(POLL_EVERY).await;
                }
                Ok(samples)
            })
        });
        Self { stop, thread }
    }

    /// Stops asking once every task of `spins` has finished; each answer's time.
    async fn until_done<T>(
        self,
        spins: Vec<tokio::task::JoinHandle<anyhow::Result<T>>>,
    ) -> anyhow::Result<Vec<Duration>> {
        for spin in spins {
            spin.await??;
        }
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the prober panicked"))?
    }
}

/// The eight guests through the engine alone, `/healthz` from a bare axum
/// route in the same runtime; `sliced`: the host's stores as they are, or
/// set up as before time slices.
async fn engine_figures(
    engine: &Arc<Engine>,
    pre: &GuestPre<HostState>,
    sliced: bool,
) -> anyhow::Result<Vec<Duration>> {
    let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut samples = Vec::new();
    for _ in 0..rounds() {
        let probe = Probe::start(&base);
        let spins: Vec<_> = (0..SPINNING)
            .map(|_| tokio::spawn(spin(engine.clone(), pre.clone(), sliced)))
            .collect();
        samples.extend(probe.until_done(spins).await?);
    }
    server.abort();
    Ok(samples)
}

/// One `hostile/spin` call in a fresh store, stopped at [`TIMEOUT`].
async fn spin(engine: Arc<Engine>, pre: GuestPre<HostState>, sliced: bool) -> anyhow::Result<()> {
    let grants = Arc::new(Grants {
        name: "hostile".into(),
        ..Grants::default()
    });
    let mut store = engine.new_store(UnitOfWork::detached(grants), 64, TIMEOUT);
    if !sliced {
        // As `Engine::new_store` set it up before time slices.
        let ticks = TIMEOUT.as_millis().div_ceil(EPOCH_TICK.as_millis()) + 1;
        store.set_epoch_deadline(u64::try_from(ticks)?);
        store.epoch_deadline_trap();
    }
    let message = Envelope {
        id: "spin".into(),
        topic: "hostile".into(),
        subtopic: "spin".into(),
        headers: Vec::new(),
        body: "{}".into(),
    };
    let call = async {
        let guest = pre.instantiate_async(&mut store).await?;
        guest.call_handle(&mut store, &message).await
    };
    match tokio::time::timeout(TIMEOUT + EPOCH_TICK * 3, call).await {
        Ok(Err(e))
            if matches!(
                e.downcast_ref::<wasmtime::Trap>(),
                Some(wasmtime::Trap::Interrupt)
            ) =>
        {
            Ok(())
        }
        Err(_) => Ok(()),
        other => bail!("the spin ended otherwise: {:?}", other.map(|r| r.is_ok())),
    }
}
