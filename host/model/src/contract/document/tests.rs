use super::*;

fn message(
    direction: Direction,
    topic: &str,
    subtopic: &str,
    summary: &str,
    body: Option<Value>,
    answer: Option<Value>,
) -> MessageContract {
    MessageContract {
        direction,
        topic: topic.to_string(),
        subtopic: subtopic.to_string(),
        summary: summary.to_string(),
        body,
        answer,
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const DRAFT: &str = "https://json-schema.org/draft/2020-12/schema";

fn sku() -> Value {
    json!({"description": "A stock keeping unit.", "type": "string", "minLength": 1})
}

/// inventory (typed), orders (typed, a nested struct by `$ref`) and
/// notifications (untyped), as schemars 1.x writes their schemas.
fn contracts() -> Vec<ModuleContract> {
    let stock = json!({
        "$schema": DRAFT,
        "title": "Stock",
        "type": "object",
        "properties": {
            "sku": {"$ref": "#/$defs/Sku"},
            "available": {"type": "integer", "format": "uint32", "minimum": 0},
        },
        "required": ["sku", "available"],
        "$defs": {"Sku": sku()},
    });
    let inventory = ModuleContract {
        module: "inventory".to_string(),
        version: "1.2.0".to_string(),
        typed: true,
        topics: strings(&["inventory"]),
        subscribes: strings(&["orders.events"]),
        emits: strings(&["inventory.events"]),
        messages: vec![
            message(
                Direction::Command,
                "inventory",
                "restock",
                "Adds stock of a sku.",
                Some(json!({
                    "$schema": DRAFT,
                    "title": "Restock",
                    "type": "object",
                    "properties": {
                        "sku": {"$ref": "#/$defs/Sku"},
                        "qty": {"type": "integer", "format": "uint32", "minimum": 1},
                    },
                    "required": ["sku", "qty"],
                    "$defs": {"Sku": sku()},
                })),
                Some(stock.clone()),
            ),
            message(
                Direction::Command,
                "inventory",
                "get",
                "Reads the stock of a sku.",
                Some(json!({
                    "$schema": DRAFT,
                    "title": "Get",
                    "type": "object",
                    "properties": {"sku": {"$ref": "#/$defs/Sku"}},
                    "required": ["sku"],
                    "$defs": {"Sku": sku()},
                })),
                Some(stock),
            ),
            message(
                Direction::Consumes,
                "orders.events",
                "placed",
                "Reserves the stock of a placed order.",
                Some(json!({
                    "$schema": DRAFT,
                    "title": "Placed",
                    "type": "object",
                    "properties": {
                        "order_id": {"type": "string"},
                        "line": {"$ref": "#/$defs/Line"},
                    },
                    "required": ["order_id", "line"],
                    "$defs": {"Line": {
                        "type": "object",
                        "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
                        "required": ["sku", "qty"],
                    }},
                })),
                None,
            ),
            message(
                Direction::Emits,
                "inventory.events",
                "restocked",
                "Stock of a sku was added.",
                Some(json!({
                    "$schema": DRAFT,
                    "title": "Restocked",
                    "type": "object",
                    "properties": {
                        "sku": {"$ref": "#/$defs/Sku"},
                        "level": {"$ref": "#/$defs/Level", "description": "How much is left."},
                        "previous": {"anyOf": [{"$ref": "#/$defs/Level"}, {"type": "null"}]},
                        "batch": {
                            "type": "array",
                            "prefixItems": [{"type": "string"}, {"type": "integer", "format": "uint32", "minimum": 0}],
                            "minItems": 2,
                            "maxItems": 2,
                        },
                    },
                    "required": ["sku", "level", "batch"],
                    "$defs": {
                        "Sku": sku(),
                        "Level": {"oneOf": [
                            {"type": "string", "const": "empty"},
                            {"type": "string", "const": "low"},
                            {"type": "string", "const": "plenty"},
                        ]},
                    },
                })),
                None,
            ),
            message(
                Direction::Emits,
                "inventory.events",
                "reserved",
                "Stock was reserved for an order.",
                Some(json!({
                    "$schema": DRAFT,
                    "title": "Reserved",
                    "type": "object",
                    "properties": {"order_id": {"type": "string"}, "sku": {"$ref": "#/$defs/Sku"}},
                    "required": ["order_id", "sku"],
                    "$defs": {"Sku": sku()},
                })),
                None,
            ),
        ],
    };
    let line = json!({
        "description": "One line of an order.",
        "type": "object",
        "properties": {
            "sku": {"type": "string"},
            "qty": {"type": "integer", "format": "uint32", "minimum": 1},
        },
        "required": ["sku", "qty"],
    });
    let order = json!({
        "$schema": DRAFT,
        "title": "Order",
        "type": "object",
        "properties": {
            "order_id": {"type": "string"},
            "line": {"$ref": "#/$defs/Line"},
            "status": {"$ref": "#/$defs/Status"},
        },
        "required": ["order_id", "line", "status"],
        "$defs": {
            "Line": line,
            "Status": {"type": "string", "enum": ["placed", "confirmed", "rejected"]},
        },
    });
    let orders = ModuleContract {
        module: "orders".to_string(),
        version: "0.3.1".to_string(),
        typed: true,
        topics: strings(&["orders"]),
        subscribes: strings(&["inventory.events"]),
        emits: strings(&["orders.events"]),
        messages: vec![
            message(
                Direction::Command,
                "orders",
                "place",
                "Places an order of a known sku.",
                Some(json!({
                    "$schema": DRAFT,
                    "title": "Place",
                    "type": "object",
                    "properties": {"order_id": {"type": "string"}, "line": {"$ref": "#/$defs/Line"}},
                    "required": ["order_id", "line"],
                    "$defs": {"Line": line},
                })),
                Some(order.clone()),
            ),
            message(
                Direction::Command,
                "orders",
                "get",
                "",
                Some(json!({
                    "$schema": DRAFT,
                    "title": "GetOrder",
                    "type": "object",
                    "properties": {"order_id": {"type": "string"}},
                    "required": ["order_id"],
                })),
                Some(order),
            ),
            message(
                Direction::Emits,
                "orders.events",
                "placed",
                "An order was placed.",
                Some(json!({
                    "$schema": DRAFT,
                    "title": "OrderPlaced",
                    "type": "object",
                    "properties": {"order_id": {"type": "string"}, "line": {"$ref": "#/$defs/Line"}},
                    "required": ["order_id", "line"],
                    "$defs": {"Line": line},
                })),
                None,
            ),
            message(
                Direction::Consumes,
                "inventory.events",
                "reserved",
                "Confirms the order.",
                Some(json!({
                    "$schema": DRAFT,
                    "title": "Reserved",
                    "type": "object",
                    "properties": {"order_id": {"type": "string"}},
                    "required": ["order_id"],
                })),
                None,
            ),
            message(
                Direction::Consumes,
                "inventory.events",
                "out-of-stock",
                "Rejects the order.",
                Some(json!({
                    "$schema": DRAFT,
                    "title": "OutOfStock",
                    "type": "object",
                    "properties": {"order_id": {"type": "string"}},
                    "required": ["order_id"],
                })),
                None,
            ),
        ],
    };
    let notifications = ModuleContract {
        module: "notifications".to_string(),
        version: "0.1.0".to_string(),
        typed: false,
        topics: Vec::new(),
        subscribes: strings(&["orders.events"]),
        emits: Vec::new(),
        messages: Vec::new(),
    };
    vec![inventory, orders, notifications]
}

/// An untyped module that owns a command topic and emits to another.
fn untyped_owner() -> ModuleContract {
    ModuleContract {
        module: "audit".to_string(),
        version: "0.1.0".to_string(),
        typed: false,
        topics: strings(&["audit"]),
        subscribes: Vec::new(),
        emits: strings(&["audit.events"]),
        messages: Vec::new(),
    }
}

fn servers() -> Servers {
    Servers {
        http: Some("http://127.0.0.1:8080".to_string()),
        redis: Some("redis://127.0.0.1:6379".to_string()),
        kafka: Some("127.0.0.1:9092".to_string()),
    }
}

/// Every `$ref` in `document`, with where it is.
fn refs(document: &Value) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    match (key.as_str(), child) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        _ => walk(child, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(document, &mut out);
    out
}

/// Resolves a local `$ref` in `document` (JSON pointer, percent-decoded).
fn target<'a>(document: &'a Value, reference: &str) -> Option<&'a Value> {
    let fragment = percent_decode(reference.strip_prefix('#')?)?;
    document.pointer(&fragment)
}

fn assert_refs_resolve(document: &Value) {
    let all = refs(document);
    assert!(!all.is_empty());
    for r in all {
        assert!(target(document, &r).is_some(), "{r} does not resolve");
        assert!(
            !r.contains("$defs") && !r.contains("definitions"),
            "{r} not rewritten"
        );
    }
}

#[test]
fn asyncapi_has_a_channel_per_topic_and_a_message_per_subtopic() {
    let doc = asyncapi(&contracts(), &servers(), "0.9.0");
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["version"], "0.9.0");
    let channels = doc["channels"].as_object().unwrap();
    let keys: Vec<&str> = channels.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["inventory", "inventory.events", "orders", "orders.events"]
    );
    for (key, channel) in channels {
        assert_eq!(channel["address"], key.as_str());
    }
    let subtopics = |c: &str| -> Vec<String> {
        let mut s: Vec<String> = channels[c]["messages"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        s.sort();
        s
    };
    assert_eq!(subtopics("inventory"), ["get", "restock"]);
    assert_eq!(
        subtopics("inventory.events"),
        ["out-of-stock", "reserved", "restocked"]
    );
    assert_eq!(subtopics("orders"), ["get", "place"]);
    assert_eq!(subtopics("orders.events"), ["placed"]);

    let messages = doc["components"]["messages"].as_object().unwrap();
    let restock = &messages["inventory.restock"];
    assert_eq!(restock["name"], "restock");
    assert_eq!(restock["summary"], "Adds stock of a sku.");
    assert_eq!(restock["payload"]["title"], "Restock");
    // The emitter's schema speaks for an event, not a subscriber's.
    let placed = &messages["orders.events.placed"];
    assert_eq!(placed["payload"]["title"], "OrderPlaced");
    assert_eq!(placed["summary"], "An order was placed.");
    // Declared by a subscriber only: its schema.
    assert_eq!(
        messages["inventory.events.out-of-stock"]["payload"]["title"],
        "OutOfStock"
    );
}

#[test]
fn asyncapi_operations_receive_and_send_per_module() {
    let doc = asyncapi(&contracts(), &servers(), "0.9.0");
    let operations = doc["operations"].as_object().unwrap();
    let mut ids: Vec<&str> = operations.keys().map(String::as_str).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [
            "inventory.receive.inventory",
            "inventory.receive.orders.events",
            "inventory.send.inventory.events",
            "notifications.receive.orders.events",
            "orders.receive.inventory.events",
            "orders.receive.orders",
            "orders.send.orders.events",
        ]
    );
    let op = &operations["inventory.receive.inventory"];
    assert_eq!(op["action"], "receive");
    assert_eq!(op["channel"]["$ref"], "#/channels/inventory");
    let messages: Vec<&str> = op["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["$ref"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        [
            "#/channels/inventory/messages/restock",
            "#/channels/inventory/messages/get"
        ]
    );
    assert!(op["description"].as_str().unwrap().contains("Adds stock"));
    let send = &operations["inventory.send.inventory.events"];
    assert_eq!(send["action"], "send");
    // A subscriber reads only what it declares.
    let orders_reads = &operations["orders.receive.inventory.events"];
    assert_eq!(orders_reads["messages"].as_array().unwrap().len(), 2);
    // One message with a summary: the operation's summary is it.
    let placed = &operations["inventory.receive.orders.events"];
    assert_eq!(placed["summary"], "Reserves the stock of a placed order.");
    // Every operation's messages are its channel's.
    for (id, op) in operations {
        let channel = op["channel"]["$ref"].as_str().unwrap();
        for m in op["messages"].as_array().unwrap() {
            let r = m["$ref"].as_str().unwrap();
            assert!(r.starts_with(&format!("{channel}/messages/")), "{id}: {r}");
        }
    }
}

#[test]
fn untyped_modules_show_their_topics_without_payloads() {
    let mut modules = contracts();
    modules.push(untyped_owner());
    let doc = asyncapi(&modules, &servers(), "1");
    // The untyped subscriber reads every message of the channel.
    let op = &doc["operations"]["notifications.receive.orders.events"];
    assert_eq!(
        op["messages"][0]["$ref"],
        "#/channels/orders.events/messages/placed"
    );
    // An untyped owner: a channel with a message of any subtopic, no payload.
    let channel = &doc["channels"]["audit"];
    assert_eq!(channel["address"], "audit");
    let any = &doc["components"]["messages"]["audit.any"];
    assert!(any.get("payload").is_none());
    assert_eq!(
        doc["operations"]["audit.receive.audit"]["messages"][0]["$ref"],
        "#/channels/audit/messages/any"
    );
    assert_eq!(
        doc["operations"]["audit.send.audit.events"]["action"],
        "send"
    );
    assert!(doc["channels"]["audit.events"].is_object());
    assert_refs_resolve(&doc);

    let api = openapi(&modules, &servers(), "1");
    let post = &api["paths"]["/v1/topics/audit/{subtopic}"]["post"];
    assert_eq!(post["parameters"][0]["name"], "subtopic");
    assert!(
        post["requestBody"]["content"]["application/json"]["schema"]
            .get("type")
            .is_none()
    );
    assert!(
        api["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "notifications")
    );
    assert_refs_resolve(&api);
}

#[test]
fn defs_move_to_components_and_refs_are_rewritten() {
    for doc in [
        asyncapi(&contracts(), &servers(), "1"),
        openapi(&contracts(), &servers(), "1"),
    ] {
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in ["inventory.Sku", "orders.Line"] {
            assert!(schemas.contains_key(name), "{name} missing");
        }
        // The same definition in several schemas of a module: once.
        assert!(!schemas.contains_key("inventory.Sku.2"));
        assert!(!schemas.contains_key("orders.Line.2"));
        assert_refs_resolve(&doc);
        let text = doc.to_string();
        assert!(!text.contains("\"$defs\""));
        assert!(!text.contains("\"$schema\""));
    }
    let api = openapi(&contracts(), &servers(), "1");
    let body = &api["paths"]["/v1/topics/inventory/restock"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"];
    assert_eq!(body["$ref"], "#/components/schemas/inventory.Restock");
    assert_eq!(
        api["components"]["schemas"]["inventory.Restock"]["properties"]["sku"]["$ref"],
        "#/components/schemas/inventory.Sku"
    );
    // OpenAPI keeps 2020-12 as it is.
    let restocked = asyncapi(&contracts(), &Servers::default(), "1");
    let payload = &restocked["components"]["messages"]["inventory.events.restocked"]["payload"];
    // AsyncAPI (draft 07): tuples as array `items`, `$ref` siblings under `allOf`.
    assert!(payload["properties"]["batch"]["items"].is_array());
    assert!(payload["properties"]["batch"].get("prefixItems").is_none());
    assert_eq!(
        payload["properties"]["level"]["allOf"][0]["$ref"],
        "#/components/schemas/inventory.Level"
    );
    assert_eq!(
        payload["properties"]["level"]["description"],
        "How much is left."
    );
}

#[test]
fn colliding_and_recursive_definitions_get_their_own_names() {
    let mut schemas = Schemas::new(Dialect::Draft2020);
    let first = schemas.embed(
        "m",
        "a",
        &json!({"properties": {"x": {"$ref": "#/$defs/Item"}}, "$defs": {"Item": {"type": "string"}}}),
        false,
    );
    let second = schemas.embed(
        "m",
        "b",
        &json!({"properties": {"x": {"$ref": "#/$defs/Item"}}, "$defs": {"Item": {"type": "integer"}}}),
        false,
    );
    assert_eq!(
        first["properties"]["x"]["$ref"],
        "#/components/schemas/m.Item"
    );
    assert_eq!(
        second["properties"]["x"]["$ref"],
        "#/components/schemas/m.Item.2"
    );
    assert_eq!(schemas.map["m.Item"]["type"], "string");
    assert_eq!(schemas.map["m.Item.2"]["type"], "integer");

    // A definition that refers to another one whose name had to change
    // changes with it.
    let third = schemas.embed(
        "m",
        "c",
        &json!({"$ref": "#/$defs/Outer", "$defs": {
            "Outer": {"properties": {"i": {"$ref": "#/$defs/Item"}}},
            "Item": {"type": "boolean"},
        }}),
        false,
    );
    assert_eq!(third["$ref"], "#/components/schemas/m.Outer");
    assert_eq!(
        schemas.map["m.Outer"]["properties"]["i"]["$ref"],
        "#/components/schemas/m.Item.3"
    );

    // A recursive root (`$ref: "#"`) becomes a component of its own.
    let tree = schemas.embed(
        "m",
        "tree",
        &json!({"title": "Tree", "type": "object", "properties": {
            "children": {"type": "array", "items": {"$ref": "#"}},
            "name": {"$ref": "#/properties/children/items"},
        }}),
        false,
    );
    assert_eq!(tree["$ref"], "#/components/schemas/m.Tree");
    let held = &schemas.map["m.Tree"];
    assert_eq!(
        held["properties"]["children"]["items"]["$ref"],
        "#/components/schemas/m.Tree"
    );
    assert_eq!(
        held["properties"]["name"]["$ref"],
        "#/components/schemas/m.Tree/properties/children/items"
    );

    // A `$ref` to nothing or elsewhere is dropped; data is not touched.
    let loose = schemas.embed(
        "m",
        "d",
        &json!({"properties": {
            "a": {"$ref": "#/$defs/Missing", "description": "kept"},
            "b": {"$ref": "https://example.com/schema.json"},
            "c": {"const": {"$ref": "#/$defs/Item"}},
        }}),
        false,
    );
    assert_eq!(loose["properties"]["a"], json!({"description": "kept"}));
    assert_eq!(loose["properties"]["b"], json!({}));
    assert_eq!(loose["properties"]["c"]["const"]["$ref"], "#/$defs/Item");
    assert_eq!(schemas.embed("m", "e", &json!(true), false), json!({}));
    assert_eq!(
        schemas.embed("m", "f", &json!(false), false),
        json!({"not": {}})
    );

    // Named (OpenAPI's bodies and answers): a component after its
    // title, else the hint; the same schema twice is one component.
    let order = json!({"title": "Order", "type": "object"});
    let a = schemas.embed("m", "place.answer", &order, true);
    let b = schemas.embed("m", "get.answer", &order, true);
    assert_eq!(a, json!({"$ref": "#/components/schemas/m.Order"}));
    assert_eq!(a, b);
    let untitled = schemas.embed("m", "get", &json!({"type": "object"}), true);
    assert_eq!(untitled, json!({"$ref": "#/components/schemas/m.get"}));
}

#[test]
fn names_are_unique_and_fit_the_key_patterns() {
    let mut names = Names::default();
    assert_eq!(names.claim("a.b"), "a.b");
    assert_eq!(names.claim("a.b"), "a.b.2");
    assert_eq!(names.claim("a.b"), "a.b.3");
    assert_eq!(names.claim("Wrapper<T>"), "Wrapper_T_");
    assert_eq!(names.claim(""), "_");

    // Topic `a.b` subtopic `c` and topic `a` subtopic `b.c` would both
    // be `a.b.c`; a module owning a topic twice over (as a command topic
    // and a subscription) would receive it twice.
    let module = ModuleContract {
        module: "m".to_string(),
        version: "1".to_string(),
        typed: true,
        topics: strings(&["a", "a.b"]),
        subscribes: strings(&["a.b"]),
        emits: Vec::new(),
        messages: vec![
            message(Direction::Command, "a.b", "c", "", None, None),
            message(Direction::Command, "a", "b.c", "", None, None),
        ],
    };
    let api = openapi(std::slice::from_ref(&module), &servers(), "1");
    let ids: Vec<&str> = api["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item["post"]["operationId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(
        ids.contains(&"a.b.c") && ids.contains(&"a.b.c.2"),
        "{ids:?}"
    );
    let doc = asyncapi(&[module], &servers(), "1");
    let mut ids: Vec<&str> = doc["operations"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["m.receive.a", "m.receive.a.b", "m.receive.a.b.2"]);
    let messages = doc["components"]["messages"].as_object().unwrap();
    assert!(messages.contains_key("a.b.c") && messages.contains_key("a.b.c.2"));
    assert_refs_resolve(&doc);
}

#[test]
fn servers_only_when_configured() {
    let none = asyncapi(&contracts(), &Servers::default(), "1");
    assert!(none.get("servers").is_none());
    assert!(none["channels"]["orders.events"].get("servers").is_none());
    assert!(
        openapi(&contracts(), &Servers::default(), "1")
            .get("servers")
            .is_none()
    );

    let doc = asyncapi(&contracts(), &servers(), "1");
    let all = doc["servers"].as_object().unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all["http"]["protocol"], "http");
    assert_eq!(all["http"]["host"], "127.0.0.1:8080");
    assert_eq!(all["redis"]["protocol"], "redis");
    assert_eq!(all["redis"]["host"], "127.0.0.1:6379");
    assert_eq!(all["kafka"]["protocol"], "kafka");
    assert_eq!(all["kafka"]["host"], "127.0.0.1:9092");
    // Events do not travel over HTTP; commands arrive on every server.
    assert_eq!(
        doc["channels"]["orders.events"]["servers"],
        json!([{"$ref": "#/servers/redis"}, {"$ref": "#/servers/kafka"}])
    );
    assert!(doc["channels"]["orders"].get("servers").is_none());

    let only_redis = Servers {
        redis: Some("redis://user:secret@10.0.0.5:6380/2".to_string()),
        ..Servers::default()
    };
    let doc = asyncapi(&contracts(), &only_redis, "1");
    let all = doc["servers"].as_object().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all["redis"]["host"], "10.0.0.5:6380");
    assert_eq!(all["redis"]["pathname"], "/2");
    assert!(!doc.to_string().contains("secret"));

    let kafka = Servers {
        kafka: Some("k1:9092, k2:9092".to_string()),
        http: Some("127.0.0.1:8080".to_string()),
        ..Servers::default()
    };
    let doc = asyncapi(&contracts(), &kafka, "1");
    assert_eq!(doc["servers"]["kafka-2"]["host"], "k2:9092");
    let api = openapi(&contracts(), &kafka, "1");
    assert_eq!(
        api["servers"],
        json!([{"url": "http://127.0.0.1:8080", "description": "This host's HTTP listener."}])
    );
}

#[test]
fn openapi_has_a_path_per_command() {
    let api = openapi(&contracts(), &servers(), "2.0.0");
    assert_eq!(api["openapi"], "3.1.0");
    assert_eq!(api["info"]["version"], "2.0.0");
    let paths: Vec<&str> = api["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        paths,
        [
            "/v1/topics/inventory/get",
            "/v1/topics/inventory/restock",
            "/v1/topics/orders/get",
            "/v1/topics/orders/place",
        ]
    );
    let post = &api["paths"]["/v1/topics/inventory/restock"]["post"];
    assert_eq!(post["operationId"], "inventory.restock");
    assert_eq!(post["summary"], "Adds stock of a sku.");
    assert_eq!(
        api["paths"]["/v1/topics/orders/get"]["post"]["summary"],
        "get on orders"
    );
    let responses = post["responses"].as_object().unwrap();
    let codes: Vec<&str> = responses.keys().map(String::as_str).collect();
    assert_eq!(
        codes,
        [
            "200", "202", "400", "401", "404", "409", "413", "422", "500", "503", "504"
        ]
    );
    let output = &responses["200"]["content"]["application/json"]["schema"]["properties"]["output"];
    assert_eq!(output["$ref"], "#/components/schemas/inventory.Stock");
    // Bodies and answers are components named after their titles; the
    // answer both commands of orders share is one.
    let schemas = api["components"]["schemas"].as_object().unwrap();
    assert_eq!(schemas["inventory.Stock"]["title"], "Stock");
    for name in [
        "inventory.Get",
        "orders.Place",
        "orders.GetOrder",
        "orders.Order",
    ] {
        assert!(schemas.contains_key(name), "{name} missing");
    }
    assert!(!schemas.contains_key("orders.Order.2"));
    assert_eq!(
        schemas["orders.Order"]["properties"]["line"]["$ref"],
        "#/components/schemas/orders.Line"
    );
    let error = &api["components"]["responses"]["Invalid"]["content"]["application/json"]["schema"];
    assert_eq!(error["$ref"], "#/components/schemas/Error");
    assert_eq!(
        api["components"]["schemas"]["Error"]["properties"]["error"]["required"],
        json!(["kind", "message"])
    );
    assert_refs_resolve(&api);
}

/// Runs a validator from tests/tools on `file`; fails with its output.
fn validate(program: &str, script: &str, file: &std::path::Path) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = std::process::Command::new(program)
        .arg(root.join("tests/tools").join(script))
        .arg(file)
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("could not run {program}: {e}"));
    assert!(
        output.status.success(),
        "{script} {} failed ({}):\n{}{}\n(install the validators with: \
         npm ci --prefix tests/tools; python3 -m pip install openapi-spec-validator)",
        file.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

#[test]
fn documents_pass_the_real_validators() {
    let mut modules = contracts();
    modules.push(untyped_owner());
    let dir = std::env::temp_dir().join(format!(
        "switchyard-contract-docs-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, servers) in [("configured", servers()), ("bare", Servers::default())] {
        let async_file = dir.join(format!("asyncapi-{name}.json"));
        let open_file = dir.join(format!("openapi-{name}.json"));
        let async_doc = asyncapi(&modules, &servers, "0.9.0");
        let open_doc = openapi(&modules, &servers, "0.9.0");
        std::fs::write(
            &async_file,
            serde_json::to_string_pretty(&async_doc).unwrap(),
        )
        .unwrap();
        std::fs::write(&open_file, serde_json::to_string_pretty(&open_doc).unwrap()).unwrap();
        validate("node", "validate-asyncapi.mjs", &async_file);
        validate("python3", "validate-openapi.py", &open_file);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
