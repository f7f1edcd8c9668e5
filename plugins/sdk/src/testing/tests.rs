//! The in-memory host keeps the host's rules.

use serde_json::json;

use super::*;
use crate::RepoError;
use crate::bindings::Direction;

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Bump {
    key: String,
    expected: Option<u64>,
    fail: bool,
}

fn bump(ctx: &Ctx, cmd: Bump) -> Result<u64, Error> {
    let current: Option<Versioned<u64>> = ctx.get("n", &cmd.key)?;
    let next = current.map_or(1, |c| c.value + 1);
    let version = ctx.put("n", &cmd.key, &next, cmd.expected)?;
    ctx.emit("n.events", "bumped", &json!({"key": cmd.key, "n": next}))?;
    if cmd.fail {
        return Err(Error::transient("asked to fail"));
    }
    Ok(version)
}

fn kit() -> Kit {
    Kit::new(
        Module::new("n", "0.1.0")
            .command("n", "bump", bump)
            .emits("n.events"),
    )
}

#[test]
fn a_failed_message_leaves_no_writes_and_no_events() {
    let kit = kit();
    let ok = json!({"key": "a", "expected": null, "fail": false});
    assert_eq!(kit.command("n", "bump", &ok), Ok(json!(1)));
    let failing = json!({"key": "a", "expected": null, "fail": true});
    assert!(matches!(
        kit.command("n", "bump", failing),
        Err(Error::Transient(_))
    ));
    assert_eq!(kit.doc::<u64>("n", "a"), Some(1));
    assert_eq!(kit.version("n", "a"), 1);
    assert_eq!(kit.events().len(), 1);
}

#[test]
fn a_stale_expected_version_is_a_conflict_with_the_current_one() {
    let kit = kit();
    kit.seed("n", "a", &5);
    kit.seed("n", "a", &6);
    let stale = json!({"key": "a", "expected": 1, "fail": false});
    assert_eq!(
        kit.command("n", "bump", stale),
        Err(Error::from(RepoError::VersionConflict(2)))
    );
    let fresh = json!({"key": "a", "expected": 2, "fail": false});
    assert_eq!(kit.command("n", "bump", fresh), Ok(json!(3)));
    assert_eq!(kit.doc::<u64>("n", "a"), Some(7));
}

#[test]
fn a_repeated_message_id_is_answered_once() {
    let kit = kit();
    let body = json!({"key": "a", "expected": null, "fail": false});
    let first = kit.handle(Message::new("n", "bump", &body).id("m-1"));
    let again = kit.handle(Message::new("n", "bump", &body).id("m-1"));
    assert_eq!(first, again);
    assert_eq!(kit.doc::<u64>("n", "a"), Some(1));
    assert_eq!(kit.events().len(), 1);
}

#[test]
fn events_carry_correlation_and_causation() {
    let kit = kit();
    let body = json!({"key": "a", "expected": null, "fail": false});
    kit.handle(
        Message::new("n", "bump", body)
            .id("m-7")
            .header("correlation-id", "c-1"),
    )
    .unwrap();
    let event = &kit.events()[0];
    assert_eq!(event.headers["correlation-id"], "c-1");
    assert_eq!(event.headers["causation-id"], "m-7");
    assert_eq!(
        kit.emitted_body("n.events", "bumped"),
        json!({"key": "a", "n": 1})
    );
}

#[test]
fn emitting_outside_the_grants_is_refused() {
    let kit = kit().emit_grants(&["other"]);
    let body = json!({"key": "a", "expected": null, "fail": false});
    match kit.command("n", "bump", body) {
        Err(Error::Invalid(m)) => assert!(m.contains("may not emit to 'n.events'"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(kit.version("n", "a"), 0);
}

#[test]
fn a_body_that_does_not_parse_is_invalid_and_names_the_field() {
    let kit = kit();
    match kit.handle(Message::raw("n", "bump", r#"{"key":"a"}"#)) {
        Err(Error::Invalid(m)) => assert!(m.contains("missing field `fail`"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_keys_and_control_characters_are_invalid_as_in_the_host() {
    fn put(ctx: &Ctx, key: String) -> Result<u64, Error> {
        ctx.put("c", &key, &1, None)
    }
    fn get(ctx: &Ctx, key: String) -> Result<bool, Error> {
        Ok(ctx.get::<Value>("c", &key)?.is_some())
    }
    fn scan(ctx: &Ctx, prefix: String) -> Result<usize, Error> {
        Ok(ctx.scan::<Value>("c", &prefix, 10)?.len())
    }
    let kit = Kit::new(
        Module::new("k", "0.1.0")
            .command("k", "put", put)
            .command("k", "get", get)
            .command("k", "scan", scan),
    );
    for bad in ["", "a\0b", "line\nbreak", "del\u{7f}"] {
        for call in ["put", "get"] {
            let r = kit.command("k", call, bad);
            assert!(
                matches!(&r, Err(Error::Invalid(m)) if m.contains("key")),
                "{call} {bad:?}: {r:?}"
            );
        }
    }
    assert_eq!(kit.version("c", ""), 0, "nothing was written");
    // A prefix may be empty, not hold control characters.
    assert_eq!(kit.command("k", "scan", ""), Ok(json!(0)));
    assert!(matches!(
        kit.command("k", "scan", "\0"),
        Err(Error::Invalid(_))
    ));
    assert_eq!(kit.command("k", "put", "été"), Ok(json!(1)));
}

#[test]
fn the_fake_keeps_the_hosts_default_byte_budgets() {
    fn fill(ctx: &Ctx, n: usize) -> Result<usize, Error> {
        let mib = "x".repeat(MAX_VALUE_BYTES - 2);
        for i in 0..n {
            ctx.put("blobs", &format!("b{i}"), &mib, None)?;
        }
        Ok(n)
    }
    fn scan(ctx: &Ctx, limit: u32) -> Result<usize, Error> {
        Ok(ctx.scan::<Value>("blobs", "", limit)?.len())
    }
    let kit = Kit::new(
        Module::new("b", "0.1.0")
            .command("b", "fill", fill)
            .command("b", "scan", scan),
    );
    // 1 MiB + "blobs" + "bN" each: seven fit 8 MiB.
    assert_eq!(kit.command("b", "fill", 7), Ok(json!(7)));
    match kit.command("b", "fill", 8) {
        Err(Error::Invalid(m)) => assert!(m.contains("max-write-bytes"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Three of them fit one scan's 4 MiB.
    assert_eq!(kit.command("b", "scan", 3), Ok(json!(3)));
    match kit.command("b", "scan", 10) {
        Err(Error::Invalid(m)) => assert!(m.contains("at most 3"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn scans_are_in_key_order_by_prefix_with_a_limit() {
    fn list(ctx: &Ctx, prefix: String) -> Result<Vec<String>, Error> {
        Ok(ctx
            .scan::<Value>("c", &prefix, 2)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }
    let kit = Kit::new(Module::new("s", "0.1.0").command("s", "list", list));
    for k in ["b2", "a1", "b1", "b3"] {
        kit.seed("c", k, &json!({}));
    }
    assert_eq!(kit.command("s", "list", "b"), Ok(json!(["b1", "b2"])));
}

/// A shipment to create.
///
/// More than the summary.
#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Ship {
    /// Where to.
    to: String,
    #[serde(default)]
    express: bool,
}

#[derive(serde::Serialize, schemars::JsonSchema)]
struct Shipped {
    id: u32,
}

#[test]
fn describe_declares_each_message_with_its_schemas_and_summary() {
    let module = Module::new("shipping", "0.1.0")
        .command("shipping", "create", |_: &Ctx, _: Ship| Ok(Shipped { id: 1 }))
        .on_event("orders.events", "placed", |_: &Ctx, _: Bump| Ok(()))
        .emits_event::<Shipped>("shipping.events", "shipped");
    let d = module.__describe();
    assert_eq!(d.emits, ["shipping.events"]);
    let declared: Vec<(Direction, &str, &str)> = d
        .messages
        .iter()
        .map(|m| (m.direction, m.topic.as_str(), m.subtopic.as_str()))
        .collect();
    assert_eq!(
        declared,
        [
            (Direction::Command, "shipping", "create"),
            (Direction::Consumes, "orders.events", "placed"),
            (Direction::Emits, "shipping.events", "shipped"),
        ]
    );
    let create = &d.messages[0];
    assert_eq!(create.summary, "A shipment to create.");
    let body: serde_json::Value =
        serde_json::from_str(create.body_schema.as_deref().unwrap()).unwrap();
    // `express` has a serde default: not required.
    assert_eq!(body["required"], json!(["to"]));
    assert_eq!(body["properties"]["to"]["description"], "Where to.");
    let answer: serde_json::Value =
        serde_json::from_str(create.answer_schema.as_deref().unwrap()).unwrap();
    assert_eq!(answer["properties"]["id"]["minimum"], 0);
    // Events have no answer; `schema` returns what describe declares.
    assert!(d.messages[1].answer_schema.is_none());
    assert_eq!(
        module.schema("shipping.events", "shipped", false).unwrap()["title"],
        "Shipped"
    );
}
