//! Prometheus metrics of one host: the names of the series (all prefixed
//! `switchyard_`) and the helpers that record them. The scrape that
//! refreshes the gauges read from the store and the brokers is
//! `ingress::scrape`.
//!
//! Each host owns its recorder (no global one), so hosts in one process, as
//! in the tests, keep their own figures. `docs/operations.md` lists the
//! series with their meaning.

use std::time::Duration;

use metrics::{Key, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use switchyard_model::outcome::{FailureKind, Outcome};

/// Messages whose handling ended, by `module`, `topic` and `outcome`.
pub const MESSAGES_HANDLED: &str = "switchyard_messages_handled_total";
/// Time from taking a message to its outcome (all attempts), by `module`.
pub const HANDLING_SECONDS: &str = "switchyard_handling_duration_seconds";
/// Time to instantiate a module for one attempt, by `module`.
pub const INSTANTIATION_SECONDS: &str = "switchyard_instantiation_duration_seconds";
/// The largest linear memory an instance of `module` reached, in bytes
/// (since the host started; `max-memory-mb` is the cap).
pub const GUEST_MEMORY_PEAK: &str = "switchyard_guest_memory_peak_bytes";
/// Dead letters written, by `module` and `topic`.
pub const DEAD_LETTERS: &str = "switchyard_dead_letters_total";
/// Versions of a module that replaced another one while serving, by `module`.
pub const RELOADS: &str = "switchyard_module_reloads_total";
pub const CONFLICTS: &str = "switchyard_version_conflicts_total";
/// Copies of live messages a shadow candidate took, by `module` and
/// `result`: matched, differed, candidate-failed, skipped (queue full), and
/// diverged-read (also counted under its result).
pub const SHADOW_MESSAGES: &str = "switchyard_shadow_messages_total";
/// New versions given back to the version they replaced, by `module`.
pub const ROLLBACKS: &str = "switchyard_module_rollbacks_total";
/// Outbox entries not yet handed to the broker (with a broker only).
pub const OUTBOX_BACKLOG: &str = "switchyard_outbox_backlog";
/// Age of the oldest of those entries, in seconds (0 when there is none).
pub const OUTBOX_OLDEST_AGE: &str = "switchyard_outbox_oldest_unpublished_age_seconds";
/// Entries of a stream that a consumer group has not read yet, by `stream`
/// and `group` (Redis: XINFO GROUPS `lag`; Kafka: high watermarks minus the
/// group's committed offsets; embedded log: entries after the module's cursor).
pub const CONSUMER_LAG: &str = "switchyard_consumer_lag";
/// Modules serving now.
pub const MODULES_LOADED: &str = "switchyard_modules_loaded";
/// Modules or files that failed to load (see `GET /v1/modules`).
pub const MODULE_LOAD_ERRORS: &str = "switchyard_module_load_errors";
/// Counter, label `table` (`inbox`, `outbox`).
pub const PRUNED_ROWS: &str = "switchyard_pruned_rows_total";

/// Buckets of the handling time: a fast handler commits in well under a
/// millisecond; retries with backoff take seconds.
const HANDLING_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of the instantiation time: about 10 us with a warm pool, up to
/// milliseconds on a cold one.
const INSTANTIATION_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05,
];

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// How handling of one message ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageOutcome {
    Processed,
    Duplicate,
    Invalid,
    Rejected,
    Transient,
    Trapped,
    TimedOut,
    Unavailable,
}

impl MessageOutcome {
    pub fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Processed(_) => Self::Processed,
            Outcome::Duplicate(_) => Self::Duplicate,
            Outcome::Failed(f) => match f.kind {
                FailureKind::Invalid => Self::Invalid,
                FailureKind::Rejected => Self::Rejected,
                FailureKind::Transient => Self::Transient,
                FailureKind::Trap => Self::Trapped,
                FailureKind::Timeout => Self::TimedOut,
                FailureKind::Unavailable => Self::Unavailable,
            },
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Duplicate => "duplicate",
            Self::Invalid => "invalid",
            Self::Rejected => "rejected",
            Self::Transient => "transient",
            Self::Trapped => "trapped",
            Self::TimedOut => "timed_out",
            Self::Unavailable => "unavailable",
        }
    }

    /// The dispatcher wrote a dead letter for this outcome: every recorded
    /// failure but `rejected` (an `unavailable` one recorded nothing).
    pub fn dead_lettered(self) -> bool {
        matches!(
            self,
            Self::Invalid | Self::Transient | Self::Trapped | Self::TimedOut
        )
    }
}

/// The metrics of one host.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        // Refused only for an empty bucket list, which these constants are
        // not (the unit tests render both); the fallback renders summaries.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HANDLING_SECONDS.into()), HANDLING_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(INSTANTIATION_SECONDS.into()),
                    INSTANTIATION_BUCKETS,
                )
            })
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "metrics: histogram buckets refused");
                PrometheusBuilder::new()
            });
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let metrics = Self { recorder, handle };
        metrics.describe();
        metrics
    }

    fn describe(&self) {
        let r = &self.recorder;
        let text = |s: &'static str| SharedString::const_str(s);
        r.describe_counter(
            MESSAGES_HANDLED.into(),
            None,
            text("Messages whose handling ended, by module, topic and outcome."),
        );
        r.describe_histogram(
            HANDLING_SECONDS.into(),
            Some(Unit::Seconds),
            text("Time from taking a message to its outcome, retries included."),
        );
        r.describe_histogram(
            INSTANTIATION_SECONDS.into(),
            Some(Unit::Seconds),
            text("Time to instantiate a module for one attempt."),
        );
        r.describe_gauge(
            GUEST_MEMORY_PEAK.into(),
            Some(Unit::Bytes),
            text("Largest linear memory an instance of the module reached."),
        );
        r.describe_counter(
            DEAD_LETTERS.into(),
            None,
            text("Dead letters written, by module and topic."),
        );
        r.describe_counter(
            CONFLICTS.into(),
            None,
            text("Tries of a message rerun because a document's version moved under it."),
        );
        r.describe_counter(
            SHADOW_MESSAGES.into(),
            None,
            text(
                "Copies of live messages a shadow candidate took, by how its comparison came out.",
            ),
        );
        r.describe_counter(
            RELOADS.into(),
            None,
            text("New versions of a module that replaced the serving one."),
        );
        r.describe_counter(
            ROLLBACKS.into(),
            None,
            text("New versions rolled back to the version they replaced."),
        );
        r.describe_gauge(
            OUTBOX_BACKLOG.into(),
            None,
            text("Outbox entries not yet handed to the broker."),
        );
        r.describe_gauge(
            OUTBOX_OLDEST_AGE.into(),
            Some(Unit::Seconds),
            text("Age of the oldest outbox entry not yet handed to the broker."),
        );
        r.describe_gauge(
            CONSUMER_LAG.into(),
            None,
            text("Entries of a stream its consumer group has not read yet."),
        );
        r.describe_counter(
            PRUNED_ROWS.into(),
            None,
            text("Rows deleted by retention ([retention]), by table."),
        );
        r.describe_gauge(MODULES_LOADED.into(), None, text("Modules serving now."));
        r.describe_gauge(
            MODULE_LOAD_ERRORS.into(),
            None,
            text("Modules or files that failed to load."),
        );
    }

    /// One message's outcome: its count, its handling time and, when it
    /// was dead-lettered, the dead letter.
    pub fn delivered(&self, module: &str, topic: &str, outcome: &Outcome, took: Duration) {
        let outcome = MessageOutcome::of(outcome);
        self.counter(
            MESSAGES_HANDLED,
            vec![
                Label::new("module", module.to_string()),
                Label::new("topic", topic.to_string()),
                Label::new("outcome", outcome.as_str()),
            ],
        )
        .increment(1);
        self.histogram(HANDLING_SECONDS, module)
            .record(took.as_secs_f64());
        if outcome.dead_lettered() {
            self.dead_lettered(module, topic);
        }
    }

    /// A dead letter written for `module` on `topic` (also for a stream
    /// entry or Kafka value that was not an envelope at all).
    pub fn dead_lettered(&self, module: &str, topic: &str) {
        self.counter(
            DEAD_LETTERS,
            vec![
                Label::new("module", module.to_string()),
                Label::new("topic", topic.to_string()),
            ],
        )
        .increment(1);
    }

    /// One instantiation of `module`.
    pub fn instantiated(&self, module: &str, took: Duration) {
        self.histogram(INSTANTIATION_SECONDS, module)
            .record(took.as_secs_f64());
    }

    /// The largest linear memory an instance of `module` reached.
    pub fn set_guest_memory(&self, module: &str, peak: u64) {
        self.gauge(
            GUEST_MEMORY_PEAK,
            vec![Label::new("module", module.to_string())],
        )
        .set(peak as f64);
    }

    /// A try of a `module` message that is run again after a version conflict.
    pub fn conflict(&self, module: &str) {
        self.counter(CONFLICTS, vec![Label::new("module", module.to_string())])
            .increment(1);
    }

    /// A copy of a `module` message its shadow candidate took, and how the
    /// comparison came out.
    pub fn shadowed(&self, module: &str, result: &'static str) {
        self.counter(
            SHADOW_MESSAGES,
            vec![
                Label::new("module", module.to_string()),
                Label::new("result", result),
            ],
        )
        .increment(1);
    }

    /// A new version of `module` replaced the serving one.
    pub fn reloaded(&self, module: &str) {
        self.counter(RELOADS, vec![Label::new("module", module.to_string())])
            .increment(1);
    }

    /// A new version of `module` was given back to the version it replaced.
    pub fn rolled_back(&self, module: &str) {
        self.counter(ROLLBACKS, vec![Label::new("module", module.to_string())])
            .increment(1);
    }

    /// The outbox as the relay sees it.
    pub fn set_outbox(&self, backlog: u64, oldest_age: Duration) {
        self.gauge(OUTBOX_BACKLOG, Vec::new()).set(backlog as f64);
        self.gauge(OUTBOX_OLDEST_AGE, Vec::new())
            .set(oldest_age.as_secs_f64());
    }

    /// How far `group` is behind on `stream`.
    pub fn set_lag(&self, stream: &str, group: &str, lag: u64) {
        self.gauge(
            CONSUMER_LAG,
            vec![
                Label::new("stream", stream.to_string()),
                Label::new("group", group.to_string()),
            ],
        )
        .set(lag as f64);
    }

    /// Rows of `table` deleted by retention.
    pub fn pruned(&self, table: &'static str, rows: u64) {
        self.counter(PRUNED_ROWS, vec![Label::new("table", table)])
            .increment(rows);
    }

    /// Modules serving, and modules or files that failed to load.
    pub fn set_modules(&self, loaded: usize, problems: usize) {
        self.gauge(MODULES_LOADED, Vec::new()).set(loaded as f64);
        self.gauge(MODULE_LOAD_ERRORS, Vec::new())
            .set(problems as f64);
    }

    /// The exposition text (Prometheus text format 0.0.4).
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds recorded histogram samples into their buckets, so memory stays
    /// bounded when nobody scrapes; call it every few seconds.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> metrics::Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>) -> metrics::Gauge {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &METADATA)
    }

    fn histogram(&self, name: &'static str, module: &str) -> metrics::Histogram {
        let labels = vec![Label::new("module", module.to_string())];
        self.recorder
            .register_histogram(&Key::from_parts(name, labels), &METADATA)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges_with_help() {
        let m = Metrics::new();
        m.reloaded("orders");
        m.reloaded("orders");
        m.rolled_back("orders");
        m.instantiated("orders", Duration::from_micros(20));
        m.set_lag("orders.events", "switchyard.inventory", 7);
        m.set_modules(2, 1);
        let text = m.render();
        assert!(
            text.contains("# HELP switchyard_module_reloads_total"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_module_reloads_total{module=\"orders\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_module_rollbacks_total{module=\"orders\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "switchyard_instantiation_duration_seconds_bucket{module=\"orders\",le=\"0.000025\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "switchyard_consumer_lag{stream=\"orders.events\",group=\"switchyard.inventory\"} 7"
            ),
            "{text}"
        );
        assert!(text.contains("switchyard_modules_loaded 2"), "{text}");
    }

    #[test]
    fn two_hosts_keep_their_own_figures() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.reloaded("inventory");
        assert!(a.render().contains("switchyard_module_reloads_total"));
        assert!(!b.render().contains("switchyard_module_reloads_total{"));
    }
}
