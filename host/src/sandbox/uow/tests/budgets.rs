//! What one message may make the host hold (buffered writes and events,
//! one scan, the documents it reads) and which keys it may use: refused
//! with an error value, never by growing the host.

use super::*;
use switchyard_model::grants::Budgets;

/// A JSON string value of exactly 1 MiB (quotes included).
fn mib_value() -> String {
    format!("\"{}\"", "x".repeat(MAX_VALUE_BYTES - 2))
}

#[tokio::test]
async fn buffered_writes_and_events_of_one_message_are_bounded_in_bytes() {
    let store = Arc::new(MemoryStore::new());
    let mut uow = unit(&store);
    // 1 MiB + "stock" + "k0" each: seven fit the default 8 MiB, the eighth not.
    for i in 0..7 {
        let r = uow.put("stock", &format!("k{i}"), mib_value(), None).await;
        assert_eq!(r, Ok(1), "write {i}");
    }
    let over = uow.put("stock", "k7", mib_value(), None).await;
    assert!(
        matches!(&over, Err(RepoFailure::TooLarge(m)) if m.contains("max-write-bytes")),
        "{over:?}"
    );
    // Writing a document again replaces what it holds: not more.
    assert_eq!(uow.put("stock", "k0", mib_value(), None).await, Ok(1));
    // Events count against the same budget.
    let event = uow.emit(
        "inventory.events".into(),
        "e".into(),
        mib_value(),
        Vec::new(),
    );
    assert!(
        matches!(&event, Err(EmitFailure::TooLarge(m)) if m.contains("max-write-bytes")),
        "{event:?}"
    );
    // A smaller document still fits, and deleting one makes room.
    assert_eq!(uow.put("stock", "small", "1".into(), None).await, Ok(1));
    uow.delete("stock", "k6", None).await.unwrap();
    assert_eq!(uow.put("stock", "k7", mib_value(), None).await, Ok(1));
    let (writes, _) = uow.into_parts();
    assert_eq!(writes.len(), 8);
}

#[tokio::test]
async fn a_scan_answers_too_large_past_its_byte_budget_and_says_what_fits() {
    let store = Arc::new(MemoryStore::new());
    for i in 0..10 {
        store.put("inventory", "blobs", &format!("b{i}"), &mib_value());
    }
    let mut uow = unit_of(&store, grants("inventory", &[], &["inventory"]));
    // 1 MiB + a 2-byte key each: three fit the default 4 MiB.
    let r = uow.scan("blobs", "", u32::MAX).await;
    assert!(
        matches!(&r, Err(RepoFailure::TooLarge(m)) if m.contains("at most 3") && m.contains("max-scan-bytes")),
        "{:?}",
        r.map(|rows| rows.len())
    );
    assert_eq!(
        keys(&uow.scan("blobs", "", 3).await.unwrap()),
        ["b0", "b1", "b2"]
    );
    let r = uow.read_scan("inventory", "blobs", "b", 4).await;
    assert!(
        matches!(&r, Err(RepoFailure::TooLarge(m)) if m.contains("at most 3")),
        "{:?}",
        r.map(|rows| rows.len())
    );
    // Small documents: the limit, not the budget, ends the scan.
    store.put("inventory", "small", "a", "1");
    assert_eq!(keys(&uow.scan("small", "", u32::MAX).await.unwrap()), ["a"]);
}

#[tokio::test]
async fn keys_must_be_non_empty_without_control_characters() {
    let store = Arc::new(MemoryStore::new());
    let mut uow = unit(&store);
    for bad in ["", "a\0b", "line\nbreak", "tab\t", "del\u{7f}", "c1\u{85}"] {
        let put = uow.put("stock", bad, "1".into(), None).await;
        assert!(
            matches!(put, Err(RepoFailure::Invalid(_))),
            "put {bad:?}: {put:?}"
        );
        let get = uow.get("stock", bad).await;
        assert!(
            matches!(get, Err(RepoFailure::Invalid(_))),
            "get {bad:?}: {get:?}"
        );
        let delete = uow.delete("stock", bad, None).await;
        assert!(
            matches!(delete, Err(RepoFailure::Invalid(_))),
            "delete {bad:?}: {delete:?}"
        );
    }
    // A prefix may be empty, but not hold control characters.
    assert_eq!(uow.scan("stock", "", 10).await, Ok(Vec::new()));
    let r = uow.scan("stock", "a\0", 10).await;
    assert!(matches!(r, Err(RepoFailure::Invalid(_))), "{r:?}");
    // Unicode that is not a control character is a fine key.
    assert_eq!(uow.put("stock", "pomme-été", "1".into(), None).await, Ok(1));
    assert_eq!(
        uow.into_parts().0.len(),
        1,
        "only the valid put was buffered"
    );
}

/// A unit of work of `inventory` with these budgets.
fn unit_with(store: &Arc<MemoryStore>, budgets: Budgets) -> UnitOfWork {
    let grants = Arc::new(Grants {
        name: "inventory".into(),
        emits: vec!["inventory.events".into()],
        reads: vec!["inventory".into()],
        budgets,
        ..Grants::default()
    });
    unit_of(store, grants)
}

#[tokio::test]
async fn budgets_come_from_the_modules_grants() {
    let store = Arc::new(MemoryStore::new());
    let budgets = Budgets {
        write_bytes: 100,
        scan_bytes: 100,
        answer_bytes: 100,
    };
    let mut uow = unit_with(&store, budgets);
    let value = format!("\"{}\"", "x".repeat(80));
    // "stock" + "a" + 82 bytes: fits 100; a second one does not.
    assert_eq!(uow.put("stock", "a", value.clone(), None).await, Ok(1));
    let r = uow.put("stock", "b", value.clone(), None).await;
    assert!(matches!(r, Err(RepoFailure::TooLarge(_))), "{r:?}");
    let r = uow.emit(
        "inventory.events".into(),
        "e".into(),
        "1".repeat(20),
        Vec::new(),
    );
    assert!(matches!(r, Err(EmitFailure::TooLarge(_))), "{r:?}");

    store.put("inventory", "docs", "a", &value);
    store.put("inventory", "docs", "b", &value);
    assert_eq!(keys(&uow.scan("docs", "", 1).await.unwrap()), ["a"]);
    let r = uow.scan("docs", "", 2).await;
    assert!(
        matches!(&r, Err(RepoFailure::TooLarge(m)) if m.contains("at most 1")),
        "{r:?}"
    );
}

/// A store that records what its scans loaded.
struct Counting {
    inner: Arc<MemoryStore>,
    loaded: std::sync::Mutex<Vec<usize>>,
}

impl MessageStore for Counting {
    fn get<'a>(
        &'a self,
        m: &'a str,
        c: &'a str,
        k: &'a str,
    ) -> switchyard_store::message::StoreFuture<'a, Option<Document>> {
        self.inner.get(m, c, k)
    }

    fn scan<'a>(
        &'a self,
        m: &'a str,
        c: &'a str,
        prefix: &'a str,
        limit: u32,
        max_bytes: usize,
    ) -> switchyard_store::message::StoreFuture<'a, Vec<(String, Document)>> {
        Box::pin(async move {
            let rows = self.inner.scan(m, c, prefix, limit, max_bytes).await?;
            let bytes = rows.iter().map(|(k, d)| switchyard_store::scan_size(k, d));
            self.loaded.lock().unwrap().push(bytes.sum());
            Ok(rows)
        })
    }

    fn inbox_answer<'a>(
        &'a self,
        m: &'a str,
        id: &'a str,
    ) -> switchyard_store::message::StoreFuture<'a, Option<String>> {
        self.inner.inbox_answer(m, id)
    }

    fn inbox_committed_at<'a>(
        &'a self,
        m: &'a str,
        id: &'a str,
    ) -> switchyard_store::message::StoreFuture<'a, Option<i64>> {
        self.inner.inbox_committed_at(m, id)
    }

    fn commit<'a>(&'a self, c: &'a Commit<'a>) -> switchyard_store::message::StoreFuture<'a, ()> {
        self.inner.commit(c)
    }

    fn record_failure<'a>(
        &'a self,
        d: Option<&'a switchyard_store::DeadLetter>,
        e: Option<&'a Envelope>,
    ) -> switchyard_store::message::StoreFuture<'a, ()> {
        self.inner.record_failure(d, e)
    }

    fn append<'a>(
        &'a self,
        e: &'a [Envelope],
        source: &'a str,
    ) -> switchyard_store::message::StoreFuture<'a, ()> {
        self.inner.append(e, source)
    }
}

#[tokio::test]
async fn the_store_stops_loading_a_scan_at_its_byte_budget() {
    let memory = Arc::new(MemoryStore::new());
    for i in 0..300 {
        memory.put("inventory", "blobs", &format!("b{i:03}"), &mib_value());
    }
    let counting = Arc::new(Counting {
        inner: memory,
        loaded: Default::default(),
    });
    let grants = grants("inventory", &[], &["inventory"]);
    let mut uow = UnitOfWork::new(grants, counting.clone(), meta());
    assert!(uow.scan("blobs", "", u32::MAX).await.is_err());
    assert!(
        uow.read_scan("inventory", "blobs", "", 1_000)
            .await
            .is_err()
    );
    let budget = Budgets::default().scan_bytes;
    for loaded in counting.loaded.lock().unwrap().iter() {
        // The budget plus the one document that crossed it, not 300 MiB.
        assert!(*loaded <= budget + MAX_VALUE_BYTES + 4, "{loaded}");
    }
}

#[tokio::test]
async fn reads_past_the_budget_keep_only_versions_and_see_one_version() {
    let store = Arc::new(MemoryStore::new());
    for i in 0..6 {
        store.put("inventory", "blobs", &format!("b{i}"), &mib_value());
    }
    let mut uow = unit(&store);
    for i in 0..6 {
        let doc = uow.get("blobs", &format!("b{i}")).await.unwrap().unwrap();
        assert_eq!(doc.value.len(), MAX_VALUE_BYTES);
    }
    // 4 MiB keeps three values whole; the rest only by version.
    assert!(
        uow.seen_bytes <= Budgets::default().scan_bytes,
        "{}",
        uow.seen_bytes
    );
    // Read again unchanged: the same document, from the store.
    assert_eq!(uow.get("blobs", "b5").await.unwrap().unwrap().version, 1);
    // A put still bases itself on the version first read.
    assert_eq!(uow.put("blobs", "b4", "1".into(), Some(1)).await, Ok(2));
    // Moved on meanwhile: the message saw two versions; it runs again.
    store.put("inventory", "blobs", "b5", "2");
    let r = uow.get("blobs", "b5").await;
    assert_eq!(r, Err(RepoFailure::VersionConflict(2)));
    assert!(uow.conflicted.is_some());
    // A value kept whole is still the one first read.
    store.put("inventory", "blobs", "b0", "2");
    assert_eq!(uow.get("blobs", "b0").await.unwrap().unwrap().version, 1);
}

#[tokio::test]
async fn many_distinct_reads_are_bounded_too() {
    let store = Arc::new(MemoryStore::new());
    let budgets = Budgets {
        scan_bytes: 4096,
        ..Budgets::default()
    };
    let mut uow = unit_with(&store, budgets);
    let mut read = 0;
    let refused = loop {
        match uow.get("stock", &format!("k{read}")).await {
            Ok(_) => read += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(&refused, RepoFailure::TooLarge(m) if m.contains("max-scan-bytes")));
    assert!((40..64).contains(&read), "{read} reads remembered in 4 KiB");
}
