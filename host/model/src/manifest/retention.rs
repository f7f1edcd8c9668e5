//! `[retention]`: how long the host keeps inbox records, sent outbox entries
//! and compiled components, given as ages like `"7d"` or `"forever"`.

use std::time::Duration;

use serde::Deserialize;

use super::Invalid;

/// Seven days: Kafka's default `retention.ms`, and past any sane redelivery.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_RETENTION_EVERY: Duration = Duration::from_secs(600);
/// A compiled component unused for 30 days is another version's or another
/// wasmtime's; recompiling one that is needed again takes well under 1 s.
pub const DEFAULT_CACHE_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

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

/// `[retention]` as written: ages as text, every key optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawRetention {
    inbox: Option<String>,
    outbox: Option<String>,
    cache: Option<String>,
    every: Option<String>,
}

impl RawRetention {
    pub(super) fn validate(self) -> Result<RetentionSettings, Invalid> {
        let defaults = RetentionSettings::default();
        let age = |key: &str, text: Option<String>, default: Option<Duration>| match text {
            None => Ok(default),
            Some(t) => parse_age(&t).map_err(|m| Invalid::new(format!("retention.{key}"), m)),
        };
        let every = match self.every {
            None => defaults.every,
            Some(t) => match parse_age(&t) {
                Ok(Some(every)) => every,
                Ok(None) => {
                    return Err(Invalid::new(
                        "retention.every",
                        "must be a duration; set the ages to \"forever\" to keep everything",
                    ));
                }
                Err(m) => return Err(Invalid::new("retention.every", m)),
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

#[cfg(test)]
mod tests {
    use super::super::parse_test_manifest as parse;
    use super::*;

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
