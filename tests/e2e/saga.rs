//! SPEC §10: the orders / inventory saga over HTTP and the embedded log.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{EXAMPLES, Project, TestHost, eventually};

async fn order_status(host: &TestHost, order_id: &str) -> Value {
    let (status, answer) = host
        .command("orders", "get", json!({"order_id": order_id}))
        .await;
    assert_eq!(status, 200, "{answer}");
    answer["output"]["status"].clone()
}

#[tokio::test]
async fn restock_then_two_orders_ends_confirmed_rejected_and_three_left() {
    let project = Project::new(&["orders", "inventory"], EXAMPLES);
    let host = project.start().await;
    saga(&host).await;
    host.stop().await;
}

/// SPEC §10 against a running host (any store): restock 5, order 2, order 10.
pub(crate) async fn saga(host: &TestHost) {
    let (status, answer) = host
        .command("inventory", "restock", json!({"sku": "apple", "qty": 5}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "processed");
    assert_eq!(answer["output"], json!({"sku": "apple", "available": 5}));
    assert_eq!(answer["events"][0]["topic"], "inventory.events");

    let (status, answer) = host
        .command(
            "orders",
            "place",
            json!({"order_id": "o1", "sku": "apple", "qty": 2}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["output"]["status"], "placed");
    assert_eq!(
        answer["output"]["currency"], "EUR",
        "config reaches the module"
    );
    let placed = &answer["events"][0];
    assert_eq!(
        (placed["topic"].as_str(), placed["subtopic"].as_str()),
        (Some("orders.events"), Some("placed"))
    );
    assert_eq!(placed["headers"]["causation-id"], answer["id"]);
    assert!(placed["headers"]["timestamp"].is_string());

    let (status, answer) = host
        .command(
            "orders",
            "place",
            json!({"order_id": "o2", "sku": "apple", "qty": 10}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");

    eventually("o1 confirmed", Duration::from_secs(10), || async {
        (order_status(host, "o1").await == "confirmed").then_some(())
    })
    .await;
    eventually("o2 rejected", Duration::from_secs(10), || async {
        (order_status(host, "o2").await == "rejected").then_some(())
    })
    .await;
    let (_, stock) = host
        .command("inventory", "get", json!({"sku": "apple"}))
        .await;
    assert_eq!(stock["output"]["available"], 3, "{stock}");

    // The whole saga shares o1's correlation id.
    let (status, modules) = host.get("/v1/modules").await;
    assert_eq!(status, 200);
    // Other modules may be loaded beside them (e.g. the Python one).
    let listed = modules["modules"].as_array().unwrap();
    let module = |name: &str| listed.iter().find(|m| m["name"] == name);
    assert!(module("inventory").is_some(), "{modules}");
    let orders = module("orders").expect("orders is listed");
    assert!(orders["handled"].as_u64().unwrap() >= 5, "{modules}");
}

#[tokio::test]
async fn same_id_twice_is_applied_once_and_answers_duplicate() {
    let project = Project::new(&["orders", "inventory"], EXAMPLES);
    let host = project.start().await;
    let restock = json!({"id": "restock-1", "topic": "inventory", "subtopic": "restock", "body": {"sku": "pear", "qty": 4}});

    let (status, first) = host.send(restock.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "processed");
    let (status, second) = host.send(restock).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["status"], "duplicate");
    assert_eq!(second["output"], first["output"]);
    assert_eq!(second["events"], first["events"]);

    let (_, stock) = host
        .command("inventory", "get", json!({"sku": "pear"}))
        .await;
    assert_eq!(stock["output"]["available"], 4, "applied once: {stock}");
    host.stop().await;
}

#[tokio::test]
async fn wait_false_appends_to_the_log_and_the_owner_processes_it() {
    let project = Project::new(&["orders", "inventory"], EXAMPLES);
    let host = project.start().await;
    let (status, answer) = host
        .post_raw(
            "/v1/messages?wait=false",
            json!({"id": "later-1", "topic": "inventory", "subtopic": "restock", "body": {"sku": "fig", "qty": 7}})
                .to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["id"], "later-1");
    eventually("fig restocked", Duration::from_secs(10), || async {
        let (status, stock) = host
            .command("inventory", "get", json!({"sku": "fig"}))
            .await;
        (status == 200 && stock["output"]["available"] == 7).then_some(())
    })
    .await;
    // The same id again is recognised by the inbox: still 7.
    let (status, _) = host
        .post_raw(
            "/v1/messages?wait=false",
            json!({"id": "later-1", "topic": "inventory", "subtopic": "restock", "body": {"sku": "fig", "qty": 7}})
                .to_string(),
        )
        .await;
    assert_eq!(status, 202);
    let (status, again) = host
        .send(json!({"id": "later-1", "topic": "inventory", "subtopic": "restock", "body": {"sku": "fig", "qty": 7}}))
        .await;
    assert_eq!((status, again["status"].as_str()), (200, Some("duplicate")));
    let (_, stock) = host
        .command("inventory", "get", json!({"sku": "fig"}))
        .await;
    assert_eq!(stock["output"]["available"], 7);
    host.stop().await;
}

#[tokio::test]
async fn topic_endpoint_takes_headers_and_restart_keeps_state() {
    let project = Project::new(&["orders", "inventory"], EXAMPLES);
    let host = project.start().await;
    let response = host
        .client
        .post(format!("{}/v1/topics/inventory/restock", host.base))
        .header("X-Header-correlation-id", "corr-77")
        .header("X-Message-Id", "m-77")
        .body(r#"{"sku":"kiwi","qty":3}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["id"], "m-77");
    assert_eq!(answer["events"][0]["headers"]["correlation-id"], "corr-77");
    host.stop().await;

    // A new host on the same database sees the committed state and inbox.
    let host = project.start().await;
    let (_, stock) = host
        .command("inventory", "get", json!({"sku": "kiwi"}))
        .await;
    assert_eq!(stock["output"]["available"], 3);
    let (_, dup) = host.send(json!({"id": "m-77", "topic": "inventory", "subtopic": "restock", "body": {"sku": "kiwi", "qty": 3}})).await;
    assert_eq!(dup["status"], "duplicate");
    host.stop().await;
}
