//! Within one Kafka partition, records of different keys are handled at
//! once and records of one key one after another, in offset order; the
//! committed offset never passes a record not yet applied.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::kafka_topics::{Broker, envelope, partitions, slow_applied};
use crate::support::{Project, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_keys_go_on_while_one_key_is_slow_and_each_key_keeps_its_order() {
    let broker = Broker::start();
    let section = broker
        .section()
        .replace("partitions = 3\n", "partitions = 1\n");
    let project = Project::new(
        &["slow"],
        &format!("{section}[modules.slow]\nfile = \"slow.wasm\"\ntimeout-ms = 10000\n"),
    );
    let host = project.start().await;
    partitions(&broker, "slow", 1).await;
    let producer = broker.producer();
    let db = project.db_url();
    let started = Instant::now();
    // First in the partition: a record that takes 6 s.
    let slow = envelope("slow", "spin", json!({"ms": 6_000}));
    let (partition, first) = broker.produce(&producer, "slow", "a", &slow).await;
    // Behind it, on the same partition, five quick ones of another key.
    let quick = envelope("slow", "spin", json!({"ms": 20}));
    for _ in 0..5 {
        let (p, _) = broker.produce(&producer, "slow", "b", &quick).await;
        assert_eq!(p, partition, "one partition");
    }
    let applied = eventually("key b's five records", Duration::from_secs(30), || async {
        let applied = slow_applied(&db).await;
        (applied.len() >= 5).then_some(applied)
    })
    .await;
    // They did not wait for key a's record: it is still running.
    assert!(
        !applied.contains(&(partition, first)),
        "b's records waited behind a's: {applied:?} after {:?}",
        started.elapsed()
    );
    let b: Vec<i64> = applied.iter().map(|(_, o)| *o).collect();
    assert_eq!(
        b,
        [first + 1, first + 2, first + 3, first + 4, first + 5],
        "key b in offset order"
    );
    let all = eventually("key a's record too", Duration::from_secs(30), || async {
        let applied = slow_applied(&db).await;
        (applied.len() == 6).then_some(applied)
    })
    .await;
    assert_eq!(all.last(), Some(&(partition, first)), "{all:?}");
    host.stop().await;
}
