//! Wiring: store, engine, registry, dispatcher, the embedded log, the
//! plugins watcher and the HTTP server, started together and drained
//! together on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::retention;
use crate::broker::Broker;
#[cfg(feature = "kafka")]
use crate::broker::kafka::KafkaBus;
use crate::broker::redis::RedisBus;
use crate::dispatch::Dispatcher;
#[cfg(feature = "kafka")]
use crate::ingress::kafka as kafka_ingress;
use crate::ingress::redis as redis_ingress;
use crate::ingress::{embedded, http};
use crate::registry::Registry;
use crate::registry::reload::Reloader;
use crate::registry::watch;
use crate::relay;
use crate::sandbox::engine::Engine;
use crate::telemetry::Telemetry;
use switchyard_model::manifest::Manifest;
use switchyard_store::{Store, StoreOptions};

/// A running host.
pub struct Host {
    addr: SocketAddr,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    dispatcher: Arc<Dispatcher>,
    telemetry: Option<Arc<Telemetry>>,
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
        // The spans of the messages just finished, to the collector.
        if let Some(telemetry) = self.telemetry {
            let flushed = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
            if let Err(e) = flushed {
                tracing::warn!(error = %e, "span export did not shut down");
            }
        }
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
    // Watching before the first load: a change made meanwhile is not missed.
    let watcher = watch::FolderWatcher::new(watch::Watched {
        plugins_dir: manifest.host.plugins_dir.clone(),
        manifest: manifest.path.clone(),
    });
    let registry = Arc::new(Registry::default());
    let routes = registry.load(&engine, &manifest, None).await;
    registry.replace(routes);
    let redis = match &manifest.redis {
        Some(settings) => Some(RedisBus::new(settings.clone()).context("configuring [redis]")?),
        None => None,
    };
    #[cfg(feature = "kafka")]
    let kafka = match &manifest.kafka {
        Some(settings) => Some(KafkaBus::new(settings.clone()).context("configuring [kafka]")?),
        None => None,
    };
    #[cfg(not(feature = "kafka"))]
    if manifest.kafka.is_some() {
        anyhow::bail!(
            "[kafka] is configured but this build has no Kafka support: build with `--features kafka`"
        );
    }
    // Committed events go to Kafka when it is configured, else to Redis,
    // else they stay in the embedded log.
    let mut brokers: Vec<Broker> = Vec::new();
    #[cfg(feature = "kafka")]
    brokers.extend(kafka.clone().map(Broker::Kafka));
    brokers.extend(redis.clone().map(Broker::Redis));
    let broker = brokers.first().cloned();

    let telemetry = match &manifest.telemetry {
        Some(settings) => {
            let telemetry = Telemetry::start(settings).context("configuring [telemetry]")?;
            tracing::info!(endpoint = %settings.otlp_endpoint, "exporting spans over OTLP");
            Some(Arc::new(telemetry))
        }
        None => None,
    };
    let dispatcher = Arc::new(
        Dispatcher::new(engine.clone(), store.clone(), registry.clone())
            .with_telemetry(telemetry.clone()),
    );
    if broker.is_none() {
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
    let reloader = Arc::new(Reloader::new(engine, registry, manifest.path.clone()));
    let state = Arc::new(http::ApiState {
        dispatcher: dispatcher.clone(),
        reloader: reloader.clone(),
        admin_token,
        brokers,
    });
    let messages = http::MessageAccess::from_env(manifest.host.message_token_env.as_deref());
    if let http::MessageAccess::Unset(var) = &messages {
        tracing::warn!(
            variable = %var,
            "message-token-env names an unset variable: the message endpoints refuse every request"
        );
    }
    let guard = http::Guard {
        messages,
        request_timeout: manifest.host.request_timeout,
        max_header_bytes: manifest.host.max_header_bytes,
    };
    let app = http::guarded(http::router(state, manifest.host.max_body_bytes), guard);

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let relay = broker.is_some();
    match broker {
        // With a broker, events travel through it, not in-process.
        Some(broker) => {
            let appended = dispatcher.log_appended.clone();
            tracker.spawn(relay::run(store, broker, appended, shutdown.clone()));
        }
        None => {
            tracker.spawn(embedded::run(
                dispatcher.clone(),
                shutdown.clone(),
                tracker.clone(),
            ));
        }
    }
    if let Some(bus) = redis {
        tracker.spawn(redis_ingress::run(
            bus,
            dispatcher.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    #[cfg(feature = "kafka")]
    if let Some(bus) = kafka {
        tracker.spawn(kafka_ingress::run(
            bus,
            dispatcher.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    tracker.spawn(watcher.run(reloader, shutdown.clone()));
    tracker.spawn(metrics_upkeep(dispatcher.clone(), shutdown.clone()));
    tracker.spawn(retention::run(
        dispatcher.clone(),
        relay,
        manifest.retention,
        manifest.host.cache_dir.clone(),
        shutdown.clone(),
    ));
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
        telemetry,
    })
}

/// How often recorded histogram samples are folded into their buckets.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps the metrics' memory bounded when nobody scrapes `/metrics`.
async fn metrics_upkeep(dispatcher: Arc<Dispatcher>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(METRICS_UPKEEP) => dispatcher.registry.metrics.upkeep(),
        }
    }
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
