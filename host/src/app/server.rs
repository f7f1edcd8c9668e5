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

use crate::app::{listener, retention};
use crate::broker::Broker;
#[cfg(feature = "kafka")]
use crate::broker::kafka::KafkaBus;
use crate::broker::redis::RedisBus;
use crate::dispatch::Dispatcher;
#[cfg(feature = "kafka")]
use crate::ingress::kafka as kafka_ingress;
use crate::ingress::redis as redis_ingress;
use crate::ingress::{embedded, http};
use crate::metrics::Metrics;
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

/// The parts every other piece is wired to.
struct Core {
    store: Store,
    engine: Arc<Engine>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    watcher: watch::FolderWatcher,
}

/// Opens the store, starts the engine and loads the modules.
async fn open(manifest: &Manifest) -> anyhow::Result<Core> {
    let options = StoreOptions {
        max_connections: manifest.host.max_connections,
        // Without a broker the outbox is the log that modules follow.
        ordered_log: manifest.redis.is_none(),
        ..StoreOptions::default()
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
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(Registry::new(metrics.clone()));
    let routes = registry.load(&engine, manifest, None).await;
    registry.replace(routes);
    Ok(Core {
        store,
        engine,
        registry,
        metrics,
        watcher,
    })
}

/// The configured brokers' clients.
struct Brokers {
    redis: Option<Arc<RedisBus>>,
    #[cfg(feature = "kafka")]
    kafka: Option<Arc<KafkaBus>>,
    /// Every configured broker, the one committed events go to first
    /// (Kafka when it is configured, else Redis); empty: the embedded log.
    all: Vec<Broker>,
}

fn brokers(manifest: &Manifest) -> anyhow::Result<Brokers> {
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
    let mut all: Vec<Broker> = Vec::new();
    #[cfg(feature = "kafka")]
    all.extend(kafka.clone().map(Broker::Kafka));
    all.extend(redis.clone().map(Broker::Redis));
    Ok(Brokers {
        redis,
        #[cfg(feature = "kafka")]
        kafka,
        all,
    })
}

fn telemetry(manifest: &Manifest) -> anyhow::Result<Option<Arc<Telemetry>>> {
    let Some(settings) = &manifest.telemetry else {
        return Ok(None);
    };
    let telemetry = Telemetry::start(settings).context("configuring [telemetry]")?;
    tracing::info!(endpoint = %settings.otlp_endpoint, "exporting spans over OTLP");
    Ok(Some(Arc::new(telemetry)))
}

/// The HTTP API with its guard.
fn api(manifest: &Manifest, state: http::ApiState) -> axum::Router {
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
    http::guarded(
        http::router(Arc::new(state), manifest.host.max_body_bytes),
        guard,
    )
}

/// What bounds each HTTP connection, from `[host]`.
fn connection_limits(manifest: &Manifest) -> listener::ConnectionLimits {
    listener::ConnectionLimits {
        header_read_timeout: manifest.host.header_read_timeout,
        idle_timeout: manifest.host.idle_timeout,
        max_open: manifest.host.max_open_connections,
        max_buf_size: listener::ConnectionLimits::buffer_for(manifest.host.max_header_bytes),
    }
}

/// The admin token from the variable `admin-token-env` names, if set.
fn admin_token(manifest: &Manifest) -> Option<String> {
    let token = manifest
        .host
        .admin_token_env
        .as_deref()
        .and_then(|var| std::env::var(var).ok())
        .filter(|t| !t.is_empty());
    if token.is_none() {
        tracing::info!("no admin token set: the admin API is off");
    }
    token
}

/// Starts the consumers: the relay and the broker consumers with a broker,
/// else the embedded log's readers.
fn spawn_consumers(
    core: &Core,
    brokers: Brokers,
    dispatcher: &Arc<Dispatcher>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    match brokers.all.first().cloned() {
        // With a broker, events travel through it, not in-process.
        Some(broker) => {
            let appended = dispatcher.log_appended().clone();
            tracker.spawn(relay::run(
                core.store.clone(),
                broker,
                appended,
                shutdown.clone(),
            ));
        }
        None => {
            tracker.spawn(embedded::run(
                dispatcher.clone(),
                core.store.clone(),
                shutdown.clone(),
                tracker.clone(),
            ));
        }
    }
    if let Some(bus) = brokers.redis {
        tracker.spawn(redis_ingress::run(
            bus,
            dispatcher.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    #[cfg(feature = "kafka")]
    if let Some(bus) = brokers.kafka {
        tracker.spawn(kafka_ingress::run(
            bus,
            dispatcher.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
    }
}

/// Opens the store, loads the modules and starts serving on `listener`.
pub async fn start(manifest: Manifest, listener: TcpListener) -> anyhow::Result<Host> {
    let core = open(&manifest).await?;
    let brokers = brokers(&manifest)?;
    let telemetry = telemetry(&manifest)?;
    let dispatcher = Arc::new(
        Dispatcher::new(
            core.engine.clone(),
            Arc::new(core.store.clone()),
            core.registry.clone(),
            core.metrics.clone(),
        )
        .with_telemetry(telemetry.clone()),
    );
    let relay = !brokers.all.is_empty();
    if !relay {
        embedded::init_cursors(&dispatcher, &core.store)
            .await
            .context("preparing the embedded log")?;
    }
    let reloader = Arc::new(Reloader::new(
        core.engine.clone(),
        core.registry.clone(),
        manifest.path.clone(),
    ));
    let app = api(
        &manifest,
        http::ApiState {
            dispatcher: dispatcher.clone(),
            registry: core.registry.clone(),
            store: core.store.clone(),
            metrics: core.metrics.clone(),
            reloader: reloader.clone(),
            admin_token: admin_token(&manifest),
            brokers: brokers.all.clone(),
            servers: switchyard_model::contract::document::Servers {
                http: None,
                redis: manifest.redis.as_ref().map(|r| r.url.clone()),
                kafka: manifest.kafka.as_ref().map(|k| k.brokers.clone()),
            },
        },
    );

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    spawn_consumers(&core, brokers, &dispatcher, &shutdown, &tracker);
    let Core {
        store,
        registry,
        metrics,
        watcher,
        ..
    } = core;
    tracker.spawn(watcher.run(reloader, shutdown.clone()));
    tracker.spawn(metrics_upkeep(metrics.clone(), shutdown.clone()));
    tracker.spawn(retention::run(
        retention::Retention {
            store,
            registry,
            metrics,
            relay,
        },
        manifest.retention,
        manifest.host.cache_dir.clone(),
        shutdown.clone(),
    ));
    let addr = listener
        .local_addr()
        .context("reading the listening address")?;
    tracker.spawn(listener::serve(
        listener,
        app,
        connection_limits(&manifest),
        shutdown.clone(),
    ));
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
async fn metrics_upkeep(metrics: Arc<Metrics>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(METRICS_UPKEEP) => metrics.upkeep(),
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
