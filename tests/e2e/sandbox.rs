//! Hostile modules and hostile input never hurt the host or another module:
//! each attack runs while honest traffic flows to the example modules.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{EXAMPLES, Project, TestHost};

const HOSTILE: &str = r#"
[modules.hostile]
file = "hostile.wasm"
max-memory-mb = 64
timeout-ms = 300
max-attempts = 1
"#;

/// Restocks `sku` by 1 in a loop until stopped; returns (sent, failed).
fn honest_traffic(
    host: &TestHost,
    sku: &'static str,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<(u64, u64)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let client = host.client.clone();
    let url = format!("{}/v1/messages", host.base);
    let done = stop.clone();
    let task = tokio::spawn(async move {
        let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
        while !done.load(Ordering::Relaxed) {
            let envelope = json!({"topic": "inventory", "subtopic": "restock", "body": {"sku": sku, "qty": 1}});
            let response = client.post(&url).body(envelope.to_string()).send().await;
            match response {
                Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                _ => failed.fetch_add(1, Ordering::Relaxed),
            };
        }
        (ok.into_inner(), failed.into_inner())
    });
    (stop, task)
}

async fn with_hostile() -> (Project, TestHost) {
    let project = Project::new(
        &["orders", "inventory", "hostile"],
        &format!("{EXAMPLES}{HOSTILE}"),
    );
    let host = project.start().await;
    (project, host)
}

fn error_of(answer: &Value) -> (String, String) {
    (
        answer["error"]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_memory_bombs_stack_overflows_and_panics_are_contained() {
    let (_project, host) = with_hostile().await;
    let (stop, traffic) = honest_traffic(&host, "honest");

    let (status, answer) = host.command("hostile", "spin", json!({})).await;
    assert_eq!(status, 504, "{answer}");
    assert_eq!(error_of(&answer).0, "timeout");

    let (status, answer) = host.command("hostile", "hog", json!({"mb": 1024})).await;
    assert_eq!(status, 500, "{answer}");
    let (kind, message) = error_of(&answer);
    assert_eq!(kind, "trap");
    assert!(message.contains("memory"), "{message}");

    // Within its 64 MiB the same code works.
    let (status, answer) = host.command("hostile", "hog", json!({"mb": 8})).await;
    assert_eq!(status, 200, "{answer}");

    let (status, answer) = host
        .command("hostile", "recurse", json!({"depth": 10_000_000}))
        .await;
    assert_eq!(status, 500, "{answer}");
    // Rust's stack lives in linear memory: overflowing it is an out-of-bounds
    // access, reported with the function that overflowed.
    let (kind, message) = error_of(&answer);
    assert_eq!(kind, "trap");
    assert!(message.contains("hostile::deeper"), "{message}");

    let (status, answer) = host.command("hostile", "panic", json!({})).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(error_of(&answer).0, "trap");

    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = traffic.await.unwrap();
    assert_eq!(
        failed, 0,
        "honest requests failed while the hostile module ran"
    );
    assert!(ok > 0);
    let (_, stock) = host
        .command("inventory", "get", json!({"sku": "honest"}))
        .await;
    assert_eq!(
        stock["output"]["available"], ok,
        "every honest restock applied once"
    );

    let (_, modules) = host.get("/v1/modules").await;
    let hostile = modules["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "hostile")
        .unwrap()
        .clone();
    assert_eq!(hostile["failed"], 4, "{hostile}");
    host.stop().await;
}

#[tokio::test]
async fn oversized_values_and_event_floods_are_refused_to_the_module() {
    let (_project, host) = with_hostile().await;
    let (status, answer) = host.command("hostile", "big-value", json!({})).await;
    assert_eq!(status, 200, "{answer}");
    let error = answer["output"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("too large"), "{answer}");

    let (status, answer) = host
        .command("hostile", "flood", json!({"events": 100_000}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["output"]["emitted"], 1_000,
        "the per-message event cap"
    );
    assert!(
        answer["output"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("more than 1000 events")
    );
    host.stop().await;
}

#[tokio::test]
async fn a_drop_in_claiming_an_owned_command_topic_is_refused() {
    let project = Project::new(&["orders", "inventory", "squatter"], EXAMPLES);
    let host = project.start().await;
    let (_, modules) = host.get("/v1/modules").await;
    let squatter = modules["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "squatter")
        .cloned();
    let squatter = squatter.expect("listed with its error");
    assert_eq!(squatter["status"], "failed");
    let error = squatter["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("command topic 'orders' is already owned by module 'orders'"),
        "{error}"
    );
    // orders keeps serving its topic.
    let (status, answer) = host
        .command(
            "orders",
            "place",
            json!({"order_id": "x", "sku": "none", "qty": 1}),
        )
        .await;
    assert_eq!(
        (status, error_of(&answer).1.as_str()),
        (409, "unknown sku 'none'")
    );
    host.stop().await;
}

/// What a module sees of WASI: an empty environment, no arguments, no
/// working folder, a closed stdin.
#[tokio::test]
async fn wasi_gives_an_empty_environment_and_no_stdin() {
    let (_project, host) = with_hostile().await;
    let (status, answer) = host.command("hostile", "snoop", json!({})).await;
    assert_eq!(status, 200, "{answer}");
    let seen = &answer["output"];
    assert_eq!(seen["vars"], 0, "{seen}");
    assert_eq!(seen["args"], 0, "{seen}");
    // No working folder is handed over; wasi-libc then reports "/".
    assert!(seen["cwd"].is_null() || seen["cwd"] == "/", "{seen}");
    // Stdin is closed: reading it ends at once, with nothing.
    assert_eq!(seen["stdin"]["Ok"], 0, "{seen}");

    host.stop().await;
}

/// A host run as a user runs it (the binary), its log collected.
struct LoggedHost {
    child: std::process::Child,
    base: String,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl LoggedHost {
    fn spawn(project: &Project) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("--config")
            .arg(project.manifest_path())
            .args(["up", "--no-build"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start switchyard");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("switchyard serving")
                    && let Some(at) = line.find("127.0.0.1:")
                {
                    let addr: String = line[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                        .collect();
                    let _ = tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the host reports its address");
        Self {
            child,
            base: format!("http://{addr}"),
            log,
        }
    }

    fn lines_with(&self, needle: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }
}

impl Drop for LoggedHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Guest stdout, stderr and log lines reach the host log with the module's
/// name, at most the module's log rate; a module printing as fast as it can
/// neither floods the log nor slows the other modules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_output_goes_to_the_host_log_rate_limited() {
    // Printing thousands of lines takes longer than the other attacks'
    // 300 ms budget in a debug build.
    let hostile = HOSTILE.replace("timeout-ms = 300", "timeout-ms = 20000");
    let project = Project::new(
        &["orders", "inventory", "hostile"],
        &format!("{EXAMPLES}{hostile}"),
    );
    let host = LoggedHost::spawn(&project);
    let client = reqwest::Client::new();
    let send = |subtopic: &'static str, body: Value| {
        let client = client.clone();
        let url = format!("{}/v1/messages", host.base);
        async move {
            let envelope = json!({"topic": "hostile", "subtopic": subtopic, "body": body});
            let r = client.post(url).body(envelope.to_string()).send().await;
            let r = r.expect("request");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    let (status, answer) = send("print", json!({"lines": 3})).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = send("spam-log", json!({"lines": 3})).await;
    assert_eq!(status, 200, "{answer}");
    let seen = crate::support::eventually("guest lines in the log", Duration::from_secs(5), || {
        let stdout = host.lines_with("hostile stdout line 2");
        let stderr = host.lines_with("hostile stderr line 2");
        let logged = host.lines_with("hostile log line 2");
        let all = [stdout, stderr, logged];
        async move { all.iter().all(|l| !l.is_empty()).then_some(all) }
    })
    .await;
    for lines in &seen {
        assert!(
            lines[0].contains("module=\"hostile\"") || lines[0].contains("module=hostile"),
            "{lines:?}"
        );
    }

    // Now flood: 2,000 lines of stdout/stderr and 5,000 log calls, while
    // honest traffic flows.
    let url = format!("{}/v1/messages", host.base);
    let stop = Arc::new(AtomicBool::new(false));
    let done = stop.clone();
    let honest_client = client.clone();
    let traffic = tokio::spawn(async move {
        let (mut ok, mut failed, mut slowest) = (0u64, 0u64, Duration::ZERO);
        while !done.load(Ordering::Relaxed) {
            let envelope = json!({"topic": "inventory", "subtopic": "restock", "body": {"sku": "calm", "qty": 1}});
            let start = std::time::Instant::now();
            let r = honest_client
                .post(&url)
                .body(envelope.to_string())
                .send()
                .await;
            slowest = slowest.max(start.elapsed());
            match r {
                Ok(r) if r.status() == 200 => ok += 1,
                _ => failed += 1,
            }
        }
        (ok, failed, slowest)
    });
    let started = std::time::Instant::now();
    let (status, answer) = send("print", json!({"lines": 1_000})).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = send("spam-log", json!({"lines": 5_000})).await;
    assert_eq!(status, 200, "{answer}");
    let flood_took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, slowest) = traffic.await.unwrap();
    assert_eq!(failed, 0, "honest requests failed during the flood");
    assert!(ok > 0);
    assert!(
        slowest < Duration::from_secs(2),
        "an honest request took {slowest:?}"
    );

    // Burst plus rate over the flood, with slack; far below the 7,000 lines.
    let logged = host.lines_with("hostile stdout line").len()
        + host.lines_with("hostile stderr line").len()
        + host.lines_with("hostile log line").len();
    let allowed = 200 + 6 + (flood_took.as_secs_f64() * 100.0) as usize + 100;
    assert!(
        logged <= allowed,
        "{logged} guest lines logged, allowed {allowed}"
    );
    let dropping = host.lines_with("dropping its lines");
    assert!(!dropping.is_empty(), "the host says it drops lines");
    assert!(dropping[0].contains("hostile"), "{dropping:?}");

    // Back under its rate, the module's lines flow again and the host
    // reports how many it dropped.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (status, _) = send("spam-log", json!({"lines": 1})).await;
    assert_eq!(status, 200);
    let report = crate::support::eventually("the dropped count", Duration::from_secs(5), || {
        let lines = host.lines_with("lines were dropped");
        async move { lines.first().cloned() }
    })
    .await;
    assert!(report.contains("hostile"), "{report}");
}

const MESSAGE_TOKEN_ENV: &str = "SWITCHYARD_TEST_MESSAGE_TOKEN";
const MESSAGE_TOKEN: &str = "test-message-token";

/// `message-token-env`: the message endpoints want the bearer token; the
/// rest of the API does not; a wrong token is refused like a missing one.
#[tokio::test]
async fn message_endpoints_require_the_message_token_when_configured() {
    assert_eq!(
        std::env::var(MESSAGE_TOKEN_ENV).ok().as_deref(),
        Some(MESSAGE_TOKEN),
        "set by .cargo/config.toml [env]"
    );
    let project = Project::new(
        &["inventory"],
        &format!("message-token-env = \"{MESSAGE_TOKEN_ENV}\"\n{EXAMPLES_INVENTORY}"),
    );
    let host = project.start().await;
    let restock =
        json!({"topic": "inventory", "subtopic": "restock", "body": {"sku": "s", "qty": 1}});
    let post = |path: &str, token: Option<&str>| {
        let mut request = host
            .client
            .post(format!("{}{path}", host.base))
            .body(restock.to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    for path in ["/v1/messages", "/v1/topics/inventory/restock"] {
        for token in [None, Some("wrong"), Some("test-message-tokenX"), Some("")] {
            let r = post(path, token).await.expect("request");
            assert_eq!(r.status(), 401, "{path} with {token:?}");
            let body: Value = r.json().await.expect("JSON error");
            assert_eq!(body["error"]["kind"], "unauthorized", "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("message bearer token"),
                "{body}"
            );
        }
    }
    let r = post("/v1/messages", Some(MESSAGE_TOKEN))
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let body = json!({"sku": "s", "qty": 1}).to_string();
    let r = host
        .client
        .post(format!("{}/v1/topics/inventory/restock", host.base))
        .bearer_auth(MESSAGE_TOKEN)
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    // Listing modules and health stay open; admin keeps its own token.
    assert_eq!(host.get("/v1/modules").await.0, 200);
    assert_eq!(host.get("/healthz").await.0, 200);
    host.stop().await;

    // Named but unset: closed, and the answer says why.
    let project = Project::new(
        &["inventory"],
        &format!("message-token-env = \"SWITCHYARD_TEST_UNSET_TOKEN\"\n{EXAMPLES_INVENTORY}"),
    );
    let host = project.start().await;
    let (status, answer) = host.send(restock.clone()).await;
    assert_eq!(status, 401, "{answer}");
    assert!(
        error_of(&answer).1.contains("SWITCHYARD_TEST_UNSET_TOKEN"),
        "{answer}"
    );
    host.stop().await;
}

const EXAMPLES_INVENTORY: &str = r#"
[modules.inventory]
file = "inventory.wasm"
topics = ["inventory"]
emits = ["inventory.events"]
"#;

/// `request-timeout-ms` cuts a request that takes too long (here: a client
/// that never finishes its body) with a JSON error; huge headers get 431.
#[tokio::test]
async fn slow_requests_time_out_and_huge_headers_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let project = Project::new(
        &["inventory"],
        &format!("request-timeout-ms = 300\nmax-header-bytes = 2048\n{EXAMPLES_INVENTORY}"),
    );
    let host = project.start().await;
    let addr = host.base.trim_start_matches("http://").to_string();

    // Promises 1000 bytes of body, sends 10, then stalls.
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"topic\":",
    )
    .await
    .expect("write");
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = slow.read(&mut buf).await.expect("read");
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the host answered a stalled request");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("\"timeout\""), "{text}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );

    let r = host
        .client
        .get(format!("{}/healthz", host.base))
        .header("x-filler", "a".repeat(4096))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 431);
    let body: Value = r.json().await.expect("JSON error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("max-header-bytes"),
        "{body}"
    );
    // Normal requests still pass.
    let (status, _) = host
        .command("inventory", "restock", json!({"sku": "t", "qty": 1}))
        .await;
    assert_eq!(status, 200);
    host.stop().await;
}
