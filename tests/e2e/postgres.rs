//! PostgreSQL as the store, and several hosts sharing it: the saga on the
//! embedded log, failures and dead letters, scale-out over Redis consumer groups with a host SIGKILLed
//! half-way, and the outbox relay taken over from a dead host. Real
//! PostgreSQL (a fresh database per test) and real Redis (a key prefix and
//! group per test); hosts are the `switchyard` binary, as a user runs it.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::redis_streams::{Streams, redis_url};
use crate::support::{
    EXAMPLES, FAULTY, INVENTORY_ALONE, Project, drop_postgres_database, eventually,
    postgres_database, query_count,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_saga_over_http_and_the_embedded_log() {
    let project = Project::postgres(&["orders", "inventory"], EXAMPLES).await;
    let host = project.start().await;
    crate::saga::saga(&host).await;
    let (status, ready) = host.get("/readyz").await;
    assert_eq!(
        (status, &ready["checks"]["database"]["ok"]),
        (200, &json!(true))
    );
    host.stop().await;

    // A second host on the same database sees the state and the inbox.
    let host = project.start().await;
    let (_, stock) = host
        .command("inventory", "get", json!({"sku": "apple"}))
        .await;
    assert_eq!(stock["output"]["available"], 3);
    host.stop().await;
    drop_postgres_database(&project.db_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_failures_dead_letters_and_replay_over_http() {
    let project = Project::postgres(
        &["orders", "inventory", "faulty"],
        &format!("{EXAMPLES}{FAULTY}"),
    )
    .await;
    let host = project.start().await;
    let (status, answer) = host
        .send(json!({"id": "bad-1", "topic": "orders", "subtopic": "place", "body": {"order_id": "o9", "sku": "apple", "qty": "two"}}))
        .await;
    assert_eq!(status, 422, "{answer}");
    // A transient failure exhausts its attempts; its writes are discarded.
    let (status, _) = host
        .send(json!({"id": "t-1", "topic": "faulty", "subtopic": "write-then", "body": {"key": "r", "then": "transient"}}))
        .await;
    assert_eq!(status, 503);

    let (status, letters) = host.admin(Method::GET, "/v1/dead-letters").await;
    assert_eq!(status, 200, "{letters}");
    let letters = letters["dead_letters"].as_array().unwrap();
    let kinds: HashMap<&str, (&str, u64)> = letters
        .iter()
        .map(|l| {
            (
                l["message_id"].as_str().unwrap(),
                (
                    l["error_kind"].as_str().unwrap(),
                    l["attempts"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(kinds["bad-1"], ("invalid", 1));
    assert_eq!(kinds["t-1"], ("transient", 3));
    let db = project.db_url();
    let failed = query_count(
        &db,
        "SELECT COUNT(*) FROM outbox WHERE topic IN ('orders.failed', 'faulty.failed')",
    )
    .await;
    assert_eq!(failed, 2, "one failure event each");
    assert_eq!(
        query_count(
            &db,
            "SELECT COUNT(*) FROM documents WHERE module = 'faulty'"
        )
        .await,
        0
    );

    // Replayed, it fails the same way: dead-lettered again, still once.
    let id = letters
        .iter()
        .find(|l| l["message_id"] == "t-1")
        .and_then(|l| l["id"].as_str())
        .unwrap()
        .to_string();
    let (status, answer) = host
        .admin(Method::POST, &format!("/v1/dead-letters/{id}/replay"))
        .await;
    assert_eq!(status, 503, "{answer}");
    let (_, letters) = host
        .admin(Method::GET, "/v1/dead-letters?topic=faulty")
        .await;
    assert_eq!(letters["dead_letters"].as_array().unwrap().len(), 1);
    host.stop().await;
    drop_postgres_database(&db).await;
}

/// A `switchyard up` process. Killed (SIGKILL) when dropped, so a failing
/// test leaves nothing running.
struct HostProcess {
    child: Child,
    base: String,
}

impl HostProcess {
    /// Starts the binary on `manifest` (which says `listen = "127.0.0.1:0"`)
    /// and learns its address from its log. `SWITCHYARD_TEST_BIN` may name
    /// another build of it (e.g. the release binary, for measurements).
    fn spawn(manifest: &Path) -> Self {
        let bin = std::env::var("SWITCHYARD_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_switchyard").to_string());
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(manifest)
            .args(["up", "--no-build"])
            .env("RUST_LOG", "warn,switchyard::app::server=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start switchyard");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // Keeps draining the log after the address, so the host never blocks
        // on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("switchyard serving")
                    && let Some(at) = line.find("127.0.0.1:")
                {
                    let addr: String = line[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                        .collect();
                    let _ = tx.send(addr);
                } else if line.contains("ERROR") || line.contains("WARN") {
                    eprintln!("host: {line}");
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(e) => {
                // Not left running after the test fails.
                let _ = child.kill();
                let _ = child.wait();
                panic!("the host reports its address: {e}");
            }
        };
        Self {
            child,
            base: format!("http://{addr}"),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// How many messages this process's `module` handled (GET /v1/modules).
    async fn handled(&self, module: &str) -> u64 {
        let modules: Value = reqwest::get(format!("{}/v1/modules", self.base))
            .await
            .expect("GET /v1/modules")
            .json()
            .await
            .expect("JSON");
        modules["modules"]
            .as_array()
            .expect("modules")
            .iter()
            .find(|m| m["name"] == module)
            .and_then(|m| m["handled"].as_u64())
            .expect("handled count")
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn scalar(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .expect("query")
}

const RESTOCKS: usize = 10_000;
const SKUS: usize = 50;

/// What one scale-out run measured.
struct Run {
    msgs_per_sec: f64,
    /// Handled counts of the hosts still alive at the end.
    survivors_handled: Vec<u64>,
}

/// 10,000 restocks XADDed over `SKUS` skus (partition-key = sku), consumed by
/// `hosts` processes in one consumer group on one database; with `kill_one`,
/// the last host is SIGKILLed once half are applied. Checks exactly-once
/// effects and at-least-once publication of every emitted event.
async fn scale_out(hosts: usize, kill_one: bool) -> Run {
    let streams = Streams::new().await;
    let db = postgres_database().await;
    let entries = format!("{}{INVENTORY_ALONE}", streams.section(2_000));
    let project = Project::with_database(&["inventory"], &entries, &db);
    let pool = sqlx::PgPool::connect(&db).await.unwrap();

    let mut conn = streams.conn.clone();
    let key = format!("{}inventory", streams.prefix);
    for chunk in 0..RESTOCKS / 1_000 {
        let mut pipe = redis::pipe();
        for i in chunk * 1_000..(chunk + 1) * 1_000 {
            let sku = format!("sku-{}", i % SKUS);
            let body = json!({"sku": sku, "qty": 1}).to_string();
            pipe.xadd(
                &key,
                "*",
                &[
                    ("subtopic", "restock"),
                    ("body", body.as_str()),
                    ("partition-key", sku.as_str()),
                ],
            )
            .ignore();
        }
        let () = pipe.query_async(&mut conn).await.unwrap();
    }

    let mut processes: Vec<HostProcess> = (0..hosts)
        .map(|_| HostProcess::spawn(&project.manifest_path()))
        .collect();
    let started = Instant::now();
    let applied = "SELECT COUNT(*) FROM inbox WHERE module = 'inventory'";
    if kill_one {
        eventually("half applied", Duration::from_secs(120), || async {
            (scalar(&pool, applied).await >= (RESTOCKS / 2) as i64).then_some(())
        })
        .await;
        let mut victim = processes.pop().expect("a host to kill");
        victim.kill();
        let at_kill = scalar(&pool, applied).await;
        assert!(at_kill < RESTOCKS as i64, "killed half-way ({at_kill})");
    }
    eventually("all applied", Duration::from_secs(180), || async {
        (scalar(&pool, applied).await >= RESTOCKS as i64).then_some(())
    })
    .await;
    let elapsed = started.elapsed();
    eventually("every event published", Duration::from_secs(30), || async {
        let left = scalar(
            &pool,
            "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL",
        )
        .await;
        (left == 0).then_some(())
    })
    .await;

    // Exactly once: one inbox row, one increment and one event per entry.
    assert_eq!(scalar(&pool, applied).await, RESTOCKS as i64);
    let stock: Vec<(String, i64)> = sqlx::query_as(
        "SELECT key, (value->>'available')::bigint FROM documents
         WHERE module = 'inventory' AND collection = 'stock'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(stock.len(), SKUS);
    for (sku, available) in &stock {
        assert_eq!(*available, (RESTOCKS / SKUS) as i64, "{sku}");
    }
    let outbox: Vec<String> = sqlx::query_scalar("SELECT id FROM outbox")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(outbox.len(), RESTOCKS, "one restocked event per restock");
    // At least once on the stream, every one of them.
    let published: HashSet<String> = streams
        .envelope_ids("inventory.events")
        .await
        .into_iter()
        .collect();
    let missing = outbox.iter().filter(|id| !published.contains(*id)).count();
    assert_eq!(missing, 0, "events never published");

    let mut survivors_handled = Vec::new();
    for p in &processes {
        survivors_handled.push(p.handled("inventory").await);
    }
    drop(processes);
    pool.close().await;
    drop_postgres_database(&db).await;
    Run {
        msgs_per_sec: RESTOCKS as f64 / elapsed.as_secs_f64(),
        survivors_handled,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_scale_out_three_hosts_one_killed_apply_every_restock_once() {
    let run = scale_out(3, true).await;
    assert_eq!(run.survivors_handled.len(), 2);
    for handled in &run.survivors_handled {
        assert!(
            *handled > 0,
            "each surviving host takes a share: {:?}",
            run.survivors_handled
        );
    }
    eprintln!(
        "scale-out, 3 hosts (one killed): {:.0} msgs/s, survivors handled {:?}",
        run.msgs_per_sec, run.survivors_handled
    );
}

/// The figures in the README:
/// `SWITCHYARD_TEST_BIN=target/release/switchyard cargo test --test e2e postgres_scale_out_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run by hand"]
async fn postgres_scale_out_throughput() {
    for hosts in 1..=3 {
        let run = scale_out(hosts, false).await;
        eprintln!(
            "{hosts} host(s): {:.0} msgs/s (handled per host {:?})",
            run.msgs_per_sec, run.survivors_handled
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_relay_another_host_publishes_what_a_dead_claimer_held() {
    let streams = Streams::new().await;
    let db = postgres_database().await;
    let project = Project::with_database(
        &["inventory"],
        &format!("{}{INVENTORY_ALONE}", streams.section(2_000)),
        &db,
    );
    // Host A's Redis accepts connections and never answers: A's relay claims
    // outbox entries and hangs in the XADD, as a host does that dies mid-publish.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stalled = project.dir.path().join("stalled.toml");
    let manifest = std::fs::read_to_string(project.manifest_path()).unwrap();
    let hole = format!("redis://{}", black_hole.local_addr().unwrap());
    std::fs::write(&stalled, manifest.replace(&redis_url(), &hole)).unwrap();

    let mut a = HostProcess::spawn(&stalled);
    let _b = HostProcess::spawn(&project.manifest_path());
    let client = reqwest::Client::new();
    for i in 0..30 {
        let answer: Value = client
            .post(format!("{}/v1/messages", a.base))
            .json(&json!({"topic": "inventory", "subtopic": "restock", "body": {"sku": format!("s{i}"), "qty": 1}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["status"], "processed", "{answer}");
    }

    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    // Unpublished entries, if every one of them is claimed by some relay.
    let all_claimed = || async {
        let unpublished: Vec<String> =
            sqlx::query_scalar("SELECT id FROM outbox WHERE published_at IS NULL ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        let mut tx = pool.begin().await.unwrap();
        let free: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM outbox WHERE published_at IS NULL FOR UPDATE SKIP LOCKED",
        )
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        tx.rollback().await.unwrap();
        (!unpublished.is_empty() && free.is_empty()).then_some(unpublished)
    };
    // B publishes what A has not claimed, and passes over what A holds (a
    // claim still there a moment later is A's, not B's last milliseconds).
    let held: Vec<String> = eventually(
        "A holds a claim, B published the rest",
        Duration::from_secs(10),
        || async {
            let first = all_claimed().await.filter(|u| u.len() < 30)?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            all_claimed().await.filter(|again| *again == first)
        },
    )
    .await;
    assert!(
        streams
            .envelope_ids("inventory.events")
            .await
            .iter()
            .all(|id| !held.contains(id)),
        "B did not publish what A held"
    );

    let killed = Instant::now();
    a.kill();
    eventually(
        "B publishes what A held",
        Duration::from_secs(10),
        || async {
            let left = sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            (left == 0).then_some(())
        },
    )
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "no lease to wait out"
    );
    let outbox: HashSet<String> = sqlx::query_scalar("SELECT id FROM outbox")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let stream = streams.envelope_ids("inventory.events").await;
    let mut times: HashMap<&str, usize> = HashMap::new();
    for id in &stream {
        *times.entry(id.as_str()).or_default() += 1;
    }
    assert_eq!(outbox.len(), 30);
    assert!(
        outbox.iter().all(|id| times.get(id.as_str()) == Some(&1)),
        "each event published once: {times:?}"
    );
    pool.close().await;
    drop(black_hole);
    drop_postgres_database(&db).await;
}
