//! A module written in Python (plugins/notifications-py, built with
//! componentize-py) in the SPEC §10 saga beside the Rust modules.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{EXAMPLES, Project, TestHost, eventually, repo_root};

/// The manifest entry of the Python module (as in the repository's plugins.toml).
pub const NOTIFICATIONS: &str = r#"
[modules.notifications]
file = "notifications.wasm"
topics = ["notifications"]
subscribes = ["orders.events"]
backoff-ms = 5
"#;

/// The build command of the repository's plugins.toml.
const BUILD: &str = "componentize-py -d wit -w module componentize -p plugins/notifications-py -p plugins/sdk-py app \
                     -o plugins/target/python/notifications.wasm";

/// Builds the Python component once per test run, as `switchyard build`
/// would (installing componentize-py with pip if it is missing).
pub fn notifications_wasm() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let root = repo_root();
        switchyard::builder::ensure_componentize_py().map_err(|e| e.to_string())?;
        std::fs::create_dir_all(root.join("plugins/target/python")).map_err(|e| e.to_string())?;
        switchyard::builder::run_command(BUILD, &root, "notifications")
            .map_err(|e| e.to_string())?;
        Ok(root.join("plugins/target/python/notifications.wasm"))
    });
    match built {
        Ok(path) => path.clone(),
        Err(e) => panic!("building the Python module failed: {e}"),
    }
}

fn project() -> Project {
    let project = Project::new(
        &["orders", "inventory"],
        &format!("{EXAMPLES}{NOTIFICATIONS}"),
    );
    std::fs::copy(
        notifications_wasm(),
        project.dir.path().join("plugins/notifications.wasm"),
    )
    .unwrap();
    project
}

async fn notification(host: &TestHost, order_id: &str) -> (u16, serde_json::Value) {
    host.command("notifications", "get", json!({"order_id": order_id}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_module_turns_the_sagas_events_into_notifications() {
    let project = project();
    let host = project.start().await;
    let (status, modules) = host.get("/v1/modules").await;
    assert_eq!(status, 200);
    assert!(
        modules.to_string().contains("\"notifications\""),
        "the Python module is loaded: {modules}"
    );

    // Typed too (the Python SDK declares its dataclasses' schemas): the
    // documents list it beside the Rust modules and still validate.
    crate::contracts::documents_validate_and_list_the_examples(&host, &[]).await;
    let (_, contract) = host.get("/v1/modules/notifications/contract").await;
    assert_eq!(contract["typed"], true, "{contract}");

    crate::saga::saga(&host).await;

    let o1 = eventually("o1's notification", Duration::from_secs(20), || async {
        let (status, answer) = notification(&host, "o1").await;
        (status == 200 && answer["output"]["status"] == "confirmed").then_some(answer)
    })
    .await;
    assert_eq!(o1["output"]["text"], "Your order o1 is confirmed.");
    let history: Vec<&str> = o1["output"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["placed", "confirmed"]);
    let o2 = eventually("o2's notification", Duration::from_secs(20), || async {
        let (status, answer) = notification(&host, "o2").await;
        (status == 200 && answer["output"]["status"] == "rejected").then_some(answer)
    })
    .await;
    assert_eq!(
        o2["output"]["text"],
        "Sorry, your order o2 could not be fulfilled."
    );

    // Typed errors travel from Python like from Rust.
    let (status, answer) = notification(&host, "o9").await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no notification for order 'o9'"),
        "{answer}"
    );
    let (status, answer) = host
        .command("notifications", "get", json!({"order": "o1"}))
        .await;
    assert_eq!(status, 422, "{answer}");

    // What a message costs in Python (a fresh instance each) next to Rust.
    for (topic, body) in [
        ("notifications", json!({"order_id": "o1"})),
        ("orders", json!({"order_id": "o1"})),
    ] {
        let n = 20;
        let start = Instant::now();
        for _ in 0..n {
            let (status, _) = host.command(topic, "get", body.clone()).await;
            assert_eq!(status, 200);
        }
        eprintln!(
            "{topic}/get over HTTP: {:.2} ms per message (mean of {n})",
            start.elapsed().as_secs_f64() * 1000.0 / f64::from(n)
        );
    }
    host.stop().await;
}

/// `python3 -m pytest -q DIR` from the repository root: (passed, output).
fn pytest(dir: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(dir)
        .current_dir(repo_root())
        .output()
        .expect("run python3 -m pytest (pip install pytest)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_python_sdk_and_the_example_pass_their_pytest_suites() {
    for dir in ["plugins/sdk-py", "plugins/notifications-py"] {
        let (ok, output) = pytest(&repo_root().join(dir));
        assert!(ok, "{dir}:\n{output}");
        assert!(output.contains(" passed"), "{dir}:\n{output}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_lang_python_scaffolds_a_module_that_tests_builds_and_serves() {
    let root = repo_root();
    let dir = tempfile::tempdir().unwrap();
    crate::cli::copy_tree(&root.join("wit"), &dir.path().join("wit"));
    crate::cli::copy_tree(
        &root.join("plugins/sdk-py/switchyard_sdk"),
        &dir.path().join("plugins/sdk-py/switchyard_sdk"),
    );
    let manifest = dir.path().join("plugins.toml");
    std::fs::write(&manifest, "[host]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let run = |args: &[&str]| crate::support::run_switchyard(&manifest, args);
    // A host already running (nothing loaded yet) picks the module up when
    // `build` installs it: no restart.
    let loaded = switchyard::manifest::Manifest::load(&manifest).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = switchyard::app::server::start(loaded, listener)
        .await
        .unwrap();
    let base = format!("http://{}", host.addr());
    let client = reqwest::Client::new();

    let started = Instant::now();
    let (ok, text) = run(&["new", "shipping", "--lang", "python"]);
    assert!(ok, "{text}");
    let (ok, output) = pytest(&dir.path().join("plugins/shipping"));
    assert!(ok, "{output}");
    let (ok, text) = run(&["build"]);
    assert!(ok, "{text}");
    let built = started.elapsed();
    let answer = eventually(
        "the first 200 from shipping/create",
        Duration::from_secs(300),
        || async {
            let response = client
                .post(format!("{base}/v1/topics/shipping/create"))
                .json(&json!({"id": "a1", "note": "fragile"}))
                .send()
                .await
                .ok()?;
            if response.status() != 200 {
                return None;
            }
            response.json::<serde_json::Value>().await.ok()
        },
    )
    .await;
    let served = started.elapsed();
    assert_eq!(answer["output"]["id"], "a1", "{answer}");
    // Typed: the host refuses a wrong body before the module runs.
    let response = client
        .post(format!("{base}/v1/topics/shipping/create"))
        .json(&json!({"id": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    eprintln!(
        "switchyard new --lang python -> pytest -> build: {:.1} s; -> first 200 from the running host: {:.1} s",
        built.as_secs_f64(),
        served.as_secs_f64()
    );
    host.stop().await;
}
