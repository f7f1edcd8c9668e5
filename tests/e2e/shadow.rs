//! Shadow runs: a candidate version sees a copy of live traffic, its effects
//! discarded, its answers compared, then promoted or dropped.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::reload::variant;
use crate::support::{
    ADMIN_TOKEN, EXAMPLES, INVENTORY_ALONE, Project, TestHost, eventually, query_count, wasm,
};

/// `PUT /v1/admin/modules/{name}/shadow` with a component's bytes.
async fn start_shadow(host: &TestHost, name: &str, bytes: Vec<u8>) -> (u16, Value) {
    let response = host
        .client
        .put(format!("{}/v1/admin/modules/{name}/shadow", host.base))
        .bearer_auth(ADMIN_TOKEN)
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The shadow's status once every copy handed to it is compared and at
/// least `compared` were.
async fn settled(host: &TestHost, name: &str, compared: u64) -> Value {
    eventually(
        "the shadow to compare every copy",
        Duration::from_secs(30),
        || async {
            let (status, s) = host.get(&format!("/v1/modules/{name}/shadow")).await;
            assert_eq!(status, 200, "{s}");
            (s["counts"]["pending"] == 0 && s["counts"]["compared"].as_u64() >= Some(compared))
                .then_some(s)
        },
    )
    .await
}

/// inventory has no candidate: no file, no status.
async fn no_shadow_left(project: &Project, host: &TestHost) {
    let file = project.dir.path().join("plugins/inventory.shadow.wasm");
    assert!(!file.exists(), "{} is left", file.display());
    let (status, _) = host.get("/v1/modules/inventory/shadow").await;
    assert_eq!(status, 404);
}

async fn order_status(host: &TestHost, id: &str) -> String {
    let (_, answer) = host.command("orders", "get", json!({"order_id": id})).await;
    answer["output"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_candidate_matches_every_message_and_leaves_no_trace() {
    let project = Project::new(&["orders", "inventory"], EXAMPLES);
    let host = project.start().await;
    let same_code = variant(&std::fs::read(wasm("inventory")).unwrap(), "candidate");
    let (status, answer) = start_shadow(&host, "inventory", same_code).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["counts"]["compared"], 0, "{answer}");

    // Mixed traffic: restocks of 10 skus, orders (reserved or out of stock
    // by inventory, as events), queries and failures of each kind.
    let mut inventory_messages = 0u64;
    for i in 0..200u64 {
        let sku = format!("sku-{}", i % 10);
        let (status, answer) = host
            .command(
                "inventory",
                "restock",
                json!({"sku": sku, "qty": 1 + i % 3}),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        inventory_messages += 1;
    }
    for i in 0..30u64 {
        let body =
            json!({"order_id": format!("o{i}"), "sku": format!("sku-{}", i % 10), "qty": 5 + i});
        let (status, answer) = host.command("orders", "place", body).await;
        assert_eq!(status, 200, "{answer}");
        // orders.events/placed reaches inventory, then orders' confirmed or
        // rejected on the same topic (acknowledged and ignored).
        inventory_messages += 2;
    }
    let failures = [
        (json!({"sku": "sku-1", "qty": 0}), 409),
        (json!({"sku": "sku-1", "qty": -1}), 422),
        (json!({"sku": "", "qty": 1}), 422),
    ];
    for (body, expected) in failures {
        let (status, answer) = host.command("inventory", "restock", body).await;
        assert_eq!(status, expected, "{answer}");
        inventory_messages += 1;
    }
    for sku in ["sku-3", "durian"] {
        host.command("inventory", "get", json!({"sku": sku})).await;
        inventory_messages += 1;
    }
    for i in 0..30 {
        let id = format!("o{i}");
        eventually(
            &format!("{id} settled"),
            Duration::from_secs(20),
            || async { (order_status(&host, &id).await != "placed").then_some(()) },
        )
        .await;
    }

    let s = settled(&host, "inventory", inventory_messages).await;
    let counts = &s["counts"];
    assert_eq!(counts["compared"], inventory_messages, "{s}");
    assert_eq!(counts["matched"], inventory_messages, "{s}");
    assert_eq!(counts["differed"]["total"], 0, "{s}");
    assert_eq!(counts["candidate_failed"], 0, "{s}");
    assert_eq!(counts["diverged_read"], 0, "{s}");
    assert_eq!(counts["skipped"], 0, "{s}");
    assert_eq!(s["differences"], json!([]), "{s}");

    // The candidate's writes and events went nowhere: each restock applied
    // once (20 per sku), each event of the live version once.
    let db = project.db_url();
    let restocked = query_count(
        &db,
        "SELECT COUNT(*) FROM outbox WHERE topic = 'inventory.events' AND subtopic = 'restocked'",
    )
    .await;
    assert_eq!(restocked, 200);
    let answered = query_count(
        &db,
        "SELECT COUNT(*) FROM outbox WHERE topic = 'inventory.events' AND subtopic IN ('reserved', 'out-of-stock')",
    )
    .await;
    assert_eq!(answered, 30);
    let version = query_count(
        &db,
        "SELECT version FROM documents WHERE module = 'inventory' AND collection = 'stock' AND key = 'sku-0'",
    )
    .await;
    let reservations = query_count(
        &db,
        "SELECT COUNT(*) FROM outbox WHERE subtopic = 'reserved' AND body LIKE '%\"sku-0\"%'",
    )
    .await;
    assert_eq!(version, 20 + reservations);
    let text = host
        .client
        .get(format!("{}/metrics", host.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(&format!(
            "switchyard_shadow_messages_total{{module=\"inventory\",result=\"matched\"}} {inventory_messages}"
        )),
        "{text}"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_rule_shows_exactly_the_messages_it_changes_then_drop_keeps_v1() {
    let project = Project::new(&["inventory"], INVENTORY_ALONE);
    let host = project.start().await;
    let (status, answer) = start_shadow(
        &host,
        "inventory",
        std::fs::read(wasm("inventory_capped")).unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["candidate"]["version"], "0.2.0-capped");

    for i in 0..50 {
        let (status, _) = host
            .command(
                "inventory",
                "restock",
                json!({"sku": format!("s{}", i % 5), "qty": 1 + i % 100}),
            )
            .await;
        assert_eq!(status, 200);
    }
    for i in 0..5 {
        let (status, answer) = host
            .send(json!({"id": format!("big-{i}"), "topic": "inventory", "subtopic": "restock", "body": {"sku": "s0", "qty": 150}}))
            .await;
        assert_eq!(status, 200, "the live version accepts it: {answer}");
    }
    let s = settled(&host, "inventory", 55).await;
    let counts = &s["counts"];
    assert_eq!(counts["compared"], 55, "{s}");
    assert_eq!(counts["matched"], 50, "{s}");
    for part in ["total", "outcome", "answer", "writes", "events"] {
        assert_eq!(counts["differed"][part], 5, "{part}: {s}");
    }
    let differences = s["differences"].as_array().unwrap();
    let mut ids: Vec<&str> = differences
        .iter()
        .map(|d| d["message_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["big-0", "big-1", "big-2", "big-3", "big-4"]);
    let d = &differences[0];
    assert_eq!(d["live"]["outcome"], "ok", "{d}");
    assert_eq!(d["live"]["answer"]["sku"], "s0", "{d}");
    assert_eq!(d["candidate"]["outcome"], "rejected", "{d}");
    assert!(
        d["candidate"]["answer"]["error"]
            .as_str()
            .unwrap()
            .contains("more than 100 units"),
        "{d}"
    );
    assert!(
        d["diff"]
            .as_str()
            .unwrap()
            .contains(r#"outcome: "ok" -> "rejected""#),
        "{d}"
    );
    assert_eq!(d["live"]["events"][0]["subtopic"], "restocked", "{d}");

    // Above the allowed difference rate: not promoted.
    let (status, answer) = host
        .admin(
            Method::POST,
            "/v1/admin/modules/inventory/shadow/promote?max-diff-rate=0.01",
        )
        .await;
    assert_eq!(status, 409, "{answer}");

    // The candidate survives a restart (counts start again).
    host.stop().await;
    let host = project.start().await;
    let (status, s) = host.get("/v1/modules/inventory/shadow").await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["candidate"]["version"], "0.2.0-capped", "{s}");

    // Dropped: v1 untouched and serving, no shadow.
    let (status, answer) = host
        .admin(Method::DELETE, "/v1/admin/modules/inventory/shadow")
        .await;
    assert_eq!(status, 200, "{answer}");
    no_shadow_left(&project, &host).await;
    let (status, answer) = host
        .command("inventory", "restock", json!({"sku": "s0", "qty": 150}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let version = query_count(
        &project.db_url(),
        "SELECT version FROM documents WHERE module = 'inventory' AND collection = 'stock' AND key = 's0'",
    )
    .await;
    assert_eq!(version, 10 + 5 + 1, "only the live version wrote");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_swaps_the_candidate_in_under_load_without_a_failed_request() {
    let project = Project::new(&["inventory"], INVENTORY_ALONE);
    let host = project.start().await;
    let candidate = variant(&std::fs::read(wasm("inventory")).unwrap(), "next");
    let (status, answer) = start_shadow(&host, "inventory", candidate.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let sha = answer["candidate"]["sha256"].as_str().unwrap().to_string();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|worker| {
            let client = host.client.clone();
            let base = host.base.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut sent, mut failed) = (0u64, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let response = client
                        .post(format!("{base}/v1/topics/inventory/restock"))
                        .json(&json!({"sku": format!("w{worker}"), "qty": 1}))
                        .send()
                        .await
                        .unwrap();
                    sent += 1;
                    if response.status() != 200 {
                        failed.push(response.text().await.unwrap_or_default());
                    }
                }
                (sent, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, answer) = host
        .admin(
            Method::POST,
            "/v1/admin/modules/inventory/shadow/promote?max-diff-rate=0",
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["promoted"]["sha256"], sha, "{answer}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = 0;
    for worker in load {
        let (n, failed) = worker.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        sent += n;
    }
    assert!(sent > 0);
    // The candidate serves, from the module's own file; no shadow is left.
    let (_, modules) = host.get("/v1/modules").await;
    assert_eq!(modules["modules"][0]["sha256"], sha, "{modules}");
    assert_eq!(
        std::fs::read(project.dir.path().join("plugins/inventory.wasm")).unwrap(),
        candidate
    );
    no_shadow_left(&project, &host).await;
    // Every restock applied once.
    let applied = query_count(
        &project.db_url(),
        "SELECT COALESCE(SUM(version), 0) FROM documents WHERE module = 'inventory' AND collection = 'stock'",
    )
    .await;
    assert_eq!(applied, i64::try_from(sent).unwrap());
    host.stop().await;
}

#[tokio::test]
async fn a_candidate_that_declares_another_name_is_refused_and_nothing_changes() {
    let project = Project::new(&["inventory"], INVENTORY_ALONE);
    let host = project.start().await;
    let (status, answer) =
        start_shadow(&host, "inventory", std::fs::read(wasm("slow")).unwrap()).await;
    assert_eq!(status, 422, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("must declare 'inventory'"), "{message}");
    no_shadow_left(&project, &host).await;
    let (status, answer) =
        start_shadow(&host, "nobody", std::fs::read(wasm("inventory")).unwrap()).await;
    assert_eq!(status, 404, "{answer}");
    host.stop().await;
}

/// Sends 10 restocks the capped candidate takes and 2 it refuses (`big-*`)
/// through `send`, then checks the shadow found exactly those 2.
async fn capped_finds_the_two_big_restocks<F, Fut>(host: &TestHost, send: F)
where
    F: Fn(String, u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (status, answer) = start_shadow(
        host,
        "inventory",
        std::fs::read(wasm("inventory_capped")).unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    for i in 0..10 {
        send(format!("small-{i}"), 1 + i).await;
    }
    for i in 0..2 {
        send(format!("big-{i}"), 500).await;
    }
    let s = settled(host, "inventory", 12).await;
    assert_eq!(s["counts"]["compared"], 12, "{s}");
    assert_eq!(s["counts"]["differed"]["total"], 2, "{s}");
    let mut ids: Vec<&str> = s["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["message_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["big-0", "big-1"], "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_compares_the_same_on_postgresql_and_from_a_redis_stream() {
    // PostgreSQL, commands over HTTP.
    let project = Project::postgres(&["inventory"], INVENTORY_ALONE).await;
    let host = project.start().await;
    capped_finds_the_two_big_restocks(&host, |id, qty| {
        let host = &host;
        async move {
            let (status, answer) = host
                .send(json!({"id": id, "topic": "inventory", "subtopic": "restock", "body": {"sku": "p", "qty": qty}}))
                .await;
            assert_eq!(status, 200, "{answer}");
        }
    })
    .await;
    // Only the live version wrote: one version per restock.
    let version = query_count(
        &project.db_url(),
        "SELECT version FROM documents WHERE module = 'inventory' AND collection = 'stock' AND key = 'p'",
    )
    .await;
    assert_eq!(version, 12);
    host.stop().await;

    // A Redis stream feeding the module (flat entries), SQLite.
    let streams = crate::redis_streams::Streams::new().await;
    let project =
        crate::redis_streams::project_with(&streams, &["inventory"], INVENTORY_ALONE, 30_000);
    let host = project.start().await;
    capped_finds_the_two_big_restocks(&host, |id, qty| {
        let streams = &streams;
        async move {
            let body = json!({"sku": "r", "qty": qty}).to_string();
            streams
                .xadd(
                    "inventory",
                    &[("id", &id), ("subtopic", "restock"), ("body", &body)],
                )
                .await;
        }
    })
    .await;
    host.stop().await;
}
