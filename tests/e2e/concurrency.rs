//! Optimistic concurrency: racing writers to one document lose nothing.

use serde_json::json;

use crate::support::{EXAMPLES, Project};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_restocks_of_one_sku_sum_exactly() {
    let project = Project::new(&["orders", "inventory"], EXAMPLES);
    let host = project.start().await;
    let mut tasks = Vec::new();
    let mut expected = 0u64;
    for i in 0..200u64 {
        let qty = i % 7 + 1;
        expected += qty;
        let client = host.client.clone();
        let url = format!("{}/v1/messages", host.base);
        tasks.push(tokio::spawn(async move {
            let envelope =
                json!({"topic": "inventory", "subtopic": "restock", "body": {"sku": "plum", "qty": qty}});
            let response = client.post(url).body(envelope.to_string()).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let (_, stock) = host
        .command("inventory", "get", json!({"sku": "plum"}))
        .await;
    assert_eq!(stock["output"]["available"], expected, "{stock}");
    host.stop().await;
}
