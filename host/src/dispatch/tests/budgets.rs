//! Per-message budgets with a real hostile component: what it buffers,
//! scans and answers is bounded, refused with an error value or failed as
//! a trap, and nothing over budget is stored.

use super::*;

const HOSTILE: &str = r#"
[modules.hostile]
file = "hostile.wasm"
topics = ["hostile"]
max-attempts = 1
backoff-ms = 1
"#;

#[tokio::test]
async fn a_message_buffering_past_its_write_budget_gets_too_large() {
    let h = Harness::new(&["hostile"], HOSTILE).await;
    let body = json!({"values": 12, "kib": 1024});
    let answer = processed(h.send("fill-1", "hostile", "fill", body).await);
    let out = output(&answer);
    // 1 MiB + collection + key each: seven fit the default 8 MiB.
    assert_eq!(out["stored"], json!(7), "{out}");
    let error = out["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("too large") && error.contains("max-write-bytes"),
        "{out}"
    );
}

#[tokio::test]
async fn a_scan_past_its_byte_budget_gets_too_large_and_what_fits() {
    let h = Harness::new(&["hostile"], HOSTILE).await;
    let value = format!("\"{}\"", "x".repeat((1 << 20) - 2));
    for i in 0..10 {
        h.memory.put("hostile", "blobs", &format!("b{i}"), &value);
    }
    let answer = processed(h.send("scan-1", "hostile", "scan-all", json!({})).await);
    let out = output(&answer);
    let error = out["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("too large") && error.contains("at most 3"),
        "{out}"
    );
}

#[tokio::test]
async fn an_answer_over_its_budget_fails_as_a_trap_and_stores_nothing() {
    let h = Harness::new(&["hostile"], HOSTILE).await;
    let outcome = h
        .send("big-1", "hostile", "big-answer", json!({"kib": 2048}))
        .await;
    let Outcome::Failed(over) = outcome else {
        let said = format!("{outcome:?}");
        panic!("expected a failure, got {}", &said[..said.len().min(200)]);
    };
    assert_eq!(over.kind, FailureKind::Trap);
    assert!(
        over.message.contains("max-answer-bytes"),
        "{}",
        over.message
    );
    assert_eq!(
        h.memory.inbox_answer("hostile", "big-1").await.unwrap(),
        None
    );
    // Under the budget it is answered and kept for duplicates.
    processed(
        h.send("big-2", "hostile", "big-answer", json!({"kib": 512}))
            .await,
    );
    assert!(
        h.memory
            .inbox_answer("hostile", "big-2")
            .await
            .unwrap()
            .is_some()
    );
}
