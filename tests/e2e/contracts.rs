//! Contracts (WIT 0.2.0): a module's declared schemas are checked by the
//! host before any instance exists, emitted events against theirs, and
//! `GET /v1/modules` says which modules are typed.

use serde_json::{Value, json};

use crate::support::{EXAMPLES, Project, TestHost};

/// Instances of `module` created so far, from `/metrics`.
async fn instantiations(host: &TestHost, module: &str) -> u64 {
    let text = host
        .client
        .get(format!("{}/metrics", host.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("switchyard_instantiation_duration_seconds_count{{module=\"{module}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |n| n.trim().parse().unwrap())
}

fn error_message(answer: &Value) -> &str {
    answer["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_body_that_breaks_the_schema_is_refused_with_its_path_before_any_instance() {
    let project = Project::new(&["orders", "inventory"], EXAMPLES);
    let host = project.start().await;
    let (status, answer) = host
        .command("inventory", "restock", json!({"sku": "apple", "qty": 5}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let before = instantiations(&host, "inventory").await;
    assert!(before >= 1);

    let cases = [
        (
            json!({"sku": "apple", "qty": -1}),
            "/qty: -1 is less than the minimum of 0",
        ),
        (
            json!({"sku": "apple", "qty": "five"}),
            r#"/qty: "five" is not of type "integer""#,
        ),
        (
            json!({"sku": "apple"}),
            r#"body: "qty" is a required property"#,
        ),
        (json!([1, 2]), r#"body: [1,2] is not of type "object""#),
    ];
    for (body, expected) in cases {
        let (status, answer) = host.command("inventory", "restock", body.clone()).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["error"]["kind"], "invalid", "{answer}");
        let message = error_message(&answer);
        assert!(
            message.contains("body of inventory/restock does not match its schema")
                && message.contains(expected),
            "{body}: {message}"
        );
    }
    // Refused by the host: the module never ran.
    assert_eq!(instantiations(&host, "inventory").await, before);

    // As any invalid message: a dead letter, nothing written.
    let (status, letters) = host
        .admin(reqwest::Method::GET, "/v1/dead-letters?topic=inventory")
        .await;
    assert_eq!(status, 200, "{letters}");
    assert_eq!(
        letters["dead_letters"].as_array().unwrap().len(),
        4,
        "{letters}"
    );
    let (_, stock) = host
        .command("inventory", "get", json!({"sku": "apple"}))
        .await;
    assert_eq!(stock["output"]["available"], 5, "{stock}");
    host.stop().await;
}

#[tokio::test]
async fn modules_say_what_they_declare() {
    let project = Project::new(&["orders", "inventory"], EXAMPLES);
    let host = project.start().await;
    let (status, modules) = host.get("/v1/modules").await;
    assert_eq!(status, 200);
    let inventory = modules["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "inventory")
        .unwrap();
    assert_eq!(inventory["contract"], "typed");
    let declared: Vec<String> = inventory["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{} {}/{}",
                m["direction"].as_str().unwrap(),
                m["topic"].as_str().unwrap(),
                m["subtopic"].as_str().unwrap()
            )
        })
        .collect();
    for expected in [
        "command inventory/restock",
        "command inventory/get",
        "consumes orders.events/placed",
        "emits inventory.events/restocked",
        "emits inventory.events/reserved",
        "emits inventory.events/out-of-stock",
    ] {
        assert!(
            declared.iter().any(|d| d == expected),
            "{expected}: {declared:?}"
        );
    }
    let restock = inventory["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["subtopic"] == "restock")
        .unwrap();
    // The command type's doc comment.
    assert_eq!(
        restock["summary"],
        "Adds `qty` units of `sku` to the stock."
    );

    host.stop().await;
}

#[tokio::test]
async fn an_emitted_event_off_its_schema_fails_the_message_and_commits_nothing() {
    let project = Project::new(&["faulty"], crate::support::FAULTY);
    let host = project.start().await;
    let (status, answer) = host
        .command("faulty", "off-contract", json!({"key": "k1"}))
        .await;
    assert_eq!(status, 422, "{answer}");
    let message = error_message(&answer);
    assert!(
        message.contains("emitted event faulty.events/written does not match its declared schema")
            && message.contains(r#"/key: 42 is not of type "string""#),
        "{message}"
    );
    // The note it wrote before emitting was rolled back with the event.
    let (status, answer) = host.command("faulty", "get", json!({"key": "k1"})).await;
    assert_eq!((status, &answer["output"]), (200, &Value::Null), "{answer}");
    let events = crate::support::query_count(
        &project.db_url(),
        "SELECT COUNT(*) FROM outbox WHERE topic = 'faulty.events'",
    )
    .await;
    assert_eq!(events, 0);
    host.stop().await;
}

/// Runs one of the real validators of `tests/tools` on `document`.
fn validate(tool: &str, document: &Value) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("document.json");
    std::fs::write(&file, document.to_string()).unwrap();
    let script = crate::support::repo_root().join("tests/tools").join(tool);
    let program = if tool.ends_with(".mjs") {
        "node"
    } else {
        "python3"
    };
    let out = std::process::Command::new(program)
        .arg(&script)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("running {program} {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{tool} refused the document:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `GET /v1/asyncapi.json` and `GET /v1/openapi.json` of a host serving the
/// examples (and `untyped`, WIT 0.1.0 modules): both pass the real
/// validators and list every example command and event.
pub async fn documents_validate_and_list_the_examples(host: &TestHost, untyped: &[&str]) {
    let (status, asyncapi) = host.get("/v1/asyncapi.json").await;
    assert_eq!(status, 200, "{asyncapi}");
    validate("validate-asyncapi.mjs", &asyncapi);
    let (status, openapi) = host.get("/v1/openapi.json").await;
    assert_eq!(status, 200, "{openapi}");
    validate("validate-openapi.py", &openapi);

    assert_eq!(asyncapi["asyncapi"], "3.0.0");
    for topic in ["inventory", "orders", "orders.events", "inventory.events"] {
        assert!(
            asyncapi["channels"].get(topic).is_some(),
            "channel {topic}: {asyncapi}"
        );
    }
    for (topic, subtopic) in [
        ("inventory", "restock"),
        ("inventory", "get"),
        ("orders", "place"),
        ("orders", "get"),
        ("inventory.events", "restocked"),
        ("inventory.events", "reserved"),
        ("inventory.events", "out-of-stock"),
        ("orders.events", "placed"),
        ("orders.events", "confirmed"),
        ("orders.events", "rejected"),
    ] {
        let messages = &asyncapi["channels"][topic]["messages"];
        assert!(
            messages.get(subtopic).is_some(),
            "{topic}/{subtopic}: {messages}"
        );
    }
    let restock = &asyncapi["components"]["messages"]["inventory.restock"];
    assert_eq!(
        restock["payload"]["properties"]["qty"]["minimum"], 0,
        "{restock}"
    );
    for command in [
        "inventory/restock",
        "inventory/get",
        "orders/place",
        "orders/get",
    ] {
        let path = &openapi["paths"][format!("/v1/topics/{command}")]["post"];
        assert!(path.get("requestBody").is_some(), "{command}: {openapi}");
        assert!(path["responses"].get("422").is_some(), "{command}: {path}");
    }
    let (_, modules) = host.get("/v1/modules").await;
    for m in modules["modules"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let expected = if untyped.contains(&name) {
            "untyped"
        } else {
            "typed"
        };
        assert_eq!(m["contract"], expected, "{name}: {m}");
        if untyped.contains(&name) {
            // Its topics are in the documents, without payloads.
            for topic in m["topics"].as_array().unwrap() {
                let topic = topic.as_str().unwrap();
                assert!(asyncapi["channels"].get(topic).is_some(), "{topic}");
            }
        }
    }
}

#[tokio::test]
async fn the_documents_follow_a_reload() {
    let project = Project::new(&["inventory"], crate::support::INVENTORY_ALONE);
    let host = project.start().await;
    let (_, asyncapi) = host.get("/v1/asyncapi.json").await;
    assert!(asyncapi["channels"].get("orders").is_none(), "{asyncapi}");
    // orders joins: the documents name its commands at once.
    std::fs::copy(
        crate::support::wasm("orders"),
        project.dir.path().join("plugins/orders.wasm"),
    )
    .unwrap();
    let manifest = std::fs::read_to_string(project.manifest_path()).unwrap();
    std::fs::write(
        project.manifest_path(),
        format!("{manifest}\n[modules.orders]\nfile = \"orders.wasm\"\nreads = [\"inventory\"]\n"),
    )
    .unwrap();
    let (status, answer) = host.admin(reqwest::Method::POST, "/v1/admin/reload").await;
    assert_eq!(status, 200, "{answer}");
    let (_, openapi) = host.get("/v1/openapi.json").await;
    assert!(
        openapi["paths"].get("/v1/topics/orders/place").is_some(),
        "{openapi}"
    );
    validate("validate-openapi.py", &openapi);
    host.stop().await;
}

/// `inventory` as `GET /v1/modules` lists it.
async fn inventory(host: &TestHost) -> Value {
    let (_, modules) = host.get("/v1/modules").await;
    modules["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "inventory")
        .cloned()
        .unwrap()
}

/// Puts `fixture`'s component in place of inventory.wasm and reloads.
async fn replace_inventory(project: &Project, host: &TestHost, fixture: &str) {
    std::fs::copy(
        crate::support::wasm(fixture),
        project.dir.path().join("plugins/inventory.wasm"),
    )
    .unwrap();
    let (status, answer) = host.admin(reqwest::Method::POST, "/v1/admin/reload").await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn a_reload_that_would_refuse_accepted_bodies_is_refused_unless_allowed() {
    let project = Project::new(&["inventory"], crate::support::INVENTORY_ALONE);
    let host = project.start().await;
    let serving = inventory(&host).await["version"].clone();

    // A new required field: refused, the difference named, the old version serves.
    replace_inventory(&project, &host, "inventory_strict").await;
    let m = crate::support::eventually(
        "the refusal",
        std::time::Duration::from_secs(20),
        || async {
            let m = inventory(&host).await;
            m["last_error"].is_string().then_some(m)
        },
    )
    .await;
    let error = m["last_error"].as_str().unwrap();
    assert!(
        error.contains("refused: version 0.3.0-strict would refuse messages version")
            && error.contains("inventory/restock: /warehouse")
            && error.contains("allow-breaking = true"),
        "{error}"
    );
    assert_eq!(m["version"], serving, "{m}");
    let (status, answer) = host
        .command("inventory", "restock", json!({"sku": "apple", "qty": 5}))
        .await;
    assert_eq!(status, 200, "{answer}");

    // A new optional field: compatible, loads.
    replace_inventory(&project, &host, "inventory_extended").await;
    crate::support::eventually(
        "the compatible version",
        std::time::Duration::from_secs(20),
        || async { (inventory(&host).await["version"] == "0.2.0-extended").then_some(()) },
    )
    .await;
    let (status, answer) = host
        .command(
            "inventory",
            "restock",
            json!({"sku": "apple", "qty": 1, "note": "late"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["output"]["stock"]["available"], 6, "{answer}");

    // The operator says the break is intended: it loads.
    let manifest = std::fs::read_to_string(project.manifest_path()).unwrap();
    std::fs::write(
        project.manifest_path(),
        manifest.replace("backoff-ms = 5", "backoff-ms = 5\nallow-breaking = true"),
    )
    .unwrap();
    replace_inventory(&project, &host, "inventory_strict").await;
    crate::support::eventually(
        "the allowed breaking version",
        std::time::Duration::from_secs(20),
        || async { (inventory(&host).await["version"] == "0.3.0-strict").then_some(()) },
    )
    .await;
    let (status, answer) = host
        .command("inventory", "restock", json!({"sku": "apple", "qty": 1}))
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        error_message(&answer).contains(r#""warehouse" is a required property"#),
        "{answer}"
    );
    host.stop().await;
}

/// `switchyard check` with the next version in place of inventory.wasm.
fn check_next(fixture: &str, args: &[&str]) -> (bool, String) {
    // Topics and subscriptions as describe declares them.
    let entry = "[modules.inventory]\nfile = \"inventory.wasm\"\nemits = [\"inventory.events\"]\n";
    let project = Project::new(&["inventory"], entry);
    std::fs::copy(
        crate::support::wasm(fixture),
        project.dir.path().join("plugins/inventory.wasm"),
    )
    .unwrap();
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    crate::support::run_switchyard(&project.manifest_path(), &all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_compares_a_build_with_a_previous_file_or_a_running_host() {
    let serving = crate::support::wasm("inventory").display().to_string();
    let previous = format!("inventory={serving}");
    let (ok, text) = check_next("inventory_strict", &["--previous", &previous]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("contract inventory: would refuse messages")
            && text.contains("inventory/restock: /warehouse"),
        "{text}"
    );
    let (ok, text) = check_next("inventory_extended", &["--previous", &previous]);
    assert!(ok, "{text}");
    assert!(
        text.contains("contract inventory: compatible with"),
        "{text}"
    );

    // The same against what a running host serves.
    let project = Project::new(&["inventory"], crate::support::INVENTORY_ALONE);
    let host = project.start().await;
    let base = host.base.clone();
    let (ok, text) =
        tokio::task::spawn_blocking(move || check_next("inventory_strict", &["--against", &base]))
            .await
            .unwrap();
    assert!(!ok, "{text}");
    assert!(text.contains("inventory/restock: /warehouse"), "{text}");
    let (status, contract) = host.get("/v1/modules/inventory/contract").await;
    assert_eq!(status, 200, "{contract}");
    assert_eq!(contract["typed"], true);
    host.stop().await;
}

#[tokio::test]
async fn a_module_built_against_wit_0_1_0_still_loads_and_serves_untyped() {
    let entries = format!("{EXAMPLES}\n[modules.legacy]\nfile = \"legacy_v1.wasm\"\n");
    let project = Project::new(&["orders", "inventory", "legacy_v1"], &entries);
    let host = project.start().await;
    // Nothing validates its bodies: whatever JSON it gets, it keeps.
    for (i, body) in [json!({"any": "shape"}), json!([1, 2, 3]), json!("text")]
        .into_iter()
        .enumerate()
    {
        let (status, answer) = host.command("legacy", "keep", body.clone()).await;
        assert_eq!(status, 200, "{i}: {answer}");
        assert_eq!(answer["output"], json!({"version": 1, "body": body}));
    }
    let (status, answer) = host.command("legacy", "drop", json!({})).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        error_message(&answer).contains("unknown subtopic 'drop'"),
        "{answer}"
    );
    // Beside 0.2.0 modules, in the documents without payloads.
    documents_validate_and_list_the_examples(&host, &["legacy"]).await;
    let (_, contract) = host.get("/v1/modules/legacy/contract").await;
    assert_eq!(contract["typed"], false, "{contract}");
    assert_eq!(contract["messages"], json!([]), "{contract}");
    host.stop().await;
}
