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
