//! One try of one message: the inbox, a fresh instance running `handle`
//! under the module's limits, and the commit of its unit of work.

use serde_json::value::RawValue;

use std::sync::Arc;

use super::shadow::{self, Observed};
use super::{ATTEMPT, Dispatcher, Keep};
use crate::metrics::Metrics;
use crate::registry::LoadedModule;
use crate::sandbox::bindings::switchyard::module::types as wit;
use crate::sandbox::engine::{EPOCH_TICK, Engine};
use crate::sandbox::uow::{MessageMeta, UnitOfWork};
use switchyard_model::contract::Direction;
use switchyard_model::envelope::Envelope;
use switchyard_model::grants::clip;
use switchyard_model::outcome::{Answer, FailureKind};
use switchyard_model::trace;
use switchyard_store::{Commit, MessageStore, StoreError, Write};

/// Longest error text of a module's `handle-error` the host keeps (in its
/// log, dead letters, failure events and HTTP answers); the rest is cut.
pub const MAX_ERROR_TEXT: usize = 4 * 1024;

/// One try of one message.
pub(super) enum Attempt {
    Committed(Answer),
    Duplicate(Answer),
    /// A version moved under the message; it names the document when known.
    Conflict(Option<(String, String)>),
    Failed(FailureKind, String),
}

impl Dispatcher {
    /// One try: a fresh instance runs `handle`, then its unit of work
    /// commits. The inbox is not read first: a processed id is found when
    /// its commit inserts the inbox row again (`Duplicate`), or, for a unit
    /// of work with nothing to commit or a try that failed, by reading the
    /// inbox then (see [`Dispatcher::processed_before`]). Either way a
    /// duplicate answers what the first delivery answered, and what the
    /// repeated run did is dropped.
    pub(super) async fn attempt(
        &self,
        module: &LoadedModule,
        envelope: &Envelope,
        attempt: u32,
        keep: Keep,
        trace: &trace::Handling,
    ) -> Attempt {
        // A candidate version in the module's shadow sees a copy of this
        // try once it is over: the live reads are recorded for it.
        let shadow = self.shadows.runner(&self.registry.routes(), &module.name);
        let recording = shadow
            .as_ref()
            .map(|_| Arc::new(shadow::Recording::new(self.store.clone())));
        let (result, observed) = self
            .try_once(module, envelope, attempt, keep, trace, recording.clone())
            .await;
        if let (Some(runner), Some(live), Some(recording)) = (shadow, observed, recording) {
            runner.offer(envelope.clone(), attempt, live, recording.reads());
        }
        result
    }

    /// One try, and what it did as a shadow compares it when `recording`
    /// (`None` for a duplicate, a conflict or a store failure: nothing to
    /// compare).
    async fn try_once(
        &self,
        module: &LoadedModule,
        envelope: &Envelope,
        attempt: u32,
        keep: Keep,
        trace: &trace::Handling,
        recording: Option<Arc<shadow::Recording>>,
    ) -> (Attempt, Option<Observed>) {
        let failed = |a: Attempt| {
            let observed = observation(&a);
            (a, observed)
        };
        if let Err(refused) = check_body(module, envelope) {
            return failed(refused);
        }
        let slot = self
            .slots
            .acquire(&module.name, module.limits.max_concurrency)
            .await;
        let Some(_slot) = slot else {
            return failed(Attempt::Failed(
                FailureKind::Unavailable,
                "host is shutting down".into(),
            ));
        };
        let shadowed = recording.is_some();
        let reads: Arc<dyn MessageStore> = match recording {
            Some(r) => r,
            None => self.store.clone(),
        };
        let ran = run_guest(
            &self.engine,
            Some(&self.metrics),
            module,
            reads,
            envelope,
            attempt,
            trace,
        )
        .await;
        let (output, uow) = match ran {
            Ok(ran) => ran,
            Err(refused) => return failed(refused),
        };
        let (writes, events) = uow.into_parts();
        if let Err(refused) = check_events(module, &events) {
            return failed(refused);
        }
        let observed = shadowed.then(|| Observed::ok(output.get(), &writes, &events));
        let result = self
            .commit(module, envelope, output, writes, events, keep)
            .await;
        let observed = match &result {
            Attempt::Committed(_) => observed,
            other => observation(other),
        };
        (result, observed)
    }

    /// Commits a handled message's unit of work with its answer.
    async fn commit(
        &self,
        module: &LoadedModule,
        envelope: &Envelope,
        output: Box<RawValue>,
        writes: Vec<Write>,
        events: Vec<Envelope>,
        keep: Keep,
    ) -> Attempt {
        let answer = Answer {
            output,
            events: events.iter().map(event_json).collect(),
        };
        if keep == Keep::Effects && writes.is_empty() && events.is_empty() {
            // A query: nothing to commit, no inbox row (a repeat runs
            // again), unless this id was processed before with effects.
            return match self.processed_before(module, envelope).await {
                Ok(Some(first)) => first,
                Ok(None) => Attempt::Committed(answer),
                Err(failed) => failed,
            };
        }
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
            Err(StoreError::Conflict { collection, key }) => {
                Attempt::Conflict(Some((collection, key)))
            }
            // Bad output of the module: retried, then dead-lettered. The
            // database's own words stay in the host's log.
            Err(StoreError::Refused(detail)) => {
                // The database's words may quote the module's data: cut, and
                // under the module's log rate.
                if module.grants.may_log() {
                    let detail = clip(&detail, 1024);
                    tracing::warn!(module = %module.name, id = %envelope.id, %detail, "store refused the unit of work");
                }
                Attempt::Failed(
                    FailureKind::Trap,
                    "the store cannot hold a value the module wrote".into(),
                )
            }
            Err(StoreError::Duplicate) => match self.processed_before(module, envelope).await {
                Ok(Some(first)) => first,
                // Rolled back meanwhile (cannot happen to a committed row,
                // but the store said so): try again.
                Ok(None) => Attempt::Conflict(None),
                Err(failed) => failed,
            },
            Err(e) => Attempt::Failed(FailureKind::Unavailable, format!("store: {e}")),
        }
    }

    /// The first delivery's answer (as `Attempt::Duplicate`) if `module`
    /// committed this message id before.
    pub(super) async fn processed_before(
        &self,
        module: &LoadedModule,
        envelope: &Envelope,
    ) -> Result<Option<Attempt>, Attempt> {
        match self.store.inbox_answer(&module.name, &envelope.id).await {
            Ok(answer) => Ok(answer.map(|a| decode_answer(&a))),
            Err(e) => Err(Attempt::Failed(
                FailureKind::Unavailable,
                format!("store: {e}"),
            )),
        }
    }
}

/// Runs `handle` in a fresh instance under the module's limits: its
/// output (JSON) and unit of work, or how the try ended instead. Its
/// reads go to `store`; `metrics`: where the instantiation is timed.
pub(super) async fn run_guest(
    engine: &Engine,
    metrics: Option<&Metrics>,
    module: &LoadedModule,
    store: Arc<dyn MessageStore>,
    envelope: &Envelope,
    attempt: u32,
    trace: &trace::Handling,
) -> Result<(Box<RawValue>, UnitOfWork), Attempt> {
    let meta = MessageMeta {
        id: envelope.id.clone(),
        correlation_id: envelope.correlation_id().to_string(),
        traceparent: trace.child(),
    };
    let uow = UnitOfWork::new(module.grants.clone(), store, meta);
    let mut store = engine.new_store(uow, module.limits.max_memory_mb, module.limits.timeout);
    let message = guest_envelope(envelope, attempt);
    let call = async {
        let instantiating = std::time::Instant::now();
        let guest = module.pre.instantiate_async(&mut store).await?;
        if let Some(metrics) = metrics {
            metrics.instantiated(&module.name, instantiating.elapsed());
        }
        guest.call_handle(&mut store, &message).await
    };
    // The epoch deadline stops guest code; this also bounds time spent
    // inside host calls.
    let timeout = module.limits.timeout;
    let result = tokio::time::timeout(timeout + EPOCH_TICK * 3, call).await;
    let peak = u64::try_from(store.data().peak_memory()).unwrap_or(u64::MAX);
    (module.stats.peak_memory).fetch_max(peak, std::sync::atomic::Ordering::Relaxed);
    let uow = &store.data().uow;
    if let Some(e) = &uow.store_error {
        return Err(Attempt::Failed(
            FailureKind::Unavailable,
            format!("store: {e}"),
        ));
    }
    let output = match result {
        Err(_) => Err(Attempt::Failed(
            FailureKind::Timeout,
            format!("ran past its {timeout:?}"),
        )),
        Ok(Err(e)) => Err(match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => {
                Attempt::Failed(FailureKind::Timeout, format!("ran past its {timeout:?}"))
            }
            _ => Attempt::Failed(FailureKind::Trap, trap_message(&e)),
        }),
        Ok(Ok(Err(error))) => Err(refused(error, uow.conflicted.clone())),
        Ok(Ok(Ok(output))) => answer(output, module.grants.budgets.answer_bytes),
    }?;
    let uow = std::mem::replace(
        &mut store.data_mut().uow,
        UnitOfWork::detached(module.grants.clone()),
    );
    Ok((output, uow))
}

/// Checks each emitted event against the schema the module declared for
/// its topic/subtopic: one that does not match fails the message as
/// `invalid`, naming the event.
pub(super) fn check_events(module: &LoadedModule, events: &[Envelope]) -> Result<(), Attempt> {
    for event in events {
        let checked = module.contract.check(
            Direction::Emits,
            &event.topic,
            &event.subtopic,
            event.body_text(),
        );
        if let Err(problem) = checked {
            return Err(Attempt::Failed(
                FailureKind::Invalid,
                format!(
                    "emitted event {}/{} does not match its declared schema: {problem}",
                    event.topic, event.subtopic
                ),
            ));
        }
    }
    Ok(())
}

/// What a failed try says for a shadow's comparison (nothing for a
/// duplicate, a conflict or the store's own failure).
pub(super) fn observation(a: &Attempt) -> Option<Observed> {
    match a {
        Attempt::Failed(kind, message) if *kind != FailureKind::Unavailable => {
            Some(Observed::failed(*kind, message))
        }
        _ => None,
    }
}

/// Checks the body against the schema the module declared for this
/// command (or consumed event), before any instance exists: a body that
/// does not match fails as `invalid` with the paths and rules it broke.
pub(super) fn check_body(module: &LoadedModule, envelope: &Envelope) -> Result<(), Attempt> {
    if !module.contract.validates() {
        return Ok(());
    }
    let direction = if module.topics.contains(&envelope.topic) {
        Direction::Command
    } else {
        Direction::Consumes
    };
    module
        .contract
        .check(
            direction,
            &envelope.topic,
            &envelope.subtopic,
            envelope.body_text(),
        )
        .map_err(|problem| {
            Attempt::Failed(
                FailureKind::Invalid,
                format!(
                    "body of {}/{} does not match its schema: {problem}",
                    envelope.topic, envelope.subtopic
                ),
            )
        })
}

/// The JSON `handle` answered, if it fits the module's `max-answer-bytes`:
/// a longer answer fails the message as a trap, so nothing of it is stored
/// or sent on.
fn answer(output: String, budget: usize) -> Result<Box<RawValue>, Attempt> {
    if output.len() > budget {
        return Err(Attempt::Failed(
            FailureKind::Trap,
            format!(
                "handle answered {} bytes; an answer may hold at most {budget} (max-answer-bytes)",
                output.len()
            ),
        ));
    }
    RawValue::from_string(output).map_err(|e| {
        Attempt::Failed(
            FailureKind::Trap,
            format!("handle returned text that is not JSON: {e}"),
        )
    })
}

/// The envelope as the guest receives it, with the attempt number (from
/// 1) as a header it may look at (e.g. to log it).
fn guest_envelope(envelope: &Envelope, attempt: u32) -> wit::Envelope {
    wit::Envelope {
        id: envelope.id.clone(),
        topic: envelope.topic.clone(),
        subtopic: envelope.subtopic.clone(),
        headers: envelope
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain(std::iter::once((ATTEMPT.to_string(), attempt.to_string())))
            .collect(),
        body: envelope.body_text().to_string(),
    }
}

/// A typed error the module returned. `transient` after a version conflict
/// is the SDK's way of saying "conflict": run the message again on fresh
/// state.
/// The module's text is cut to [`MAX_ERROR_TEXT`].
fn refused(error: wit::HandleError, conflicted: Option<(String, String)>) -> Attempt {
    let cut = |m: String| clip(&m, MAX_ERROR_TEXT).into_owned();
    match error {
        wit::HandleError::Invalid(m) => Attempt::Failed(FailureKind::Invalid, cut(m)),
        wit::HandleError::Rejected(m) => Attempt::Failed(FailureKind::Rejected, cut(m)),
        wit::HandleError::Transient(_) if conflicted.is_some() => Attempt::Conflict(conflicted),
        wit::HandleError::Transient(m) => Attempt::Failed(FailureKind::Transient, cut(m)),
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
