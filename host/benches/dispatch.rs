//! `cargo bench --bench dispatch`: messages/s through `handle` for
//! `inventory/restock` (one read, one write, one event) with a fresh instance
//! per message, committed to SQLite; beside it, in the same process and on
//! the same store, the same logic as a native Rust function; and the bare
//! instantiate + call cost without the store.
//!
//! Figures are medians of several rounds; ratios are what to compare across
//! machines (this one is shared and noisy).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::dispatch::Dispatcher;
use switchyard::envelope::{self, Envelope};
use switchyard::manifest::{OtlpProtocol, TelemetrySettings};
use switchyard::metrics::Metrics;
use switchyard::outcome::Outcome;
use switchyard::registry::{Grants, LoadedModule, Registry};
use switchyard::sandbox::bindings::switchyard::module::types::Envelope as GuestEnvelope;
use switchyard::sandbox::engine::Engine;
use switchyard::sandbox::uow::UnitOfWork;
use switchyard::store::{Commit, Store, Write};
use switchyard::telemetry::Telemetry;

const ROUNDS: usize = 5;
const MESSAGES: usize = 2_000;
const BARE_CALLS: usize = 5_000;
const CONCURRENCY: usize = 32;

mod support;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let bench = Bench::load(&support::module_built("inventory")?).await?;
    println!(
        "dispatch benchmark: inventory/restock, {MESSAGES} messages per round, median of {ROUNDS} rounds"
    );
    let bare = bare_sandbox(&bench).await;
    validation_cost(&bench, bare).await;
    if std::env::var_os("DISPATCH_BENCH_PYTHON").is_some() {
        return python_cost(bare).await;
    }
    if std::env::var_os("DISPATCH_BENCH_ONLY_BARE").is_some() {
        // For profiling the sandbox alone (`perf record`).
        return Ok(());
    }
    // Numbers the rounds, so every round restocks skus of its own.
    let mut round = 0usize;
    for (label, concurrency) in [("1 in flight", 1), ("32 in flight", CONCURRENCY)] {
        wasm_vs_native(&bench, &mut round, label, concurrency).await;
    }
    telemetry_cost(&bench, &mut round).await?;
    Ok(())
}

/// The inventory module loaded from a temporary project, beside the store,
/// engine, registry and metrics a dispatcher is made of.
struct Bench {
    engine: Arc<Engine>,
    store: Store,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    module: Arc<LoadedModule>,
    /// A dispatcher without telemetry.
    dispatcher: Arc<Dispatcher>,
    /// The project folder (plugins, database), kept to the end.
    _dir: tempfile::TempDir,
}

impl Bench {
    async fn load(wasm: &Path) -> anyhow::Result<Bench> {
        let manifest =
            "[modules.inventory]\nfile = \"inventory.wasm\"\nemits = [\"inventory.events\"]\n";
        let support::Loaded {
            engine,
            store,
            registry,
            metrics,
            module,
            dir,
        } = support::load(wasm, "inventory", manifest).await?;
        let dispatcher = Arc::new(new_dispatcher(&engine, &store, &registry, &metrics));
        Ok(Bench {
            engine,
            store,
            registry,
            metrics,
            module,
            dispatcher,
            _dir: dir,
        })
    }
}

/// A dispatcher without telemetry over these parts.
fn new_dispatcher(
    engine: &Arc<Engine>,
    store: &Store,
    registry: &Arc<Registry>,
    metrics: &Arc<Metrics>,
) -> Dispatcher {
    Dispatcher::new(
        engine.clone(),
        Arc::new(store.clone()),
        registry.clone(),
        metrics.clone(),
    )
}

/// The sandbox alone: instantiate + `handle` without any store call, and
/// where its time goes; the per-message time.
async fn bare_sandbox(bench: &Bench) -> Duration {
    let bare = median(ROUNDS, || bare_call(&bench.engine, &bench.module)).await;
    print_rate("  bare instantiate + handle (no store call):   ", bare);
    print_breakdown(&bench.engine, &bench.module, BARE_CALLS).await;
    bare
}

/// The module through the dispatcher against the same logic as a native
/// function, with `concurrency` messages in flight; per-message times
/// (wasm, native). `round` numbers the rounds run so far.
async fn wasm_vs_native(
    bench: &Bench,
    round: &mut usize,
    label: &str,
    concurrency: usize,
) -> (Duration, Duration) {
    let (dispatcher, module) = (&bench.dispatcher, &bench.module);
    let wasm_per = median(ROUNDS, || {
        *round += 1;
        wasm_round(dispatcher.clone(), module.clone(), *round, concurrency)
    })
    .await;
    let native_per = median(ROUNDS, || {
        *round += 1;
        native_round(bench.store.clone(), *round, concurrency)
    })
    .await;
    println!("  {label}:");
    print_rate("    wasm module, fresh instance, SQLite commit: ", wasm_per);
    print_rate(
        "    native function, same store and rows:       ",
        native_per,
    );
    println!(
        "    ratio wasm/native throughput:              {:>8.2}",
        native_per.as_secs_f64() / wasm_per.as_secs_f64()
    );
    (wasm_per, native_per)
}

/// The cost of `[telemetry]`: the same rounds with every handling's span
/// exported over OTLP/HTTP to a local sink, against the same dispatcher
/// without export, rounds interleaved; per-message times (without, with).
async fn telemetry_cost(bench: &Bench, round: &mut usize) -> anyhow::Result<(Duration, Duration)> {
    let sink = otlp_sink().await?;
    let telemetry = Telemetry::start(&TelemetrySettings {
        otlp_endpoint: sink,
        otlp_protocol: OtlpProtocol::HttpProtobuf,
        service_name: "bench".into(),
    })?;
    let telemetry = Arc::new(telemetry);
    let exporting = Arc::new(
        new_dispatcher(&bench.engine, &bench.store, &bench.registry, &bench.metrics)
            .with_telemetry(Some(telemetry.clone())),
    );
    let (mut plain, mut exported) = (Vec::new(), Vec::new());
    let (dispatcher, module) = (&bench.dispatcher, &bench.module);
    for _ in 0..ROUNDS {
        *round += 1;
        plain.push(wasm_round(dispatcher.clone(), module.clone(), *round, CONCURRENCY).await);
        *round += 1;
        exported.push(wasm_round(exporting.clone(), module.clone(), *round, CONCURRENCY).await);
    }
    plain.sort();
    exported.sort();
    let (plain, exported) = (plain[ROUNDS / 2], exported[ROUNDS / 2]);
    println!("  {CONCURRENCY} in flight, OTLP span export on vs off:");
    print_rate("    without export:                             ", plain);
    print_rate("    every span exported (http/protobuf):        ", exported);
    println!(
        "    ratio with/without throughput:              {:>8.2}",
        plain.as_secs_f64() / exported.as_secs_f64()
    );
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await?;
    Ok((plain, exported))
}

/// One figure as per-message time and rate; `label` pads the columns.
/// `DISPATCH_BENCH_PYTHON=1`: the Python example module (on the Python
/// SDK, built with componentize-py) through the same bare instantiate +
/// `handle`, beside the Rust inventory's figure of the same run, and where
/// its time goes.
async fn python_cost(rust_bare: Duration) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    switchyard::builder::ensure_componentize_py()?;
    std::fs::create_dir_all(root.join("plugins/target/python"))?;
    switchyard::builder::run_command(
        "componentize-py -d wit -w module componentize -p plugins/notifications-py -p plugins/sdk-py app \
         -o plugins/target/python/notifications.wasm",
        &root,
        "notifications",
    )?;
    let manifest = "[modules.notifications]\nfile = \"notifications.wasm\"\n";
    let loaded = support::load(
        &root.join("plugins/target/python/notifications.wasm"),
        "notifications",
        manifest,
    )
    .await?;
    const PYTHON_CALLS: usize = 200;
    let python = median(ROUNDS, || {
        bare_calls(&loaded.engine, &loaded.module, PYTHON_CALLS)
    })
    .await;
    print_rate("  Python (notifications) instantiate + handle:  ", python);
    println!(
        "  Python / Rust per message: {:.1}x ({:.1} us vs {:.1} us)",
        python.as_secs_f64() / rust_bare.as_secs_f64(),
        python.as_secs_f64() * 1e6,
        rust_bare.as_secs_f64() * 1e6
    );
    print_breakdown(&loaded.engine, &loaded.module, PYTHON_CALLS).await;
    Ok(())
}

/// What checking a restock body against inventory's declared schema
/// (WIT 0.2.0) costs per message: parsing it into a JSON value plus the
/// compiled validator, beside the parse alone and beside the bare
/// instantiate + `handle` it saves for a refused body.
async fn validation_cost(bench: &Bench, bare: Duration) {
    const CHECKS: usize = 100_000;
    let body = r#"{"sku":"apple","qty":5}"#;
    let contract = bench.module.contract.clone();
    let checked = median(ROUNDS, || {
        let contract = contract.clone();
        async move {
            let start = Instant::now();
            for _ in 0..CHECKS {
                let ok = contract.check(
                    switchyard::contract::Direction::Command,
                    "inventory",
                    "restock",
                    std::hint::black_box(body),
                );
                assert!(ok.is_ok());
            }
            start.elapsed() / CHECKS as u32
        }
    })
    .await;
    let parsed = median(ROUNDS, || async {
        let start = Instant::now();
        for _ in 0..CHECKS {
            let v: serde_json::Value =
                serde_json::from_str(std::hint::black_box(body)).expect("json");
            std::hint::black_box(v);
        }
        start.elapsed() / CHECKS as u32
    })
    .await;
    println!(
        "  schema check of a restock body (parse + validate): {:>6.2} us/msg; parse alone {:.2} us; \
         {:.1}% of a bare instantiate + handle ({:.1} us)",
        checked.as_secs_f64() * 1e6,
        parsed.as_secs_f64() * 1e6,
        checked.as_secs_f64() / bare.as_secs_f64() * 100.0,
        bare.as_secs_f64() * 1e6
    );
}

fn print_rate(label: &str, per_message: Duration) {
    println!(
        "{label}{:>8.1} us/msg  {:>9.0} msgs/s",
        per_message.as_secs_f64() * 1e6,
        1.0 / per_message.as_secs_f64()
    );
}

/// An OTLP/HTTP receiver that accepts and drops spans; its base URL.
async fn otlp_sink() -> anyhow::Result<String> {
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(|_body: axum::body::Bytes| async { "" }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

/// Median per-message time over `rounds` runs of `round` (each returns per-message time).
async fn median<F, Fut>(rounds: usize, mut round: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        times.push(round().await);
    }
    times.sort();
    times[rounds / 2]
}

/// A message the module refuses at once (unknown subtopic), and the grants
/// of the detached unit of work it is handled in.
fn refused_call(module: &str) -> (GuestEnvelope, Arc<Grants>) {
    let message = GuestEnvelope {
        id: "bench".into(),
        topic: module.into(),
        subtopic: "nothing".into(),
        headers: Vec::new(),
        body: "{}".into(),
    };
    let grants = Arc::new(Grants {
        name: module.into(),
        ..Grants::default()
    });
    (message, grants)
}

/// Fresh store + instance + `handle` of a message the module refuses at once
/// (unknown subtopic): the sandbox cost without any repository call.
async fn bare_call(engine: &Engine, module: &LoadedModule) -> Duration {
    bare_calls(engine, module, BARE_CALLS).await
}

/// `calls` fresh instances of `module`, each refusing a message at once.
async fn bare_calls(engine: &Engine, module: &LoadedModule, calls: usize) -> Duration {
    let (message, grants) = refused_call(&module.name);
    let start = Instant::now();
    for _ in 0..calls {
        let mut store = engine.new_store(
            UnitOfWork::detached(grants.clone()),
            64,
            Duration::from_secs(2),
        );
        let guest = module
            .pre
            .instantiate_async(&mut store)
            .await
            .expect("instantiate");
        let answer = guest.call_handle(&mut store, &message).await.expect("call");
        assert!(answer.is_err());
    }
    start.elapsed() / calls as u32
}

/// Where the time of [`bare_call`] goes, phase by phase, medians over rounds.
#[derive(Default, Clone, Copy)]
struct Phases {
    /// `Engine::new_store`: host state, limits, `Store::new`.
    store: Duration,
    /// `instantiate_async`: pool slot, memory image, tables, start functions.
    instantiate: Duration,
    /// `call_handle`: arguments into the guest, guest code, result out.
    handle: Duration,
    /// Dropping the store: the pool slot is reset for the next instance.
    drop: Duration,
}

/// This process's minor page faults so far (`/proc/self/stat`, field 10):
/// a first touch of a page, or a copy-on-write copy of one.
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split(' ').nth(7)?.parse().ok()
}

async fn print_breakdown(engine: &Engine, module: &LoadedModule, calls: usize) {
    let mut rounds = Vec::with_capacity(ROUNDS);
    let faults_before = minor_faults();
    for _ in 0..ROUNDS {
        rounds.push(phases(engine, module, calls).await);
    }
    let faults = faults_before
        .zip(minor_faults())
        .map(|(before, after)| (after - before) as f64 / (ROUNDS * calls) as f64);
    let median_of = |f: fn(&Phases) -> Duration| {
        let mut v: Vec<Duration> = rounds.iter().map(f).collect();
        v.sort();
        v[ROUNDS / 2]
    };
    type Part = (&'static str, fn(&Phases) -> Duration);
    let parts: [Part; 4] = [
        ("new store (host state, limits)", |p| p.store),
        ("instantiate (pool slot, memory, start)", |p| p.instantiate),
        ("handle call (args in, guest, result out)", |p| p.handle),
        ("drop store (slot reset)", |p| p.drop),
    ];
    println!("  where the bare time goes (medians, us/msg):");
    let mut total = 0.0;
    for (label, f) in parts {
        let us = median_of(f).as_secs_f64() * 1e6;
        total += us;
        println!("    {label:<42} {us:>8.2}");
    }
    println!("    {:<42} {total:>8.2}", "sum of phases");
    if let Some(faults) = faults {
        println!("    {:<42} {faults:>8.1}", "minor page faults per message");
    }
    // What a full wasmtime-wasi context per store costs (the host used to
    // build one per message; it now links its own context-free WASI).
    let start = Instant::now();
    for _ in 0..BARE_CALLS {
        std::hint::black_box(wasmtime_wasi::WasiCtx::builder().build());
    }
    let wasi_ctx = start.elapsed() / BARE_CALLS as u32;
    println!(
        "    {:<42} {:>8.2}",
        "(for comparison: one WasiCtx::builder().build())",
        wasi_ctx.as_secs_f64() * 1e6
    );
}

async fn phases(engine: &Engine, module: &LoadedModule, calls: usize) -> Phases {
    let (message, grants) = refused_call(&module.name);
    let mut p = Phases::default();
    for _ in 0..calls {
        let t0 = Instant::now();
        let mut store = engine.new_store(
            UnitOfWork::detached(grants.clone()),
            64,
            Duration::from_secs(2),
        );
        let t1 = Instant::now();
        let guest = module
            .pre
            .instantiate_async(&mut store)
            .await
            .expect("instantiate");
        let t2 = Instant::now();
        let answer = guest.call_handle(&mut store, &message).await.expect("call");
        let t3 = Instant::now();
        drop(store);
        let t4 = Instant::now();
        assert!(answer.is_err());
        p.store += t1 - t0;
        p.instantiate += t2 - t1;
        p.handle += t3 - t2;
        p.drop += t4 - t3;
    }
    let n = calls as u32;
    Phases {
        store: p.store / n,
        instantiate: p.instantiate / n,
        handle: p.handle / n,
        drop: p.drop / n,
    }
}

fn restock(round: usize, i: usize) -> Envelope {
    let body = format!(r#"{{"sku":"sku-{round}-{i}","qty":3}}"#);
    Envelope::new(
        envelope::new_id(),
        "inventory".into(),
        "restock".into(),
        BTreeMap::new(),
        &body,
    )
    .expect("valid envelope")
}

async fn wasm_round(
    dispatcher: Arc<Dispatcher>,
    module: Arc<LoadedModule>,
    round: usize,
    concurrency: usize,
) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (dispatcher, module) = (dispatcher.clone(), module.clone());
        tasks.push(tokio::spawn(async move {
            for i in (worker..MESSAGES).step_by(concurrency) {
                let outcome = dispatcher.deliver(&module, &restock(round, i)).await;
                assert!(matches!(outcome, Outcome::Processed(_)), "{outcome:?}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    start.elapsed() / MESSAGES as u32
}

/// The same work as the module plus the dispatcher, written natively: inbox
/// check, read the stock, add, write with the read version, one event, one
/// commit of document + event + inbox row.
async fn native_restock(store: &Store, envelope: &Envelope) {
    #[derive(serde::Deserialize)]
    struct Restock {
        sku: String,
        qty: u64,
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Stock {
        sku: String,
        available: u64,
    }
    assert!(
        store
            .inbox_answer("native", &envelope.id)
            .await
            .expect("inbox")
            .is_none()
    );
    let cmd: Restock = serde_json::from_str(envelope.body_text()).expect("body");
    let current = store.get("native", "stock", &cmd.sku).await.expect("get");
    let (available, version) = match current {
        Some(d) => (
            serde_json::from_str::<Stock>(&d.value)
                .expect("stock")
                .available,
            d.version,
        ),
        None => (0, 0),
    };
    let stock = Stock {
        sku: cmd.sku.clone(),
        available: available + cmd.qty,
    };
    let value = serde_json::to_string(&stock).expect("json");
    let mut headers = BTreeMap::new();
    headers.insert("correlation-id".to_string(), envelope.id.clone());
    headers.insert("causation-id".to_string(), envelope.id.clone());
    headers.insert("timestamp".to_string(), envelope::now_rfc3339());
    headers.insert("partition-key".to_string(), cmd.sku.clone());
    let body = format!(
        r#"{{"sku":"{}","qty":{},"available":{}}}"#,
        cmd.sku, cmd.qty, stock.available
    );
    let event = Envelope::new(
        envelope::new_id(),
        "inventory.events".into(),
        "restocked".into(),
        headers,
        &body,
    )
    .expect("event");
    let answer = format!(r#"{{"output":{value},"events":[{}]}}"#, event.to_json());
    let writes = [Write::Put {
        collection: "stock".into(),
        key: cmd.sku,
        value,
        base_version: version,
    }];
    let events = [event];
    let commit = Commit {
        module: "native",
        message_id: &envelope.id,
        answer: &answer,
        writes: &writes,
        events: &events,
    };
    store.commit(&commit).await.expect("commit");
}

async fn native_round(store: Store, round: usize, concurrency: usize) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (worker..MESSAGES).step_by(concurrency) {
                native_restock(&store, &restock(round, i)).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    start.elapsed() / MESSAGES as u32
}
