//! The ids the host derives for Kafka records without one (README "Kafka"):
//! unique across a topic deleted and created again, and still matching what
//! an earlier host committed under the offset-only id.
//!
//! On be51ce0 (offset-only ids) the recreated-topic test fails: the new
//! topic's first record has the id of the old topic's first record, and the
//! inbox answers it as a duplicate. The upgrade test passes there (one id
//! format) and guards the look-up of the old id.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::json;

use crate::kafka_reload::create_topics;
use crate::kafka_topics::{Broker, envelope, kiwis};
use crate::reload::edit_manifest;
use crate::support::{INVENTORY_ALONE, Project, eventually};

/// From subscribe to first message tansu takes about 5 s; slack for a
/// loaded 2-core machine and a debug build.
const CONSUMED: Duration = Duration::from_secs(60);

fn restock(qty: u64) -> String {
    envelope("inventory", "restock", json!({"sku": "kiwi", "qty": qty}))
}

/// Deletes `topic` and waits until the broker no longer reports it.
async fn delete_topic(broker: &Broker, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .create()
        .expect("admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .delete_topics(&[topic], &options)
        .await
        .expect("delete topics");
    for result in results {
        result.unwrap_or_else(|(t, e)| panic!("delete {t}: {e}"));
    }
    let metadata: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("metadata client");
    eventually(
        &format!("{topic} deleted"),
        Duration::from_secs(30),
        || async {
            let listed = metadata
                .fetch_metadata(None, Duration::from_secs(5))
                .ok()?
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none());
            (!listed).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topics_records_are_not_taken_for_the_earlier_topics() {
    let broker = Broker::start();
    create_topics(&broker, &["inventory"]).await;
    let project = Project::new(
        &["inventory"],
        &format!("{}{INVENTORY_ALONE}", broker.section()),
    );
    let producer = broker.producer();
    let host = project.start().await;
    let first = broker
        .produce(&producer, "inventory", "kiwi", &restock(1))
        .await;
    eventually("the first kiwi", CONSUMED, || async {
        (kiwis(&host).await == Some(1)).then_some(())
    })
    .await;
    host.stop().await;

    delete_topic(&broker, "inventory").await;
    create_topics(&broker, &["inventory"]).await;
    // Timestamps are to the millisecond; make sure the clock moved on.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = broker
        .produce(&producer, "inventory", "kiwi", &restock(10))
        .await;
    assert_eq!(
        second, first,
        "the recreated topic's first record sits where the old one's did"
    );
    // Kafka drops the committed offsets of a deleted topic; a new group
    // stands for that (the host reads the new topic from its start).
    edit_manifest(&project, |m| {
        m.replace("group = \"test\"", "group = \"test-recreated\"")
    });
    let host = project.start().await;
    let seen = eventually("the recreated topic's record applied", CONSUMED, || async {
        kiwis(&host).await.filter(|n| *n != 1)
    })
    .await;
    assert_eq!(seen, 11, "one kiwi from the old topic, ten from the new");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_committed_under_its_offset_id_before_an_upgrade_is_not_applied_again() {
    let broker = Broker::start();
    create_topics(&broker, &["inventory"]).await;
    // First without Kafka: the host only creates the database.
    let project = Project::new(&["inventory"], INVENTORY_ALONE);
    project.start().await.stop().await;

    let producer = broker.producer();
    let (partition, offset) = broker
        .produce(&producer, "inventory", "kiwi", &restock(1))
        .await;
    // What an earlier host leaves when it is stopped right after committing
    // that record's unit of work, before the group's offset commit: the
    // inbox row under the offset-only id, written after the record existed.
    let pool = sqlx::SqlitePool::connect(&project.db_url())
        .await
        .expect("database");
    sqlx::query(
        "INSERT INTO inbox (module, message_id, answer, created_at)
         VALUES ('inventory', ?1, '{\"output\":{},\"events\":[]}', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
    )
    .bind(format!("kafka:inventory:{partition}:{offset}"))
    .execute(&pool)
    .await
    .expect("inbox row");
    pool.close().await;

    edit_manifest(&project, |m| format!("{}{m}", broker.section()));
    let host = project.start().await;
    // The same key: the same partition, after the first record.
    broker
        .produce(&producer, "inventory", "kiwi", &restock(10))
        .await;
    let seen = eventually("the later record applied", CONSUMED, || async {
        kiwis(&host).await.filter(|n| *n >= 10)
    })
    .await;
    assert_eq!(
        seen, 10,
        "the record handled before the upgrade was applied again"
    );
    host.stop().await;
}
