//! Loaded modules and the routing table: each command topic to its one owner,
//! each event topic to its subscribers. Routes are resolved at load time (a
//! second owner of a command topic is refused then) and swapped as a whole;
//! a reload recompiles only what changed, and a new version that fails its
//! first messages is rolled back to the version it replaced.

pub mod contract;
mod load;
pub mod module;
pub mod reload;
mod routes;
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

use crate::metrics::Metrics;
pub use load::SHADOW_SUFFIX;
pub use module::{LoadedModule, ModuleLimits, ModuleStats, Source, Verdict};
use routes::resolve;
pub use switchyard_model::grants::Grants;

/// A module (or file) that could not be loaded, and why.
#[derive(Debug, Clone, Serialize)]
pub struct LoadProblem {
    pub module: String,
    pub file: PathBuf,
    pub message: String,
}

/// One immutable routing table.
#[derive(Default)]
pub struct Routes {
    pub modules: BTreeMap<String, Arc<LoadedModule>>,
    pub commands: HashMap<String, Arc<LoadedModule>>,
    pub subscribers: HashMap<String, Vec<Arc<LoadedModule>>>,
    pub problems: Vec<LoadProblem>,
    /// Module name -> sha256 of the version that was rolled back (and is
    /// not loaded again until its file changes).
    pub rolled_back: BTreeMap<String, String>,
    /// Module name -> the candidate version running in its shadow
    /// (`NAME.shadow.wasm`): loaded and checked like any version, but
    /// invisible to routing (see [`crate::shadow`]).
    pub shadows: BTreeMap<String, Arc<LoadedModule>>,
}

/// A version that was rolled back, remembered so a later reload does not
/// bring the same bytes back.
#[derive(Debug, Clone)]
pub(crate) struct Rejected {
    pub(crate) sha256: String,
    pub(crate) message: String,
}

/// The live routing table, replaced whole on reload.
#[derive(Default)]
pub struct Registry {
    routes: RwLock<Arc<Routes>>,
    stats: Mutex<HashMap<String, Arc<ModuleStats>>>,
    /// One swap at a time: reloads and rollbacks are serialised, so neither
    /// overwrites the other's result with a stale table.
    swaps: tokio::sync::Mutex<()>,
    /// Rolled-back versions by file.
    pub(crate) rejected: Mutex<HashMap<PathBuf, Rejected>>,
    /// Why the last reload could not read plugins.toml (nothing changed then).
    manifest_error: Mutex<Option<String>>,
    /// Where reloads and rollbacks are counted.
    metrics: Arc<Metrics>,
}

pub(crate) fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Registry {
    /// An empty registry that counts reloads and rollbacks in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            ..Self::default()
        }
    }

    pub fn routes(&self) -> Arc<Routes> {
        match self.routes.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, routes: Routes) {
        let routes = Arc::new(routes);
        match self.routes.write() {
            Ok(mut r) => *r = routes,
            Err(poisoned) => *poisoned.into_inner() = routes,
        }
    }

    /// Hold this from reading the current table until replacing it: reloads
    /// and rollbacks run one at a time.
    pub async fn lock_swaps(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.swaps.lock().await
    }

    /// Why the last reload could not use plugins.toml, if it could not.
    pub fn manifest_error(&self) -> Option<String> {
        locked(&self.manifest_error).clone()
    }

    pub fn set_manifest_error(&self, error: Option<String>) {
        *locked(&self.manifest_error) = error;
    }

    pub(crate) fn stats_for(&self, module: &str) -> Arc<ModuleStats> {
        locked(&self.stats)
            .entry(module.to_string())
            .or_default()
            .clone()
    }

    /// Gives `failing`'s module back to `to` (the version it replaced), and
    /// remembers `failing`'s bytes so later reloads leave them out until the
    /// file changes. Does nothing when `failing` is no longer serving.
    pub async fn roll_back(&self, failing: &Arc<LoadedModule>, to: Arc<LoadedModule>, why: &str) {
        let _one = self.lock_swaps().await;
        let current = self.routes();
        match current.modules.get(&failing.name) {
            Some(now) if Arc::ptr_eq(now, failing) => {}
            _ => return,
        }
        let message = format!(
            "version {} (sha256 {}) failed each of its first {} messages (last: {why}); rolled back to version {} (sha256 {}); replace the file to try again",
            failing.version, failing.sha256, failing.rollback_after, to.version, to.sha256
        );
        tracing::error!(module = %failing.name, file = %failing.file.display(), "{message}");
        self.metrics.rolled_back(&failing.name);
        locked(&self.rejected).insert(
            failing.file.clone(),
            Rejected {
                sha256: failing.sha256.clone(),
                message: message.clone(),
            },
        );
        let loaded = current
            .modules
            .values()
            .map(|m| {
                if Arc::ptr_eq(m, failing) {
                    to.clone()
                } else {
                    m.clone()
                }
            })
            .collect();
        let mut problems: Vec<LoadProblem> = current
            .problems
            .iter()
            .filter(|p| p.module != failing.name)
            .cloned()
            .collect();
        problems.push(LoadProblem {
            module: failing.name.clone(),
            file: failing.file.clone(),
            message,
        });
        let mut routes = resolve(loaded, Some(&current), &mut problems);
        routes.problems = problems;
        routes.rolled_back = current.rolled_back.clone();
        routes.shadows = current.shadows.clone();
        routes
            .rolled_back
            .insert(failing.name.clone(), failing.sha256.clone());
        self.replace(routes);
    }
}

/// Counts a handled or failed message.
pub fn count(stats: &ModuleStats, ok: bool) {
    if ok {
        stats.handled.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.failed.fetch_add(1, Ordering::Relaxed);
    }
}
