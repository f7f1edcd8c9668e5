//! Loaded modules and the routing table: each command topic to its one owner,
//! each event topic to its subscribers. Routes are resolved at load time (a
//! second owner of a command topic is refused then) and swapped as a whole.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::engine::{Engine, GuestPre, HostState};
use crate::envelope::check_name;
use crate::manifest::{
    DEFAULT_BACKOFF_MS, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_MEMORY_MB, DEFAULT_TIMEOUT_MS, Manifest,
    ModuleEntry,
};

/// What a module may touch, fixed when it loads.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub name: String,
    pub emits: Vec<String>,
    pub reads: Vec<String>,
    /// The `config` table: strings as they are, other values as JSON.
    pub config: BTreeMap<String, String>,
}

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
}

/// Per-message limits and retry policy.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_memory_mb: u64,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub backoff: Duration,
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
    pub limits: Limits,
    pub grants: Arc<Grants>,
    pub pre: GuestPre<HostState>,
    pub stats: Arc<ModuleStats>,
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
}

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
}

/// The live routing table, replaced whole on reload.
#[derive(Default)]
pub struct Registry {
    routes: RwLock<Arc<Routes>>,
    stats: Mutex<HashMap<String, Arc<ModuleStats>>>,
}

impl Registry {
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

    fn stats_for(&self, module: &str) -> Arc<ModuleStats> {
        let mut stats = match self.stats.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        stats.entry(module.to_string()).or_default().clone()
    }

    /// Loads every module the manifest names and every drop-in `*.wasm` of
    /// the plugins folder, and resolves the routes.
    /// A module that fails to load keeps its `previous` version serving.
    pub async fn load(
        &self,
        engine: &Arc<Engine>,
        manifest: &Manifest,
        previous: Option<&Routes>,
    ) -> Routes {
        let keep = |name: &str| previous.and_then(|p| p.modules.get(name)).cloned();
        let mut loaded: Vec<Arc<LoadedModule>> = Vec::new();
        let mut problems = Vec::new();
        let dir = &manifest.host.plugins_dir;

        for (name, entry) in &manifest.modules {
            let file = dir.join(&entry.file);
            match self.load_one(engine, name, Some(entry), &file).await {
                Ok(m) => loaded.push(Arc::new(m)),
                Err(message) => {
                    if let Some(old) = keep(name) {
                        loaded.push(old);
                    }
                    problems.push(LoadProblem {
                        module: name.clone(),
                        file,
                        message,
                    });
                }
            }
        }

        for file in drop_ins(dir, manifest) {
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if manifest.host.strict {
                problems.push(LoadProblem {
                    module: stem,
                    file,
                    message: "not named in plugins.toml and `strict = true`: not loaded".into(),
                });
                continue;
            }
            match self.load_one(engine, &stem, None, &file).await {
                Ok(m)
                    if manifest.modules.contains_key(&m.name)
                        || loaded.iter().any(|l| l.name == m.name) =>
                {
                    problems.push(LoadProblem {
                        module: m.name.clone(),
                        file,
                        message: format!("a module named '{}' is already loaded", m.name),
                    });
                }
                Ok(m) => loaded.push(Arc::new(m)),
                Err(message) => {
                    let old =
                        previous.and_then(|p| p.modules.values().find(|m| m.file == file).cloned());
                    loaded.extend(old);
                    problems.push(LoadProblem {
                        module: stem,
                        file,
                        message,
                    });
                }
            }
        }

        let mut routes = Routes::default();
        'modules: for module in loaded {
            for topic in &module.topics {
                if let Some(owner) = routes.commands.get(topic) {
                    problems.push(LoadProblem {
                        module: module.name.clone(),
                        file: module.file.clone(),
                        message: format!(
                            "command topic '{topic}' is already owned by module '{}'; refused",
                            owner.name
                        ),
                    });
                    continue 'modules;
                }
            }
            for topic in &module.topics {
                routes.commands.insert(topic.clone(), module.clone());
            }
            for topic in &module.subscribes {
                routes
                    .subscribers
                    .entry(topic.clone())
                    .or_default()
                    .push(module.clone());
            }
            routes.modules.insert(module.name.clone(), module);
        }
        for p in &problems {
            tracing::error!(module = %p.module, file = %p.file.display(), "{}", p.message);
        }
        routes.problems = problems;
        routes
    }

    async fn load_one(
        &self,
        engine: &Arc<Engine>,
        name: &str,
        entry: Option<&ModuleEntry>,
        file: &Path,
    ) -> Result<LoadedModule, String> {
        let bytes = tokio::fs::read(file).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!("{} not found (run `switchyard build`?)", file.display())
            }
            _ => format!("cannot read {}: {e}", file.display()),
        })?;
        let sha256 = hex(&Sha256::digest(&bytes));
        let compiler = engine.clone();
        let component = tokio::task::spawn_blocking(move || compiler.compile(&bytes))
            .await
            .map_err(|e| format!("compiler task failed: {e}"))?
            .map_err(|e| e.to_string())?;
        let pre = engine.prepare(&component).map_err(|e| e.to_string())?;

        let limits = Limits {
            max_memory_mb: entry.map_or(DEFAULT_MAX_MEMORY_MB, |e| e.max_memory_mb),
            timeout: Duration::from_millis(entry.map_or(DEFAULT_TIMEOUT_MS, |e| e.timeout_ms)),
            max_attempts: entry.map_or(DEFAULT_MAX_ATTEMPTS, |e| e.max_attempts),
            backoff: Duration::from_millis(entry.map_or(DEFAULT_BACKOFF_MS, |e| e.backoff_ms)),
        };
        let probe = Arc::new(Grants {
            name: name.to_string(),
            ..Grants::default()
        });
        let descriptor = engine
            .describe(&pre, probe, limits.max_memory_mb, limits.timeout)
            .await
            .map_err(|e| e.to_string())?;
        for topic in descriptor
            .topics
            .iter()
            .chain(&descriptor.subscribes)
            .chain(&descriptor.emits)
        {
            check_name("topic", topic)
                .map_err(|e| format!("describe declares topic {topic:?}: {e}"))?;
        }
        // A drop-in is known by the name it declares; a manifest module by its key.
        let name = match entry {
            Some(_) => {
                if descriptor.name != name {
                    tracing::warn!(module = name, declared = %descriptor.name, "module declares another name; the manifest key wins");
                }
                name.to_string()
            }
            None => {
                check_name("name", &descriptor.name)
                    .map_err(|e| format!("describe declares name: {e}"))?;
                descriptor.name.clone()
            }
        };
        let topics = entry
            .and_then(|e| e.topics.clone())
            .unwrap_or(descriptor.topics);
        let subscribes = entry
            .and_then(|e| e.subscribes.clone())
            .unwrap_or(descriptor.subscribes);
        let emits = entry
            .and_then(|e| e.emits.clone())
            .unwrap_or(descriptor.emits);
        let config = entry
            .map(|e| {
                e.config
                    .iter()
                    .map(|(k, v)| {
                        let text = match v {
                            toml::Value::String(s) => s.clone(),
                            other => serde_json::to_string(other).unwrap_or_default(),
                        };
                        (k.clone(), text)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let grants = Arc::new(Grants {
            name: name.clone(),
            emits,
            reads: entry.map(|e| e.reads.clone()).unwrap_or_default(),
            config,
        });
        tracing::info!(module = %name, version = %descriptor.version, %sha256, ?topics, ?subscribes, "module loaded");
        Ok(LoadedModule {
            stats: self.stats_for(&name),
            name,
            version: descriptor.version,
            sha256,
            file: file.to_path_buf(),
            source: if entry.is_some() {
                Source::Manifest
            } else {
                Source::DropIn
            },
            topics,
            subscribes,
            loaded_at: crate::envelope::now_rfc3339(),
            limits,
            grants,
            pre,
        })
    }
}

/// `*.wasm` files of the plugins folder that no manifest entry names.
fn drop_ins(dir: &Path, manifest: &Manifest) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let named: Vec<&str> = manifest.modules.values().map(|e| e.file.as_str()).collect();
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "wasm"))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| !named.iter().any(|f| n == *f))
        })
        .collect();
    files.sort();
    files
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Counts a handled or failed message.
pub fn count(stats: &ModuleStats, ok: bool) {
    if ok {
        stats.handled.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.failed.fetch_add(1, Ordering::Relaxed);
    }
}
