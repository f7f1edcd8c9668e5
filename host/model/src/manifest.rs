//! `plugins.toml` -> validated settings. Errors name the file, the key and the
//! module, and relative paths resolve against the manifest's folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::envelope::check_name;

/// Where the host listens when the manifest does not say.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The embedded default store: a SQLite file beside the manifest.
pub const DEFAULT_DATABASE: &str = "sqlite://switchyard.db";
pub const DEFAULT_PLUGINS_DIR: &str = "plugins";
/// Largest HTTP body accepted (SPEC §5: 1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Linear memory cap of one module instance.
pub const DEFAULT_MAX_MEMORY_MB: u64 = 64;
/// Wall-clock budget of one `handle` call.
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;
/// Attempts before a transient failure becomes a dead letter.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// First retry delay; doubled per attempt, with jitter.
pub const DEFAULT_BACKOFF_MS: u64 = 100;
/// Upper bound of `max-memory-mb` (the pooling allocator reserves this much per slot).
pub const MAX_MEMORY_MB_LIMIT: u64 = 4_096;
/// Compiled components are kept here (relative to the manifest's folder), so
/// a restart or a re-added module skips Cranelift.
pub const DEFAULT_CACHE_DIR: &str = ".switchyard/cache";
/// A reloaded version that fails each of its first this-many messages is
/// replaced by the version it replaced (0 = never roll back).
pub const DEFAULT_ROLLBACK_AFTER: u32 = 5;
/// Longest an HTTP request may take, body upload and handling (with its
/// retries) included: a slow or stuck client cannot hold a connection and
/// its buffers for ever. A message's own `timeout-ms` stops a module long
/// before this.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Largest total size of an HTTP request's header names and values.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;

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

#[derive(Debug, Clone)]
pub struct HostSettings {
    pub listen: String,
    /// Database URL with a relative SQLite path resolved.
    pub database: String,
    pub plugins_dir: PathBuf,
    pub strict: bool,
    /// Name of the environment variable holding the admin bearer token.
    pub admin_token_env: Option<String>,
    /// Name of the environment variable holding the bearer token that the
    /// message endpoints require; open to any client when absent.
    pub message_token_env: Option<String>,
    pub max_body_bytes: usize,
    /// `request-timeout-ms`: longest time one HTTP request may take.
    pub request_timeout: std::time::Duration,
    /// `max-header-bytes`: cap of one request's header names and values.
    pub max_header_bytes: usize,
    /// Compiled-component cache folder (absolute).
    pub cache_dir: PathBuf,
    /// Default of `modules.*.rollback-after`.
    pub rollback_after: u32,
    /// `max-connections`: the database pool's size per host process; the
    /// backend's default when absent. With several hosts on one PostgreSQL,
    /// hosts x this must stay under the server's `max_connections`. On
    /// SQLite it is the number of reader connections (writes have their own).
    pub max_connections: Option<u32>,
}

/// `[redis]`: Redis Streams as ingress and event transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RedisSettings {
    pub url: String,
    /// Consumer groups are `<group>.<module>`.
    #[serde(default = "default_group")]
    pub group: String,
    /// Prepended to every stream key (the stream of topic `T` is `<prefix>T`);
    /// lets several deployments or tests share one Redis.
    #[serde(default)]
    pub prefix: String,
    /// How long one XREADGROUP waits for new entries.
    #[serde(default = "default_block_ms")]
    pub block_ms: u64,
    /// Entries read per XREADGROUP.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Pending entries idle this long on another consumer are taken over.
    #[serde(default = "default_claim_idle_ms")]
    pub claim_idle_ms: u64,
    /// Approximate MAXLEN for streams the host appends to; unbounded when absent.
    #[serde(default)]
    pub maxlen: Option<u64>,
    /// Messages of one module handled at once (different partition keys).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn default_block_ms() -> u64 {
    1_000
}
fn default_batch() -> usize {
    100
}
fn default_claim_idle_ms() -> u64 {
    30_000
}
/// `[redis] concurrency` when the manifest does not set it.
pub const DEFAULT_REDIS_CONCURRENCY: usize = 128;

fn default_concurrency() -> usize {
    DEFAULT_REDIS_CONCURRENCY
}

/// `[kafka]`: Kafka topics as ingress and event transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer groups are `<group>.<module>`.
    #[serde(default = "default_group")]
    pub group: String,
    /// Prepended to every topic name.
    #[serde(default)]
    pub prefix: String,
    /// Partitions of the topics the host creates.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Messages buffered per partition for its worker; a partition whose
    /// buffer is full is paused (the others keep being read) until its
    /// worker has handled half of them.
    #[serde(default = "default_partition_queue")]
    pub partition_queue: usize,
    /// librdkafka settings for every client (e.g. `security.protocol`).
    #[serde(default)]
    pub client: BTreeMap<String, String>,
    /// librdkafka settings for consumers only (e.g. `session.timeout.ms`).
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
    /// librdkafka settings for the producer only (e.g. `linger.ms`).
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
}

/// `[retention]`, validated: `None` keeps rows forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Inbox records, i.e. how long a message id is recognised as a
    /// duplicate (the deduplication window).
    pub inbox: Option<Duration>,
    /// Outbox entries already handed to the broker, or read by every
    /// embedded-log consumer.
    pub outbox: Option<Duration>,
    /// Compiled components not loaded for this long (`cache-dir`).
    pub cache: Option<Duration>,
    /// How often the host looks for rows to delete.
    pub every: Duration,
}

/// Seven days: Kafka's default `retention.ms`, and past any sane redelivery.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_RETENTION_EVERY: Duration = Duration::from_secs(600);
/// A compiled component unused for 30 days is another version's or another
/// wasmtime's; recompiling one that is needed again takes well under 1 s.
pub const DEFAULT_CACHE_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            inbox: Some(DEFAULT_RETENTION),
            outbox: Some(DEFAULT_RETENTION),
            cache: Some(DEFAULT_CACHE_RETENTION),
            every: DEFAULT_RETENTION_EVERY,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRetention {
    inbox: Option<String>,
    outbox: Option<String>,
    cache: Option<String>,
    every: Option<String>,
}

/// `"7d"`, `"12h 30m"`, or `"forever"` (`None`).
fn parse_age(text: &str) -> Result<Option<Duration>, String> {
    if text.trim() == "forever" {
        return Ok(None);
    }
    let age = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like \"7d\" or \"forever\": {e}"))?;
    if age < Duration::from_secs(1) {
        return Err(format!("{text:?} is under one second"));
    }
    Ok(Some(age))
}

impl RawRetention {
    fn validate(self) -> Result<RetentionSettings, (String, String)> {
        let defaults = RetentionSettings::default();
        let age = |key: &str, text: Option<String>, default: Option<Duration>| match text {
            None => Ok(default),
            Some(t) => parse_age(&t).map_err(|m| (format!("retention.{key}"), m)),
        };
        let every = match self.every {
            None => defaults.every,
            Some(t) => match parse_age(&t) {
                Ok(Some(every)) => every,
                Ok(None) => {
                    return Err((
                        "retention.every".into(),
                        "must be a duration; set the ages to \"forever\" to keep everything".into(),
                    ));
                }
                Err(m) => return Err(("retention.every".into(), m)),
            },
        };
        Ok(RetentionSettings {
            inbox: age("inbox", self.inbox, defaults.inbox)?,
            outbox: age("outbox", self.outbox, defaults.outbox)?,
            cache: age("cache", self.cache, defaults.cache)?,
            every,
        })
    }
}

/// `[telemetry]`: export each message's span over OTLP/HTTP, so a saga shows
/// as one trace in Jaeger, Tempo or any OpenTelemetry collector.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TelemetrySettings {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`); spans
    /// are posted to `<otlp-endpoint>/v1/traces`.
    pub otlp_endpoint: String,
    /// `http/protobuf` (the OTLP default) or `http/json`.
    #[serde(default)]
    pub otlp_protocol: OtlpProtocol,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

fn default_service_name() -> String {
    "switchyard".to_string()
}

fn default_partitions() -> u32 {
    3
}

/// `[kafka] partition-queue` when the manifest does not set it.
pub const DEFAULT_PARTITION_QUEUE: usize = 256;

fn default_partition_queue() -> usize {
    DEFAULT_PARTITION_QUEUE
}

fn default_group() -> String {
    "switchyard".to_string()
}

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
    /// Overrides `host.rollback-after` for this module.
    #[serde(default)]
    pub rollback_after: Option<u32>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawManifest {
    #[serde(default)]
    host: RawHost,
    redis: Option<RedisSettings>,
    kafka: Option<KafkaSettings>,
    #[serde(default)]
    retention: RawRetention,
    telemetry: Option<TelemetrySettings>,
    #[serde(default)]
    modules: BTreeMap<String, ModuleEntry>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHost {
    listen: Option<String>,
    database: Option<String>,
    plugins_dir: Option<String>,
    #[serde(default)]
    strict: bool,
    admin_token_env: Option<String>,
    message_token_env: Option<String>,
    max_body_bytes: Option<usize>,
    request_timeout_ms: Option<u64>,
    max_header_bytes: Option<usize>,
    cache_dir: Option<String>,
    rollback_after: Option<u32>,
    max_connections: Option<u32>,
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
        let invalid = |key: String, message: String| ManifestError::Invalid {
            path: path.clone(),
            key,
            message,
        };

        let database = resolve_database(
            &dir,
            raw.host.database.as_deref().unwrap_or(DEFAULT_DATABASE),
        )
        .map_err(|m| invalid("host.database".into(), m))?;
        let host = HostSettings {
            listen: raw
                .host
                .listen
                .unwrap_or_else(|| DEFAULT_LISTEN.to_string()),
            database,
            plugins_dir: dir.join(
                raw.host
                    .plugins_dir
                    .as_deref()
                    .unwrap_or(DEFAULT_PLUGINS_DIR),
            ),
            strict: raw.host.strict,
            admin_token_env: raw.host.admin_token_env,
            message_token_env: raw.host.message_token_env,
            max_body_bytes: raw.host.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
            request_timeout: std::time::Duration::from_millis(
                raw.host
                    .request_timeout_ms
                    .unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS),
            ),
            max_header_bytes: raw
                .host
                .max_header_bytes
                .unwrap_or(DEFAULT_MAX_HEADER_BYTES),
            cache_dir: dir.join(raw.host.cache_dir.as_deref().unwrap_or(DEFAULT_CACHE_DIR)),
            rollback_after: raw.host.rollback_after.unwrap_or(DEFAULT_ROLLBACK_AFTER),
            max_connections: raw.host.max_connections,
        };
        if host.max_connections == Some(0) {
            return Err(invalid(
                "host.max-connections".into(),
                "must be at least 1".into(),
            ));
        }
        if host.request_timeout.is_zero() {
            return Err(invalid(
                "host.request-timeout-ms".into(),
                "must be at least 1".into(),
            ));
        }
        if host.max_header_bytes < 1024 {
            return Err(invalid(
                "host.max-header-bytes".into(),
                "must be at least 1024".into(),
            ));
        }
        for (key, var) in [
            ("host.admin-token-env", &host.admin_token_env),
            ("host.message-token-env", &host.message_token_env),
        ] {
            if var
                .as_deref()
                .is_some_and(|v| v.is_empty() || v.contains(['=', '\0']))
            {
                return Err(invalid(
                    key.into(),
                    "must name an environment variable".into(),
                ));
            }
        }

        if raw.kafka.as_ref().is_some_and(|k| k.partition_queue == 0) {
            return Err(invalid(
                "kafka.partition-queue".into(),
                "must be at least 1".into(),
            ));
        }

        let retention = raw
            .retention
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        if let Some(telemetry) = &raw.telemetry {
            check_otlp_endpoint(&telemetry.otlp_endpoint)
                .map_err(|m| invalid("telemetry.otlp-endpoint".into(), m))?;
            if telemetry.service_name.trim().is_empty() {
                return Err(invalid(
                    "telemetry.service-name".into(),
                    "must not be empty".into(),
                ));
            }
        }

        for (name, entry) in &raw.modules {
            let key = |k: &str| format!("modules.{name}.{k}");
            check_module_name(name).map_err(|m| invalid(format!("modules.{name}"), m))?;
            if entry.file.is_empty()
                || Path::new(&entry.file).components().count() != 1
                || !entry.file.ends_with(".wasm")
            {
                return Err(invalid(
                    key("file"),
                    format!(
                        "{:?} must be a `*.wasm` file name inside plugins-dir",
                        entry.file
                    ),
                ));
            }
            for (list_key, list) in [
                ("topics", &entry.topics),
                ("subscribes", &entry.subscribes),
                ("emits", &entry.emits),
            ] {
                for topic in list.iter().flatten() {
                    check_name("topic", topic)
                        .map_err(|e| invalid(key(list_key), format!("{topic:?}: {e}")))?;
                }
            }
            for other in &entry.reads {
                check_module_name(other).map_err(|m| invalid(key("reads"), m))?;
            }
            if entry.max_memory_mb == 0 || entry.max_memory_mb > MAX_MEMORY_MB_LIMIT {
                return Err(invalid(
                    key("max-memory-mb"),
                    format!("must be 1 to {MAX_MEMORY_MB_LIMIT}"),
                ));
            }
            if entry.timeout_ms == 0 {
                return Err(invalid(key("timeout-ms"), "must be at least 1".into()));
            }
            if entry.max_attempts == 0 {
                return Err(invalid(key("max-attempts"), "must be at least 1".into()));
            }
            if entry.artifact.is_some() && entry.build.is_none() {
                return Err(invalid(
                    key("artifact"),
                    "needs a `build` command that produces it".into(),
                ));
            }
        }

        Ok(Manifest {
            path,
            dir,
            host,
            redis: raw.redis,
            kafka: raw.kafka,
            retention,
            telemetry: raw.telemetry,
            modules: raw.modules,
        })
    }
}

/// An `http://host[:port][/path]` URL. The exporter is built without TLS:
/// send to a collector (or agent) on the host's network, which forwards.
fn check_otlp_endpoint(endpoint: &str) -> Result<(), String> {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return Err(format!(
            "{endpoint:?} must be an http:// URL (https is not built in: point it at a local OpenTelemetry collector)"
        ));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains(char::is_whitespace) {
        return Err(format!("{endpoint:?} has no host"));
    }
    Ok(())
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

/// Makes a relative SQLite path absolute against the manifest's folder.
fn resolve_database(dir: &Path, url: &str) -> Result<String, String> {
    if let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let (file, query) = rest
            .split_once('?')
            .map_or((rest, None), |(f, q)| (f, Some(q)));
        if file.is_empty() {
            return Err("sqlite URL names no file".into());
        }
        let file = if file == ":memory:" || Path::new(file).is_absolute() {
            PathBuf::from(file)
        } else {
            dir.join(file)
        };
        let mut resolved = format!("sqlite://{}", file.display());
        if let Some(q) = query {
            resolved.push('?');
            resolved.push_str(q);
        }
        Ok(resolved)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(url.to_string())
    } else {
        Err(format!(
            "{url:?} is neither sqlite://FILE nor postgres://..."
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("/srv/app/plugins.toml"), text)
    }

    #[test]
    fn pool_size_is_optional_and_positive() {
        let m =
            parse("[host]\ndatabase = \"postgres://u@db/app\"\nmax-connections = 20\n").unwrap();
        assert_eq!(
            (m.host.database.as_str(), m.host.max_connections),
            ("postgres://u@db/app", Some(20))
        );
        assert_eq!(parse("").unwrap().host.max_connections, None);
        let err = parse("[host]\nmax-connections = 0\n").expect_err("must be refused");
        assert!(err.to_string().contains("host.max-connections"), "{err}");
    }

    #[test]
    fn kafka_partition_queue_defaults_and_is_positive() {
        let kafka = |extra: &str| parse(&format!("[kafka]\nbrokers = \"b:9092\"\n{extra}"));
        let m = kafka("").unwrap();
        assert_eq!(
            m.kafka.map(|k| k.partition_queue),
            Some(DEFAULT_PARTITION_QUEUE)
        );
        let m = kafka("partition-queue = 4\n").unwrap();
        assert_eq!(m.kafka.map(|k| k.partition_queue), Some(4));
        let err = kafka("partition-queue = 0\n").expect_err("must be refused");
        assert!(err.to_string().contains("kafka.partition-queue"), "{err}");
    }

    #[test]
    fn http_guard_keys() {
        let m = parse(
            "[host]\nmessage-token-env = \"MSG\"\nrequest-timeout-ms = 1500\nmax-header-bytes = 4096\n",
        )
        .expect("valid");
        assert_eq!(m.host.message_token_env.as_deref(), Some("MSG"));
        assert_eq!(
            m.host.request_timeout,
            std::time::Duration::from_millis(1500)
        );
        assert_eq!(m.host.max_header_bytes, 4096);
        let m = parse("").expect("valid");
        assert_eq!(m.host.message_token_env, None);
        assert_eq!(
            m.host.request_timeout,
            std::time::Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS)
        );
        for (text, key) in [
            ("request-timeout-ms = 0", "host.request-timeout-ms"),
            ("max-header-bytes = 10", "host.max-header-bytes"),
            ("message-token-env = \"\"", "host.message-token-env"),
        ] {
            let err = parse(&format!("[host]\n{text}\n")).expect_err("must be refused");
            assert!(err.to_string().contains(key), "{err}");
        }
    }

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

    #[test]
    fn telemetry_section_defaults_and_checks() {
        assert_eq!(parse("").unwrap().telemetry, None);
        let m = parse("[telemetry]\notlp-endpoint = \"http://otel:4318\"\n").expect("valid");
        assert_eq!(
            m.telemetry,
            Some(TelemetrySettings {
                otlp_endpoint: "http://otel:4318".into(),
                otlp_protocol: OtlpProtocol::HttpProtobuf,
                service_name: "switchyard".into(),
            })
        );
        let m = parse(
            "[telemetry]\notlp-endpoint = \"http://otel:4318\"\notlp-protocol = \"http/json\"\nservice-name = \"shop\"\n",
        )
        .expect("valid");
        let t = m.telemetry.expect("telemetry");
        assert_eq!(
            (t.otlp_protocol, t.service_name.as_str()),
            (OtlpProtocol::HttpJson, "shop")
        );
        for (text, key) in [
            (
                "otlp-endpoint = \"https://otel:4318\"",
                "telemetry.otlp-endpoint",
            ),
            ("otlp-endpoint = \"otel:4318\"", "telemetry.otlp-endpoint"),
            (
                "otlp-endpoint = \"http:///v1/traces\"",
                "telemetry.otlp-endpoint",
            ),
            (
                "otlp-endpoint = \"http://otel\"\nservice-name = \" \"",
                "telemetry.service-name",
            ),
        ] {
            let err = parse(&format!("[telemetry]\n{text}\n")).expect_err("must be refused");
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
        let err = parse("[telemetry]\notlp-endpoint = \"http://otel\"\notlp-protocol = \"grpc\"\n")
            .expect_err("must be refused");
        assert!(err.to_string().contains("grpc"), "{err}");
    }

    #[test]
    fn retention_ages_default_parse_and_name_the_key() {
        let r = parse("").unwrap().retention;
        assert_eq!(r, RetentionSettings::default());
        assert_eq!(r.inbox, Some(Duration::from_secs(7 * 24 * 3600)));
        let r = parse("[retention]\ninbox = \"36h\"\noutbox = \"forever\"\nevery = \"30s\"\n")
            .unwrap()
            .retention;
        assert_eq!(
            r,
            RetentionSettings {
                inbox: Some(Duration::from_secs(36 * 3600)),
                outbox: None,
                cache: Some(DEFAULT_CACHE_RETENTION),
                every: Duration::from_secs(30),
            }
        );
        for (text, key) in [
            ("inbox = \"a week\"", "retention.inbox"),
            ("outbox = \"10ms\"", "retention.outbox"),
            ("every = \"forever\"", "retention.every"),
            ("inbox = 7", "inbox"),
            ("keep = \"1d\"", "keep"),
        ] {
            let err = parse(&format!("[retention]\n{text}\n")).expect_err("must be refused");
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }
}
