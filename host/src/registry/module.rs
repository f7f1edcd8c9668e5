//! One loaded version of a module: what it is, what it may do, its
//! per-message limits, the counters that outlive it, and its trial after a
//! reload (a new version that fails its first messages gives its module back).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::contract::Contract;
use crate::sandbox::bindings::GuestPre;
use crate::sandbox::state::HostState;
use switchyard_model::grants::Grants;
use switchyard_model::manifest::ModuleEntry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Manifest,
    DropIn,
}

/// Counters that outlive reloads of a module.
#[derive(Debug, Default)]
pub struct ModuleStats {
    pub handled: AtomicU64,
    pub failed: AtomicU64,
    /// The largest linear memory one of its instances reached, in bytes.
    pub peak_memory: AtomicU64,
}

/// Per-message limits and retry policy.
#[derive(Debug, Clone)]
pub struct ModuleLimits {
    pub max_memory_mb: u64,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub backoff: Duration,
    /// `max-concurrency`: messages of the module handled at once.
    pub max_concurrency: u32,
}

/// What one message's outcome says about the version that handled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Committed: the version works.
    Healthy,
    /// Trapped, timed out or stayed transient through every attempt.
    Failed,
    /// Says nothing about the code (duplicate, bad input, store down).
    Neutral,
}

/// A freshly reloaded version on trial: until its first healthy message it
/// keeps the version it replaced, and gives it back if its first
/// `window` messages all fail.
pub struct Probation {
    /// True while on trial: the per-message cost after the trial is one
    /// relaxed load.
    armed: AtomicBool,
    window: u32,
    failures: AtomicU32,
    previous: Mutex<Option<Arc<LoadedModule>>>,
}

impl Probation {
    /// Not armed until [`LoadedModule::arm`].
    pub(super) fn new(window: u32) -> Self {
        Self {
            armed: AtomicBool::new(false),
            window,
            failures: AtomicU32::new(0),
            previous: Mutex::new(None),
        }
    }

    fn take_previous(&self) -> Option<Arc<LoadedModule>> {
        match self.previous.lock() {
            Ok(mut p) => p.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }
}

pub struct LoadedModule {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub file: PathBuf,
    pub source: Source,
    pub topics: Vec<String>,
    pub subscribes: Vec<String>,
    pub loaded_at: String,
    pub limits: ModuleLimits,
    pub grants: Arc<Grants>,
    pub pre: GuestPre<HostState>,
    /// What its `describe` declared, with the compiled body validators.
    pub contract: Arc<Contract>,
    pub stats: Arc<ModuleStats>,
    /// The manifest entry it was loaded with: a reload keeps this module
    /// as it is when the entry and the file's sha256 are unchanged.
    pub entry: Option<ModuleEntry>,
    /// Messages a new version may fail in a row, from its first, before it is
    /// rolled back (0 = never).
    pub rollback_after: u32,
    /// Messages of this version (not of the module) that went well / badly.
    pub(super) ok: AtomicU64,
    pub(super) bad: AtomicU64,
    pub(super) probation: Probation,
}

impl LoadedModule {
    /// Every topic this module consumes: owned commands, then subscriptions.
    pub fn consumed_topics(&self) -> Vec<String> {
        let mut topics = self.topics.clone();
        for t in &self.subscribes {
            if !topics.contains(t) {
                topics.push(t.clone());
            }
        }
        topics
    }

    /// A version is healthy unless every message it has seen failed.
    fn healthy(&self) -> bool {
        self.ok.load(Ordering::Relaxed) > 0 || self.bad.load(Ordering::Relaxed) == 0
    }

    /// Records one message's outcome. Returns the version to roll back to
    /// when this one has just failed the first `rollback_after` messages of
    /// its trial (only one caller ever gets it).
    pub fn judge(&self, verdict: Verdict) -> Option<Arc<LoadedModule>> {
        match verdict {
            Verdict::Neutral => return None,
            Verdict::Healthy => self.ok.fetch_add(1, Ordering::Relaxed),
            Verdict::Failed => self.bad.fetch_add(1, Ordering::Relaxed),
        };
        let trial = &self.probation;
        if !trial.armed.load(Ordering::Relaxed) {
            return None;
        }
        match verdict {
            Verdict::Healthy => {
                if trial.armed.swap(false, Ordering::AcqRel) {
                    // Trial passed: the old version is no longer needed.
                    drop(trial.take_previous());
                    tracing::info!(module = %self.name, sha256 = %self.sha256, "new version handled its first message");
                }
                None
            }
            Verdict::Failed => {
                let failures = trial.failures.fetch_add(1, Ordering::AcqRel) + 1;
                if failures >= trial.window && trial.armed.swap(false, Ordering::AcqRel) {
                    trial.take_previous()
                } else {
                    None
                }
            }
            Verdict::Neutral => None,
        }
    }

    /// Puts this new version on trial against `previous` (the version it
    /// replaces), if rollback is on and `previous` was serving well.
    pub(super) fn arm(&self, previous: &Arc<LoadedModule>) {
        if self.rollback_after == 0 || !previous.healthy() {
            return;
        }
        // One level only: the version being replaced gives up its own
        // predecessor, so chains of old versions are never kept alive.
        previous.probation.armed.store(false, Ordering::Release);
        drop(previous.probation.take_previous());
        match self.probation.previous.lock() {
            Ok(mut p) => *p = Some(previous.clone()),
            Err(poisoned) => *poisoned.into_inner() = Some(previous.clone()),
        }
        self.probation.armed.store(true, Ordering::Release);
    }
}
