//! The `switchyard` binary: `check` and `build` as a user runs them.

use std::process::Command;

use crate::support::{EXAMPLES, Project};

fn switchyard(project: &Project, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(project.manifest_path())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run switchyard");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_passes_and_prints_routes_for_the_examples() {
    let project = Project::new(&["orders", "inventory"], EXAMPLES);
    let (ok, stdout, stderr) = switchyard(&project, &["check"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("module orders"), "{stdout}");
    assert!(stdout.contains("command  inventory"), "{stdout}");
    assert!(stdout.contains("ok: 2 module(s)"), "{stdout}");
}

#[test]
fn check_names_a_typod_key() {
    let project = Project::new(
        &["orders", "inventory"],
        &EXAMPLES.replace(
            "subscribes = [\"orders.events\"]",
            "subscibes = [\"orders.events\"]",
        ),
    );
    let (ok, _, stderr) = switchyard(&project, &["check"]);
    assert!(!ok);
    assert!(stderr.contains("subscibes"), "{stderr}");
    assert!(stderr.contains("plugins.toml"), "{stderr}");
}

#[test]
fn check_names_a_missing_wasm_file() {
    let project = Project::new(&["inventory"], EXAMPLES);
    let (ok, _, stderr) = switchyard(&project, &["check"]);
    assert!(!ok);
    assert!(stderr.contains("orders.wasm not found"), "{stderr}");
}

#[test]
fn check_refuses_a_second_owner_of_a_command_topic() {
    let entries =
        format!("{EXAMPLES}\n[modules.shadow]\nfile = \"shadow.wasm\"\ntopics = [\"orders\"]\n");
    let project = Project::new(&["orders", "inventory"], &entries);
    std::fs::copy(
        crate::support::wasm("orders"),
        project.dir.path().join("plugins/shadow.wasm"),
    )
    .unwrap();
    let (ok, _, stderr) = switchyard(&project, &["check"]);
    assert!(!ok);
    assert!(
        stderr.contains("command topic 'orders' is already owned by module 'orders'"),
        "{stderr}"
    );
}

#[test]
fn build_runs_the_build_command_and_installs_the_artifact() {
    let root = crate::support::repo_root();
    let entries = format!(
        "[modules.inventory]\nfile = \"inventory.wasm\"\nbuild = \"cargo build --release --target wasm32-wasip2 --manifest-path {root}/plugins/Cargo.toml -p inventory\"\nartifact = \"{root}/plugins/target/wasm32-wasip2/release/inventory.wasm\"\n",
        root = root.display()
    );
    let project = Project::new(&[], &entries);
    let (ok, stdout, stderr) = switchyard(&project, &["build"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("(updated)"), "{stdout}");
    let installed = std::fs::read(project.dir.path().join("plugins/inventory.wasm")).unwrap();
    assert_eq!(&installed[..8], b"\0asm\x0d\0\x01\0", "a component");
    let (ok, stdout, _) = switchyard(&project, &["build"]);
    assert!(ok);
    assert!(stdout.contains("(unchanged)"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_scaffolds_a_module_that_builds_loads_and_serves() {
    let root = crate::support::repo_root();
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(plugins.join("sdk/src")).unwrap();
    std::fs::create_dir_all(dir.path().join("wit")).unwrap();
    std::fs::copy(
        root.join("plugins/sdk/Cargo.toml"),
        plugins.join("sdk/Cargo.toml"),
    )
    .unwrap();
    copy_tree(&root.join("plugins/sdk/src"), &plugins.join("sdk/src"));
    copy_tree(&root.join("wit"), &dir.path().join("wit"));
    let workspace = std::fs::read_to_string(root.join("plugins/Cargo.toml")).unwrap();
    let start = workspace.find("members = [").unwrap();
    let end = start + workspace[start..].find(']').unwrap() + 1;
    let workspace = format!(
        "{}members = [\"sdk\"]{}",
        &workspace[..start],
        &workspace[end..]
    );
    std::fs::write(plugins.join("Cargo.toml"), workspace).unwrap();
    // Share the repository's target dir so the dependencies are built once.
    std::fs::create_dir_all(dir.path().join(".cargo")).unwrap();
    std::fs::write(
        dir.path().join(".cargo/config.toml"),
        format!(
            "[build]\ntarget-dir = \"{}\"\n",
            root.join("plugins/target").display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("plugins.toml"),
        "[host]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let manifest = dir.path().join("plugins.toml");
    let run = |args: &[&str]| crate::support::run_switchyard(&manifest, args);
    let (ok, text) = run(&["new", "demo"]);
    assert!(ok, "{text}");
    // The template's own tests pass natively, against the SDK's test kit.
    let (ok, output) = native_tests(dir.path(), &["demo"]);
    assert!(ok, "{output}");
    assert!(
        output.contains("tests::create_stores_the_item_once_and_emits_created ... ok"),
        "{output}"
    );
    let (ok, text) = run(&["new", "demo"]);
    assert!(!ok && text.contains("already has [modules.demo]"), "{text}");
    // The artifact is where the shared target dir (above) puts it.
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(
        text.contains("artifact = \"plugins/target/wasm32-wasip2/release/demo.wasm\""),
        "{text}"
    );
    let shared = root.join("plugins/target/wasm32-wasip2/release/demo.wasm");
    let text = text.replace(
        "plugins/target/wasm32-wasip2/release/demo.wasm",
        &shared.display().to_string(),
    );
    std::fs::write(&manifest, text).unwrap();
    let (ok, text) = run(&["build"]);
    assert!(ok, "{text}");

    let manifest = switchyard::manifest::Manifest::load(&manifest).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = switchyard::app::server::start(manifest, listener)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/topics/demo/create", host.addr());
    let response = client
        .post(&url)
        .body(r#"{"id":"a","note":"hello"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        answer["output"],
        serde_json::json!({"id": "a", "note": "hello"})
    );
    assert_eq!(answer["events"][0]["topic"], "demo.events");
    host.stop().await;
}

/// The target of the machine the tests run on (`rustc -vV`'s `host:`).
fn host_triple() -> String {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("run rustc");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

/// `cargo test --target <host>` of `packages` in the modules' workspace of
/// `dir` (what `cargo test-native` does): success and the output.
fn native_tests(dir: &std::path::Path, packages: &[&str]) -> (bool, String) {
    // The scaffolded workspace shares plugins/target with the repository's:
    // one native test run at a time, so neither sees the other's half-written
    // artifacts while rustdoc compiles the doc tests.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir)
        .args(["test", "--target", &host_triple()])
        .args(["--manifest-path", "plugins/Cargo.toml"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    for var in switchyard::builder::CARGO_ENV_TO_CLEAR {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("run cargo test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Sums the `N passed` of every `test result:` line.
fn passed(output: &str) -> usize {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("test result: ok. "))
        .filter_map(|l| l.split(" passed").next()?.parse::<usize>().ok())
        .sum()
}

#[test]
fn the_sdk_and_the_example_modules_pass_their_native_tests() {
    let (ok, output) = native_tests(
        &crate::support::repo_root(),
        &["switchyard-sdk", "orders", "inventory"],
    );
    assert!(ok, "{output}");
    for test in [
        "tests::reserved_confirms_and_out_of_stock_rejects ... ok",
        "tests::a_placed_order_is_reserved_while_stock_lasts ... ok",
        "testing::tests::a_failed_message_leaves_no_writes_and_no_events ... ok",
    ] {
        assert!(output.contains(test), "{test} missing:\n{output}");
    }
    // The SDK's rustdoc examples run as doc tests.
    assert!(output.contains("Doc-tests switchyard_sdk"), "{output}");
    assert!(!output.contains("FAILED"), "{output}");
    assert!(passed(&output) >= 20, "{output}");
}

#[test]
fn check_says_which_wit_version_a_module_was_built_against() {
    let project = Project::new(&["inventory"], EXAMPLES);
    // The orders component with every switchyard:module import renamed to
    // @0.0.9 (same length, so the binary stays valid): what a module built
    // against an older WIT looks like.
    let mut bytes = std::fs::read(crate::support::wasm("orders")).unwrap();
    let mut renamed = 0;
    for at in 0..bytes.len() {
        if bytes[at..].starts_with(b"switchyard:module/") {
            let end = bytes[at..].iter().position(|b| *b == b'@').unwrap() + at;
            if bytes[end..].starts_with(b"@0.1.0") {
                bytes[end..end + 6].copy_from_slice(b"@0.0.9");
                renamed += 1;
            }
        }
    }
    assert!(renamed > 0);
    std::fs::write(project.dir.path().join("plugins/orders.wasm"), bytes).unwrap();
    let (ok, _, stderr) = switchyard(&project, &["check"]);
    assert!(!ok);
    assert!(
        stderr.contains(
            "module orders: imports interfaces of switchyard:module@0.0.9, but this host provides those of switchyard:module@0.1.0"
        ),
        "{stderr}"
    );
}

#[test]
fn check_says_a_component_of_another_world_lacks_describe_and_handle() {
    let project = Project::new(&["other_world"], "");
    let (ok, _, stderr) = switchyard(&project, &["check"]);
    assert!(!ok);
    assert!(
        stderr.contains("does not export `describe` and `handle` (exports: [greet])"),
        "{stderr}"
    );
}

#[test]
fn check_compares_describe_with_the_manifests_topics_and_grants() {
    let entries = EXAMPLES
        .replace("emits = [\"orders.events\"]", "emits = [\"orders.audit\"]")
        .replace(
            "topics = [\"inventory\"]",
            "topics = [\"inventory\", \"stock\"]",
        );
    let project = Project::new(&["orders", "inventory"], &entries);
    let (ok, _, stderr) = switchyard(&project, &["check"]);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains(
            "module orders: missing grant: describe declares it emits to 'orders.events' but plugins.toml `emits` does not grant it"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: module orders: plugins.toml `emits` grants 'orders.audit'"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "module inventory: plugins.toml `topics` lists 'stock' but describe does not declare it"
        ),
        "{stderr}"
    );
    // The examples as the repository's manifest grants them: no findings.
    let project = Project::new(&["orders", "inventory"], EXAMPLES);
    let (ok, stdout, stderr) = switchyard(&project, &["check"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

/// Copies the files of `from` into `to`, folders included.
pub(crate) fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
