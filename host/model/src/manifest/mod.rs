//! `plugins.toml` -> validated settings. Errors name the file, the key and the
//! module, and relative paths resolve against the manifest's folder.
//!
//! [`Manifest::parse`] reads the TOML into raw sections, then checks each in
//! turn, one file per section:
//!
//! - `host.rs`: `[host]`, defaults filled in and paths resolved;
//! - `brokers.rs`: `[redis]` and `[kafka]`;
//! - `retention.rs`: `[retention]` ages;
//! - `telemetry.rs`: `[telemetry]`, the OTLP exporter;
//! - `modules.rs`: the `[modules.NAME]` entries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod brokers;
mod host;
mod modules;
mod retention;
mod telemetry;

pub use brokers::{
    DEFAULT_PARTITION_QUEUE, DEFAULT_REDIS_CONCURRENCY, KafkaSettings, RedisSettings,
};
pub use host::{
    DEFAULT_CACHE_DIR, DEFAULT_DATABASE, DEFAULT_HEADER_READ_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_MS,
    DEFAULT_LISTEN, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_OPEN_CONNECTIONS,
    DEFAULT_PLUGINS_DIR, DEFAULT_REQUEST_TIMEOUT_MS, DEFAULT_ROLLBACK_AFTER, HostSettings,
};
pub use modules::{
    DEFAULT_BACKOFF_MS, DEFAULT_MAX_ANSWER_BYTES, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_MEMORY_MB, DEFAULT_MAX_SCAN_BYTES, DEFAULT_MAX_WRITE_BYTES, DEFAULT_TIMEOUT_MS,
    MAX_BUDGET_BYTES, MAX_CONCURRENCY_LIMIT, MAX_MEMORY_MB_LIMIT, MIN_BUDGET_BYTES, ModuleEntry,
};
pub use retention::{
    DEFAULT_CACHE_RETENTION, DEFAULT_RETENTION, DEFAULT_RETENTION_EVERY, RetentionSettings,
};
pub use telemetry::{OtlpProtocol, TelemetrySettings};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// A bad value found by one section's check, before the manifest's path is
/// known to it: [`Manifest::parse`] turns it into [`ManifestError::Invalid`].
#[derive(Debug)]
struct Invalid {
    /// The full dotted key, e.g. `modules.orders.timeout-ms`.
    key: String,
    message: String,
}

impl Invalid {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }

    fn at(self, path: &Path) -> ManifestError {
        ManifestError::Invalid {
            path: path.to_path_buf(),
            key: self.key,
            message: self.message,
        }
    }
}

/// The whole manifest, validated, with paths made absolute.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The manifest file itself.
    pub path: PathBuf,
    /// Its folder: relative paths and build commands start here.
    pub dir: PathBuf,
    pub host: HostSettings,
    pub redis: Option<RedisSettings>,
    pub kafka: Option<KafkaSettings>,
    /// `[retention]`: what the host deletes once it is old enough.
    pub retention: RetentionSettings,
    /// `[telemetry]`: span export; absent means spans go to the log only.
    pub telemetry: Option<TelemetrySettings>,
    /// Module entries by name, in name order.
    pub modules: BTreeMap<String, ModuleEntry>,
}

/// The file as TOML gives it: unknown keys refused, nothing else checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawManifest {
    #[serde(default)]
    host: host::RawHost,
    redis: Option<RedisSettings>,
    kafka: Option<KafkaSettings>,
    #[serde(default)]
    retention: retention::RawRetention,
    telemetry: Option<TelemetrySettings>,
    #[serde(default)]
    modules: BTreeMap<String, ModuleEntry>,
}

impl Manifest {
    /// Reads and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Validates manifest text as if it were read from `path`.
    ///
    /// Each section is checked by its own step, in the order below; the first
    /// bad key is the error, so a manifest with several mistakes always
    /// reports the same one.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ManifestError> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: path.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let at_path = |invalid: Invalid| invalid.at(&path);

        let host = raw.host.validate(&dir).map_err(at_path)?;
        // `[redis]` has nothing to check beyond what serde already refused.
        let redis = raw.redis;
        let kafka = raw
            .kafka
            .map(KafkaSettings::validate)
            .transpose()
            .map_err(at_path)?;
        let retention = raw.retention.validate().map_err(at_path)?;
        let telemetry = raw
            .telemetry
            .map(TelemetrySettings::validate)
            .transpose()
            .map_err(at_path)?;
        let modules = modules::validate(raw.modules).map_err(at_path)?;

        Ok(Manifest {
            path,
            dir,
            host,
            redis,
            kafka,
            retention,
            telemetry,
            modules,
        })
    }
}

/// Parses `text` as if it were `/srv/app/plugins.toml`, for the unit tests of
/// every section.
#[cfg(test)]
fn parse_test_manifest(text: &str) -> Result<Manifest, ManifestError> {
    Manifest::parse(Path::new("/srv/app/plugins.toml"), text)
}

#[cfg(test)]
mod tests {
    use super::parse_test_manifest as parse;
    use super::*;

    #[test]
    fn defaults_and_relative_paths() {
        let m = parse("[modules.orders]\nfile = \"orders.wasm\"\n").expect("valid");
        assert_eq!(m.host.listen, DEFAULT_LISTEN);
        assert_eq!(m.host.database, "sqlite:///srv/app/switchyard.db");
        assert_eq!(m.host.plugins_dir, PathBuf::from("/srv/app/plugins"));
        let orders = &m.modules["orders"];
        assert_eq!(
            (orders.max_memory_mb, orders.timeout_ms, orders.max_attempts),
            (64, 2000, 5)
        );
    }

    #[test]
    fn budgets_have_defaults_and_bounds() {
        let m = parse("[modules.a]\nfile = \"a.wasm\"\n").expect("valid");
        assert_eq!(m.modules["a"].budgets(), crate::grants::Budgets::default());
        let m = parse(
            "[modules.a]\nfile = \"a.wasm\"\nmax-write-bytes = 2048\nmax-scan-bytes = 4096\nmax-answer-bytes = 1024\n",
        )
        .expect("valid");
        let b = m.modules["a"].budgets();
        assert_eq!(
            (b.write_bytes, b.scan_bytes, b.answer_bytes),
            (2048, 4096, 1024)
        );
        let err = parse("[modules.a]\nfile = \"a.wasm\"\nmax-scan-bytes = 0\n")
            .expect_err("must be refused");
        assert!(
            err.to_string().contains("modules.a.max-scan-bytes"),
            "{err}"
        );
    }

    #[test]
    fn typo_names_key_and_file() {
        let err = parse("[modules.orders]\nfile = \"orders.wasm\"\ntopcs = [\"orders\"]\n")
            .expect_err("must be refused");
        let text = err.to_string();
        assert!(text.contains("/srv/app/plugins.toml"), "{text}");
        assert!(text.contains("topcs"), "{text}");
    }

    #[test]
    fn bad_values_name_the_module_key() {
        let err = parse("[modules.orders]\nfile = \"orders.wasm\"\ntopics = [\"a b\"]\n")
            .expect_err("must be refused");
        assert!(err.to_string().contains("modules.orders.topics"), "{err}");
        let err = parse("[modules.orders]\nfile = \"../x.wasm\"\n").expect_err("must be refused");
        assert!(err.to_string().contains("modules.orders.file"), "{err}");
        let err = parse("[host]\ndatabase = \"mysql://x\"\n").expect_err("must be refused");
        assert!(err.to_string().contains("host.database"), "{err}");
    }
}
