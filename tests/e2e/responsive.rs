//! Guests never starve the host: modules spinning to their timeout leave
//! `/healthz`, `/metrics` and other modules answering, and one module
//! cannot take more than its `max-concurrency` of the guest slots.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{EXAMPLES, Project, TestHost};

const SPINNER: &str = r#"
[modules.hostile]
file = "hostile.wasm"
timeout-ms = 1000
max-attempts = 1
"#;

/// How many guests spin at once: more than the runtime's worker threads.
const SPINNING: usize = 8;
/// Coarse: separates a stalled host (seconds: the guests held the workers
/// until their deadline) from a responsive one (tens of milliseconds; the
/// real figures come from `cargo bench --bench responsive`).
const RESPONSIVE: Duration = Duration::from_millis(250);

/// Starts `n` messages that spin to their timeout; each answers its status
/// and how long it took.
fn spin(host: &TestHost, n: usize) -> Vec<tokio::task::JoinHandle<(u16, String, Duration)>> {
    (0..n)
        .map(|_| {
            let client = host.client.clone();
            let url = format!("{}/v1/messages", host.base);
            tokio::spawn(async move {
                let started = Instant::now();
                let envelope = json!({"topic": "hostile", "subtopic": "spin", "body": {}});
                let response = client.post(url).body(envelope.to_string()).send().await;
                let response = response.expect("request");
                let status = response.status().as_u16();
                (
                    status,
                    response.text().await.expect("body"),
                    started.elapsed(),
                )
            })
        })
        .collect()
}

/// Asks `/healthz`, `/metrics` and `inventory/get` in turn, every 20 ms
/// for `span` (after a pause for the guests to start), from a thread and
/// runtime of its own (as a load balancer or another service would, outside
/// the host's runtime); each answer's time and what it was.
fn probe(base: String, span: Duration) -> std::thread::JoinHandle<Vec<(Duration, String)>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let client = reqwest::Client::new();
            let mut took = Vec::new();
            let mut round = 0;
            tokio::time::sleep(Duration::from_millis(150)).await;
            let probing = Instant::now();
            while probing.elapsed() < span {
                round += 1;
                let started = Instant::now();
                let (what, request) = match round % 3 {
                    0 => ("/healthz", client.get(format!("{base}/healthz"))),
                    1 => ("/metrics", client.get(format!("{base}/metrics"))),
                    _ => (
                        "inventory get",
                        client
                            .post(format!("{base}/v1/topics/inventory/get"))
                            .body(r#"{"sku":"fig"}"#),
                    ),
                };
                let response = request.send().await.expect("request");
                assert_eq!(response.status(), 200, "{what}");
                let body = response.text().await.expect("body");
                if what == "inventory get" {
                    assert!(body.contains("\"available\":3"), "{body}");
                }
                took.push((started.elapsed(), what.to_string()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            took
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_metrics_and_other_modules_answer_while_eight_guests_spin() {
    let project = Project::new(
        &["orders", "inventory", "hostile"],
        &format!("{EXAMPLES}{SPINNER}"),
    );
    let host = project.start().await;
    // Warm: the first request of each kind pays for connection setup.
    let (status, _) = host
        .command("inventory", "restock", json!({"sku": "fig", "qty": 3}))
        .await;
    assert_eq!(status, 200);

    // Started first and timed by its own clock: a host whose workers are
    // held cannot delay the questions, only their answers.
    let prober = probe(host.base.clone(), Duration::from_millis(800));
    let spinners = spin(&host, SPINNING);
    let mut worst = tokio::task::spawn_blocking(move || prober.join())
        .await
        .expect("join")
        .expect("prober");
    worst.sort();
    let slowest = worst.last().cloned().expect("polled while the guests spun");
    assert!(
        worst.len() >= 10 && slowest.0 < RESPONSIVE,
        "{} requests while {SPINNING} guests spun; slowest {:?} ({}); want every one under {RESPONSIVE:?}",
        worst.len(),
        slowest.0,
        slowest.1
    );
    for spinner in spinners {
        let (status, answer, took) = spinner.await.expect("spinner");
        // Still stopped at its own time limit, and reported as such.
        assert_eq!(status, 504, "{answer}");
        assert!(answer.contains("\"timeout\""), "{answer}");
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_runs_at_most_max_concurrency_messages_at_once() {
    let limited = SPINNER
        .replace("timeout-ms = 1000", "timeout-ms = 300")
        .replace("max-attempts = 1", "max-attempts = 1\nmax-concurrency = 2");
    let project = Project::new(
        &["orders", "inventory", "hostile"],
        &format!("{EXAMPLES}{limited}"),
    );
    let host = project.start().await;
    let (status, _) = host
        .command("inventory", "restock", json!({"sku": "fig", "qty": 1}))
        .await;
    assert_eq!(status, 200);
    let started = Instant::now();
    let spinners = spin(&host, 4);
    // The other modules keep their slots meanwhile.
    let (status, _) = host
        .command("inventory", "get", json!({"sku": "fig"}))
        .await;
    assert_eq!(status, 200);
    let mut took = Vec::new();
    for spinner in spinners {
        let (status, answer, _) = spinner.await.expect("spinner");
        assert_eq!(status, 504, "{answer}");
        took.push(started.elapsed());
    }
    let last = took.iter().max().copied().unwrap_or_default();
    // Four 300 ms messages, two at a time: two waves.
    assert!(
        last >= Duration::from_millis(580),
        "4 spins with max-concurrency = 2 all ended within {last:?}: they ran together"
    );
    host.stop().await;
}

/// `describe` runs under the same time slices and deadline as `handle`: a
/// module that never answers it is refused at its `timeout-ms`, and the host
/// starts and serves the others meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_describe_that_never_returns_is_stopped_at_its_timeout() {
    let stuck = "\n[modules.stuck]\nfile = \"stuck.wasm\"\ntimeout-ms = 300\n";
    let project = Project::new(
        &["orders", "inventory", "stuck"],
        &format!("{EXAMPLES}{stuck}"),
    );
    let started = Instant::now();
    let host = project.start().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "start took {:?}",
        started.elapsed()
    );
    let (_, modules) = host.get("/v1/modules").await;
    let stuck = modules["modules"]
        .as_array()
        .expect("modules")
        .iter()
        .find(|m| m["name"] == "stuck")
        .cloned()
        .expect("listed with its error");
    assert_eq!(stuck["status"], "failed", "{stuck}");
    let error = stuck["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("describe failed"), "{error}");
    let (status, _) = host
        .command("inventory", "restock", json!({"sku": "fig", "qty": 1}))
        .await;
    assert_eq!(status, 200);
    host.stop().await;
}
