//! Dispatch against an in-memory store, with real components built from
//! `plugins/`: what commits, what a duplicate answers, and the failure
//! policy of SPEC §7 (retries, failure events, dead letters).
//!
//! [`support`] (components built once per process, one shared engine, a
//! project folder with a manifest) serves the HTTP router's tests too.

#![allow(clippy::unwrap_used)]

mod budgets;
mod hot_keys;
pub(crate) mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::*;
use support::{FAULTY, INVENTORY, engine, project, registry};
use switchyard_model::outcome::{Answer, failure_event_id};
use switchyard_store::message::StoreFuture;
use switchyard_store::{Commit, DeadLetter, Document, MemoryStore};

const SLOW: &str = r#"
[modules.slow]
file = "slow.wasm"
timeout-ms = 50
max-attempts = 2
backoff-ms = 1
"#;

/// A dispatcher over `store`, whose documents, log and dead letters are
/// `memory`'s.
struct Harness {
    _dir: tempfile::TempDir,
    memory: Arc<MemoryStore>,
    dispatcher: Dispatcher,
}

impl Harness {
    async fn new(modules: &[&str], entries: &str) -> Self {
        let memory = Arc::new(MemoryStore::new());
        Self::over(modules, entries, memory.clone(), memory).await
    }

    async fn over(
        modules: &[&str],
        entries: &str,
        memory: Arc<MemoryStore>,
        store: Arc<dyn MessageStore>,
    ) -> Self {
        let (dir, manifest) = project(modules, entries);
        let metrics = Arc::new(Metrics::new());
        let registry = registry(&manifest, &metrics).await;
        let dispatcher = Dispatcher::new(engine(), store, registry, metrics);
        Self {
            _dir: dir,
            memory,
            dispatcher,
        }
    }

    fn module(&self, name: &str) -> Arc<LoadedModule> {
        self.dispatcher.module(name).unwrap()
    }

    /// Delivers a command to the module that owns its topic.
    async fn send(&self, id: &str, topic: &str, subtopic: &str, body: Value) -> Outcome {
        let module = self.dispatcher.owner(topic).unwrap();
        let envelope = envelope(id, topic, subtopic, body);
        self.dispatcher.deliver(&module, &envelope).await
    }

    /// Calls the module that owns `topic` with a command, as HTTP does.
    async fn call(&self, id: &str, topic: &str, subtopic: &str, body: Value) -> Outcome {
        let module = self.dispatcher.owner(topic).unwrap();
        let envelope = envelope(id, topic, subtopic, body);
        self.dispatcher.call(&module, &envelope).await
    }

    /// How many instances of `name` ran `handle` (one per attempt).
    fn instances(&self, name: &str) -> u64 {
        let text = self.dispatcher.metrics().render();
        let series = format!("{}_count{{", crate::metrics::INSTANTIATION_SECONDS);
        let label = format!("module=\"{name}\"");
        text.lines()
            .find(|l| l.starts_with(&series) && l.contains(&label))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    }

    fn handled_and_failed(&self, name: &str) -> (u64, u64) {
        let stats = &self.module(name).stats;
        (
            stats.handled.load(Ordering::Relaxed),
            stats.failed.load(Ordering::Relaxed),
        )
    }
}

fn envelope(id: &str, topic: &str, subtopic: &str, body: Value) -> Envelope {
    let body = body.to_string();
    Envelope::new(
        id.into(),
        topic.into(),
        subtopic.into(),
        BTreeMap::new(),
        &body,
    )
    .unwrap()
}

fn processed(outcome: Outcome) -> Answer {
    match outcome {
        Outcome::Processed(a) => a,
        other => panic!("expected processed, got {other:?}"),
    }
}

fn failed(outcome: Outcome) -> Failure {
    match outcome {
        Outcome::Failed(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn output(answer: &Answer) -> Value {
    serde_json::from_str(answer.output.get()).unwrap()
}

fn doc_json(doc: Option<Document>) -> Option<(Value, u64)> {
    doc.map(|d| (serde_json::from_str(&d.value).unwrap(), d.version))
}

/// The body of the one failure event in the log, checked against its message.
fn only_failure_event(memory: &MemoryStore, module: &str, cause: &Envelope) -> Value {
    let log = memory.log();
    assert_eq!(log.len(), 1, "{log:?}");
    let event = &log[0];
    assert_eq!(event.id, failure_event_id(module, &cause.id));
    assert_eq!(event.topic, format!("{}.failed", cause.topic));
    assert_eq!(event.subtopic, cause.subtopic);
    assert_eq!(event.header(CAUSATION_ID_HEADER), Some(cause.id.as_str()));
    assert_eq!(event.header(CORRELATION_ID_HEADER), Some(cause.id.as_str()));
    serde_json::from_str(event.body_text()).unwrap()
}

const CAUSATION_ID_HEADER: &str = switchyard_model::envelope::CAUSATION_ID;
const CORRELATION_ID_HEADER: &str = switchyard_model::envelope::CORRELATION_ID;

#[tokio::test]
async fn a_processed_message_commits_its_writes_events_and_inbox_record() {
    let h = Harness::new(&["inventory"], INVENTORY).await;
    let body = json!({"sku": "apple", "qty": 2});
    let answer = processed(h.send("r-1", "inventory", "restock", body).await);
    assert_eq!(output(&answer), json!({"sku": "apple", "available": 2}));

    let stock = h.memory.document("inventory", "stock", "apple");
    assert_eq!(
        doc_json(stock),
        Some((json!({"sku": "apple", "available": 2}), 1))
    );
    let stored = h.memory.inbox_answer("inventory", "r-1").await.unwrap();
    assert!(stored.is_some(), "the inbox remembers the id");
    assert_eq!(h.memory.commits(), 1);

    let log = h.memory.log();
    assert_eq!(log.len(), 1);
    let event = &log[0];
    assert_eq!(
        (event.topic.as_str(), event.subtopic.as_str()),
        ("inventory.events", "restocked")
    );
    assert_eq!(event.header(CAUSATION_ID_HEADER), Some("r-1"));
    assert_eq!(event.header(CORRELATION_ID_HEADER), Some("r-1"));
    assert_eq!(event.header("partition-key"), Some("apple"));
    assert_eq!(answer.events.len(), 1);
    assert_eq!(answer.events[0]["id"], json!(event.id));
    assert_eq!(h.handled_and_failed("inventory"), (1, 0));
    assert!(h.memory.dead_letters().is_empty());
}

#[tokio::test]
async fn the_same_id_again_answers_the_first_answer_and_drops_what_the_rerun_did() {
    let h = Harness::new(&["inventory"], INVENTORY).await;
    let body = json!({"sku": "apple", "qty": 2});
    let first = processed(h.send("r-1", "inventory", "restock", body.clone()).await);

    let again = match h.send("r-1", "inventory", "restock", body).await {
        Outcome::Duplicate(a) => a,
        other => panic!("expected a duplicate, got {other:?}"),
    };
    assert_eq!(output(&again), output(&first));
    assert_eq!(again.events, first.events);
    // No inbox read before a try: the duplicate ran again and its commit
    // found the inbox row; nothing of the rerun was kept.
    assert_eq!(h.instances("inventory"), 2);
    assert_eq!(h.memory.commits(), 1);
    assert_eq!(h.memory.log().len(), 1);
    let stock = h.memory.document("inventory", "stock", "apple");
    assert_eq!(
        doc_json(stock),
        Some((json!({"sku": "apple", "available": 2}), 1))
    );
    assert_eq!(h.handled_and_failed("inventory"), (1, 0));

    // Another id is another message.
    let body = json!({"sku": "apple", "qty": 2});
    let second = processed(h.send("r-2", "inventory", "restock", body).await);
    assert_eq!(output(&second)["available"], 4);
}

#[tokio::test]
async fn a_duplicate_whose_rerun_fails_still_answers_the_first_answer() {
    let h = Harness::new(&["inventory"], INVENTORY).await;
    let first = processed(
        h.send(
            "r-1",
            "inventory",
            "restock",
            json!({"sku": "apple", "qty": 2}),
        )
        .await,
    );
    // The same id with a body the module refuses: the id was processed, so
    // the first answer stands and no failure is recorded.
    let again = match h
        .send("r-1", "inventory", "restock", json!({"sku": "", "qty": 2}))
        .await
    {
        Outcome::Duplicate(a) => a,
        other => panic!("expected a duplicate, got {other:?}"),
    };
    assert_eq!(output(&again), output(&first));
    assert!(h.memory.dead_letters().is_empty());
    assert_eq!(h.memory.log().len(), 1, "no failure event");
    assert_eq!(h.handled_and_failed("inventory"), (1, 0));
}

#[tokio::test]
async fn a_query_called_commits_nothing_and_a_repeat_runs_again() {
    let h = Harness::new(&["inventory"], INVENTORY).await;
    processed(
        h.send(
            "r-1",
            "inventory",
            "restock",
            json!({"sku": "apple", "qty": 2}),
        )
        .await,
    );
    assert_eq!(h.memory.commits(), 1);
    let query = json!({"sku": "apple"});
    let first = processed(h.call("q-1", "inventory", "get", query.clone()).await);
    assert_eq!(output(&first)["available"], 2);
    assert_eq!(h.memory.commits(), 1, "a query writes no inbox row");
    assert_eq!(
        h.memory.inbox_answer("inventory", "q-1").await.unwrap(),
        None
    );

    // Its id again is not a duplicate: it runs on today's state.
    processed(
        h.send(
            "r-2",
            "inventory",
            "restock",
            json!({"sku": "apple", "qty": 3}),
        )
        .await,
    );
    let again = processed(h.call("q-1", "inventory", "get", query.clone()).await);
    assert_eq!(output(&again)["available"], 5);
    assert_eq!(h.memory.commits(), 2);

    // A called command keeps its inbox row, and a command's id called
    // again with a query's body is still its duplicate.
    let restock = json!({"sku": "apple", "qty": 1});
    processed(h.call("r-3", "inventory", "restock", restock).await);
    assert_eq!(h.memory.commits(), 3);
    match h.call("r-3", "inventory", "get", query.clone()).await {
        Outcome::Duplicate(a) => assert_eq!(output(&a)["available"], 6),
        other => panic!("expected a duplicate, got {other:?}"),
    }

    // Delivered from a log, a query keeps its inbox row (the message's
    // status says it was handled).
    processed(h.send("q-2", "inventory", "get", query).await);
    assert!(
        h.memory
            .inbox_answer("inventory", "q-2")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn invalid_fails_at_once_with_a_dead_letter_and_a_failure_event() {
    let h = Harness::new(&["faulty"], FAULTY).await;
    let body = json!({"key": "k", "then": "invalid"});
    let cause = envelope("f-1", "faulty", "write-then", body);
    let module = h.module("faulty");
    let failure = failed(h.dispatcher.deliver(&module, &cause).await);
    assert_eq!(failure.kind, FailureKind::Invalid);
    assert_eq!(failure.attempts, 1, "invalid is never retried");
    assert_eq!(h.instances("faulty"), 1);
    assert_eq!(failure.module, "faulty");
    assert!(
        failure.message.contains("invalid after writing"),
        "{}",
        failure.message
    );

    let letters = h.memory.dead_letters();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        (letter.module.as_str(), letter.message_id.as_str()),
        ("faulty", "f-1")
    );
    assert_eq!(
        (letter.topic.as_str(), letter.subtopic.as_str()),
        ("faulty", "write-then")
    );
    assert_eq!(
        (letter.error_kind.as_str(), letter.attempts),
        ("invalid", 1)
    );
    assert_eq!(
        letter.envelope["body"],
        json!({"key": "k", "then": "invalid"})
    );

    let body = only_failure_event(&h.memory, "faulty", &cause);
    assert_eq!(body["kind"], "invalid");
    assert_eq!(body["attempt"], 1);
    assert_eq!(body["original_id"], "f-1");
    // What the module wrote and emitted before failing is gone.
    assert_eq!(h.memory.document("faulty", "notes", "k"), None);
    assert_eq!(h.memory.commits(), 0);
    assert_eq!(h.memory.inbox_answer("faulty", "f-1").await.unwrap(), None);
    assert_eq!(h.handled_and_failed("faulty"), (0, 1));
}

#[tokio::test]
async fn rejected_announces_the_failure_without_a_dead_letter() {
    let h = Harness::new(&["faulty"], FAULTY).await;
    let cause = envelope(
        "f-1",
        "faulty",
        "write-then",
        json!({"key": "k", "then": "reject"}),
    );
    let failure = failed(h.dispatcher.deliver(&h.module("faulty"), &cause).await);
    assert_eq!((failure.kind, failure.attempts), (FailureKind::Rejected, 1));
    assert!(h.memory.dead_letters().is_empty());
    let body = only_failure_event(&h.memory, "faulty", &cause);
    assert_eq!(body["kind"], "rejected");
    assert_eq!(h.memory.document("faulty", "notes", "k"), None);
}

#[tokio::test]
async fn transient_failures_are_retried_then_dead_lettered() {
    let h = Harness::new(&["faulty"], FAULTY).await;
    for (id, then, kind) in [
        ("t-1", "transient", FailureKind::Transient),
        ("t-2", "trap", FailureKind::Trap),
    ] {
        let body = json!({"key": id, "then": then});
        let failure = failed(h.send(id, "faulty", "write-then", body).await);
        assert_eq!((failure.kind, failure.attempts), (kind, 3), "{then}");
        let letters = h.memory.dead_letters();
        let letter = letters.iter().find(|l| l.message_id == id).unwrap();
        assert_eq!(
            (letter.error_kind.as_str(), letter.attempts),
            (kind.as_str(), 3)
        );
        assert_eq!(h.memory.document("faulty", "notes", id), None);
    }
    let trap = h.memory.dead_letters();
    let trap = trap.iter().find(|l| l.message_id == "t-2").unwrap();
    assert!(
        trap.error_message.contains("trapped"),
        "{}",
        trap.error_message
    );
    let log = h.memory.log();
    assert_eq!(h.instances("faulty"), 6, "three attempts per message");
    assert_eq!(log.len(), 2, "one failure event per message");
    assert!(log.iter().all(|e| e.topic == "faulty.failed"));
    assert_eq!(h.memory.commits(), 0);
    assert_eq!(h.handled_and_failed("faulty"), (0, 2));
}

#[tokio::test]
async fn a_retry_that_succeeds_commits_once() {
    let h = Harness::new(&["faulty"], FAULTY).await;
    let body = json!({"key": "k", "fail": 2});
    let answer = processed(h.send("fl-1", "faulty", "flaky", body).await);
    assert_eq!(output(&answer), json!({"key": "k"}));
    assert_eq!(h.instances("faulty"), 3);
    assert_eq!(h.memory.commits(), 1);
    assert!(h.memory.dead_letters().is_empty());
    assert!(
        h.memory.log().is_empty(),
        "no failure event for a message that succeeded"
    );
    assert_eq!(h.handled_and_failed("faulty"), (1, 0));
}

#[tokio::test]
async fn deliver_from_counts_earlier_deliveries_as_attempts() {
    let h = Harness::new(&["faulty"], FAULTY).await;
    let module = h.module("faulty");
    // Delivered twice before: this is attempt 3, past the two failing ones.
    let flaky = envelope("fl-1", "faulty", "flaky", json!({"key": "k", "fail": 2}));
    processed(h.dispatcher.deliver_from(&module, &flaky, 3).await);

    // The last attempt max-attempts allows: no retry left.
    let body = json!({"key": "k2", "then": "transient"});
    let last = envelope("t-1", "faulty", "write-then", body);
    let failure = failed(h.dispatcher.deliver_from(&module, &last, 3).await);
    assert_eq!(
        (failure.kind, failure.attempts),
        (FailureKind::Transient, 3)
    );
    assert_eq!(h.memory.dead_letters()[0].attempts, 3);
    assert_eq!(h.instances("faulty"), 2, "one run for each message");
}

#[tokio::test]
async fn a_module_past_its_time_is_retried_then_dead_lettered() {
    let h = Harness::new(&["slow"], SLOW).await;
    let started = std::time::Instant::now();
    let failure = failed(h.send("s-1", "slow", "spin", json!({"ms": 60_000})).await);
    assert_eq!((failure.kind, failure.attempts), (FailureKind::Timeout, 2));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(h.instances("slow"), 2);
    let letters = h.memory.dead_letters();
    assert_eq!(
        (letters[0].error_kind.as_str(), letters[0].attempts),
        ("timeout", 2)
    );
}

#[tokio::test]
async fn a_failing_failure_message_is_not_announced_again() {
    let h = Harness::new(&["faulty"], FAULTY).await;
    // The module knows no such topic: invalid.
    let cause = envelope("x-1", "faulty.failed", "write-then", json!({}));
    let failure = failed(h.dispatcher.deliver(&h.module("faulty"), &cause).await);
    assert_eq!(failure.kind, FailureKind::Invalid);
    assert_eq!(h.memory.dead_letters().len(), 1);
    assert!(h.memory.log().is_empty(), "no faulty.failed.failed event");
}

/// Something another host does to the store, run on cue.
type Interference = Box<dyn FnOnce(&MemoryStore) + Send>;

/// A [`MemoryStore`] with things going wrong on cue: another host's write
/// just before the next commit, or document reads failing while the inbox
/// and commits still work.
#[derive(Default)]
struct Scripted {
    memory: Arc<MemoryStore>,
    /// Runs once, just before the next commit.
    before_commit: Mutex<Option<Interference>>,
    reads_fail: AtomicBool,
    /// Milliseconds each commit takes (a database round trip), during
    /// which other messages read the versions it is about to change.
    commit_ms: std::sync::atomic::AtomicU64,
}

impl Scripted {
    fn read_error<'a, T: 'a>(&self) -> Option<StoreFuture<'a, T>> {
        self.reads_fail.load(Ordering::Relaxed).then(|| {
            let e = StoreError::Backend("connection reset".into());
            Box::pin(async move { Err(e) }) as StoreFuture<'a, T>
        })
    }
}

impl MessageStore for Scripted {
    fn get<'a>(&'a self, m: &'a str, c: &'a str, k: &'a str) -> StoreFuture<'a, Option<Document>> {
        self.read_error()
            .unwrap_or_else(|| self.memory.get(m, c, k))
    }

    fn scan<'a>(
        &'a self,
        m: &'a str,
        c: &'a str,
        prefix: &'a str,
        limit: u32,
        max_bytes: usize,
    ) -> StoreFuture<'a, Vec<(String, Document)>> {
        self.read_error()
            .unwrap_or_else(|| self.memory.scan(m, c, prefix, limit, max_bytes))
    }

    fn inbox_answer<'a>(&'a self, m: &'a str, id: &'a str) -> StoreFuture<'a, Option<String>> {
        self.memory.inbox_answer(m, id)
    }

    fn inbox_committed_at<'a>(
        &'a self,
        m: &'a str,
        id: &'a str,
    ) -> switchyard_store::message::StoreFuture<'a, Option<i64>> {
        self.memory.inbox_committed_at(m, id)
    }

    fn commit<'a>(&'a self, commit: &'a Commit<'a>) -> StoreFuture<'a, ()> {
        let meanwhile = self.before_commit.lock().unwrap().take();
        if let Some(write) = meanwhile {
            write(&self.memory);
        }
        let delay = self.commit_ms.load(Ordering::Relaxed);
        if delay == 0 {
            return self.memory.commit(commit);
        }
        Box::pin(async move {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            self.memory.commit(commit).await
        })
    }

    fn record_failure<'a>(
        &'a self,
        letter: Option<&'a DeadLetter>,
        event: Option<&'a Envelope>,
    ) -> StoreFuture<'a, ()> {
        self.memory.record_failure(letter, event)
    }

    fn append<'a>(&'a self, envelopes: &'a [Envelope], source: &'a str) -> StoreFuture<'a, ()> {
        self.memory.append(envelopes, source)
    }
}

async fn scripted_inventory() -> (Arc<Scripted>, Harness) {
    let scripted = Arc::new(Scripted::default());
    let memory = scripted.memory.clone();
    let h = Harness::over(&["inventory"], INVENTORY, memory, scripted.clone()).await;
    (scripted, h)
}

#[tokio::test]
async fn a_store_that_is_down_fails_the_message_and_records_nothing() {
    let h = Harness::new(&["inventory"], INVENTORY).await;
    h.memory.set_down(true);
    let body = json!({"sku": "apple", "qty": 2});
    let failure = failed(h.send("r-1", "inventory", "restock", body.clone()).await);
    assert_eq!(
        (failure.kind, failure.attempts),
        (FailureKind::Unavailable, 1)
    );
    h.memory.set_down(false);
    assert_eq!(h.instances("inventory"), 1, "it ran; its commit failed");
    assert!(h.memory.dead_letters().is_empty());
    assert!(h.memory.log().is_empty());
    assert_eq!(h.memory.commits(), 0);

    // Nothing lost: delivered again once the store is back, it is processed.
    processed(h.send("r-1", "inventory", "restock", body).await);
    assert_eq!(h.memory.commits(), 1);
}

#[tokio::test]
async fn a_store_failing_under_a_read_fails_the_message_without_a_dead_letter() {
    let (scripted, h) = scripted_inventory().await;
    scripted.reads_fail.store(true, Ordering::Relaxed);
    let body = json!({"sku": "apple", "qty": 2});
    let failure = failed(h.send("r-1", "inventory", "restock", body).await);
    assert_eq!(
        (failure.kind, failure.attempts),
        (FailureKind::Unavailable, 1)
    );
    assert!(
        failure.message.contains("connection reset"),
        "{}",
        failure.message
    );
    assert!(h.memory.dead_letters().is_empty());
    assert!(h.memory.log().is_empty());
    assert_eq!(h.memory.commits(), 0);
    assert_eq!(
        h.memory.inbox_answer("inventory", "r-1").await.unwrap(),
        None
    );
    assert_eq!(h.instances("inventory"), 1, "not retried");
}

#[tokio::test]
async fn a_version_conflict_runs_the_message_again_on_fresh_state() {
    let (scripted, h) = scripted_inventory().await;
    let stock = |n: u64| json!({"sku": "apple", "available": n}).to_string();
    h.memory.put("inventory", "stock", "apple", &stock(5));
    let concurrent = stock(10);
    *scripted.before_commit.lock().unwrap() = Some(Box::new(move |memory: &MemoryStore| {
        memory.put("inventory", "stock", "apple", &concurrent);
    }));

    let body = json!({"sku": "apple", "qty": 2});
    let answer = processed(h.send("r-1", "inventory", "restock", body).await);
    assert_eq!(output(&answer), json!({"sku": "apple", "available": 12}));
    let stored = h.memory.document("inventory", "stock", "apple");
    assert_eq!(
        doc_json(stored),
        Some((json!({"sku": "apple", "available": 12}), 3))
    );
    assert_eq!(h.memory.commits(), 1);
    // Only the committed attempt's event is published.
    let log = h.memory.log();
    assert_eq!(log.len(), 1);
    let event: Value = serde_json::from_str(log[0].body_text()).unwrap();
    assert_eq!(event["available"], 12);
    assert_eq!(h.instances("inventory"), 2);
    assert_eq!(h.handled_and_failed("inventory"), (1, 0));
}

#[tokio::test]
async fn a_malformed_message_becomes_a_dead_letter() {
    let h = Harness::new(&["inventory"], INVENTORY).await;
    let malformed = Malformed {
        topic: "inventory".into(),
        message_id: "redis:inventory:1-0".into(),
        subtopic: "restock".into(),
        raw: json!({"subtopic": "restock", "body": "{not json"}),
        reason: "field `body` is not JSON".into(),
    };
    h.dispatcher
        .record_malformed("inventory", &malformed)
        .await
        .unwrap();
    let letters = h.memory.dead_letters();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.error_kind, MALFORMED);
    assert_eq!(MALFORMED, "malformed-envelope");
    assert_eq!(letter.message_id, "redis:inventory:1-0");
    assert_eq!(
        (letter.module.as_str(), letter.topic.as_str()),
        ("inventory", "inventory")
    );
    assert_eq!(letter.envelope, malformed.raw);
    assert_eq!(letter.error_message, malformed.reason);
    assert_eq!(letter.attempts, 1);
    assert!(
        h.memory.log().is_empty(),
        "no failure event for a non-message"
    );

    h.memory.set_down(true);
    let refused = h.dispatcher.record_malformed("inventory", &malformed).await;
    assert!(
        refused.is_err(),
        "the caller must not ack what was not recorded"
    );
}
