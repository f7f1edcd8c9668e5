//! The wasmtime side: one `Engine` (pooling allocator, epoch deadlines), one
//! `Linker` with the Switchyard imports and the little WASI a module gets
//! (see [`super::capabilities::wasi`]), and per-message stores.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, InstanceAllocationStrategy, PoolingAllocationConfig, StoreLimitsBuilder, UpdateDeadline,
};

use super::bindings::{self, GuestPre, WorldVersion};
use super::state::HostState;
use super::uow::UnitOfWork;
use switchyard_model::grants::Grants;

/// How often the epoch advances: the resolution of `timeout-ms`, and the
/// time slice after which running guest code yields to other tasks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Component instances alive at once (pool slots); also bounds in-flight messages.
pub const POOL_INSTANCES: u32 = 1_000;
/// Largest linear memory any module may be granted (`max-memory-mb` is checked
/// per store below this).
const POOL_MAX_MEMORY: usize = 4 << 30;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("wasmtime configuration: {0}")]
    Config(String),
    #[error("not a loadable component: {0}")]
    Compile(String),
    #[error("does not fit the switchyard:module world: {0}")]
    Link(String),
    #[error("describe failed: {0}")]
    Describe(String),
}

/// Owns the wasmtime engine and the epoch ticker thread.
pub struct Engine {
    engine: wasmtime::Engine,
    linker: Linker<HostState>,
    stop_ticker: Arc<AtomicBool>,
}

impl Engine {
    pub fn new() -> Result<Self, EngineError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES * 4)
            .total_memories(POOL_INSTANCES * 2)
            .total_tables(POOL_INSTANCES * 4)
            .total_stacks(POOL_INSTANCES)
            .max_memory_size(POOL_MAX_MEMORY)
            // Keep a warm slot's first pages mapped and reset only dirty pages:
            // avoids page faults and TLB shootdowns on every fresh instance.
            .linear_memory_keep_resident(16 << 20)
            .table_keep_resident(1 << 20)
            .pagemap_scan(wasmtime::Enabled::Auto)
            // Pages beyond what stays resident are given back in batches of
            // 16 slots rather than one madvise per dropped instance: a
            // Python module's instance (CPython's heap, tens of MiB) spent
            // 133 us per drop, 96 us batched; Rust modules, whose pages
            // all stay resident, are unchanged (dispatch bench).
            .decommit_batch_size(16);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            // The world has no component-model-async functions: without the
            // concurrent-execution state, dropping a store is cheaper (with
            // it, each drop builds an error value, and a backtrace when
            // RUST_BACKTRACE is set).
            .concurrency_support(false)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine =
            wasmtime::Engine::new(&config).map_err(|e| EngineError::Config(format!("{e:#}")))?;

        let mut linker = Linker::new(&engine);
        // Rust guests import wasi:cli and wasi:io even when they do no I/O:
        // link those, with nothing behind them (no env, stdin, files, network).
        super::capabilities::wasi::add_to_linker(&mut linker)
            .map_err(|e| EngineError::Config(format!("{e:#}")))?;
        bindings::add_to_linker(&mut linker, |s| s)
            .map_err(|e| EngineError::Config(format!("{e:#}")))?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.clone();
        let stop = stop_ticker.clone();
        std::thread::Builder::new()
            .name("switchyard-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(|e| EngineError::Config(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Self {
            engine,
            linker,
            stop_ticker,
        })
    }

    /// Compiles a component (Cranelift; CPU-bound, run it off the async threads).
    pub fn compile(&self, bytes: &[u8]) -> Result<Component, EngineError> {
        Component::from_binary(&self.engine, bytes)
            .map_err(|e| EngineError::Compile(format!("{e:#}")))
    }

    /// Identifies this engine's compiled-code format: wasmtime's own
    /// compatibility hash (version, target, settings) as hex, so cached
    /// artifacts of another build or configuration are never looked up.
    pub fn compatibility_key(&self) -> String {
        use sha2::Digest;
        use std::hash::Hash;
        /// Feeds `Hash` bytes into SHA-256: stable across processes, unlike
        /// `DefaultHasher`, so the key names the same files after a restart.
        struct Sha(sha2::Sha256);
        impl std::hash::Hasher for Sha {
            fn finish(&self) -> u64 {
                0
            }
            fn write(&mut self, bytes: &[u8]) {
                self.0.update(bytes);
            }
        }
        let mut sha = Sha(sha2::Sha256::new());
        self.engine.precompile_compatibility_hash().hash(&mut sha);
        let digest = sha.0.finalize();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The compiled form of `component`, for the artifact cache.
    pub fn serialize(&self, component: &Component) -> Result<Vec<u8>, EngineError> {
        component
            .serialize()
            .map_err(|e| EngineError::Compile(format!("{e:#}")))
    }

    /// Loads a component this host compiled earlier (see [`super::cache`]).
    pub fn load_compiled(&self, path: &std::path::Path) -> Result<Component, EngineError> {
        // Read into memory rather than `deserialize_file`: a mapped file would
        // back the code and the memory images of every instance, so anything
        // that truncated or rewrote the cache file in place (an operator, a
        // full disk, another tool) would crash the host with SIGBUS.
        let bytes = std::fs::read(path)
            .map_err(|e| EngineError::Compile(format!("reading {}: {e}", path.display())))?;
        // SAFETY: `deserialize` trusts the bytes to be wasmtime output.
        // Only the host's own artifact cache is passed here: files the host
        // wrote (atomically, by rename) under names keyed by the sha256 of the
        // source component and by `compatibility_key`; wasmtime still checks
        // the header and refuses an artifact of another version or config.
        // The cache folder must be as trusted as the host binary itself.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(&self.engine, &bytes) };
        component.map_err(|e| EngineError::Compile(format!("{e:#}")))
    }

    /// Links a component against the world, once per loaded module.
    /// Other `wasi:*` imports (a language runtime may link all of WASI) are
    /// linked to functions that trap when called.
    pub fn prepare(&self, component: &Component) -> Result<GuestPre<HostState>, EngineError> {
        let mut linker = self.linker.clone();
        super::capabilities::wasi::deny_other_wasi(&mut linker, &self.engine, component)
            .map_err(|e| EngineError::Link(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(component)
            .map_err(|e| EngineError::Link(format!("{e:#}")))?;
        GuestPre::new(pre).map_err(|e| EngineError::Link(format!("{e:#}")))
    }

    /// A fresh store for one call, with the module's memory cap and deadline.
    pub fn new_store(
        &self,
        uow: UnitOfWork,
        max_memory_mb: u64,
        timeout: Duration,
    ) -> wasmtime::Store<HostState> {
        let memory = usize::try_from(max_memory_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory)
            .instances(16)
            .tables(16)
            .memories(4)
            .trap_on_grow_failure(true)
            .build();
        let state = HostState::new(limits, uow);
        let mut store = wasmtime::Store::new(&self.engine, state);
        store.limiter(|s| s.limiter());
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(time_slice(timeout));
        store
    }

    /// Instantiates the module and asks it what it is (a 0.1.0 module
    /// declares no messages), and which world it was built against.
    pub async fn describe(
        &self,
        pre: &GuestPre<HostState>,
        grants: Arc<Grants>,
        max_memory_mb: u64,
        timeout: Duration,
    ) -> Result<(bindings::v2::Descriptor, WorldVersion), EngineError> {
        let mut store = self.new_store(UnitOfWork::detached(grants), max_memory_mb, timeout);
        let call = async {
            let guest = pre.instantiate_async(&mut store).await?;
            guest.call_describe(&mut store).await
        };
        match tokio::time::timeout(timeout + EPOCH_TICK * 2, call).await {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(e)) => Err(EngineError::Describe(format!("{e:#}"))),
            Err(_) => Err(EngineError::Describe(format!(
                "took longer than {timeout:?}"
            ))),
        }
    }
}

/// What guest code does at each epoch tick: it hands its thread back to
/// tokio (one tick is its time slice), so spinning guests share the async
/// runtime's workers with everything else (HTTP, consumers, other guests)
/// instead of holding them until their deadline; once the call has run for
/// `timeout` (host calls included), it traps with `Trap::Interrupt`, which
/// dispatch reports as `timeout`.
///
/// `tokio::task::yield_now` rather than wasmtime's plain `Yield`: tokio
/// defers a task woken that way until the worker has polled its I/O driver,
/// so every round of guest slices lets new connections and timers through.
/// A task that merely wakes itself goes back into the run queue, and a busy
/// worker polls the driver only every 61 polls (tokio's `event_interval`),
/// which is a third of a second of guest slices.
fn time_slice(
    timeout: Duration,
) -> impl FnMut(wasmtime::StoreContextMut<'_, HostState>) -> wasmtime::Result<UpdateDeadline>
+ Send
+ Sync
+ 'static {
    let started = std::time::Instant::now();
    move |_: wasmtime::StoreContextMut<'_, HostState>| {
        if started.elapsed() >= timeout {
            return Ok(UpdateDeadline::Interrupt);
        }
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}
