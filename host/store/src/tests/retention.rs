//! Retention: pruning old inbox records, and outbox entries no reader
//! needs any more.

use super::*;

pub(super) async fn pruning_forgets_old_ids_and_keeps_what_a_reader_still_needs(store: Store) {
    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);
    const NOW: std::time::Duration = std::time::Duration::ZERO;
    let read_up_to = |topic: &str, seq: i64| {
        OutboxReaders::EmbeddedLog([(topic.to_string(), seq)].into_iter().collect())
    };
    store
        .commit(&commit("m1", &[], &[event("e1", "t", "1")]))
        .await
        .unwrap();
    // e2 on the read topic, u1 on a topic nobody consumes.
    let events = [event("e2", "t", "2"), event("u1", "u", "3")];
    store.commit(&commit("m2", &[], &events)).await.unwrap();
    let log = store.read_log(0, &["t".to_string()], 10).await.unwrap();
    let (e1, e2) = (log[0].seq, log[1].seq);
    // The readers of `t` have read e1, not e2.
    let readers = read_up_to("t", e1);

    // Nothing is an hour old yet.
    assert_eq!(store.prune_inbox(HOUR, 100).await.unwrap(), 0);
    assert_eq!(store.prune_outbox(HOUR, 100, &readers).await.unwrap(), 0);

    // Inbox: in batches of `limit`, until nothing is left.
    assert_eq!(store.prune_inbox(NOW, 1).await.unwrap(), 1);
    assert_eq!(store.prune_inbox(NOW, 100).await.unwrap(), 1);
    assert_eq!(store.prune_inbox(NOW, 100).await.unwrap(), 0);
    assert_eq!(store.inbox_answer("inventory", "m1").await.unwrap(), None);
    // A forgotten id is a new message again.
    store.commit(&commit("m1", &[], &[])).await.unwrap();

    // Embedded log: e1 is read, u1 has no reader, e2 is still to be read.
    assert_eq!(store.prune_outbox(NOW, 100, &readers).await.unwrap(), 2);
    assert_eq!(whole_log(&store, &["t", "u"]).await, ["e2"]);
    // With a broker, what the relay has not sent stays, whatever its age.
    let relay = OutboxReaders::Relay;
    assert_eq!(store.prune_outbox(NOW, 100, &relay).await.unwrap(), 0);
    store.mark_published(&[e2]).await.unwrap();
    assert_eq!(store.prune_outbox(NOW, 100, &relay).await.unwrap(), 1);
    assert!(whole_log(&store, &["t"]).await.is_empty());
    // Seqs are never reused, so positions stay valid after pruning.
    store
        .commit(&commit("m3", &[], &[event("e3", "t", "3")]))
        .await
        .unwrap();
    let log = store.read_log(e2, &["t".to_string()], 10).await.unwrap();
    assert_eq!(log.len(), 1);
    assert!(log[0].seq > e2, "{} after {e2}", log[0].seq);
    let unread = read_up_to("t", log[0].seq - 1);
    assert_eq!(store.prune_outbox(NOW, 100, &unread).await.unwrap(), 0);
    // No consumer at all: nobody will read it (a new one starts at the end).
    let nobody = OutboxReaders::EmbeddedLog(Default::default());
    assert_eq!(store.prune_outbox(NOW, 100, &nobody).await.unwrap(), 1);
}
