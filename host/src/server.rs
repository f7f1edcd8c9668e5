//! Wiring: store, engine, registry, dispatcher, the embedded log and the
//! HTTP server, started together and drained together on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dispatch::Dispatcher;
use crate::engine::Engine;
use crate::ingress::redis::{self as redis_ingress, RedisBus};
use crate::ingress::{embedded, http};
use crate::manifest::{Manifest, ManifestError};
use crate::registry::{LoadProblem, Registry};
use crate::relay;
use crate::store::{Store, StoreOptions};

/// Re-reads the manifest and the plugins folder and swaps the routes.
pub struct Reloader {
    engine: Arc<Engine>,
    registry: Arc<Registry>,
    manifest_path: PathBuf,
    /// One reload at a time; a second caller waits for the first.
    lock: tokio::sync::Mutex<()>,
}

#[derive(Debug, Serialize)]
pub struct ReloadSummary {
    pub modules: Vec<String>,
    pub problems: Vec<LoadProblem>,
}

impl Reloader {
    pub async fn reload(&self) -> Result<ReloadSummary, ManifestError> {
        let _one = self.lock.lock().await;
        let manifest = Manifest::load(&self.manifest_path)?;
        let previous = self.registry.routes();
        let routes = self
            .registry
            .load(&self.engine, &manifest, Some(&previous))
            .await;
        let summary = ReloadSummary {
            modules: routes.modules.keys().cloned().collect(),
            problems: routes.problems.clone(),
        };
        self.registry.replace(routes);
        Ok(summary)
    }
}

/// A running host.
pub struct Host {
    addr: SocketAddr,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    dispatcher: Arc<Dispatcher>,
}

impl Host {
    /// Where the HTTP API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// Stops taking work and waits for in-flight messages to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Opens the store, loads the modules and starts serving on `listener`.
pub async fn start(manifest: Manifest, listener: TcpListener) -> anyhow::Result<Host> {
    let options = StoreOptions {
        max_connections: manifest.host.max_connections,
        // Without a broker the outbox is the log that modules follow.
        ordered_log: manifest.redis.is_none(),
    };
    let store = Store::connect_with(&manifest.host.database, &options)
        .await
        .with_context(|| format!("opening the database {}", manifest.host.database))?;
    let engine = Arc::new(Engine::new().context("starting the wasm engine")?);
    let registry = Arc::new(Registry::default());
    let routes = registry.load(&engine, &manifest, None).await;
    registry.replace(routes);
    if manifest.kafka.is_some() {
        tracing::warn!("[kafka] is not wired in this build");
    }
    let redis = match &manifest.redis {
        Some(settings) => Some(RedisBus::new(settings.clone()).context("configuring [redis]")?),
        None => None,
    };

    let dispatcher = Arc::new(Dispatcher::new(
        engine.clone(),
        store.clone(),
        registry.clone(),
    ));
    if redis.is_none() {
        embedded::init_cursors(&dispatcher)
            .await
            .context("preparing the embedded log")?;
    }

    let admin_token = manifest
        .host
        .admin_token_env
        .as_deref()
        .and_then(|var| std::env::var(var).ok())
        .filter(|t| !t.is_empty());
    if admin_token.is_none() {
        tracing::info!("no admin token set: the admin API is off");
    }
    let reloader = Arc::new(Reloader {
        engine,
        registry,
        manifest_path: manifest.path.clone(),
        lock: tokio::sync::Mutex::new(()),
    });
    let state = Arc::new(http::ApiState {
        dispatcher: dispatcher.clone(),
        reloader,
        admin_token,
        redis: redis.clone(),
    });
    let app = http::router(state, manifest.host.max_body_bytes);

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    match redis {
        // With a broker, events travel through its streams, not in-process.
        Some(bus) => {
            let appended = dispatcher.log_appended.clone();
            tracker.spawn(relay::run(store, bus.clone(), appended, shutdown.clone()));
            tracker.spawn(redis_ingress::run(
                bus,
                dispatcher.clone(),
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        None => {
            tracker.spawn(embedded::run(
                dispatcher.clone(),
                shutdown.clone(),
                tracker.clone(),
            ));
        }
    }
    let addr = listener
        .local_addr()
        .context("reading the listening address")?;
    let stop = shutdown.clone();
    tracker.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    tracing::info!(%addr, "switchyard serving");
    Ok(Host {
        addr,
        shutdown,
        tracker,
        dispatcher,
    })
}

/// Serves until `signal` resolves, then drains.
pub async fn run(
    manifest: Manifest,
    listener: TcpListener,
    signal: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let host = start(manifest, listener).await?;
    signal.await;
    tracing::info!("shutting down: finishing in-flight messages");
    host.stop().await;
    Ok(())
}
