use super::*;
use crate::contract::MessageContract;
use proptest::prelude::*;
use serde_json::json;

/// What `schemars` writes for
/// `struct Restock { sku: String, qty: u64, size: Size, lines: Vec<Line>, note: Option<String>, weight: f64 }`.
fn restock() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Restock",
        "type": "object",
        "properties": {
            "sku": { "type": "string" },
            "qty": { "type": "integer", "format": "uint64", "minimum": 0 },
            "size": { "$ref": "#/$defs/Size" },
            "lines": { "type": "array", "items": { "$ref": "#/$defs/Line" } },
            "note": { "type": ["string", "null"] },
            "weight": { "type": "number", "format": "double" },
            "origin": {
                "anyOf": [{ "$ref": "#/$defs/Place" }, { "type": "null" }]
            }
        },
        "required": ["sku", "qty", "size", "lines", "weight"],
        "$defs": {
            "Size": { "type": "string", "enum": ["small", "big"] },
            "Line": {
                "type": "object",
                "properties": {
                    "sku": { "type": "string" },
                    "qty": {
                        "type": "integer",
                        "format": "uint32",
                        "minimum": 0,
                        "maximum": 4294967295u64
                    }
                },
                "required": ["sku", "qty"]
            },
            "Place": {
                "type": "object",
                "properties": { "site": { "type": "string" } },
                "required": ["site"]
            }
        }
    })
}

fn message(
    direction: Direction,
    topic: &str,
    subtopic: &str,
    body: Option<Value>,
) -> MessageContract {
    MessageContract {
        direction,
        topic: topic.into(),
        subtopic: subtopic.into(),
        summary: String::new(),
        body,
        answer: None,
    }
}

fn module(typed: bool, messages: Vec<MessageContract>) -> ModuleContract {
    ModuleContract {
        module: "inventory".into(),
        version: "1.0.0".into(),
        typed,
        topics: vec!["inventory".into()],
        subscribes: vec!["orders".into()],
        emits: vec!["stock".into()],
        messages,
    }
}

fn restock_module(body: Value) -> ModuleContract {
    module(
        true,
        vec![message(
            Direction::Command,
            "inventory",
            "restock",
            Some(body),
        )],
    )
}

/// The breaking changes from `restock()` to `restock()` edited by `edit`.
fn after(edit: impl FnOnce(&mut Value)) -> Vec<Breaking> {
    let mut new = restock();
    edit(&mut new);
    breaking_changes(&restock_module(restock()), &restock_module(new))
}

fn at<'v>(value: &'v mut Value, pointer: &str) -> &'v mut Value {
    value
        .pointer_mut(pointer)
        .expect("pointer into the test schema")
}

fn one(topic: &str, subtopic: &str, path: &str, what: &str) -> Vec<Breaking> {
    vec![breaking(topic, subtopic, path.into(), what.into())]
}

fn restock_says(path: &str, what: &str) -> Vec<Breaking> {
    one("inventory", "restock", path, what)
}

#[test]
fn identical_is_compatible() {
    assert_eq!(after(|_| {}), vec![]);
}

#[test]
fn new_optional_field_is_compatible() {
    let found = after(|s| {
        at(s, "/properties")["comment"] = json!({ "type": ["string", "null"] });
    });
    assert_eq!(found, vec![]);
}

#[test]
fn new_required_field_is_breaking() {
    let found = after(|s| {
        at(s, "/properties")["warehouse"] = json!({ "type": "string" });
        at(s, "/required")
            .as_array_mut()
            .expect("array")
            .push(json!("warehouse"));
    });
    assert_eq!(found, restock_says("/warehouse", "new required field"));
    assert_eq!(
        found[0].to_string(),
        "inventory/restock: /warehouse: new required field"
    );
}

#[test]
fn optional_field_made_required_is_breaking() {
    let found = after(|s| {
        at(s, "/required")
            .as_array_mut()
            .expect("array")
            .push(json!("note"))
    });
    assert_eq!(found, restock_says("/note", "field now required"));
}

#[test]
fn removed_required_field_is_breaking() {
    let found = after(|s| {
        at(s, "/properties")
            .as_object_mut()
            .expect("object")
            .remove("sku");
        at(s, "/required")
            .as_array_mut()
            .expect("array")
            .retain(|r| r != "sku");
    });
    assert_eq!(found, restock_says("/sku", "required field removed"));
}

#[test]
fn removed_optional_field_is_breaking_only_when_unknown_fields_are_refused() {
    let remove_note = |s: &mut Value| {
        at(s, "/properties")
            .as_object_mut()
            .expect("object")
            .remove("note");
    };
    assert_eq!(after(remove_note), vec![]);

    let old = restock_module({
        let mut s = restock();
        s["additionalProperties"] = json!(false);
        s
    });
    let new = restock_module({
        let mut s = restock();
        s["additionalProperties"] = json!(false);
        remove_note(&mut s);
        s
    });
    assert_eq!(
        breaking_changes(&old, &new),
        restock_says("/note", "field removed (unknown fields refused)")
    );
}

#[test]
fn deny_unknown_fields_is_breaking() {
    let found = after(|s| s["additionalProperties"] = json!(false));
    assert_eq!(found, restock_says("", "unknown fields now refused"));
    assert_eq!(
        found[0].to_string(),
        "inventory/restock: unknown fields now refused"
    );
}

#[test]
fn u64_to_u32_is_breaking() {
    let found = after(|s| {
        *at(s, "/properties/qty") = json!({ "type": "integer", "format": "uint32", "minimum": 0, "maximum": 4294967295u64 });
    });
    assert_eq!(found, restock_says("/qty", "maximum 4294967295 added"));
}

#[test]
fn u32_to_u64_and_format_changes_are_compatible() {
    let found = after(|s| {
        *at(s, "/$defs/Line/properties/qty") =
            json!({ "type": "integer", "format": "uint64", "minimum": 0 });
        *at(s, "/properties/sku") = json!({ "type": "string", "format": "uuid" });
    });
    assert_eq!(found, vec![]);
}

#[test]
fn minimum_raised_is_breaking() {
    let found = after(|s| *at(s, "/properties/qty/minimum") = json!(1));
    assert_eq!(found, restock_says("/qty", "minimum raised from 0 to 1"));
    assert_eq!(
        found[0].to_string(),
        "inventory/restock: /qty: minimum raised from 0 to 1"
    );
}

#[test]
fn exclusive_minimum_on_integers_is_compared_as_the_same_bound() {
    // For integers, `exclusiveMinimum: -1` is `minimum: 0`.
    let found =
        after(|s| *at(s, "/properties/qty") = json!({ "type": "integer", "exclusiveMinimum": -1 }));
    assert_eq!(found, vec![]);
    let found =
        after(|s| *at(s, "/properties/qty") = json!({ "type": "integer", "exclusiveMinimum": 0 }));
    assert_eq!(
        found,
        restock_says(
            "/qty",
            "lower bound raised from minimum 0 to exclusiveMinimum 0"
        )
    );
}

#[test]
fn integer_to_number_is_compatible() {
    let found = after(|s| {
        *at(s, "/properties/qty") = json!({ "type": "number", "format": "double", "minimum": 0 });
    });
    assert_eq!(found, vec![]);
}

#[test]
fn number_to_integer_is_breaking() {
    let found =
        after(|s| *at(s, "/properties/weight") = json!({ "type": "integer", "format": "int64" }));
    assert_eq!(
        found,
        restock_says("/weight", "type narrowed from [number] to [integer]")
    );
}

#[test]
fn option_to_plain_is_breaking() {
    let found = after(|s| *at(s, "/properties/note") = json!({ "type": "string" }));
    assert_eq!(
        found,
        restock_says("/note", "type narrowed from [string, null] to [string]")
    );

    // Option<Place> (anyOf with a null branch) to Place.
    let found = after(|s| *at(s, "/properties/origin") = json!({ "$ref": "#/$defs/Place" }));
    assert_eq!(
        found,
        restock_says("/origin", "type narrowed from [null] to [object]")
    );
}

#[test]
fn plain_to_option_is_compatible() {
    let found = after(|s| {
        *at(s, "/properties/sku") = json!({ "type": ["string", "null"] });
        *at(s, "/properties/size") =
            json!({ "anyOf": [{ "$ref": "#/$defs/Size" }, { "type": "null" }] });
        // Both ways of writing a nullable string.
        *at(s, "/properties/note") = json!({ "anyOf": [{ "type": "string" }, { "type": "null" }] });
    });
    assert_eq!(found, vec![]);
}

#[test]
fn nested_ref_struct_change_is_breaking() {
    let found = after(|s| *at(s, "/$defs/Line/properties/qty/minimum") = json!(1));
    assert_eq!(
        found,
        restock_says("/lines/*/qty", "minimum raised from 0 to 1")
    );

    let found = after(|s| {
        at(s, "/$defs/Line/properties")["batch"] = json!({ "type": "string" });
        at(s, "/$defs/Line/required")
            .as_array_mut()
            .expect("array")
            .push(json!("batch"));
    });
    assert_eq!(found, restock_says("/lines/*/batch", "new required field"));
}

#[test]
fn renamed_def_with_same_shape_is_compatible() {
    let found = after(|s| {
        let line = at(s, "/$defs")
            .as_object_mut()
            .expect("object")
            .remove("Line")
            .expect("Line");
        at(s, "/$defs")["OrderLine"] = line;
        *at(s, "/properties/lines/items") = json!({ "$ref": "#/$defs/OrderLine" });
    });
    assert_eq!(found, vec![]);
}

#[test]
fn enum_value_removed_is_breaking() {
    let found = after(|s| *at(s, "/$defs/Size/enum") = json!(["small"]));
    assert_eq!(found, restock_says("/size", "enum value \"big\" removed"));
    // A new value is fine.
    let found = after(|s| *at(s, "/$defs/Size/enum") = json!(["small", "big", "huge"]));
    assert_eq!(found, vec![]);
}

#[test]
fn documenting_enum_variants_is_compatible_and_removing_one_is_not() {
    // With doc comments schemars writes one `const` branch per variant.
    let documented = |variants: &[&str]| {
        let branches: Vec<Value> = variants
            .iter()
            .map(|v| json!({ "description": format!("The {v} one"), "type": "string", "const": v }))
            .collect();
        json!({ "oneOf": branches })
    };
    let found = after(|s| *at(s, "/$defs/Size") = documented(&["small", "big"]));
    assert_eq!(found, vec![]);
    let found = after(|s| *at(s, "/$defs/Size") = documented(&["small", "medium"]));
    assert_eq!(found, restock_says("/size", "enum value \"big\" removed"));
}

#[test]
fn tagged_enum_variants() {
    // enum Change { Add { qty: u32 }, Remove { qty: u32 } }, externally tagged.
    let variant = |name: &str, minimum: u32| {
        json!({
            "type": "object",
            "properties": {
                name: {
                    "type": "object",
                    "properties": { "qty": { "type": "integer", "format": "uint32", "minimum": minimum } },
                    "required": ["qty"]
                }
            },
            "required": [name],
            "additionalProperties": false
        })
    };
    let schema = |variants: Vec<Value>| json!({ "title": "Change", "oneOf": variants });
    let old = schema(vec![variant("Add", 0), variant("Remove", 0)]);
    let check = |new: Value| schema_problems(&old, &new);

    assert_eq!(check(old.clone()), vec![]);
    assert_eq!(
        check(schema(vec![variant("Add", 0)])),
        vec![problem("", "variant \"Remove\" removed")]
    );
    assert_eq!(
        check(schema(vec![variant("Remove", 0), variant("Add", 1)])),
        vec![problem("/Add/qty", "minimum raised from 0 to 1")]
    );

    // Internally tagged: #[serde(tag = "kind")].
    let tagged = |kind: &str, extra: Value| {
        let mut properties = json!({ "kind": { "type": "string", "const": kind } });
        if let (Some(p), Some(e)) = (properties.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        json!({ "type": "object", "properties": properties, "required": ["kind"] })
    };
    let old = json!({ "oneOf": [tagged("add", json!({})), tagged("clear", json!({}))] });
    let new = json!({ "oneOf": [tagged("add", json!({ "note": { "type": "string" } }))] });
    assert_eq!(
        schema_problems(&old, &new),
        vec![problem("", "variant \"clear\" removed")]
    );
}

#[test]
fn range_and_length_changes() {
    let found = after(|s| {
        *at(s, "/properties/sku") =
            json!({ "type": "string", "minLength": 3, "maxLength": 20, "pattern": "^[A-Z]+$" });
        at(s, "/properties/lines")["maxItems"] = json!(10);
        at(s, "/properties/weight")["maximum"] = json!(100);
    });
    assert_eq!(
        found,
        vec![
            breaking(
                "inventory",
                "restock",
                "/lines".into(),
                "maxItems 10 added".into()
            ),
            breaking(
                "inventory",
                "restock",
                "/sku".into(),
                "minLength 3 added".into()
            ),
            breaking(
                "inventory",
                "restock",
                "/sku".into(),
                "maxLength 20 added".into()
            ),
            breaking(
                "inventory",
                "restock",
                "/sku".into(),
                "pattern \"^[A-Z]+$\" added".into()
            ),
            breaking(
                "inventory",
                "restock",
                "/weight".into(),
                "maximum 100 added".into()
            ),
        ]
    );
}

#[test]
fn maps_tuples_and_flattened_enums() {
    // HashMap<String, u64> to HashMap<String, u32>.
    let map = |format: &str, max: Option<u64>| {
        let mut values = json!({ "type": "integer", "format": format, "minimum": 0 });
        if let Some(max) = max {
            values["maximum"] = json!(max);
        }
        json!({ "type": "object", "additionalProperties": values })
    };
    assert_eq!(
        schema_problems(&map("uint32", Some(4294967295)), &map("uint64", None)),
        vec![]
    );
    assert_eq!(
        schema_problems(&map("uint64", None), &map("uint32", Some(4294967295))),
        vec![problem("/*", "maximum 4294967295 added")]
    );

    // (u8, i64) to (u8, i32).
    let tuple = |second: Value| {
        json!({
            "type": "array",
            "prefixItems": [{ "type": "integer", "format": "uint8", "minimum": 0, "maximum": 255 }, second],
            "minItems": 2,
            "maxItems": 2
        })
    };
    let i64_ = json!({ "type": "integer", "format": "int64" });
    let i32_ = json!({ "type": "integer", "format": "int32", "minimum": -2147483648i64, "maximum": 2147483647 });
    assert_eq!(
        schema_problems(&tuple(i32_.clone()), &tuple(i64_.clone())),
        vec![]
    );
    assert_eq!(
        schema_problems(&tuple(i64_), &tuple(i32_)),
        vec![
            problem("/1", "minimum -2147483648 added"),
            problem("/1", "maximum 2147483647 added"),
        ]
    );

    // struct { f: f32, #[serde(flatten)] e: E } with deny_unknown_fields,
    // enum E { B(bool), S(String) }.
    let flattened = |extra: Option<(&str, Value)>| {
        let mut s = json!({
            "type": "object",
            "properties": { "f": { "type": "number", "format": "float" } },
            "required": ["f"],
            "unevaluatedProperties": false,
            "allOf": [{
                "oneOf": [
                    { "type": "object", "properties": { "B": { "type": "boolean" } }, "required": ["B"] },
                    { "type": "object", "properties": { "S": { "type": "string" } }, "required": ["S"] }
                ]
            }]
        });
        if let Some((name, schema)) = extra {
            s["properties"][name] = schema;
        }
        s
    };
    let old = flattened(None);
    assert_eq!(schema_problems(&old, &old.clone()), vec![]);
    let optional = flattened(Some(("g", json!({ "type": ["string", "null"] }))));
    assert_eq!(schema_problems(&old, &optional), vec![]);
    assert_eq!(
        schema_problems(&optional, &old),
        vec![problem("/g", "field removed (unknown fields refused)")]
    );
}

#[test]
fn command_removed_is_breaking() {
    let old = module(
        true,
        vec![
            message(Direction::Command, "inventory", "restock", Some(restock())),
            message(Direction::Command, "inventory", "count", None),
            message(Direction::Consumes, "orders", "placed", None),
            message(Direction::Emits, "stock", "low", None),
        ],
    );
    let new = module(
        true,
        vec![message(
            Direction::Command,
            "inventory",
            "restock",
            Some(restock()),
        )],
    );
    assert_eq!(
        breaking_changes(&old, &new),
        vec![
            breaking(
                "inventory",
                "count",
                String::new(),
                "no longer handled".into()
            ),
            breaking(
                "orders",
                "placed",
                String::new(),
                "no longer handled".into()
            ),
        ]
    );
    assert_eq!(
        breaking_changes(&old, &new)[0].to_string(),
        "inventory/count: no longer handled"
    );
}

#[test]
fn topic_no_longer_owned_is_breaking() {
    let old = restock_module(restock());
    let mut new = module(true, vec![]);
    new.topics = vec!["warehouse".into()];
    assert_eq!(
        breaking_changes(&old, &new),
        one("inventory", "*", "", "topic no longer owned")
    );
}

#[test]
fn emits_are_not_compared() {
    let old = module(
        true,
        vec![message(Direction::Emits, "stock", "low", Some(restock()))],
    );
    let new = module(
        true,
        vec![message(
            Direction::Emits,
            "stock",
            "low",
            Some(json!({ "type": "null" })),
        )],
    );
    assert_eq!(breaking_changes(&old, &new), vec![]);
    assert_eq!(breaking_changes(&old, &module(true, vec![])), vec![]);
}

#[test]
fn untyped_old_accepts_anything_new() {
    let old = module(false, vec![]);
    let mut new = restock_module(restock());
    new.topics = vec!["warehouse".into()];
    assert_eq!(breaking_changes(&old, &new), vec![]);
}

#[test]
fn untyped_new_handles_its_topics() {
    let old = module(
        true,
        vec![
            message(Direction::Command, "inventory", "restock", Some(restock())),
            message(Direction::Consumes, "orders", "placed", Some(restock())),
        ],
    );
    assert_eq!(breaking_changes(&old, &module(false, vec![])), vec![]);
    let mut new = module(false, vec![]);
    new.subscribes.clear();
    assert_eq!(
        breaking_changes(&old, &new),
        one("orders", "placed", "", "no longer handled")
    );
}

#[test]
fn schema_appearing_or_disappearing() {
    let with = |body: Option<Value>| {
        module(
            true,
            vec![message(Direction::Consumes, "orders", "placed", body)],
        )
    };
    assert_eq!(
        breaking_changes(&with(Some(restock())), &with(None)),
        vec![]
    );
    assert_eq!(
        breaking_changes(&with(None), &with(Some(restock()))),
        one("orders", "placed", "", "now validates a body it did not")
    );
    for anything in [
        json!(true),
        json!({}),
        json!({ "$schema": "x", "title": "AnyValue" }),
    ] {
        assert_eq!(breaking_changes(&with(None), &with(Some(anything))), vec![]);
    }
}

#[test]
fn boolean_schemas() {
    assert_eq!(schema_problems(&json!(true), &json!(true)), vec![]);
    assert_eq!(schema_problems(&json!(false), &json!(false)), vec![]);
    assert_eq!(
        schema_problems(&json!(false), &json!({ "type": "string" })),
        vec![]
    );
    assert_eq!(
        schema_problems(&json!({}), &json!(false)),
        vec![problem("", "now refused (schema false)")]
    );
    let found = after(|s| *at(s, "/properties/note") = json!(false));
    assert_eq!(found, restock_says("/note", "now refused (schema false)"));
}

#[test]
fn recursive_refs_terminate() {
    // struct Node { name: String, children: Vec<Node> }, through $defs
    // and through the root.
    let through_defs = json!({
        "$ref": "#/$defs/Node",
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "name": { "type": "string" },
                    "children": { "type": "array", "items": { "$ref": "#/$defs/Node" } }
                },
                "required": ["name", "children"]
            }
        }
    });
    let through_root = json!({
        "type": "object",
        "properties": {
            "name": { "type": "string" },
            "children": { "type": "array", "items": { "$ref": "#" } }
        },
        "required": ["name", "children"]
    });
    for schema in [&through_defs, &through_root] {
        assert_eq!(schema_problems(schema, &schema.clone()), vec![]);
    }
    assert_eq!(schema_problems(&through_defs, &through_root), vec![]);
    let mut longer = through_root.clone();
    at(&mut longer, "/properties/name")["minLength"] = json!(1);
    assert_eq!(
        schema_problems(&through_defs, &longer),
        vec![problem("/name", "minLength 1 added")]
    );
    assert_eq!(
        schema_problems(&through_root, &longer),
        vec![problem("/name", "minLength 1 added")]
    );
    // $refs to themselves inside allOf: expanded once each.
    let knot = json!({
        "$ref": "#/$defs/D0",
        "$defs": {
            "D0": { "$ref": "#/$defs/D0", "allOf": [{ "$ref": "#" }, { "$ref": "#/$defs/D0", "type": "array" }] }
        }
    });
    assert_eq!(schema_problems(&knot, &knot.clone()), vec![]);
    // A loop of $refs with nothing else.
    let loop_ = json!({ "$ref": "#/$defs/A", "$defs": { "A": { "$ref": "#/$defs/B" }, "B": { "$ref": "#/$defs/A" } } });
    assert_eq!(schema_problems(&loop_, &loop_.clone()), vec![]);
}

#[test]
fn large_schemas_stay_cheap() {
    // 256 alternatives at the root, each nesting alternatives six deep;
    // the leaf differs, so that no alternative passes.
    fn nest(depth: usize, leaf: &Value) -> Value {
        if depth == 0 {
            return leaf.clone();
        }
        let branches: Vec<Value> = (0..4)
            .map(|i| json!({ "type": "object", "properties": { format!("f{i}"): nest(depth - 1, leaf) } }))
            .collect();
        json!({ "anyOf": branches })
    }
    let make = |leaf: Value| {
        let inner = nest(6, &leaf);
        let all: Vec<Value> = (0..8)
            .map(|i| json!({ "oneOf": [{ "properties": { format!("a{i}"): inner } }, { "properties": { format!("b{i}"): inner } }] }))
            .collect();
        json!({ "type": "object", "allOf": all })
    };
    let old = make(json!({ "type": "integer" }));
    let new = make(json!({ "type": "integer", "minimum": 1 }));
    let started = std::time::Instant::now();
    let _ = schema_problems(&old, &new);
    assert_eq!(schema_problems(&old, &old.clone()), vec![]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn large_enums_are_compared_variant_by_variant() {
    // 60 externally tagged variants of 10 fields each.
    let schema = |last_minimum: u32| {
        let variants: Vec<Value> = (0..60)
            .map(|v| {
                let fields: Map<String, Value> = (0..10)
                    .map(|f| {
                        let minimum = if v == 59 && f == 9 { last_minimum } else { 0 };
                        (format!("f{f}"), json!({ "type": "integer", "minimum": minimum }))
                    })
                    .collect();
                let names: Vec<&String> = fields.keys().collect();
                json!({
                    "type": "object",
                    "properties": { format!("V{v}"): { "type": "object", "properties": fields, "required": names } },
                    "required": [format!("V{v}")],
                    "additionalProperties": false
                })
            })
            .collect();
        json!({ "oneOf": variants })
    };
    assert_eq!(schema_problems(&schema(0), &schema(0)), vec![]);
    assert_eq!(
        schema_problems(&schema(0), &schema(1)),
        vec![problem("/V59/f9", "minimum raised from 0 to 1")]
    );
}

#[test]
fn weird_schemas_do_not_panic() {
    let weird = [
        json!(null),
        json!(42),
        json!("string"),
        json!([1, 2]),
        json!({ "type": 5, "properties": [], "required": "x", "$ref": "#/nope", "minimum": "a" }),
        json!({ "type": ["nonsense"], "enum": 3, "anyOf": [], "items": [1], "prefixItems": {} }),
        json!({ "$ref": "http://example.com/schema", "allOf": [false], "oneOf": [true, 1] }),
        json!({ "$ref": "#/$defs/a~1b", "$defs": { "a/b": { "type": "integer", "multipleOf": 0 } } }),
        json!({ "type": "integer", "exclusiveMinimum": true, "minimum": 1e308, "maxLength": -1 }),
        json!({ "properties": { "": { "$ref": "#/properties" } }, "additionalProperties": { "$ref": "#" } }),
    ];
    for old in &weird {
        for new in &weird {
            let _ = schema_problems(old, new);
        }
    }
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-3i64..4).prop_map(Value::from),
        (-3.0f64..3.0).prop_map(|f| json!(f)),
        "[a-c]{0,2}".prop_map(Value::from),
    ]
}

fn type_name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "string", "number", "integer", "boolean", "object", "array", "null",
    ])
}

fn schema() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(json!(true)),
        Just(json!(false)),
        Just(json!({})),
        (type_name(), any::<bool>()).prop_map(|(t, nullable)| {
            if nullable { json!({ "type": [t, "null"] }) } else { json!({ "type": t }) }
        }),
        (-5i64..5, 0i64..10, any::<bool>(), prop::option::of(1i64..4)).prop_map(|(lo, span, ex, m)| {
            let mut s = if ex {
                json!({ "type": "integer", "exclusiveMinimum": lo, "maximum": lo + span })
            } else {
                json!({ "type": "number", "minimum": lo, "exclusiveMaximum": lo + span })
            };
            if let Some(m) = m {
                s["multipleOf"] = json!(m);
            }
            s
        }),
        (0u64..4, 0u64..4, prop::option::of("[a-z]{1,3}")).prop_map(|(min, more, pattern)| {
            json!({ "type": "string", "minLength": min, "maxLength": min + more, "pattern": pattern })
        }),
        prop::collection::vec(scalar(), 0..4).prop_map(|vs| json!({ "enum": vs })),
        scalar().prop_map(|v| json!({ "const": v })),
        (0usize..4).prop_map(|i| {
            let target = if i == 3 { "#".to_string() } else { format!("#/$defs/D{i}") };
            json!({ "$ref": target })
        }),
        Just(json!({ "$ref": "#/$defs/missing" })),
    ];
    leaf.prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            (
                prop::collection::btree_map("[a-c]{1,2}", inner.clone(), 0..4),
                prop::collection::vec("[a-d]{1,2}", 0..3),
                prop_oneof![
                    Just(None),
                    Just(Some(json!(false))),
                    inner.clone().prop_map(Some)
                ],
                any::<bool>(),
            )
                .prop_map(|(properties, required, extra, typed)| {
                    let mut s = json!({ "properties": properties, "required": required });
                    if let Some(extra) = extra {
                        s["additionalProperties"] = extra;
                    }
                    if typed {
                        s["type"] = json!("object");
                    }
                    s
                }),
            (
                inner.clone(),
                prop::collection::vec(inner.clone(), 0..3),
                prop::option::of(0u64..4),
                any::<bool>(),
            )
                .prop_map(|(items, prefix, max, unique)| {
                    let mut s = json!({ "type": "array", "items": items, "uniqueItems": unique });
                    if !prefix.is_empty() {
                        s["prefixItems"] = json!(prefix);
                    }
                    if let Some(max) = max {
                        s["maxItems"] = json!(max);
                    }
                    s
                }),
            prop::collection::vec(inner.clone(), 1..4).prop_map(|v| json!({ "anyOf": v })),
            prop::collection::vec(inner.clone(), 1..4).prop_map(|v| json!({ "oneOf": v })),
            prop::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({ "allOf": v })),
            (inner.clone(), 0usize..3).prop_map(|(s, i)| {
                let mut s = match s {
                    Value::Object(_) => s,
                    other => json!({ "allOf": [other] }),
                };
                s["$ref"] = json!(format!("#/$defs/D{i}"));
                s
            }),
        ]
    })
}

fn rooted() -> impl Strategy<Value = Value> {
    (schema(), prop::collection::vec(schema(), 0..3)).prop_map(|(root, defs)| {
        let mut root = match root {
            Value::Object(_) => root,
            other => json!({ "allOf": [other] }),
        };
        let defs: Map<String, Value> = defs
            .into_iter()
            .enumerate()
            .map(|(i, d)| (format!("D{i}"), d))
            .collect();
        root["$defs"] = Value::Object(defs);
        root
    })
}

proptest! {
    #[test]
    fn any_schema_is_compatible_with_itself(s in rooted()) {
        let copy = s.clone();
        prop_assert_eq!(schema_problems(&s, &s), vec![]);
        prop_assert_eq!(schema_problems(&s, &copy), vec![]);
        let old = restock_module(s);
        let new = restock_module(copy);
        prop_assert_eq!(breaking_changes(&old, &new), vec![]);
    }
}
