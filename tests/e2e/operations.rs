//! Operations (issue 8): `/metrics` after the saga, one trace id through
//! command -> event -> reaction, `GET /v1/messages/{id}` in each state,
//! `/readyz` per dependency, JSON logs, and dead letters replayed by topic
//! after a broken module is fixed.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{EXAMPLES, FAULTY, Project, TestHost, eventually, query_count, wasm};

/// Series of a Prometheus text exposition: (name, labels) -> value.
pub(crate) type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// Parses the text format as Prometheus does for the lines the host writes:
/// `name{label="value",...} number`, comments skipped.
pub(crate) fn parse_exposition(text: &str) -> Samples {
    let mut samples = Samples::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("{line:?}: value {value:?}: {e}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                let mut labels = BTreeMap::new();
                // Label values here never hold `",` (module and topic names).
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                    labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (name, labels)
            }
            None => (series, BTreeMap::new()),
        };
        samples.insert((name.to_string(), labels), value);
    }
    samples
}

pub(crate) fn sample(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples.get(&(name.to_string(), labels)).copied()
}

pub(crate) async fn scrape(host: &TestHost) -> (String, Samples) {
    let response = host
        .client
        .get(format!("{}/metrics", host.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let samples = parse_exposition(&text);
    (text, samples)
}

pub(crate) fn handled(samples: &Samples, module: &str, topic: &str, outcome: &str) -> f64 {
    sample(
        samples,
        "switchyard_messages_handled_total",
        &[("module", module), ("topic", topic), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_after_the_saga_count_each_outcome_and_time_each_message() {
    let project = Project::new(&["orders", "inventory"], EXAMPLES);
    let host = project.start().await;
    crate::saga::saga(&host).await;
    // One of each failure the saga does not show.
    let (status, _) = host
        .command(
            "orders",
            "place",
            json!({"order_id": "o9", "sku": "durian", "qty": 1}),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = host
        .command(
            "orders",
            "place",
            json!({"order_id": "o9", "sku": "apple", "qty": "two"}),
        )
        .await;
    assert_eq!(status, 422);
    // (A command: a query over HTTP keeps no inbox row, so its id again
    // simply runs again.)
    let dup = json!({"id": "dup-1", "topic": "inventory", "subtopic": "restock", "body": {"sku": "fig", "qty": 1}});
    assert_eq!(host.send(dup.clone()).await.0, 200);
    assert_eq!(host.send(dup).await.1["status"], "duplicate");

    // The reactions to the failure events and every event have run once
    // their consumers' lag is back to 0.
    let samples = eventually(
        "the embedded log drained",
        Duration::from_secs(10),
        || async {
            let (_, samples) = scrape(&host).await;
            let lag = |topic: &str, module: &str| {
                sample(
                    &samples,
                    "switchyard_consumer_lag",
                    &[("stream", topic), ("group", &format!("embedded.{module}"))],
                )
            };
            (lag("orders.events", "inventory") == Some(0.0)
                && lag("inventory.events", "orders") == Some(0.0))
            .then_some(samples)
        },
    )
    .await;
    let (text, _) = scrape(&host).await;
    assert!(
        text.contains("# TYPE switchyard_messages_handled_total counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE switchyard_handling_duration_seconds histogram"),
        "{text}"
    );

    // inventory: restock, get, restock (dup-1); orders.events placed twice,
    // then confirmed and rejected (acknowledged and ignored).
    assert_eq!(
        handled(&samples, "inventory", "inventory", "processed"),
        3.0
    );
    assert_eq!(
        handled(&samples, "inventory", "inventory", "duplicate"),
        1.0
    );
    assert_eq!(
        handled(&samples, "inventory", "orders.events", "processed"),
        4.0
    );
    // orders: restocked twice (ignored), reserved, out-of-stock.
    assert_eq!(
        handled(&samples, "orders", "inventory.events", "processed"),
        4.0
    );
    // Two places plus the polling `get`s of the saga.
    assert!(handled(&samples, "orders", "orders", "processed") >= 4.0);
    assert_eq!(handled(&samples, "orders", "orders", "rejected"), 1.0);
    assert_eq!(handled(&samples, "orders", "orders", "invalid"), 1.0);
    assert_eq!(handled(&samples, "orders", "orders", "trapped"), 0.0);
    // Invalid is dead-lettered; rejected is not.
    assert_eq!(
        sample(
            &samples,
            "switchyard_dead_letters_total",
            &[("module", "orders"), ("topic", "orders")]
        ),
        Some(1.0)
    );

    // Every outcome of a module is one observation of its handling time.
    for module in ["inventory", "orders"] {
        let outcomes: f64 = samples
            .iter()
            .filter(|((name, labels), _)| {
                name == "switchyard_messages_handled_total" && labels["module"] == module
            })
            .map(|(_, v)| v)
            .sum();
        let count = sample(
            &samples,
            "switchyard_handling_duration_seconds_count",
            &[("module", module)],
        );
        assert_eq!(count, Some(outcomes), "{module}: {text}");
        let inf = sample(
            &samples,
            "switchyard_handling_duration_seconds_bucket",
            &[("module", module), ("le", "+Inf")],
        );
        assert_eq!(inf, Some(outcomes), "{module}");
        let sum = sample(
            &samples,
            "switchyard_handling_duration_seconds_sum",
            &[("module", module)],
        )
        .unwrap();
        assert!(sum > 0.0, "{module}: {sum}");
    }
    // One instance per attempt; a duplicate runs too (the inbox is not read
    // before a first delivery) and is then answered from the inbox: one
    // instance per handled message, 8 for inventory's 7 + 1 duplicate.
    assert_eq!(
        sample(
            &samples,
            "switchyard_instantiation_duration_seconds_count",
            &[("module", "inventory")]
        ),
        Some(8.0)
    );
    // Each module's largest linear memory: at least the initial memory of
    // a Rust guest (over 1 MiB: its shadow stack), within max-memory-mb.
    for module in ["inventory", "orders"] {
        let peak = sample(
            &samples,
            "switchyard_guest_memory_peak_bytes",
            &[("module", module)],
        )
        .unwrap_or_else(|| panic!("{module}: no peak memory in {text}"));
        assert!(
            peak > f64::from(1u32 << 20) && peak <= f64::from(64u32 << 20),
            "{module}: {peak}"
        );
    }
    assert_eq!(
        sample(&samples, "switchyard_modules_loaded", &[]),
        Some(2.0)
    );
    assert_eq!(
        sample(&samples, "switchyard_module_load_errors", &[]),
        Some(0.0)
    );
    host.stop().await;
}

/// `message` spans as a test subscriber saw them: their fields.
fn captured_spans() -> &'static Mutex<Vec<BTreeMap<String, String>>> {
    static SPANS: OnceLock<Mutex<Vec<BTreeMap<String, String>>>> = OnceLock::new();
    SPANS.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt;

        struct Capture;
        #[derive(Default)]
        struct Fields(BTreeMap<String, String>);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0
                    .insert(field.name().to_string(), format!("{value:?}"));
            }
        }
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
            fn on_new_span(
                &self,
                attrs: &tracing::span::Attributes<'_>,
                _id: &tracing::span::Id,
                _ctx: tracing_subscriber::layer::Context<'_, S>,
            ) {
                if attrs.metadata().name() == "message" {
                    let mut fields = Fields::default();
                    attrs.record(&mut fields);
                    captured_spans().lock().unwrap().push(fields.0);
                }
            }
        }
        // Global: the host's tasks run on any of the runtime's threads. The
        // other tests' spans are captured too; this test picks its trace.
        let subscriber = tracing_subscriber::registry().with(Capture);
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other test installs a global subscriber");
        Mutex::new(Vec::new())
    })
}

fn traceparent_of(headers: &Value) -> (String, String) {
    let value = headers["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent in {headers}"));
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!((parts[0], parts[3]), ("00", "01"), "{value}");
    (parts[1].to_string(), parts[2].to_string())
}

#[tokio::test]
async fn one_trace_id_runs_through_command_event_and_reaction() {
    let spans = captured_spans();
    let project = Project::new(&["orders", "inventory"], EXAMPLES);
    let host = project.start().await;
    let (status, _) = host
        .command("inventory", "restock", json!({"sku": "apple", "qty": 5}))
        .await;
    assert_eq!(status, 200);

    let trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let (status, answer) = host
        .send(json!({
            "id": "traced-1", "topic": "orders", "subtopic": "place",
            "headers": {"traceparent": format!("00-{trace}-{caller_span}-01")},
            "body": {"order_id": "t1", "sku": "apple", "qty": 2}
        }))
        .await;
    assert_eq!(status, 200, "{answer}");
    let placed = &answer["events"][0];
    assert_eq!(placed["subtopic"], "placed");
    let (placed_trace, placed_parent) = traceparent_of(&placed["headers"]);
    assert_eq!(placed_trace, trace);
    assert_ne!(placed_parent, caller_span, "the handling is a new span");

    eventually("t1 confirmed", Duration::from_secs(10), || async {
        let (_, a) = host
            .command("orders", "get", json!({"order_id": "t1"}))
            .await;
        (a["output"]["status"] == "confirmed").then_some(())
    })
    .await;

    // The reaction's event, as stored in the outbox.
    let reserved = query_count(
        &project.db_url(),
        &format!(
            "SELECT COUNT(*) FROM outbox WHERE topic = 'inventory.events' AND subtopic = 'reserved'
             AND headers LIKE '%\"traceparent\":\"00-{trace}-%'
             AND headers NOT LIKE '%{placed_parent}%'"
        ),
    )
    .await;
    assert_eq!(reserved, 1, "inventory's reserved event carries the trace");

    // The spans: command, event, reaction, each recording the trace id.
    let mine: Vec<(String, String, String)> = spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.get("trace_id").map(String::as_str) == Some(trace))
        .map(|s| {
            (
                s["module"].clone(),
                s["topic"].clone(),
                s["subtopic"].clone(),
            )
        })
        .collect();
    let expected = [
        ("orders", "orders", "place"),
        ("inventory", "orders.events", "placed"),
        ("orders", "inventory.events", "reserved"),
        // orders' own event on settling, which inventory acknowledges.
        ("inventory", "orders.events", "confirmed"),
    ];
    for (module, topic, subtopic) in expected {
        assert!(
            mine.iter()
                .any(|s| (s.0.as_str(), s.1.as_str(), s.2.as_str()) == (module, topic, subtopic)),
            "no span {module} {topic}/{subtopic} in trace {trace}: {mine:?}"
        );
    }
    assert_eq!(mine.len(), expected.len(), "{mine:?}");

    // The caller's HTTP traceparent header works too.
    let response = host
        .client
        .post(format!("{}/v1/topics/inventory/restock", host.base))
        .header("traceparent", format!("00-{trace}-{caller_span}-01"))
        .body(r#"{"sku":"fig","qty":1}"#)
        .send()
        .await
        .unwrap();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        traceparent_of(&answer["events"][0]["headers"]).0,
        trace,
        "{answer}"
    );

    // A command without a traceparent starts a trace; its event carries it.
    let (_, answer) = host
        .command("inventory", "restock", json!({"sku": "pear", "qty": 1}))
        .await;
    let (new_trace, _) = traceparent_of(&answer["events"][0]["headers"]);
    assert_ne!(new_trace, trace);
    assert_ne!(new_trace, "0".repeat(32));
    host.stop().await;
}

async fn message(host: &TestHost, id: &str) -> (u16, Value) {
    host.admin(Method::GET, &format!("/v1/messages/{id}")).await
}

/// A query over HTTP commits nothing (README "Queries over HTTP commit
/// nothing"): its id again runs again on the state of that moment and is
/// not a duplicate, the message's status does not know it; the same query
/// appended with `?wait=false` is handled from the log and keeps its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_over_http_runs_again_and_leaves_no_trace() {
    let project = Project::new(&["orders", "inventory"], EXAMPLES);
    let host = project.start().await;
    let restock = |id: &str| json!({"id": id, "topic": "inventory", "subtopic": "restock", "body": {"sku": "pear", "qty": 2}});
    assert_eq!(host.send(restock("r-1")).await.0, 200);
    let query =
        json!({"id": "q-1", "topic": "inventory", "subtopic": "get", "body": {"sku": "pear"}});
    let (status, first) = host.send(query.clone()).await;
    assert_eq!(
        (status, &first["status"]),
        (200, &json!("processed")),
        "{first}"
    );
    assert_eq!(first["output"]["available"], 2);
    assert_eq!(message(&host, "q-1").await.0, 404, "no inbox row");

    assert_eq!(host.send(restock("r-2")).await.0, 200);
    let (status, again) = host.send(query).await;
    assert_eq!(
        (status, &again["status"]),
        (200, &json!("processed")),
        "{again}"
    );
    assert_eq!(
        again["output"]["available"], 4,
        "run again, on today's state"
    );
    // A command's id stays a duplicate.
    assert_eq!(host.send(restock("r-2")).await.1["status"], "duplicate");

    let (status, _) = host
        .post_raw(
            "/v1/messages?wait=false",
            json!({"id": "q-log", "topic": "inventory", "subtopic": "get", "body": {"sku": "pear"}})
                .to_string(),
        )
        .await;
    assert_eq!(status, 202);
    eventually("q-log processed", Duration::from_secs(10), || async {
        (message(&host, "q-log").await.1["status"] == "processed").then_some(())
    })
    .await;
    host.stop().await;
}

// Two workers: `slow` spins on one while the other answers the lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_message_answers_for_each_state() {
    let project = Project::new(
        &["orders", "inventory", "slow"],
        &format!("{EXAMPLES}\n[modules.slow]\nfile = \"slow.wasm\"\ntimeout-ms = 10000\n"),
    );
    let host = project.start().await;

    // Processed, with the stored answer.
    let (status, _) = host
        .send(json!({"id": "m-ok", "topic": "inventory", "subtopic": "restock", "body": {"sku": "apple", "qty": 5}}))
        .await;
    assert_eq!(status, 200);
    let (status, m) = message(&host, "m-ok").await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["status"], "processed", "{m}");
    assert_eq!(m["modules"][0]["module"], "inventory");
    assert_eq!(
        m["modules"][0]["output"],
        json!({"sku": "apple", "available": 5})
    );
    assert_eq!(m["modules"][0]["events"][0]["subtopic"], "restocked");

    // Rejected: failed, with the error, and no dead letter.
    let (status, _) = host
        .send(json!({"id": "m-rej", "topic": "orders", "subtopic": "place", "body": {"order_id": "o1", "sku": "durian", "qty": 1}}))
        .await;
    assert_eq!(status, 409);
    let (status, m) = message(&host, "m-rej").await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["status"], "failed", "{m}");
    assert_eq!(m["modules"][0]["module"], "orders");
    assert_eq!(
        m["modules"][0]["error"],
        json!({"kind": "rejected", "message": "unknown sku 'durian'"})
    );

    // Invalid: dead-lettered, with the error and the dead letter's id.
    let (status, _) = host
        .send(json!({"id": "m-bad", "topic": "orders", "subtopic": "place", "body": {"order_id": "o2"}}))
        .await;
    assert_eq!(status, 422);
    let (status, m) = message(&host, "m-bad").await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["status"], "dead-lettered", "{m}");
    let handling = &m["modules"][0];
    assert_eq!(handling["error"]["kind"], "invalid");
    assert!(
        handling["error"]["message"]
            .as_str()
            .unwrap()
            .contains(r#"body: "sku" is a required property"#),
        "{m}"
    );
    let (_, letters) = host
        .admin(Method::GET, "/v1/dead-letters?topic=orders")
        .await;
    assert_eq!(
        handling["dead_letter"]["id"], letters["dead_letters"][0]["id"],
        "{letters}"
    );

    // An event: each subscriber's handling, found by the event's id.
    let (_, placed) = host
        .command(
            "orders",
            "place",
            json!({"order_id": "o3", "sku": "apple", "qty": 1}),
        )
        .await;
    let event_id = placed["events"][0]["id"].as_str().unwrap().to_string();
    let m = eventually(
        "inventory handled the event",
        Duration::from_secs(10),
        || async {
            let (_, m) = message(&host, &event_id).await;
            (m["status"] == "processed").then_some(m)
        },
    )
    .await;
    assert_eq!(m["topic"], "orders.events", "{m}");
    assert_eq!(m["modules"][0]["module"], "inventory", "{m}");
    assert_eq!(m["modules"][0]["events"][0]["subtopic"], "reserved", "{m}");
    let (status, m) = host
        .admin(
            Method::GET,
            &format!("/v1/messages/{event_id}?module=orders"),
        )
        .await;
    assert_eq!(
        (status, m["status"].as_str()),
        (200, Some("pending")),
        "{m}"
    );

    // Pending: appended, its handler still running.
    let (status, _) = host
        .post_raw(
            "/v1/messages?wait=false",
            json!({"id": "m-later", "topic": "slow", "subtopic": "spin", "body": {"ms": 1500}})
                .to_string(),
        )
        .await;
    assert_eq!(status, 202);
    let (status, m) = message(&host, "m-later").await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["status"], "pending", "{m}");
    assert_eq!(
        m["modules"],
        json!([{"module": "slow", "status": "pending"}])
    );
    assert_eq!(m["log"]["source"], "http");
    eventually("m-later processed", Duration::from_secs(10), || async {
        (message(&host, "m-later").await.1["status"] == "processed").then_some(())
    })
    .await;

    // Unknown: 404; and the endpoint is an admin one.
    let (status, m) = message(&host, "never-sent").await;
    assert_eq!(status, 404, "{m}");
    assert_eq!(m["error"]["kind"], "not-found");
    let (status, _) = host.get("/v1/messages/m-ok").await;
    assert_eq!(status, 401);
    host.stop().await;
}

#[tokio::test]
async fn readyz_reports_each_dependency() {
    let project = Project::new(&["orders", "inventory"], EXAMPLES);
    let host = project.start().await;
    let (status, ready) = host.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(
        ready,
        json!({"ready": true, "checks": {
            "database": {"ok": true, "error": null},
            "modules": {"loaded": 2, "failed": 0},
        }})
    );
    host.stop().await;

    // A Redis nobody listens on: not ready, and it says which dependency.
    let project = Project::new(
        &["inventory", "faulty"],
        &format!(
            "{FAULTY}\n[modules.inventory]\nfile = \"inventory.wasm\"\n\n[redis]\nurl = \"redis://127.0.0.1:1\"\n"
        ),
    );
    let host = project.start().await;
    let (status, ready) = host.get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["ready"], false);
    assert_eq!(ready["checks"]["database"]["ok"], true);
    assert_eq!(
        ready["checks"]["redis"],
        json!({"ok": false, "error": "unreachable"})
    );
    assert_eq!(ready["checks"]["modules"]["loaded"], 2);
    host.stop().await;
}

/// `bytes` as `plugins/<file>`, renamed into place as `switchyard build` does.
fn install(project: &Project, file: &str, bytes: &[u8]) {
    let target = project.dir.path().join("plugins").join(file);
    let tmp = target.with_extension("wasm.partial");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, &target).unwrap();
}

/// `switchyard dlq ARGS --url <host>`, as an operator runs it (async: the
/// host under test serves on this test's runtime).
async fn dlq(project: &Project, host: &TestHost, args: &[&str]) -> (bool, Value, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(project.manifest_path())
        .arg("dlq")
        .args(args)
        .args(["--url", &host.base])
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run switchyard");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answer = serde_json::from_str(&stdout).unwrap_or(Value::String(stdout.into_owned()));
    (
        out.status.success(),
        answer,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn stock(host: &TestHost, sku: &str) -> Value {
    let (status, answer) = host.command("inventory", "get", json!({"sku": sku})).await;
    assert_eq!(status, 200, "{answer}");
    answer["output"]["available"].clone()
}

#[tokio::test]
async fn dead_letters_of_a_broken_module_are_replayed_by_topic_after_the_fix_exactly_once() {
    let project = Project::new(
        &[],
        "[modules.inventory]\nfile = \"inventory.wasm\"\ntopics = [\"inventory\"]\nemits = [\"inventory.events\"]\nmax-attempts = 2\nbackoff-ms = 1\n",
    );
    // The broken release is the one serving: nothing to roll back to.
    install(
        &project,
        "inventory.wasm",
        &std::fs::read(wasm("broken_inventory")).unwrap(),
    );
    let host = project.start().await;
    for (id, qty) in [("r-1", 3), ("r-2", 4)] {
        let (status, answer) = host
            .send(json!({"id": id, "topic": "inventory", "subtopic": "restock", "body": {"sku": "apple", "qty": qty}}))
            .await;
        assert_eq!(status, 500, "{answer}");
        assert_eq!(answer["error"]["kind"], "trap");
    }
    let (_, m) = message(&host, "r-1").await;
    assert_eq!(m["status"], "dead-lettered", "{m}");
    assert_eq!(m["modules"][0]["attempts"], 2);
    // While it is still broken, a replay fails again and stays queued.
    let (ok, summary, stderr) = dlq(&project, &host, &["replay", "--topic", "inventory"]).await;
    assert!(!ok, "{summary}");
    assert_eq!(
        (summary["replayed"].as_u64(), summary["failed"].as_u64()),
        (Some(0), Some(2)),
        "{summary}"
    );
    assert!(stderr.contains("failed again"), "{stderr}");

    // The fix is hot-loaded, then the topic's dead letters replayed.
    install(
        &project,
        "inventory.wasm",
        &std::fs::read(wasm("inventory")).unwrap(),
    );
    eventually(
        "the fixed version serving",
        Duration::from_secs(10),
        // Asked without sending it a message: a broken `get` would be one
        // more dead letter of the topic.
        || async {
            let (_, listing) = host.get("/v1/modules").await;
            let inventory = &listing["modules"][0];
            (inventory["name"] == "inventory" && inventory["version"] != "0.0.0-broken")
                .then_some(())
        },
    )
    .await;
    let (ok, summary, stderr) = dlq(&project, &host, &["replay", "--topic", "inventory"]).await;
    assert!(ok, "{summary}\n{stderr}");
    assert_eq!(
        (summary["replayed"].as_u64(), summary["failed"].as_u64()),
        (Some(2), Some(0)),
        "{summary}"
    );
    let replayed: Vec<&str> = summary["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(replayed, ["processed", "processed"], "{summary}");
    assert_eq!(stock(&host, "apple").await, 7);

    // Exactly once: nothing left to replay by topic, and replaying a letter
    // by id again answers duplicate without applying it twice.
    let (ok, summary, _) = dlq(&project, &host, &["replay", "--topic", "inventory"]).await;
    assert!(ok);
    assert_eq!(summary["replayed"], 0, "{summary}");
    let letter = dead_letter_id(&host, "r-1").await;
    let (ok, again, _) = dlq(&project, &host, &["replay", &letter]).await;
    assert!(ok, "{again}");
    assert_eq!(again["status"], "duplicate", "{again}");
    assert_eq!(stock(&host, "apple").await, 7);

    let (_, m) = message(&host, "r-1").await;
    assert_eq!(m["status"], "processed", "{m}");
    assert!(
        m["modules"][0]["dead_letter"]["replayed_at"].is_string(),
        "{m}"
    );
    let (_, samples) = scrape(&host).await;
    assert_eq!(
        sample(
            &samples,
            "switchyard_module_reloads_total",
            &[("module", "inventory")]
        ),
        Some(1.0)
    );
    assert_eq!(handled(&samples, "inventory", "inventory", "trapped"), 4.0);
    assert_eq!(
        sample(
            &samples,
            "switchyard_dead_letters_total",
            &[("module", "inventory"), ("topic", "inventory")]
        ),
        Some(4.0)
    );
    host.stop().await;
}

async fn dead_letter_id(host: &TestHost, message_id: &str) -> String {
    let (_, m) = message(host, message_id).await;
    m["modules"][0]["dead_letter"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no dead letter in {m}"))
        .to_string()
}

#[tokio::test]
async fn log_format_json_writes_one_object_per_line_with_the_message_span() {
    let project = Project::new(&["orders", "inventory"], EXAMPLES);
    let log_path = project.dir.path().join("host.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(project.manifest_path())
        .args([
            "up",
            "--no-build",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("start switchyard");
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(&log_path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
            .collect()
    };
    let started = std::time::Instant::now();
    let addr = loop {
        if let Some(addr) = lines()
            .iter()
            .find(|l| l["fields"]["message"] == "switchyard serving")
            .and_then(|l| l["fields"]["addr"].as_str().map(str::to_string))
        {
            break addr;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no start line: {:?}",
            lines()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let status = reqwest::Client::new()
        .post(format!("http://{addr}/v1/messages"))
        .body(r#"{"id":"json-log-1","topic":"orders","subtopic":"place","body":{"order_id":"o1"}}"#)
        .send()
        .await
        .map(|r| r.status().as_u16());
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status.ok(), Some(422));
    let failed = lines()
        .into_iter()
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("handling failed"))
        })
        .unwrap_or_else(|| panic!("no failure line: {:?}", lines()));
    assert_eq!(failed["level"], "WARN");
    assert_eq!(failed["span"]["name"], "message");
    assert_eq!(failed["span"]["id"], "json-log-1");
    assert_eq!(failed["span"]["module"], "orders");
    assert_eq!(failed["span"]["trace_id"].as_str().map(str::len), Some(32));
}

/// `switchyard_consumer_lag` of the one group on `stream`, if scraped.
pub(crate) fn lag_of(samples: &Samples, stream: &str) -> Option<f64> {
    samples
        .iter()
        .find(|((name, labels), _)| {
            name == "switchyard_consumer_lag"
                && labels.get("stream").map(String::as_str) == Some(stream)
        })
        .map(|(_, v)| *v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_consumer_lag_and_outbox_backlog_are_read_on_scrape() {
    use redis::AsyncCommands;

    let streams = crate::redis_streams::Streams::new().await;
    let project = Project::new(
        &["slow"],
        &format!(
            "{}batch = 1\nconcurrency = 1\n\n[modules.slow]\nfile = \"slow.wasm\"\ntimeout-ms = 10000\n",
            streams.section(30_000)
        ),
    );
    let host = project.start().await;
    // Four entries that take 0.6 s each, read one at a time and only when
    // the one before is done (concurrency 1): the group falls behind, then
    // catches up.
    let stream = format!("{}slow", streams.prefix);
    let mut conn = streams.conn.clone();
    for _ in 0..4 {
        let _: String = conn
            .xadd(
                &stream,
                "*",
                &[("subtopic", "spin"), ("body", r#"{"ms":600}"#)],
            )
            .await
            .unwrap();
    }
    let behind = eventually("the group behind", Duration::from_secs(10), || async {
        let (_, samples) = scrape(&host).await;
        lag_of(&samples, &stream).filter(|lag| *lag >= 1.0)
    })
    .await;
    assert!(behind <= 3.0, "one entry is being handled: {behind}");
    let samples = eventually("the group caught up", Duration::from_secs(20), || async {
        let (_, samples) = scrape(&host).await;
        (lag_of(&samples, &stream) == Some(0.0)
            && handled(&samples, "slow", "slow", "processed") == 4.0)
            .then_some(samples)
    })
    .await;
    let group = samples
        .keys()
        .find(|(name, labels)| name == "switchyard_consumer_lag" && labels["stream"] == stream)
        .map(|(_, labels)| labels["group"].clone())
        .unwrap();
    assert!(group.ends_with(".slow"), "{group}");
    // With a broker the outbox drains to it: nothing waits there.
    assert_eq!(
        sample(&samples, "switchyard_outbox_backlog", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &samples,
            "switchyard_outbox_oldest_unpublished_age_seconds",
            &[]
        ),
        Some(0.0)
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_redis_message_states_replay_and_gauges() {
    let streams = crate::redis_streams::Streams::new().await;
    let project = Project::postgres(
        &["orders", "inventory"],
        &format!("{}{EXAMPLES}", streams.section(30_000)),
    )
    .await;
    let host = project.start().await;
    let (status, _) = host
        .send(json!({"id": "pg-ok", "topic": "inventory", "subtopic": "restock", "body": {"sku": "apple", "qty": 5}}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = host
        .send(json!({"id": "pg-rej", "topic": "orders", "subtopic": "place", "body": {"order_id": "o1", "sku": "durian", "qty": 1}}))
        .await;
    assert_eq!(status, 409);
    let (status, _) = host
        .send(json!({"id": "pg-bad", "topic": "orders", "subtopic": "place", "body": {"order_id": "o2"}}))
        .await;
    assert_eq!(status, 422);

    let (_, m) = message(&host, "pg-ok").await;
    assert_eq!(m["status"], "processed", "{m}");
    assert_eq!(m["modules"][0]["output"]["available"], 5, "{m}");
    assert!(
        m["modules"][0]["processed_at"]
            .as_str()
            .unwrap()
            .ends_with('Z'),
        "{m}"
    );
    let (_, m) = message(&host, "pg-rej").await;
    assert_eq!(m["status"], "failed", "{m}");
    assert_eq!(m["modules"][0]["error"]["kind"], "rejected", "{m}");
    let (_, m) = message(&host, "pg-bad").await;
    assert_eq!(m["status"], "dead-lettered", "{m}");
    assert_eq!(message(&host, "pg-never").await.0, 404);

    // Still invalid when replayed: it fails again and stays queued.
    let (status, summary) = host
        .admin(Method::POST, "/v1/dead-letters/replay?topic=orders")
        .await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(
        (summary["replayed"].as_u64(), summary["failed"].as_u64()),
        (Some(0), Some(1)),
        "{summary}"
    );
    assert_eq!(
        summary["results"][0]["error"]["kind"], "invalid",
        "{summary}"
    );

    // The restocked event went through the outbox to its stream and was
    // read by orders' group.
    let events = format!("{}inventory.events", streams.prefix);
    let samples = eventually(
        "outbox and stream drained",
        Duration::from_secs(10),
        || async {
            let (_, samples) = scrape(&host).await;
            (sample(&samples, "switchyard_outbox_backlog", &[]) == Some(0.0)
                && lag_of(&samples, &events) == Some(0.0))
            .then_some(samples)
        },
    )
    .await;
    assert_eq!(
        sample(
            &samples,
            "switchyard_outbox_oldest_unpublished_age_seconds",
            &[]
        ),
        Some(0.0)
    );
    assert_eq!(
        handled(&samples, "orders", "inventory.events", "processed"),
        1.0
    );
    let url = project.db_url();
    host.stop().await;
    crate::support::drop_postgres_database(&url).await;
}

#[tokio::test]
async fn retention_prunes_the_inbox_and_the_read_log_so_an_old_id_is_new_again() {
    // Two seconds: the duplicate check right after the first send stays inside the window.
    let retention = "[retention]\ninbox = \"2s\"\noutbox = \"1s\"\nevery = \"1s\"\n";
    let project = Project::new(&["orders", "inventory"], &format!("{retention}{EXAMPLES}"));
    let host = project.start().await;
    let restock = json!({
        "id": "old-1", "topic": "inventory", "subtopic": "restock",
        "body": {"sku": "kiwi", "qty": 2}
    });
    let (status, answer) = host.send(restock.clone()).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("processed"))
    );
    // Within the window the id is a duplicate.
    let (_, answer) = host.send(restock.clone()).await;
    assert_eq!(answer["status"], "duplicate", "{answer}");
    let pruned = |samples: &Samples, table: &str| {
        sample(samples, "switchyard_pruned_rows_total", &[("table", table)]).unwrap_or(0.0)
    };
    eventually("inbox and log pruned", Duration::from_secs(20), || async {
        let (_, samples) = scrape(&host).await;
        let db = project.db_url();
        let inbox = query_count(&db, "SELECT COUNT(*) FROM inbox WHERE message_id = 'old-1'").await;
        let outbox = query_count(&db, "SELECT COUNT(*) FROM outbox").await;
        (inbox == 0
            && outbox == 0
            && pruned(&samples, "inbox") >= 1.0
            && pruned(&samples, "outbox") >= 1.0)
            .then_some(())
    })
    .await;
    // Past the window the id is not recognised: the restock applies again.
    let (_, answer) = host.send(restock).await;
    assert_eq!(answer["status"], "processed", "{answer}");
    assert_eq!(stock(&host, "kiwi").await, 4);
    // The log keeps flowing after pruning: orders still sees inventory's events.
    let (status, answer) = host
        .command(
            "orders",
            "place",
            json!({"order_id": "r1", "sku": "kiwi", "qty": 1}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    eventually("r1 confirmed", Duration::from_secs(10), || async {
        let (_, a) = host
            .command("orders", "get", json!({"order_id": "r1"}))
            .await;
        (a["output"]["status"] == "confirmed").then_some(())
    })
    .await;
    host.stop().await;
}
