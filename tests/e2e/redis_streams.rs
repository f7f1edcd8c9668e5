//! Redis Streams ingress and egress against the real Redis on 127.0.0.1:6379
//! (or `SWITCHYARD_TEST_REDIS`). Each test uses its own key prefix and group,
//! so tests run in parallel and repeat without cleanup.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{Value, json};

use crate::support::{
    EXAMPLES, FAULTY, Project, eventually, query_count, spawn_host, try_query_count,
};

const RECORDERS: &str = r#"
[modules.recorder_a]
file = "recorder_a.wasm"
topics = ["sequence"]
subscribes = ["inventory.events"]
[modules.recorder_b]
file = "recorder_b.wasm"
topics = []
subscribes = ["inventory.events"]
"#;

pub(crate) fn redis_url() -> String {
    std::env::var("SWITCHYARD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// A namespace in the shared Redis: its own key prefix and consumer group.
pub(crate) struct Streams {
    pub(crate) prefix: String,
    group: String,
    pub(crate) conn: redis::aio::MultiplexedConnection,
}

impl Streams {
    pub(crate) async fn new() -> Self {
        let tag = uuid::Uuid::now_v7().simple().to_string();
        let client = redis::Client::open(redis_url()).expect("redis url");
        // A loaded CI machine can take longer than redis-rs's default
        // response timeout to read a long stream back.
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(std::time::Duration::from_secs(30)));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("redis is running (see .ci/run)");
        Self {
            prefix: format!("t{tag}:"),
            group: format!("g{tag}"),
            conn,
        }
    }

    /// The `[redis]` section for this namespace.
    pub(crate) fn section(&self, claim_idle_ms: u64) -> String {
        format!(
            "[redis]\nurl = \"{}\"\ngroup = \"{}\"\nprefix = \"{}\"\nblock-ms = 200\nclaim-idle-ms = {claim_idle_ms}\n",
            redis_url(),
            self.group,
            self.prefix
        )
    }

    /// `XADD <prefix><topic> * field value ...` (the flat form of SPEC §6).
    pub(crate) async fn xadd(&self, topic: &str, fields: &[(&str, &str)]) -> String {
        let mut conn = self.conn.clone();
        conn.xadd(format!("{}{topic}", self.prefix), "*", fields)
            .await
            .expect("XADD")
    }

    async fn xlen(&self, topic: &str) -> usize {
        let mut conn = self.conn.clone();
        conn.xlen(format!("{}{topic}", self.prefix))
            .await
            .expect("XLEN")
    }

    async fn entries(&self, topic: &str) -> Vec<redis::streams::StreamId> {
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamRangeReply = conn
            .xrange_all(format!("{}{topic}", self.prefix))
            .await
            .expect("XRANGE");
        reply.ids
    }

    /// Ids of the envelopes in a topic's stream, in stream order.
    pub(crate) async fn envelope_ids(&self, topic: &str) -> Vec<String> {
        self.entries(topic)
            .await
            .iter()
            .map(|entry| {
                let envelope: Value =
                    serde_json::from_str(&field(entry, "envelope")).expect("envelope JSON");
                envelope["id"].as_str().expect("id").to_string()
            })
            .collect()
    }
}

fn field(id: &redis::streams::StreamId, name: &str) -> String {
    id.map
        .get(name)
        .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
        .unwrap_or_default()
}

/// Two copies of the recorder fixture, as two modules.
fn add_recorders(project: &Project) {
    for copy in ["recorder_a", "recorder_b"] {
        std::fs::copy(
            crate::support::wasm("recorder"),
            project.dir.path().join(format!("plugins/{copy}.wasm")),
        )
        .unwrap();
    }
}

pub(crate) fn project_with(
    streams: &Streams,
    modules: &[&str],
    entries: &str,
    claim_idle_ms: u64,
) -> Project {
    Project::new(
        modules,
        &format!("{}{entries}", streams.section(claim_idle_ms)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_driven_only_by_flat_xadd() {
    let streams = Streams::new().await;
    let project = project_with(&streams, &["orders", "inventory"], EXAMPLES, 30_000);
    let host = project.start().await;

    streams
        .xadd(
            "inventory",
            &[
                ("subtopic", "restock"),
                ("body", r#"{"sku":"apple","qty":5}"#),
            ],
        )
        .await;
    eventually("5 apples", Duration::from_secs(15), || async {
        let (status, stock) = host
            .command("inventory", "get", json!({"sku": "apple"}))
            .await;
        (status == 200 && stock["output"]["available"] == 5).then_some(())
    })
    .await;
    streams
        .xadd(
            "orders",
            &[
                ("subtopic", "place"),
                ("body", r#"{"order_id":"o1","sku":"apple","qty":2}"#),
            ],
        )
        .await;
    streams
        .xadd(
            "orders",
            &[
                ("subtopic", "place"),
                ("body", r#"{"order_id":"o2","sku":"apple","qty":10}"#),
            ],
        )
        .await;

    for (order, status) in [("o1", "confirmed"), ("o2", "rejected")] {
        eventually(
            &format!("{order} {status}"),
            Duration::from_secs(15),
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
    // Events went through the streams: the relay appended them there.
    assert!(streams.xlen("orders.events").await >= 2);
    assert!(streams.xlen("inventory.events").await >= 3);
    let (status, ready) = host.get("/readyz").await;
    assert_eq!(
        (status, &ready["checks"]["redis"]["ok"]),
        (200, &json!(true))
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_entries_go_to_the_dlq_stream_and_the_consumer_keeps_going() {
    let streams = Streams::new().await;
    let project = project_with(&streams, &["orders", "inventory"], EXAMPLES, 30_000);
    let host = project.start().await;

    streams
        .xadd("inventory", &[("body", r#"{"sku":"a","qty":1}"#)])
        .await;
    streams
        .xadd(
            "inventory",
            &[("subtopic", "restock"), ("body", "{not json")],
        )
        .await;
    streams
        .xadd(
            "inventory",
            &[
                ("subtopic", "restock"),
                ("body", r#"{"sku":"pear","qty":2}"#),
            ],
        )
        .await;

    let dlq = eventually("2 dead letters", Duration::from_secs(15), || async {
        let e = streams.entries("inventory.dlq").await;
        (e.len() >= 2).then_some(e)
    })
    .await;
    assert_eq!(dlq.len(), 2);
    // Entries without a partition key are handled concurrently: find each.
    let no_subtopic = dlq
        .iter()
        .find(|e| field(e, "subtopic").is_empty())
        .expect("the entry without subtopic");
    assert!(
        field(no_subtopic, "dlq-error").contains("subtopic"),
        "{dlq:?}"
    );
    assert_eq!(field(no_subtopic, "dlq-kind"), "malformed-envelope");
    let bad_body = dlq
        .iter()
        .find(|e| field(e, "body") == "{not json")
        .expect("the original entry is kept");
    assert!(field(bad_body, "dlq-error").contains("body"), "{dlq:?}");

    eventually("pear restocked", Duration::from_secs(15), || async {
        let (status, stock) = host
            .command("inventory", "get", json!({"sku": "pear"}))
            .await;
        (status == 200 && stock["output"]["available"] == 2).then_some(())
    })
    .await;
    // Counted as dead letters of the module whose group read them.
    eventually(
        "2 dead letters counted",
        Duration::from_secs(15),
        || async {
            let (_, samples) = crate::operations::scrape(&host).await;
            let counted = crate::operations::sample(
                &samples,
                "switchyard_dead_letters_total",
                &[("module", "inventory"), ("topic", "inventory")],
            );
            (counted == Some(2.0)).then_some(())
        },
    )
    .await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_retry_then_apply_once_or_end_in_the_dlq() {
    let streams = Streams::new().await;
    let project = project_with(
        &streams,
        &["orders", "inventory", "faulty"],
        &format!("{EXAMPLES}{FAULTY}"),
        30_000,
    );
    let host = project.start().await;
    let db = project.db_url();

    // Fails twice, succeeds on the third of three attempts.
    streams
        .xadd(
            "faulty",
            &[
                ("subtopic", "flaky"),
                ("body", r#"{"key":"twice","fail":2}"#),
            ],
        )
        .await;
    // Always fails: three attempts, then the dlq.
    streams
        .xadd(
            "faulty",
            &[
                ("subtopic", "flaky"),
                ("body", r#"{"key":"always","fail":99}"#),
            ],
        )
        .await;

    eventually("the flaky note", Duration::from_secs(15), || async {
        let n = query_count(&db, "SELECT COUNT(*) FROM documents WHERE module = 'faulty' AND key = 'twice' AND version = 1").await;
        (n == 1).then_some(())
    })
    .await;
    let dlq = eventually("always -> dlq", Duration::from_secs(15), || async {
        let e = streams.entries("faulty.dlq").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(dlq.len(), 1);
    assert!(field(&dlq[0], "body").contains("always"));
    assert_eq!(
        (
            field(&dlq[0], "dlq-kind").as_str(),
            field(&dlq[0], "dlq-attempts").as_str()
        ),
        ("transient", "3")
    );
    assert_eq!(
        query_count(&db, "SELECT COUNT(*) FROM documents WHERE key = 'always'").await,
        0
    );
    // The failure event reaches its stream through the relay.
    eventually("faulty.failed event", Duration::from_secs(15), || async {
        let e = streams.entries("faulty.failed").await;
        e.iter()
            .any(|e| field(e, "envelope").contains(r#""kind":"transient""#))
            .then_some(())
    })
    .await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_every_subscriber_gets_every_event_once() {
    let streams = Streams::new().await;
    let project = project_with(
        &streams,
        &["orders", "inventory"],
        &format!("{EXAMPLES}{RECORDERS}"),
        30_000,
    );
    add_recorders(&project);
    let host = project.start().await;
    for i in 0..20 {
        let (status, answer) = host
            .command(
                "inventory",
                "restock",
                json!({"sku": format!("s{i}"), "qty": 1}),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    let db = project.db_url();
    for module in ["recorder_a", "recorder_b"] {
        eventually(&format!("{module} saw 20 events"), Duration::from_secs(20), || async {
            let sql = format!("SELECT COUNT(*) FROM documents WHERE module = '{module}' AND collection = 'seen'");
            (query_count(&db, &sql).await == 20).then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for module in ["recorder_a", "recorder_b"] {
        let sql = format!("SELECT COUNT(*) FROM inbox WHERE module = '{module}'");
        assert_eq!(
            query_count(&db, &sql).await,
            20,
            "{module}: each event handled once"
        );
    }
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_partition_key_is_handled_in_stream_order() {
    let streams = Streams::new().await;
    let project = project_with(
        &streams,
        &["orders", "inventory"],
        &format!("{EXAMPLES}{RECORDERS}"),
        30_000,
    );
    add_recorders(&project);
    for n in 0..1_000u64 {
        let key = format!("k{}", n % 10);
        let body = json!({"key": key, "n": n}).to_string();
        streams
            .xadd(
                "sequence",
                &[
                    ("subtopic", "record"),
                    ("body", &body),
                    ("partition-key", &key),
                ],
            )
            .await;
    }
    let host = project.start().await;
    let db = project.db_url();
    eventually("1,000 recorded", Duration::from_secs(60), || async {
        let n = query_count(
            &db,
            "SELECT COUNT(*) FROM inbox WHERE module = 'recorder_a'",
        )
        .await;
        (n == 1_000).then_some(())
    })
    .await;
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT key, value FROM documents WHERE module = 'recorder_a' AND collection = 'sequences' ORDER BY key",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 10);
    for (key, value) in rows {
        let seen: Vec<u64> = serde_json::from_str::<Value>(&value).unwrap()["seen"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        let k: u64 = key[1..].parse().unwrap();
        let expected: Vec<u64> = (0..100).map(|i| i * 10 + k).collect();
        assert_eq!(seen, expected, "key {key} handled out of order");
    }
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_another_process_finishes_exactly_once() {
    let streams = Streams::new().await;
    let project = project_with(&streams, &["orders", "inventory"], EXAMPLES, 1_000);
    let mut conn = streams.conn.clone();
    let key = format!("{}inventory", streams.prefix);
    let mut pipe = redis::pipe();
    for _ in 0..5_000 {
        pipe.xadd(
            &key,
            "*",
            &[
                ("subtopic", "restock"),
                ("body", r#"{"sku":"apple","qty":1}"#),
                ("partition-key", "apple"),
            ],
        )
        .ignore();
    }
    let () = pipe.query_async(&mut conn).await.unwrap();

    let db = project.db_url();
    let applied = || async {
        // The file appears before the host has migrated it: no table yet is 0.
        if !project.dir.path().join("switchyard.db").exists() {
            return 0;
        }
        try_query_count(&db, "SELECT COUNT(*) FROM inbox WHERE module = 'inventory'")
            .await
            .unwrap_or(0)
    };
    let mut first = spawn_host(&project, "first");
    eventually("some entries applied", Duration::from_secs(60), || async {
        (applied().await >= 300).then_some(())
    })
    .await;
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    let at_kill = applied().await;
    assert!(at_kill < 5_000, "killed mid-way ({at_kill} applied)");

    // A new process (a new consumer in the same group) takes over what the
    // dead one left pending, and reads the rest.
    let mut second = spawn_host(&project, "second");
    eventually("all 5,000 applied", Duration::from_secs(120), || async {
        (applied().await == 5_000).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    second.kill().expect("SIGKILL");
    second.wait().expect("reaped");

    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let (value,): (String,) =
        sqlx::query_as("SELECT value FROM documents WHERE module = 'inventory' AND collection = 'stock' AND key = 'apple'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let stock: Value = serde_json::from_str(&value).unwrap();
    assert_eq!(
        stock["available"], 5_000,
        "every entry applied exactly once"
    );
}

/// A redis-server of the test's own (on a free port, appending every write
/// to its file), so the test can stop and restart it.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut own = Self {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        own.restart();
        own
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (see .ci/run)");
        self.child = Some(child);
        // Up means answering PING: while it loads its append-only file it
        // accepts connections but answers LOADING.
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).unwrap();
        let start = std::time::Instant::now();
        let pong = || -> redis::RedisResult<String> {
            redis::cmd("PING").query(&mut client.get_connection()?)
        };
        while pong().ok().as_deref() != Some("PONG") {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_redis_mid_stream_loses_nothing() {
    let mut own = OwnRedis::start();
    let url = format!("redis://127.0.0.1:{}", own.port);
    let section = format!("[redis]\nurl = \"{url}\"\nblock-ms = 200\nclaim-idle-ms = 1000\n");
    let project = Project::new(&["orders", "inventory"], &format!("{section}{EXAMPLES}"));
    let client = redis::Client::open(url.as_str()).unwrap();
    let xadd_restocks = |n: usize| {
        let client = client.clone();
        async move {
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let mut pipe = redis::pipe();
            for _ in 0..n {
                pipe.xadd(
                    "inventory",
                    "*",
                    &[
                        ("subtopic", "restock"),
                        ("body", r#"{"sku":"apple","qty":1}"#),
                        ("partition-key", "apple"),
                    ],
                )
                .ignore();
            }
            let () = pipe.query_async(&mut conn).await.unwrap();
        }
    };
    xadd_restocks(2_000).await;
    let host = project.start().await;
    let db = project.db_url();
    let applied = || async {
        query_count(&db, "SELECT COUNT(*) FROM inbox WHERE module = 'inventory'").await
    };
    eventually("some applied", Duration::from_secs(30), || async {
        (applied().await >= 100).then_some(())
    })
    .await;

    own.kill();
    eventually(
        "not ready while redis is down",
        Duration::from_secs(10),
        || async {
            let (status, ready) = host.get("/readyz").await;
            (status == 503 && ready["checks"]["redis"]["ok"] == false).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    own.restart();
    xadd_restocks(500).await;

    eventually("all 2,500 applied", Duration::from_secs(180), || async {
        (applied().await == 2_500).then_some(())
    })
    .await;
    let (_, stock) = host
        .command("inventory", "get", json!({"sku": "apple"}))
        .await;
    assert_eq!(stock["output"]["available"], 2_500);
    eventually("every event published", Duration::from_secs(30), || async {
        let left = query_count(
            &db,
            "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL",
        )
        .await;
        (left == 0).then_some(())
    })
    .await;
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let events: usize = conn.xlen("inventory.events").await.unwrap();
    assert!(events >= 2_500, "{events} events in the stream");
    let (status, _) = host.get("/readyz").await;
    assert_eq!(status, 200);
    host.stop().await;
}
