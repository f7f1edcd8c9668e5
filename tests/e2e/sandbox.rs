//! Hostile modules and hostile input never hurt the host or another module:
//! each attack runs while honest traffic flows to the example modules.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{EXAMPLES, Project, TestHost};

const HOSTILE: &str = r#"
[modules.hostile]
file = "hostile.wasm"
max-memory-mb = 64
timeout-ms = 300
max-attempts = 1
"#;

/// Restocks `sku` by 1 in a loop until stopped; returns (sent, failed).
fn honest_traffic(
    host: &TestHost,
    sku: &'static str,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<(u64, u64)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let client = host.client.clone();
    let url = format!("{}/v1/messages", host.base);
    let done = stop.clone();
    let task = tokio::spawn(async move {
        let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
        while !done.load(Ordering::Relaxed) {
            let envelope = json!({"topic": "inventory", "subtopic": "restock", "body": {"sku": sku, "qty": 1}});
            let response = client.post(&url).body(envelope.to_string()).send().await;
            match response {
                Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                _ => failed.fetch_add(1, Ordering::Relaxed),
            };
        }
        (ok.into_inner(), failed.into_inner())
    });
    (stop, task)
}

async fn with_hostile() -> (Project, TestHost) {
    let project = Project::new(
        &["orders", "inventory", "hostile"],
        &format!("{EXAMPLES}{HOSTILE}"),
    );
    let host = project.start().await;
    (project, host)
}

fn error_of(answer: &Value) -> (String, String) {
    (
        answer["error"]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_memory_bombs_stack_overflows_and_panics_are_contained() {
    let (_project, host) = with_hostile().await;
    let (stop, traffic) = honest_traffic(&host, "honest");

    let (status, answer) = host.command("hostile", "spin", json!({})).await;
    assert_eq!(status, 504, "{answer}");
    assert_eq!(error_of(&answer).0, "timeout");

    let (status, answer) = host.command("hostile", "hog", json!({"mb": 1024})).await;
    assert_eq!(status, 500, "{answer}");
    let (kind, message) = error_of(&answer);
    assert_eq!(kind, "trap");
    assert!(message.contains("memory"), "{message}");

    // Within its 64 MiB the same code works.
    let (status, answer) = host.command("hostile", "hog", json!({"mb": 8})).await;
    assert_eq!(status, 200, "{answer}");

    let (status, answer) = host
        .command("hostile", "recurse", json!({"depth": 10_000_000}))
        .await;
    assert_eq!(status, 500, "{answer}");
    // Rust's stack lives in linear memory: overflowing it is an out-of-bounds
    // access, reported with the function that overflowed.
    let (kind, message) = error_of(&answer);
    assert_eq!(kind, "trap");
    assert!(message.contains("hostile::deeper"), "{message}");

    let (status, answer) = host.command("hostile", "panic", json!({})).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(error_of(&answer).0, "trap");

    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = traffic.await.unwrap();
    assert_eq!(
        failed, 0,
        "honest requests failed while the hostile module ran"
    );
    assert!(ok > 0);
    let (_, stock) = host
        .command("inventory", "get", json!({"sku": "honest"}))
        .await;
    assert_eq!(
        stock["output"]["available"], ok,
        "every honest restock applied once"
    );

    let (_, modules) = host.get("/v1/modules").await;
    let hostile = modules["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "hostile")
        .unwrap()
        .clone();
    assert_eq!(hostile["failed"], 4, "{hostile}");
    host.stop().await;
}

#[tokio::test]
async fn oversized_values_and_event_floods_are_refused_to_the_module() {
    let (_project, host) = with_hostile().await;
    let (status, answer) = host.command("hostile", "big-value", json!({})).await;
    assert_eq!(status, 200, "{answer}");
    let error = answer["output"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("too large"), "{answer}");

    let (status, answer) = host
        .command("hostile", "flood", json!({"events": 100_000}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["output"]["emitted"], 1_000,
        "the per-message event cap"
    );
    assert!(
        answer["output"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("more than 1000 events")
    );
    host.stop().await;
}

#[tokio::test]
async fn a_drop_in_claiming_an_owned_command_topic_is_refused() {
    let project = Project::new(&["orders", "inventory", "squatter"], EXAMPLES);
    let host = project.start().await;
    let (_, modules) = host.get("/v1/modules").await;
    let squatter = modules["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "squatter")
        .cloned();
    let squatter = squatter.expect("listed with its error");
    assert_eq!(squatter["status"], "failed");
    let error = squatter["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("command topic 'orders' is already owned by module 'orders'"),
        "{error}"
    );
    // orders keeps serving its topic.
    let (status, answer) = host
        .command(
            "orders",
            "place",
            json!({"order_id": "x", "sku": "none", "qty": 1}),
        )
        .await;
    assert_eq!(
        (status, error_of(&answer).1.as_str()),
        (409, "unknown sku 'none'")
    );
    host.stop().await;
}
