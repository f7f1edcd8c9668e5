//! `[modules.NAME]`: one entry per module, naming its component file, its
//! topics and grants, and its limits.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::Invalid;
use crate::envelope::check_name;
pub use crate::grants::{
    Budgets, DEFAULT_MAX_ANSWER_BYTES, DEFAULT_MAX_SCAN_BYTES, DEFAULT_MAX_WRITE_BYTES,
    MAX_BUDGET_BYTES, MIN_BUDGET_BYTES,
};

/// Linear memory cap of one module instance.
pub const DEFAULT_MAX_MEMORY_MB: u64 = 64;
/// Wall-clock budget of one `handle` call.
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;
/// Attempts before a transient failure becomes a dead letter.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// First retry delay; doubled per attempt, with jitter.
pub const DEFAULT_BACKOFF_MS: u64 = 100;
/// Messages of one module handled at once (running instances, or waiting
/// on the store inside one); more wait their turn. Bounds what one module
/// takes of the host's guest slots and CPU, so a module whose messages all
/// spin to their timeout cannot crowd out the others.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 32;
/// Upper bound of `max-concurrency`: the host runs at most this many guest
/// instances in all (three quarters of its 1,000 pool slots).
pub const MAX_CONCURRENCY_LIMIT: u32 = 750;
/// Upper bound of `max-memory-mb` (the pooling allocator reserves this much per slot).
pub const MAX_MEMORY_MB_LIMIT: u64 = 4_096;

/// One `[modules.NAME]` table. Compared on reload: an unchanged entry with
/// an unchanged file keeps its loaded module.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ModuleEntry {
    /// The component, relative to `plugins-dir`.
    pub file: String,
    /// Shell command that builds it, run from the manifest's folder.
    #[serde(default)]
    pub build: Option<String>,
    /// Where the build command leaves the component (relative to the
    /// manifest's folder); `switchyard build` copies it to `file`.
    #[serde(default)]
    pub artifact: Option<String>,
    /// Command topics it owns; `describe`'s list when absent.
    #[serde(default)]
    pub topics: Option<Vec<String>>,
    /// Event topics it listens to; `describe`'s list when absent.
    #[serde(default)]
    pub subscribes: Option<Vec<String>>,
    /// Topics it may emit to; `describe`'s list when absent.
    #[serde(default)]
    pub emits: Option<Vec<String>>,
    /// Modules whose collections it may read.
    #[serde(default)]
    pub reads: Vec<String>,
    #[serde(default = "default_max_memory_mb")]
    pub max_memory_mb: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Messages of this module handled at once; more wait.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
    /// Per-message budget of buffered writes and events, in bytes.
    #[serde(default = "default_max_write_bytes")]
    pub max_write_bytes: u64,
    /// Per-call budget of one scan's documents, in bytes.
    #[serde(default = "default_max_scan_bytes")]
    pub max_scan_bytes: u64,
    /// Per-message budget of `handle`'s answer, in bytes.
    #[serde(default = "default_max_answer_bytes")]
    pub max_answer_bytes: u64,
    /// Overrides `host.rollback-after` for this module.
    #[serde(default)]
    pub rollback_after: Option<u32>,
    /// Loads a new version whose declared schemas would refuse bodies the
    /// serving version accepts (a breaking contract change); without it,
    /// such a reload is refused and the serving version stays.
    #[serde(default)]
    pub allow_breaking: bool,
    /// Handed to the module through the `config` import.
    #[serde(default)]
    pub config: toml::Table,
}

fn default_max_memory_mb() -> u64 {
    DEFAULT_MAX_MEMORY_MB
}
fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}
fn default_backoff_ms() -> u64 {
    DEFAULT_BACKOFF_MS
}
fn default_max_concurrency() -> u32 {
    DEFAULT_MAX_CONCURRENCY
}
fn default_max_write_bytes() -> u64 {
    DEFAULT_MAX_WRITE_BYTES
}
fn default_max_scan_bytes() -> u64 {
    DEFAULT_MAX_SCAN_BYTES
}
fn default_max_answer_bytes() -> u64 {
    DEFAULT_MAX_ANSWER_BYTES
}

/// Checks every entry, in name order; the first bad one is the error.
pub(super) fn validate(
    modules: BTreeMap<String, ModuleEntry>,
) -> Result<BTreeMap<String, ModuleEntry>, Invalid> {
    for (name, entry) in &modules {
        check_module_name(name).map_err(|m| Invalid::new(format!("modules.{name}"), m))?;
        entry.check(name)?;
    }
    Ok(modules)
}

impl ModuleEntry {
    /// The module's per-message budgets.
    pub fn budgets(&self) -> Budgets {
        // Checked to be at most MAX_BUDGET_BYTES (1 GiB): fits any usize
        // the host runs on.
        let bytes = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Budgets {
            write_bytes: bytes(self.max_write_bytes),
            scan_bytes: bytes(self.max_scan_bytes),
            answer_bytes: bytes(self.max_answer_bytes),
        }
    }

    /// Checks the entry of module `name`; errors name `modules.<name>.<key>`.
    fn check(&self, name: &str) -> Result<(), Invalid> {
        let invalid =
            |k: &str, message: String| Invalid::new(format!("modules.{name}.{k}"), message);
        if self.file.is_empty()
            || Path::new(&self.file).components().count() != 1
            || !self.file.ends_with(".wasm")
        {
            return Err(invalid(
                "file",
                format!(
                    "{:?} must be a `*.wasm` file name inside plugins-dir",
                    self.file
                ),
            ));
        }
        for (list_key, list) in [
            ("topics", &self.topics),
            ("subscribes", &self.subscribes),
            ("emits", &self.emits),
        ] {
            for topic in list.iter().flatten() {
                check_name("topic", topic)
                    .map_err(|e| invalid(list_key, format!("{topic:?}: {e}")))?;
            }
        }
        for other in &self.reads {
            check_module_name(other).map_err(|m| invalid("reads", m))?;
        }
        self.check_limits().map_err(|(k, m)| invalid(k, m))
    }

    /// The numeric limits and the build pair, as (key, message).
    fn check_limits(&self) -> Result<(), (&'static str, String)> {
        if self.max_memory_mb == 0 || self.max_memory_mb > MAX_MEMORY_MB_LIMIT {
            return Err((
                "max-memory-mb",
                format!("must be 1 to {MAX_MEMORY_MB_LIMIT}"),
            ));
        }
        if self.timeout_ms == 0 {
            return Err(("timeout-ms", "must be at least 1".into()));
        }
        if self.max_attempts == 0 {
            return Err(("max-attempts", "must be at least 1".into()));
        }
        if self.max_concurrency == 0 || self.max_concurrency > MAX_CONCURRENCY_LIMIT {
            return Err((
                "max-concurrency",
                format!("must be 1 to {MAX_CONCURRENCY_LIMIT}"),
            ));
        }
        for (key, value) in [
            ("max-write-bytes", self.max_write_bytes),
            ("max-scan-bytes", self.max_scan_bytes),
            ("max-answer-bytes", self.max_answer_bytes),
        ] {
            if !(MIN_BUDGET_BYTES..=MAX_BUDGET_BYTES).contains(&value) {
                return Err((
                    key,
                    format!("must be {MIN_BUDGET_BYTES} to {MAX_BUDGET_BYTES} bytes"),
                ));
            }
        }
        if self.artifact.is_some() && self.build.is_none() {
            return Err((
                "artifact",
                "needs a `build` command that produces it".into(),
            ));
        }
        Ok(())
    }
}

fn check_module_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "module name {name:?} must be 1 to 64 of [A-Za-z0-9_-]"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_test_manifest as parse;
    use super::*;

    #[test]
    fn max_concurrency_has_a_default_and_bounds() {
        let m = parse("[modules.a]\nfile = \"a.wasm\"\n").expect("valid");
        assert_eq!(m.modules["a"].max_concurrency, DEFAULT_MAX_CONCURRENCY);
        let m = parse("[modules.a]\nfile = \"a.wasm\"\nmax-concurrency = 4\n").expect("valid");
        assert_eq!(m.modules["a"].max_concurrency, 4);
        for bad in [0, MAX_CONCURRENCY_LIMIT + 1] {
            let err = parse(&format!(
                "[modules.a]\nfile = \"a.wasm\"\nmax-concurrency = {bad}\n"
            ))
            .expect_err("must be refused");
            assert!(
                err.to_string().contains("modules.a.max-concurrency"),
                "{err}"
            );
        }
    }
}
