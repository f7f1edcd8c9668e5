//! What a module may touch, fixed when it loads: its name, the topics it may
//! emit, the modules whose collections it may read, its `config` table, its
//! per-message budgets, and the rate at which it may log (which also bounds
//! the host's own lines about what the module did).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What a module may touch, fixed when it loads.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub name: String,
    pub emits: Vec<String>,
    pub reads: Vec<String>,
    /// The `config` table: strings as they are, other values as JSON.
    pub config: BTreeMap<String, String>,
    /// The module's log rate (log import, stdout and stderr together, and
    /// the host's lines about calls it refused).
    pub log_limiter: Arc<LogLimiter>,
    /// What one message may make the host hold.
    pub budgets: Budgets,
}

impl Grants {
    /// Whether the host may write one more line about what this module did
    /// (a refused call, a failed message): the module's own log rate, so a
    /// module that provokes refusals in a loop cannot flood the host's log.
    pub fn may_log(&self) -> bool {
        self.log_limiter.admit(&self.name)
    }
}

/// Bytes one message may buffer in writes and events together (`max-write-bytes`):
/// collection, key and value of each document written, topic, subtopic,
/// body and headers of each event. Over it the call returns `too-large`.
pub const DEFAULT_MAX_WRITE_BYTES: u64 = 8 * 1024 * 1024;
/// Bytes of keys and values one `scan` or `read-scan` may return
/// (`max-scan-bytes`); the store stops loading there and the call returns
/// `too-large` saying how many documents fit. Also what the unit of work
/// keeps of the documents a message `get`s.
pub const DEFAULT_MAX_SCAN_BYTES: u64 = 4 * 1024 * 1024;
/// Bytes of JSON one `handle` call may answer (`max-answer-bytes`); a
/// longer answer fails the message as a trap and nothing is stored.
pub const DEFAULT_MAX_ANSWER_BYTES: u64 = 1024 * 1024;
/// Smallest value of each `max-*-bytes` budget.
pub const MIN_BUDGET_BYTES: u64 = 1024;
/// Largest value of each `max-*-bytes` budget.
pub const MAX_BUDGET_BYTES: u64 = 1024 * 1024 * 1024;

/// Per-message budgets of a module, in bytes (manifest keys
/// `max-write-bytes`, `max-scan-bytes`, `max-answer-bytes`): with
/// `max-memory-mb` they bound what one message makes the host hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Buffered writes and events of one message together.
    pub write_bytes: usize,
    /// Keys and values one scan returns (and the store loads for it); also
    /// what the unit of work keeps of the documents a message reads.
    pub scan_bytes: usize,
    /// The JSON `handle` returns.
    pub answer_bytes: usize,
}

impl Default for Budgets {
    fn default() -> Self {
        let bytes = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Self {
            write_bytes: bytes(DEFAULT_MAX_WRITE_BYTES),
            scan_bytes: bytes(DEFAULT_MAX_SCAN_BYTES),
            answer_bytes: bytes(DEFAULT_MAX_ANSWER_BYTES),
        }
    }
}

/// Longest piece of guest-chosen text (a topic, a key, an owner, an error
/// message) the host quotes in its own log lines and error messages.
pub const MAX_QUOTED_BYTES: usize = 256;

/// `text` cut to at most `max` bytes (on a character boundary), with `...`
/// when something was cut: guest-chosen text is quoted only this far.
pub fn clip(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}...", &text[..cut]))
}

/// [`clip`] to [`MAX_QUOTED_BYTES`].
pub fn quote(text: &str) -> Cow<'_, str> {
    clip(text, MAX_QUOTED_BYTES)
}

/// Lines a module may log per second on average (log import, stdout and
/// stderr together, across all its instances): a chatty or hostile module
/// cannot flood the host's log or slow the host down formatting lines.
pub const LOG_LINES_PER_SECOND: u32 = 100;
/// Lines a module may log at once above the average (a burst).
pub const LOG_BURST: u32 = 200;

/// A token bucket per module. Lines over the rate are dropped and counted;
/// the host says so once when dropping starts and once, with the count,
/// when the module is back under its rate.
#[derive(Debug)]
pub struct LogLimiter {
    per_second: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
    dropped_total: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    /// Lines dropped since the last one that got through.
    dropped: u64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(LOG_LINES_PER_SECOND, LOG_BURST)
    }
}

impl LogLimiter {
    /// `per_second` lines on average, `burst` at once.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_second: f64::from(per_second),
            burst,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                refilled: Instant::now(),
                dropped: 0,
            }),
            dropped_total: AtomicU64::new(0),
        }
    }

    /// Whether `module` may log one more line now.
    pub fn admit(&self, module: &str) -> bool {
        let now = Instant::now();
        let (admitted, report) = {
            // A panic while holding this lock cannot leave the bucket in a
            // state worse than "a few tokens off": keep using it.
            let mut b = self
                .bucket
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let elapsed = now.saturating_duration_since(b.refilled).as_secs_f64();
            b.tokens = (b.tokens + elapsed * self.per_second).min(self.burst);
            b.refilled = now;
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                (true, std::mem::take(&mut b.dropped))
            } else {
                b.dropped += 1;
                (false, b.dropped)
            }
        };
        if admitted {
            if report > 0 {
                tracing::warn!(
                    module,
                    dropped = report,
                    "module logged over {} lines/s: {report} lines were dropped",
                    self.per_second
                );
            }
        } else {
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
            if report == 1 {
                tracing::warn!(
                    module,
                    "module logs over {} lines/s: dropping its lines until it slows down",
                    self.per_second
                );
            }
        }
        admitted
    }

    /// Lines dropped since the module loaded.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_on_a_character_boundary() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("abcdef", 3), "abc...");
        // 'é' is two bytes: a cut inside it moves back before it.
        assert_eq!(clip("aé", 2), "a...");
        assert_eq!(quote(&"x".repeat(10_000)).len(), MAX_QUOTED_BYTES + 3);
    }

    #[test]
    fn bucket_drops_over_the_rate_and_refills() {
        let limiter = LogLimiter::new(1_000, 5);
        let admitted = (0..50).filter(|_| limiter.admit("m")).count();
        // The burst, plus whatever trickled in meanwhile (1 per ms; a loaded
        // machine may take a few ms for the 50 calls).
        assert!((5..45).contains(&admitted), "{admitted}");
        assert_eq!(limiter.dropped_total(), 50 - admitted as u64);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(limiter.admit("m"), "refilled after a pause");
    }
}
