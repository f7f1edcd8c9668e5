//! Many messages on one document (a hot key, no partition key): after a
//! version conflict a message's further tries queue behind that document
//! instead of all rerunning at once.

use super::*;

/// Tries rerun after a conflict, as `/metrics` counts them.
fn conflicts(h: &Harness, name: &str) -> u64 {
    let text = h.dispatcher.metrics().render();
    let label = format!("module=\"{name}\"");
    text.lines()
        .find(|l| l.starts_with(crate::metrics::CONFLICTS) && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restocks_of_one_sku_apply_once_each_with_at_most_one_conflict_apiece() {
    const N: usize = 64;
    let (scripted, h) = scripted_inventory().await;
    // Each commit takes 2 ms: the messages running beside it read the
    // version it is changing, as against a real database.
    scripted.commit_ms.store(2, Ordering::Relaxed);
    let ids: Vec<String> = (0..N).map(|n| format!("hot-{n}")).collect();
    let sends = ids
        .iter()
        .map(|id| h.send(id, "inventory", "restock", json!({"sku": "kiwi", "qty": 1})));
    for outcome in futures_util::future::join_all(sends).await {
        processed(outcome);
    }
    let stock = h.memory.document("inventory", "stock", "kiwi");
    assert_eq!(
        doc_json(stock),
        Some((json!({"sku": "kiwi", "available": N}), N as u64))
    );
    // A message conflicts on its first try (run beside the others) and,
    // queued, at most rarely again (a newcomer's first try can still win).
    let reruns = conflicts(&h, "inventory");
    assert!(
        reruns <= 2 * N as u64,
        "{reruns} reruns for {N} messages: the hot key was not queued"
    );
    assert_eq!(h.instances("inventory"), N as u64 + reruns);
}
