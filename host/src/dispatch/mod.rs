//! One message through one module: inbox check, fresh sandboxed instance,
//! `handle`, commit of the unit of work, and the failure policy of SPEC §7
//! (retries with backoff, failure events, dead letters).

mod attempt;
mod failure;
pub mod shadow;
mod slots;
#[cfg(test)]
pub(crate) mod tests;

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use attempt::Attempt;
pub use failure::{MALFORMED, Malformed};

use tokio::sync::{Mutex, Notify};
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::registry::{LoadedModule, Registry, Verdict, count};
use crate::sandbox::engine::{Engine, POOL_INSTANCES};
use crate::telemetry::{Handled, Telemetry};
use switchyard_model::envelope::{Envelope, PARTITION_KEY};
use switchyard_model::outcome::{Failure, FailureKind, Outcome};
use switchyard_model::trace;
use switchyard_store::{MessageStore, StoreError};

/// Version conflicts are retried on fresh state this many times before the
/// message counts as a transient failure; they are not a fault of the module.
pub const MAX_CONFLICT_RETRIES: u32 = 200;
/// Messages with the same partition key share one of this many locks.
const PARTITION_STRIPES: usize = 1024;
/// Documents that conflicted share one of this many queues.
const HOT_KEY_STRIPES: usize = 1024;
/// Header handed to the module (not stored): the attempt number, from 1.
pub const ATTEMPT: &str = "attempt";
/// Instances running at once, over all modules: below the pool's size.
const GUEST_SLOTS: usize = POOL_INSTANCES as usize * 3 / 4;
// A module's `max-concurrency` can never exceed the host's slots.
const _: () = assert!(switchyard_model::manifest::MAX_CONCURRENCY_LIMIT as usize <= GUEST_SLOTS);
/// Longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Which handled messages keep an inbox row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Every one (a message from a log or stream).
    Every,
    /// Those whose unit of work wrote or emitted something (a request whose
    /// caller has the answer).
    Effects,
}

/// Runs messages through modules: the bus every ingress hands envelopes to.
/// It routes (through the registry), runs (in the sandbox) and records (in
/// the store); ingress never writes the store around it.
pub struct Dispatcher {
    engine: Arc<Engine>,
    /// Inbox, commits and failures (and the reads of each unit of work).
    store: Arc<dyn MessageStore>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Woken after every commit that appended to the log.
    log_appended: Arc<Notify>,
    /// Same partition key -> same lock: one at a time, in arrival order.
    partitions: Vec<Mutex<()>>,
    /// After a version conflict on a document, a message's further tries
    /// wait here, one at a time per document (striped), instead of all
    /// rerunning at once against the same hot key.
    hot_keys: Vec<Arc<Mutex<()>>>,
    hasher: std::collections::hash_map::RandomState,
    /// Messages running at once: per module (`max-concurrency`) and in all
    /// (below the instance pool's size).
    slots: slots::Slots,
    /// Span export, when `[telemetry]` configures it.
    telemetry: Option<Arc<Telemetry>>,
    /// Candidate versions that see copies of their module's messages.
    shadows: shadow::Shadows,
}

impl Dispatcher {
    pub fn new(
        engine: Arc<Engine>,
        store: Arc<dyn MessageStore>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            registry,
            metrics: metrics.clone(),
            log_appended: Arc::new(Notify::new()),
            partitions: (0..PARTITION_STRIPES).map(|_| Mutex::new(())).collect(),
            hot_keys: (0..HOT_KEY_STRIPES)
                .map(|_| Arc::new(Mutex::new(())))
                .collect(),
            hasher: Default::default(),
            slots: slots::Slots::new(GUEST_SLOTS),
            telemetry: None,
            shadows: shadow::Shadows::new(engine.clone(), store.clone(), metrics),
            engine,
            store,
        }
    }

    /// The module that owns command topic `topic` now.
    pub fn owner(&self, topic: &str) -> Option<Arc<LoadedModule>> {
        self.registry.routes().commands.get(topic).cloned()
    }

    /// The version of module `name` serving now, if it is loaded: a
    /// consumer asks again for every message, so a reload takes effect at
    /// the next one.
    pub fn module(&self, name: &str) -> Option<Arc<LoadedModule>> {
        self.registry.routes().modules.get(name).cloned()
    }

    /// The names of the modules loaded now.
    pub fn module_names(&self) -> Vec<String> {
        self.registry.routes().modules.keys().cloned().collect()
    }

    /// What the candidate in `module`'s shadow did so far, if it has one.
    pub fn shadow_status(&self, module: &str) -> Option<serde_json::Value> {
        self.shadows.status(&self.registry.routes(), module)
    }

    /// The candidate in `module`'s shadow and its difference rate so far.
    pub fn shadow(&self, module: &str) -> Option<(Arc<LoadedModule>, f64)> {
        self.shadows
            .runner(&self.registry.routes(), module)
            .map(|r| (r.candidate.clone(), r.diff_rate()))
    }

    /// The host's metrics, which every handling updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Woken whenever something was appended to the embedded log (a
    /// commit with events, a failure event, an accepted message).
    pub fn log_appended(&self) -> &Arc<Notify> {
        &self.log_appended
    }

    /// Appends envelopes to the embedded log (no broker configured: the
    /// outbox is the log) and wakes its readers; `source` says who wrote
    /// them (`http`, ...).
    pub async fn append_to_log(
        &self,
        envelopes: &[Envelope],
        source: &str,
    ) -> Result<(), StoreError> {
        self.store.append(envelopes, source).await?;
        self.log_appended.notify_waiters();
        Ok(())
    }

    /// When `module` committed message `message_id` (Unix milliseconds, the
    /// store's clock), if its inbox holds it.
    pub async fn committed_at(
        &self,
        module: &str,
        message_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        self.store.inbox_committed_at(module, message_id).await
    }

    /// Exports each handling's span through `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Option<Arc<Telemetry>>) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// Handles `envelope` with `module`, retrying as the failure policy says,
    /// and records failures (failure event, dead letter) before returning.
    pub async fn deliver(&self, module: &Arc<LoadedModule>, envelope: &Envelope) -> Outcome {
        self.deliver_from(module, envelope, 1).await
    }

    /// [`Dispatcher::deliver`] for a request whose caller waits for the
    /// answer (HTTP): a query, i.e. a unit of work with no write and no
    /// event, commits nothing and keeps no inbox row, so its id again runs
    /// again. A message from a log or stream always keeps its inbox row:
    /// it is how `GET /v1/messages/{id}` knows it was handled.
    pub async fn call(&self, module: &Arc<LoadedModule>, envelope: &Envelope) -> Outcome {
        self.handle(module, envelope, 1, Keep::Effects).await
    }

    /// [`Dispatcher::deliver`] for a message already delivered `delivery - 1`
    /// times before (e.g. reclaimed from a dead consumer): those attempts count.
    pub async fn deliver_from(
        &self,
        module: &Arc<LoadedModule>,
        envelope: &Envelope,
        delivery: u32,
    ) -> Outcome {
        self.handle(module, envelope, delivery, Keep::Every).await
    }

    async fn handle(
        &self,
        module: &Arc<LoadedModule>,
        envelope: &Envelope,
        delivery: u32,
        keep: Keep,
    ) -> Outcome {
        let _ordered = match envelope.header(PARTITION_KEY) {
            Some(key) => Some(self.partition_lock(&module.name, key).lock().await),
            None => None,
        };
        let trace = trace::Handling::of(&module.name, envelope);
        let span = tracing::info_span!(
            "message",
            module = %module.name,
            topic = %envelope.topic,
            subtopic = %envelope.subtopic,
            id = %envelope.id,
            correlation_id = %envelope.correlation_id(),
            trace_id = %trace.trace_id_hex(),
            span_id = %trace.span_id_hex(),
        );
        let started = std::time::Instant::now();
        let started_at = std::time::SystemTime::now();
        let outcome = self
            .deliver_with_retries(module, envelope, delivery, keep, &trace)
            .instrument(span)
            .await;
        let elapsed = started.elapsed();
        let metrics = &self.metrics;
        metrics.delivered(&module.name, &envelope.topic, &outcome, elapsed);
        if let Some(telemetry) = &self.telemetry {
            telemetry.record(&Handled {
                module: &module.name,
                envelope,
                trace: &trace,
                started: started_at,
                elapsed,
                outcome: &outcome,
            });
        }
        // A version on trial (just reloaded) that fails its first messages
        // gives its module back to the version it replaced; after the trial
        // this is two relaxed atomic operations.
        let verdict = match &outcome {
            Outcome::Processed(_) => Verdict::Healthy,
            Outcome::Failed(f) if f.kind.retryable() => Verdict::Failed,
            Outcome::Duplicate(_) | Outcome::Failed(_) => Verdict::Neutral,
        };
        if let Some(previous) = module.judge(verdict) {
            let why = match &outcome {
                Outcome::Failed(f) => format!("{}: {}", f.kind.as_str(), f.message),
                _ => String::new(),
            };
            self.registry.roll_back(module, previous, &why).await;
        }
        outcome
    }

    async fn deliver_with_retries(
        &self,
        module: &Arc<LoadedModule>,
        envelope: &Envelope,
        delivery: u32,
        keep: Keep,
        trace: &trace::Handling,
    ) -> Outcome {
        let mut attempts = delivery.max(1) - 1;
        let mut conflicts = 0u32;
        // Held from this message's first conflict on a document to its end.
        let mut queued: Option<tokio::sync::OwnedMutexGuard<()>> = None;
        loop {
            attempts += 1;
            let (kind, message) = match self.attempt(module, envelope, attempts, keep, trace).await
            {
                Attempt::Committed(answer) => {
                    count(&module.stats, true);
                    return Outcome::Processed(answer);
                }
                Attempt::Duplicate(answer) => return Outcome::Duplicate(answer),
                Attempt::Conflict(document) if conflicts < MAX_CONFLICT_RETRIES => {
                    conflicts += 1;
                    attempts -= 1;
                    self.metrics.conflict(&module.name);
                    if queued.is_none()
                        && let Some((collection, key)) = document
                    {
                        // Wait for the messages of this host already
                        // rerunning on that document, then run at once.
                        let queue = self.hot_key_queue(&module.name, &collection, &key);
                        queued = Some(queue.lock_owned().await);
                        continue;
                    }
                    // Queued already (another host, or a message that never
                    // queued, won meanwhile): a short random pause, growing
                    // to 64 ms, so writers on several hosts spread out.
                    let cap = 1u64 << conflicts.min(6);
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=cap))).await;
                    continue;
                }
                Attempt::Conflict(_) => (
                    FailureKind::Transient,
                    format!("gave up after {MAX_CONFLICT_RETRIES} version conflicts"),
                ),
                Attempt::Failed(kind, message) => (kind, message),
            };
            // The inbox is not read before a try: a failed try may be a
            // duplicate's (run again on newer state), which answers what
            // the first delivery answered instead.
            if kind != FailureKind::Unavailable {
                match self.processed_before(module, envelope).await {
                    Ok(Some(Attempt::Duplicate(first))) => return Outcome::Duplicate(first),
                    Ok(_) => {}
                    Err(Attempt::Failed(kind, message)) => {
                        return Outcome::Failed(Failure {
                            kind,
                            message,
                            module: module.name.clone(),
                            attempts,
                        });
                    }
                    Err(_) => {}
                }
            }
            // What the module did is said under its log rate (its error
            // text is cut already); the host's own trouble always.
            if kind == FailureKind::Unavailable || module.grants.may_log() {
                tracing::warn!(
                    module = %module.name, id = %envelope.id, attempt = attempts,
                    kind = kind.as_str(), "handling failed: {message}"
                );
            }
            if kind == FailureKind::Unavailable {
                return Outcome::Failed(Failure {
                    kind,
                    message,
                    module: module.name.clone(),
                    attempts,
                });
            }
            if kind.retryable() && attempts < module.limits.max_attempts {
                tokio::time::sleep(backoff(module.limits.backoff, attempts)).await;
                continue;
            }
            count(&module.stats, false);
            let failure = Failure {
                kind,
                message,
                module: module.name.clone(),
                attempts,
            };
            if let Err(e) = self.record_failure(envelope, &failure).await {
                tracing::error!(module = %module.name, id = %envelope.id, error = %e, "could not record the failure");
                return Outcome::Failed(Failure {
                    kind: FailureKind::Unavailable,
                    message: format!("{}; recording it failed: {e}", failure.message),
                    ..failure
                });
            }
            return Outcome::Failed(failure);
        }
    }

    /// The queue of document `collection`/`key` of `module`. Taken after
    /// the partition lock (if any) and before a slot, never the other way
    /// round, and a message holds at most one: no waiting in a circle.
    fn hot_key_queue(&self, module: &str, collection: &str, key: &str) -> Arc<Mutex<()>> {
        let hash = self.hasher.hash_one((module, collection, key));
        let index = usize::try_from(hash % HOT_KEY_STRIPES as u64).unwrap_or(0);
        self.hot_keys[index].clone()
    }

    fn partition_lock(&self, module: &str, key: &str) -> &Mutex<()> {
        let mut h = self.hasher.build_hasher();
        module.hash(&mut h);
        key.hash(&mut h);
        let index = usize::try_from(h.finish() % PARTITION_STRIPES as u64).unwrap_or(0);
        &self.partitions[index]
    }
}

/// Exponential backoff with full jitter: base * 2^(attempt-1), capped.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let ms = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(ms / 2 + fastrand::u64(0..=ms / 2))
}
