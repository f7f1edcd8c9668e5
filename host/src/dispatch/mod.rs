//! One message through one module: inbox check, fresh sandboxed instance,
//! `handle`, commit of the unit of work, and the failure policy of SPEC §7
//! (retries with backoff, failure events, dead letters).

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::{Mutex, Notify, Semaphore};
use tracing::Instrument;

use crate::registry::{LoadedModule, Registry, Verdict, count};
use crate::sandbox::bindings::switchyard::module::types as wit;
use crate::sandbox::engine::{EPOCH_TICK, Engine, POOL_INSTANCES};
use crate::sandbox::uow::{MessageMeta, UnitOfWork};
use crate::telemetry::{Handled, Telemetry};
use switchyard_model::envelope::{
    self, CAUSATION_ID, CORRELATION_ID, Envelope, PARTITION_KEY, TIMESTAMP,
};
use switchyard_model::outcome::{Answer, Failure, FailureKind, Outcome, failure_event_id};
use switchyard_model::trace;
use switchyard_store::{Commit, DeadLetter, Store, StoreError};

/// Version conflicts are retried on fresh state this many times before the
/// message counts as a transient failure; they are not a fault of the module.
pub const MAX_CONFLICT_RETRIES: u32 = 200;
/// Messages with the same partition key share one of this many locks.
const PARTITION_STRIPES: usize = 1024;
/// Header handed to the module (not stored): the attempt number, from 1.
pub const ATTEMPT: &str = "attempt";
/// The `kind` of a dead letter whose entry or record was not an envelope.
pub const MALFORMED: &str = "malformed-envelope";
/// Longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A message that is not an envelope, as the dead-letter table keeps it.
#[derive(Debug, Clone)]
pub struct Malformed {
    /// The topic it was read from.
    pub topic: String,
    /// The id derived from where it sits (`redis:<stream>:<entry-id>`,
    /// `kafka:<topic>:<partition>:<offset>`).
    pub message_id: String,
    /// Its subtopic, if one could be read.
    pub subtopic: String,
    /// What arrived: the stream fields, or the record's value as text.
    pub raw: serde_json::Value,
    /// Why it is not an envelope.
    pub reason: String,
}

/// One try of one message.
enum Attempt {
    Committed(Answer),
    Duplicate(Answer),
    Conflict,
    Failed(FailureKind, String),
}

/// Runs messages through modules. Shared by every ingress.
pub struct Dispatcher {
    pub engine: Arc<Engine>,
    pub store: Store,
    pub registry: Arc<Registry>,
    /// Woken after every commit that appended to the log.
    pub log_appended: Arc<Notify>,
    /// Same partition key -> same lock: one at a time, in arrival order.
    partitions: Vec<Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
    /// Bounds live instances below the pool size, so a burst waits rather
    /// than failing to instantiate.
    instances: Semaphore,
    /// Span export, when `[telemetry]` configures it.
    telemetry: Option<Arc<Telemetry>>,
}

impl Dispatcher {
    pub fn new(engine: Arc<Engine>, store: Store, registry: Arc<Registry>) -> Self {
        Self {
            engine,
            store,
            registry,
            log_appended: Arc::new(Notify::new()),
            partitions: (0..PARTITION_STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: Default::default(),
            instances: Semaphore::new(POOL_INSTANCES as usize * 3 / 4),
            telemetry: None,
        }
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

    /// [`Dispatcher::deliver`] for a message already delivered `delivery - 1`
    /// times before (e.g. reclaimed from a dead consumer): those attempts count.
    pub async fn deliver_from(
        &self,
        module: &Arc<LoadedModule>,
        envelope: &Envelope,
        delivery: u32,
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
            .deliver_with_retries(module, envelope, delivery, &trace)
            .instrument(span)
            .await;
        let elapsed = started.elapsed();
        let metrics = &self.registry.metrics;
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
        trace: &trace::Handling,
    ) -> Outcome {
        let mut attempts = delivery.max(1) - 1;
        let mut conflicts = 0u32;
        loop {
            attempts += 1;
            let (kind, message) = match self.attempt(module, envelope, attempts, trace).await {
                Attempt::Committed(answer) => {
                    count(&module.stats, true);
                    return Outcome::Processed(answer);
                }
                Attempt::Duplicate(answer) => return Outcome::Duplicate(answer),
                Attempt::Conflict if conflicts < MAX_CONFLICT_RETRIES => {
                    conflicts += 1;
                    attempts -= 1;
                    // Short random pause so the racing writers spread out.
                    let cap = 1u64 << conflicts.min(6);
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=cap))).await;
                    continue;
                }
                Attempt::Conflict => (
                    FailureKind::Transient,
                    format!("gave up after {MAX_CONFLICT_RETRIES} version conflicts"),
                ),
                Attempt::Failed(kind, message) => (kind, message),
            };
            tracing::warn!(
                module = %module.name, id = %envelope.id, attempt = attempts,
                kind = kind.as_str(), "handling failed: {message}"
            );
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

    async fn attempt(
        &self,
        module: &LoadedModule,
        envelope: &Envelope,
        attempt: u32,
        trace: &trace::Handling,
    ) -> Attempt {
        match self.store.inbox_answer(&module.name, &envelope.id).await {
            Ok(Some(answer)) => return decode_answer(&answer),
            Ok(None) => {}
            Err(e) => return Attempt::Failed(FailureKind::Unavailable, format!("store: {e}")),
        }
        let Ok(_permit) = self.instances.acquire().await else {
            return Attempt::Failed(FailureKind::Unavailable, "host is shutting down".into());
        };
        let meta = MessageMeta {
            id: envelope.id.clone(),
            correlation_id: envelope.correlation_id().to_string(),
            traceparent: trace.child(),
        };
        let uow = UnitOfWork::new(module.grants.clone(), self.store.clone(), meta);
        let mut store =
            self.engine
                .new_store(uow, module.limits.max_memory_mb, module.limits.timeout);
        let message = wit::Envelope {
            id: envelope.id.clone(),
            topic: envelope.topic.clone(),
            subtopic: envelope.subtopic.clone(),
            // The module may look at which attempt this is (e.g. to log it).
            headers: envelope
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .chain(std::iter::once((ATTEMPT.to_string(), attempt.to_string())))
                .collect(),
            body: envelope.body_text().to_string(),
        };
        let timeout = module.limits.timeout;
        let call = async {
            let instantiating = std::time::Instant::now();
            let guest = module.pre.instantiate_async(&mut store).await?;
            (self.registry.metrics).instantiated(&module.name, instantiating.elapsed());
            guest.call_handle(&mut store, &message).await
        };
        // The epoch deadline stops guest code; this also bounds time spent
        // inside host calls.
        let result = tokio::time::timeout(timeout + EPOCH_TICK * 3, call).await;
        let peak = u64::try_from(store.data().peak_memory()).unwrap_or(u64::MAX);
        (module.stats.peak_memory).fetch_max(peak, std::sync::atomic::Ordering::Relaxed);
        let uow = &store.data().uow;
        if let Some(e) = &uow.store_error {
            return Attempt::Failed(FailureKind::Unavailable, format!("store: {e}"));
        }
        let output = match result {
            Err(_) => {
                return Attempt::Failed(FailureKind::Timeout, format!("ran past its {timeout:?}"));
            }
            Ok(Err(e)) => {
                return match e.downcast_ref::<wasmtime::Trap>() {
                    Some(wasmtime::Trap::Interrupt) => {
                        Attempt::Failed(FailureKind::Timeout, format!("ran past its {timeout:?}"))
                    }
                    _ => Attempt::Failed(FailureKind::Trap, trap_message(&e)),
                };
            }
            Ok(Ok(Err(wit::HandleError::Invalid(m)))) => {
                return Attempt::Failed(FailureKind::Invalid, m);
            }
            Ok(Ok(Err(wit::HandleError::Rejected(m)))) => {
                return Attempt::Failed(FailureKind::Rejected, m);
            }
            Ok(Ok(Err(wit::HandleError::Transient(m)))) => {
                return if uow.conflicted {
                    Attempt::Conflict
                } else {
                    Attempt::Failed(FailureKind::Transient, m)
                };
            }
            Ok(Ok(Ok(output))) => output,
        };
        let output = match RawValue::from_string(output) {
            Ok(o) => o,
            Err(e) => {
                return Attempt::Failed(
                    FailureKind::Trap,
                    format!("handle returned text that is not JSON: {e}"),
                );
            }
        };
        let uow = std::mem::replace(
            &mut store.data_mut().uow,
            UnitOfWork::detached(module.grants.clone()),
        );
        drop(store);
        let (writes, events) = uow.into_parts();
        let answer = Answer {
            output,
            events: events.iter().map(event_json).collect(),
        };
        let answer_text = match serde_json::to_string(&answer) {
            Ok(t) => t,
            Err(e) => {
                return Attempt::Failed(
                    FailureKind::Trap,
                    format!("answer does not serialise: {e}"),
                );
            }
        };
        let commit = Commit {
            module: &module.name,
            message_id: &envelope.id,
            answer: &answer_text,
            writes: &writes,
            events: &events,
        };
        match self.store.commit(&commit).await {
            Ok(()) => {
                if !events.is_empty() {
                    self.log_appended.notify_waiters();
                }
                Attempt::Committed(answer)
            }
            Err(StoreError::Conflict { .. }) => Attempt::Conflict,
            // Bad output of the module: retried, then dead-lettered. The
            // database's own words stay in the host's log.
            Err(StoreError::Refused(detail)) => {
                tracing::warn!(module = %module.name, id = %envelope.id, %detail, "store refused the unit of work");
                Attempt::Failed(
                    FailureKind::Trap,
                    "the store cannot hold a value the module wrote".into(),
                )
            }
            Err(StoreError::Duplicate) => {
                match self.store.inbox_answer(&module.name, &envelope.id).await {
                    Ok(Some(a)) => decode_answer(&a),
                    Ok(None) => Attempt::Conflict,
                    Err(e) => Attempt::Failed(FailureKind::Unavailable, format!("store: {e}")),
                }
            }
            Err(e) => Attempt::Failed(FailureKind::Unavailable, format!("store: {e}")),
        }
    }

    /// Failure event on `T.failed` and, unless rejected, a dead letter.
    async fn record_failure(
        &self,
        envelope: &Envelope,
        failure: &Failure,
    ) -> Result<(), StoreError> {
        let dead_letter = (failure.kind != FailureKind::Rejected).then(|| DeadLetter {
            id: envelope::new_id(),
            module: failure.module.clone(),
            message_id: envelope.id.clone(),
            topic: envelope.topic.clone(),
            subtopic: envelope.subtopic.clone(),
            envelope: serde_json::to_value(envelope).unwrap_or_default(),
            error_kind: failure.kind.as_str().to_string(),
            error_message: failure.message.clone(),
            attempts: failure.attempts,
            created_at: String::new(),
            replayed_at: None,
        });
        let event = failure_event(envelope, failure);
        self.store
            .record_failure(dead_letter.as_ref(), event.as_ref())
            .await?;
        if event.is_some() {
            self.log_appended.notify_waiters();
        }
        Ok(())
    }

    /// Records a message that is not an envelope as a dead letter (kind
    /// `malformed-envelope`), so it is listed and can be replayed like any
    /// other; no failure event (there is no message to announce).
    pub async fn record_malformed(
        &self,
        module: &str,
        malformed: &Malformed,
    ) -> Result<(), StoreError> {
        let letter = DeadLetter {
            id: envelope::new_id(),
            module: module.to_string(),
            message_id: malformed.message_id.clone(),
            topic: malformed.topic.clone(),
            subtopic: malformed.subtopic.clone(),
            envelope: malformed.raw.clone(),
            error_kind: MALFORMED.to_string(),
            error_message: malformed.reason.clone(),
            attempts: 1,
            created_at: String::new(),
            replayed_at: None,
        };
        self.store.record_failure(Some(&letter), None).await?;
        self.registry
            .metrics
            .dead_lettered(module, &malformed.topic);
        Ok(())
    }

    fn partition_lock(&self, module: &str, key: &str) -> &Mutex<()> {
        let mut h = self.hasher.build_hasher();
        module.hash(&mut h);
        key.hash(&mut h);
        let index = usize::try_from(h.finish() % PARTITION_STRIPES as u64).unwrap_or(0);
        &self.partitions[index]
    }
}

/// The host's failure event for a message of topic `T`: on `T.failed`, with a
/// deterministic id so a redelivered failure is not announced twice. Failures
/// of `*.failed` messages are not announced again (no failure loops).
fn failure_event(envelope: &Envelope, failure: &Failure) -> Option<Envelope> {
    if envelope.topic.ends_with(".failed") {
        return None;
    }
    let id = failure_event_id(&failure.module, &envelope.id);
    let mut headers = std::collections::BTreeMap::new();
    let trace = trace::Handling::of(&failure.module, envelope);
    headers.insert(trace::TRACEPARENT.to_string(), trace.child());
    headers.insert(
        CORRELATION_ID.to_string(),
        envelope.correlation_id().to_string(),
    );
    headers.insert(CAUSATION_ID.to_string(), envelope.id.clone());
    headers.insert(TIMESTAMP.to_string(), envelope::now_rfc3339());
    if let Some(key) = envelope.header(PARTITION_KEY) {
        headers.insert(PARTITION_KEY.to_string(), key.to_string());
    }
    let body = serde_json::json!({
        "kind": failure.kind.as_str(),
        "message": failure.message,
        "attempt": failure.attempts,
        "original_id": envelope.id,
        "module": failure.module,
    });
    match Envelope::new(
        id,
        format!("{}.failed", envelope.topic),
        envelope.subtopic.clone(),
        headers,
        &body.to_string(),
    ) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!(topic = %envelope.topic, error = %e, "no failure event for this topic");
            None
        }
    }
}

fn decode_answer(text: &str) -> Attempt {
    match serde_json::from_str::<Answer>(text) {
        Ok(a) => Attempt::Duplicate(a),
        Err(e) => Attempt::Failed(
            FailureKind::Unavailable,
            format!("stored answer does not decode: {e}"),
        ),
    }
}

fn event_json(e: &Envelope) -> serde_json::Value {
    serde_json::to_value(e).unwrap_or_default()
}

/// Exponential backoff with full jitter: base * 2^(attempt-1), capped.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let ms = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(ms / 2 + fastrand::u64(0..=ms / 2))
}

/// The trap's reason and the guest function it happened in, without the
/// whole wasm backtrace (that goes to the log).
fn trap_message(e: &wasmtime::Error) -> String {
    let reason = match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => e.root_cause().to_string(),
    };
    let function = e
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .and_then(|bt| bt.frames().first())
        .and_then(|f| {
            f.func_name()
                .map(|name| format!("{:#}", rustc_demangle::demangle(name)))
        });
    tracing::debug!(error = ?e, "guest trap");
    match function {
        Some(f) => format!("trapped: {reason} (in {f})"),
        None => format!("trapped: {reason}"),
    }
}
