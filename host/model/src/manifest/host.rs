//! `[host]`: where the host listens, its database, its folders and the limits
//! of its HTTP ingress, with defaults filled in and paths made absolute.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::Invalid;

/// Where the host listens when the manifest does not say.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The embedded default store: a SQLite file beside the manifest.
pub const DEFAULT_DATABASE: &str = "sqlite://switchyard.db";
pub const DEFAULT_PLUGINS_DIR: &str = "plugins";
/// Largest HTTP body accepted (SPEC §5: 1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
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
/// From a request's first byte to the end of its headers: a client that
/// trickles or stops its headers gets 408 and the connection is closed.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 5_000;
/// A connection on which no byte moves while no request is being handled
/// (a client that connects and sends nothing, an idle keep-alive, a client
/// that stops reading its answer) is closed after this long.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 5_000;
/// HTTP connections open at once; further clients wait in the listen
/// backlog until one closes. Keep the process's open-file limit above it.
pub const DEFAULT_MAX_OPEN_CONNECTIONS: usize = 1_024;

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
    pub request_timeout: Duration,
    /// `max-header-bytes`: cap of one request's header names and values.
    pub max_header_bytes: usize,
    /// `header-read-timeout-ms`: a request's first byte to its last header.
    pub header_read_timeout: Duration,
    /// `idle-timeout-ms`: longest a connection stays open with nothing moving.
    pub idle_timeout: Duration,
    /// `max-open-connections`: HTTP connections open at once.
    pub max_open_connections: usize,
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

/// `[host]` as written: every key optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawHost {
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
    header_read_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_open_connections: Option<usize>,
    cache_dir: Option<String>,
    rollback_after: Option<u32>,
    max_connections: Option<u32>,
}

impl RawHost {
    /// Fills in the defaults, resolves paths against `dir` (the manifest's
    /// folder) and checks the limits.
    pub(super) fn validate(self, dir: &Path) -> Result<HostSettings, Invalid> {
        let host = self.with_defaults(dir)?;
        host.check()?;
        Ok(host)
    }

    fn with_defaults(self, dir: &Path) -> Result<HostSettings, Invalid> {
        let database = resolve_database(dir, self.database.as_deref().unwrap_or(DEFAULT_DATABASE))
            .map_err(|m| Invalid::new("host.database", m))?;
        let request_timeout_ms = self
            .request_timeout_ms
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS);
        Ok(HostSettings {
            listen: self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string()),
            database,
            plugins_dir: dir.join(self.plugins_dir.as_deref().unwrap_or(DEFAULT_PLUGINS_DIR)),
            strict: self.strict,
            admin_token_env: self.admin_token_env,
            message_token_env: self.message_token_env,
            max_body_bytes: self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
            request_timeout: Duration::from_millis(request_timeout_ms),
            max_header_bytes: self.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES),
            header_read_timeout: Duration::from_millis(
                self.header_read_timeout_ms
                    .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT_MS),
            ),
            idle_timeout: Duration::from_millis(
                self.idle_timeout_ms.unwrap_or(DEFAULT_IDLE_TIMEOUT_MS),
            ),
            max_open_connections: self
                .max_open_connections
                .unwrap_or(DEFAULT_MAX_OPEN_CONNECTIONS),
            cache_dir: dir.join(self.cache_dir.as_deref().unwrap_or(DEFAULT_CACHE_DIR)),
            rollback_after: self.rollback_after.unwrap_or(DEFAULT_ROLLBACK_AFTER),
            max_connections: self.max_connections,
        })
    }
}

impl HostSettings {
    fn check(&self) -> Result<(), Invalid> {
        if self.max_connections == Some(0) {
            return Err(Invalid::new("host.max-connections", "must be at least 1"));
        }
        if self.request_timeout.is_zero() {
            return Err(Invalid::new(
                "host.request-timeout-ms",
                "must be at least 1",
            ));
        }
        for (key, timeout) in [
            ("host.header-read-timeout-ms", self.header_read_timeout),
            ("host.idle-timeout-ms", self.idle_timeout),
        ] {
            if timeout.is_zero() {
                return Err(Invalid::new(key, "must be at least 1"));
            }
        }
        if self.max_open_connections == 0 {
            return Err(Invalid::new(
                "host.max-open-connections",
                "must be at least 1",
            ));
        }
        if self.max_header_bytes < 1024 {
            return Err(Invalid::new(
                "host.max-header-bytes",
                "must be at least 1024",
            ));
        }
        for (key, var) in [
            ("host.admin-token-env", &self.admin_token_env),
            ("host.message-token-env", &self.message_token_env),
        ] {
            if var
                .as_deref()
                .is_some_and(|v| v.is_empty() || v.contains(['=', '\0']))
            {
                return Err(Invalid::new(key, "must name an environment variable"));
            }
        }
        Ok(())
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
    use super::super::parse_test_manifest as parse;
    use super::*;

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
        let m = parse(
            "[host]\nheader-read-timeout-ms = 700\nidle-timeout-ms = 900\nmax-open-connections = 8\n",
        )
        .expect("valid");
        assert_eq!(
            (
                m.host.header_read_timeout.as_millis(),
                m.host.idle_timeout.as_millis(),
                m.host.max_open_connections
            ),
            (700, 900, 8)
        );
        let m = parse("").expect("valid");
        assert_eq!(
            (
                m.host.header_read_timeout,
                m.host.idle_timeout,
                m.host.max_open_connections
            ),
            (
                std::time::Duration::from_millis(DEFAULT_HEADER_READ_TIMEOUT_MS),
                std::time::Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS),
                DEFAULT_MAX_OPEN_CONNECTIONS
            )
        );
        assert_eq!(m.host.message_token_env, None);
        assert_eq!(
            m.host.request_timeout,
            std::time::Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS)
        );
        for (text, key) in [
            ("request-timeout-ms = 0", "host.request-timeout-ms"),
            ("max-header-bytes = 10", "host.max-header-bytes"),
            ("message-token-env = \"\"", "host.message-token-env"),
            ("header-read-timeout-ms = 0", "host.header-read-timeout-ms"),
            ("idle-timeout-ms = 0", "host.idle-timeout-ms"),
            ("max-open-connections = 0", "host.max-open-connections"),
        ] {
            let err = parse(&format!("[host]\n{text}\n")).expect_err("must be refused");
            assert!(err.to_string().contains(key), "{err}");
        }
    }
}
