//! Shadow runs: a candidate version of a module (`NAME.shadow.wasm`) sees a
//! copy of every try the live version makes, after the live one is over and
//! off its path. The candidate reads what the live version read (see
//! [`stores`]), its writes and events are captured and compared (see
//! [`compare`]), never committed or published.
//!
//! Cost is bounded and never paid by live traffic: a copy takes a place in
//! a bounded queue or is skipped (and counted); candidate runs have their
//! own concurrency. Counts start again when the candidate's bytes change
//! or the host restarts.

mod compare;
mod stores;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::Semaphore;

pub use compare::Observed;
use compare::{Part, compact, differences};
use stores::Replay;
pub use stores::{Reads, Recording};

use super::attempt::{Attempt, check_body, check_events, observation, run_guest};
use crate::metrics::Metrics;
use crate::registry::locked;
use crate::registry::{LoadedModule, Routes};
use crate::sandbox::engine::Engine;
use switchyard_model::envelope::Envelope;
use switchyard_model::outcome::FailureKind;
use switchyard_model::trace;
use switchyard_store::MessageStore;

/// Copies waiting for the candidate, per shadow; past it they are skipped.
pub const QUEUE: usize = 256;
/// Candidate runs at once, per shadow.
pub const CONCURRENCY: usize = 2;
/// Differences kept for `GET /v1/modules/{name}/shadow`.
const KEPT_DIFFERENCES: usize = 50;

/// The shadows of the dispatcher's modules, one runner per candidate.
pub struct Shadows {
    engine: Arc<Engine>,
    store: Arc<dyn MessageStore>,
    metrics: Arc<Metrics>,
    runners: Mutex<HashMap<String, Arc<Runner>>>,
}

impl Shadows {
    pub fn new(engine: Arc<Engine>, store: Arc<dyn MessageStore>, metrics: Arc<Metrics>) -> Self {
        Self {
            engine,
            store,
            metrics,
            runners: Mutex::default(),
        }
    }

    /// The runner of `module`'s candidate, if `routes` has one: the same
    /// runner (and counts) while the candidate's bytes stay the same.
    pub fn runner(&self, routes: &Routes, module: &str) -> Option<Arc<Runner>> {
        let candidate = routes.shadows.get(module)?;
        let mut runners = locked(&self.runners);
        if let Some(r) = runners.get(module)
            && r.candidate.sha256 == candidate.sha256
        {
            return Some(r.clone());
        }
        let runner = Arc::new(Runner {
            candidate: candidate.clone(),
            started_at: switchyard_model::envelope::now_rfc3339(),
            queue: Arc::new(Semaphore::new(QUEUE)),
            running: Arc::new(Semaphore::new(CONCURRENCY)),
            counts: Counts::default(),
            differences: Mutex::default(),
            engine: self.engine.clone(),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
        });
        runners.insert(module.to_string(), runner.clone());
        Some(runner)
    }

    /// What `GET /v1/modules/{name}/shadow` answers, if `module` has a
    /// candidate.
    pub fn status(&self, routes: &Routes, module: &str) -> Option<Value> {
        self.runner(routes, module).map(|r| r.status())
    }
}

#[derive(Default)]
struct Counts {
    compared: AtomicU64,
    matched: AtomicU64,
    differed: AtomicU64,
    outcome: AtomicU64,
    answer: AtomicU64,
    writes: AtomicU64,
    events: AtomicU64,
    candidate_failed: AtomicU64,
    diverged_read: AtomicU64,
    skipped: AtomicU64,
}

fn get(n: &AtomicU64) -> u64 {
    n.load(Ordering::Relaxed)
}

fn bump(n: &AtomicU64) {
    n.fetch_add(1, Ordering::Relaxed);
}

/// One candidate: its queue, its concurrency, what it did so far.
pub struct Runner {
    pub candidate: Arc<LoadedModule>,
    started_at: String,
    queue: Arc<Semaphore>,
    running: Arc<Semaphore>,
    counts: Counts,
    differences: Mutex<VecDeque<Value>>,
    engine: Arc<Engine>,
    store: Arc<dyn MessageStore>,
    metrics: Arc<Metrics>,
}

impl Runner {
    /// Hands the candidate a copy of a finished live try: queued, or
    /// skipped when the queue is full. Never waits.
    pub fn offer(self: &Arc<Self>, envelope: Envelope, attempt: u32, live: Observed, reads: Reads) {
        let Ok(place) = self.queue.clone().try_acquire_owned() else {
            bump(&self.counts.skipped);
            self.metrics.shadowed(&self.candidate.name, "skipped");
            return;
        };
        let runner = self.clone();
        tokio::spawn(async move {
            let _place = place;
            let Ok(_running) = runner.running.clone().acquire_owned().await else {
                return;
            };
            let (candidate, diverged) = runner.run(&envelope, attempt, reads).await;
            runner.record(&envelope, &live, &candidate, diverged);
        });
    }

    /// The candidate's handling of the copy, on the live reads.
    async fn run(&self, envelope: &Envelope, attempt: u32, reads: Reads) -> (Observed, bool) {
        let module = &self.candidate;
        if let Err(refused) = check_body(module, envelope) {
            return (observed(refused), false);
        }
        let replay = Arc::new(Replay::new(self.store.clone(), reads));
        let trace = trace::Handling::of(&module.name, envelope);
        let ran = run_guest(
            &self.engine,
            None,
            module,
            replay.clone(),
            envelope,
            attempt,
            &trace,
        )
        .await;
        let result = match ran {
            Ok((output, uow)) => {
                let (writes, events) = uow.into_parts();
                match check_events(module, &events) {
                    Ok(()) => Observed::ok(output.get(), &writes, &events),
                    Err(refused) => observed(refused),
                }
            }
            Err(refused) => observed(refused),
        };
        (result, replay.diverged())
    }

    fn record(&self, envelope: &Envelope, live: &Observed, candidate: &Observed, diverged: bool) {
        let c = &self.counts;
        bump(&c.compared);
        if diverged {
            bump(&c.diverged_read);
            self.metrics.shadowed(&self.candidate.name, "diverged-read");
        }
        let parts = differences(live, candidate);
        let result = if candidate.broke() && !live.broke() {
            bump(&c.candidate_failed);
            "candidate-failed"
        } else if parts.is_empty() {
            bump(&c.matched);
            "matched"
        } else {
            "differed"
        };
        self.metrics.shadowed(&self.candidate.name, result);
        if parts.is_empty() {
            return;
        }
        bump(&c.differed);
        for p in &parts {
            bump(match p {
                Part::Outcome => &c.outcome,
                Part::Answer => &c.answer,
                Part::Writes => &c.writes,
                Part::Events => &c.events,
            });
        }
        let difference = json!({
            "message_id": envelope.id,
            "topic": envelope.topic,
            "subtopic": envelope.subtopic,
            "parts": parts.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            "diverged_read": diverged,
            "live": live.to_json(),
            "candidate": candidate.to_json(),
            "diff": compact(live, candidate, &parts),
        });
        let mut kept = locked(&self.differences);
        if kept.len() == KEPT_DIFFERENCES {
            kept.pop_front();
        }
        kept.push_back(difference);
    }

    /// Differed / compared (0 before the first comparison).
    pub fn diff_rate(&self) -> f64 {
        let compared = get(&self.counts.compared);
        if compared == 0 {
            0.0
        } else {
            get(&self.counts.differed) as f64 / compared as f64
        }
    }

    /// Copies handed over and not compared yet.
    pub fn pending(&self) -> usize {
        QUEUE - self.queue.available_permits()
    }

    pub fn status(&self) -> Value {
        let c = &self.counts;
        json!({
            "module": self.candidate.name,
            "candidate": {
                "version": self.candidate.version,
                "sha256": self.candidate.sha256,
                "file": self.candidate.file,
            },
            "started_at": self.started_at,
            "counts": {
                "compared": get(&c.compared),
                "matched": get(&c.matched),
                "differed": {
                    "total": get(&c.differed),
                    "outcome": get(&c.outcome),
                    "answer": get(&c.answer),
                    "writes": get(&c.writes),
                    "events": get(&c.events),
                },
                "candidate_failed": get(&c.candidate_failed),
                "diverged_read": get(&c.diverged_read),
                "skipped": get(&c.skipped),
                "pending": self.pending(),
            },
            "diff_rate": self.diff_rate(),
            "differences": locked(&self.differences).iter().rev().cloned().collect::<Vec<_>>(),
        })
    }
}

/// A try that ended before or without an answer, as compared.
fn observed(a: Attempt) -> Observed {
    observation(&a).unwrap_or_else(|| match a {
        Attempt::Conflict(_) => Observed::failed(FailureKind::Transient, "version conflict"),
        Attempt::Failed(kind, message) => Observed::failed(kind, &message),
        Attempt::Committed(_) | Attempt::Duplicate(_) => {
            Observed::failed(FailureKind::Unavailable, "not run")
        }
    })
}
