//! The AsyncAPI 3.0 and OpenAPI 3.1 documents of the loaded modules (served
//! as `GET /v1/asyncapi.json` and `GET /v1/openapi.json`).
//!
//! - [`asyncapi`]: one channel per topic (its address is the topic name), one
//!   message per (topic, subtopic), and per module a `receive` operation for
//!   each command topic it owns and each topic it subscribes to and a `send`
//!   operation for each topic it emits to (`inventory.receive.orders.events`).
//!   A message's payload is the envelope's `body`, its headers the envelope's
//!   `headers`; when several modules declare one (an emitter and its
//!   subscribers), the owner's or else an emitter's schema is the payload.
//! - [`openapi`]: `POST /v1/topics/{topic}/{subtopic}` spelled out per
//!   command (`/v1/topics/inventory/restock`), with the body's schema, the
//!   answer's schema under the 200 answer's `output`, 202 for `?wait=false`
//!   and the error answers `{"error":{"kind","message"}}`. Bodies and answers
//!   are components named after their `title` (`inventory.Restock`).
//!
//! Modules declare schemas as schemars writes them (JSON Schema 2020-12, each
//! with its own `$defs` and `$ref: "#/$defs/Name"`). Embedded in a document,
//! a schema's definitions move to `components/schemas` as
//! `<module>.<Name>` (`inventory.Sku`; a different schema under a name
//! already taken gets `inventory.Sku.2`), and its `$ref`s are rewritten to
//! point there; a `$ref` that resolves nowhere in its own schema is dropped
//! (anything goes there), so every `$ref` of a document resolves in it.
//! AsyncAPI's default schema format is a superset of JSON Schema draft 07:
//! there `prefixItems` becomes the array form of `items` and a `$ref` with
//! sibling keywords is wrapped in an `allOf`. Untyped modules (WIT 0.1.0)
//! keep their topics: their operations take the messages others declare on
//! the channel, else a message of any subtopic without payload; an owned
//! topic is the path `/v1/topics/<topic>/{subtopic}` taking any JSON.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value, json};

use super::{Direction, MessageContract, ModuleContract};
use crate::envelope::{CAUSATION_ID, CORRELATION_ID, PARTITION_KEY, TIMESTAMP};
use crate::trace::TRACEPARENT;

/// Where the host can be reached, as configured.
#[derive(Debug, Clone, Default)]
pub struct Servers {
    /// The HTTP listener, e.g. `http://127.0.0.1:8080`.
    pub http: Option<String>,
    /// Redis, e.g. `redis://127.0.0.1:6379` (no password).
    pub redis: Option<String>,
    /// Kafka bootstrap brokers, e.g. `127.0.0.1:9092` (comma-separated).
    pub kafka: Option<String>,
}

const TITLE: &str = "Switchyard";

/// The AsyncAPI 3.0 document of `modules`.
pub fn asyncapi(modules: &[ModuleContract], servers: &Servers, title_version: &str) -> Value {
    let mut schemas = Schemas::new(Dialect::Draft07);
    schemas.shared("Headers", headers_schema());
    let topics = Topic::collect(modules);

    let (server_objects, broker_keys) = async_servers(servers);

    // Channels and their declared messages.
    let mut channel_names = Names::default();
    let mut message_names = Names::default();
    let mut components_messages = Map::new();
    let mut channels: BTreeMap<&str, Channel> = BTreeMap::new();
    for (name, topic) in &topics {
        let mut channel = Channel {
            key: channel_names.claim(name),
            names: Names::default(),
            messages: Vec::new(),
            any: None,
        };
        for (subtopic, declarations) in &topic.subtopics {
            let component = message_names.claim(&format!("{name}.{subtopic}"));
            components_messages.insert(
                component.clone(),
                declared_message(&mut schemas, name, subtopic, declarations),
            );
            let key = channel.names.claim(subtopic);
            channel.messages.push((key, component, subtopic.clone()));
        }
        channels.insert(name.as_str(), channel);
    }

    // Operations, per module: what it receives and what it sends.
    let mut operation_names = Names::default();
    let mut operations = Map::new();
    for module in modules {
        for (direction, topic) in module_topics(module) {
            let Some(channel) = channels.get_mut(topic.as_str()) else {
                continue;
            };
            let declared: Vec<&MessageContract> = module
                .messages
                .iter()
                .filter(|m| m.direction == direction && m.topic == *topic)
                .collect();
            let mut keys: Vec<String> = declared
                .iter()
                .filter_map(|m| {
                    channel
                        .messages
                        .iter()
                        .find(|(_, _, s)| *s == m.subtopic)
                        .map(|(k, _, _)| k.clone())
                })
                .collect();
            if keys.is_empty() {
                // Nothing declared (an untyped module): every message the
                // channel has, or one of any subtopic.
                keys = channel.messages.iter().map(|(k, _, _)| k.clone()).collect();
            }
            if keys.is_empty() {
                keys.push(channel.any_message(topic, &mut message_names, &mut components_messages));
            }
            let action = if direction == Direction::Emits {
                "send"
            } else {
                "receive"
            };
            let id = operation_names.claim(&format!("{}.{action}.{topic}", module.module));
            let (summary, description) = operation_text(module, direction, topic, &declared);
            let mut operation = json!({
                "action": action,
                "channel": {"$ref": pointer(&["channels", &channel.key])},
                "messages": keys
                    .iter()
                    .map(|k| json!({"$ref": pointer(&["channels", &channel.key, "messages", k])}))
                    .collect::<Vec<_>>(),
                "summary": summary,
                "tags": [{"name": module.module}],
            });
            if let Some(description) = description {
                operation["description"] = Value::String(description);
            }
            operations.insert(id, operation);
        }
    }

    let mut channel_objects = Map::new();
    for (name, channel) in channels {
        let Some(topic) = topics.get(name) else {
            continue;
        };
        let messages: Map<String, Value> = channel
            .messages
            .iter()
            .map(|(key, component, _)| {
                (
                    key.clone(),
                    json!({"$ref": pointer(&["components", "messages", component])}),
                )
            })
            .chain(channel.any.iter().map(|(key, component)| {
                (
                    key.clone(),
                    json!({"$ref": pointer(&["components", "messages", component])}),
                )
            }))
            .collect();
        let mut object = json!({
            "address": name,
            "title": name,
            "description": topic.describe(),
            "messages": messages,
        });
        // Events travel through the brokers (or the embedded log), never
        // over HTTP; commands arrive on every server.
        if topic.owners.is_empty() && !broker_keys.is_empty() {
            object["servers"] = broker_keys
                .iter()
                .map(|k| json!({"$ref": pointer(&["servers", k])}))
                .collect();
        }
        channel_objects.insert(channel.key, object);
    }

    let mut document = json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": TITLE,
            "version": title_version,
            "description": "The topics of the loaded modules. Every message travels in the \
                Switchyard envelope (`id`, `topic`, `subtopic`, `headers`, `body`; JSON on HTTP, \
                in Redis Streams and as Kafka values): a message here is one subtopic of a \
                topic, its payload the envelope's `body` and its headers the envelope's \
                `headers`. A module receives the commands of the topics it owns and the events \
                of the topics it subscribes to, and sends events to the topics it emits to. \
                Commands are also taken over HTTP as `POST /v1/topics/{topic}/{subtopic}` (see \
                `/v1/openapi.json`).",
        },
        "defaultContentType": "application/json",
        "channels": channel_objects,
        "operations": operations,
        "components": {
            "schemas": schemas.into_map(),
            "messages": components_messages,
        },
    });
    if !server_objects.is_empty() {
        document["servers"] = Value::Object(server_objects);
    }
    document
}

/// The OpenAPI 3.1 document of the command topics of `modules`.
pub fn openapi(modules: &[ModuleContract], servers: &Servers, title_version: &str) -> Value {
    let mut schemas = Schemas::new(Dialect::Draft2020);
    schemas.shared("Error", error_schema());
    schemas.shared("Envelope", envelope_schema());
    schemas.shared(
        "Accepted",
        json!({
            "type": "object",
            "required": ["id"],
            "properties": {"id": {"type": "string", "description": "The message id."}},
        }),
    );

    let mut operation_ids = Names::default();
    let mut paths = Map::new();
    let mut tags: Vec<Value> = Vec::new();
    let mut tagged = HashSet::new();
    for module in modules {
        if tagged.insert(module.module.clone()) {
            let kind = if module.typed {
                "typed"
            } else {
                "untyped: WIT 0.1.0, no schemas"
            };
            tags.push(json!({
                "name": module.module,
                "description": format!("Module {} {} ({kind}).", module.module, module.version),
            }));
        }
        for (direction, topic) in module_topics(module) {
            if direction != Direction::Command {
                continue;
            }
            let commands: Vec<&MessageContract> = module
                .messages
                .iter()
                .filter(|m| m.direction == Direction::Command && m.topic == *topic)
                .collect();
            if commands.is_empty() {
                let path = format!("/v1/topics/{}/{{subtopic}}", path_segment(topic));
                if paths.contains_key(&path) {
                    continue;
                }
                let id = operation_ids.claim(topic);
                let operation = command_operation(&mut schemas, module, topic, None, id);
                paths.insert(path, json!({"post": operation}));
            }
            for command in commands {
                let path = format!(
                    "/v1/topics/{}/{}",
                    path_segment(topic),
                    path_segment(&command.subtopic)
                );
                if paths.contains_key(&path) {
                    continue;
                }
                let id = operation_ids.claim(&format!("{topic}.{}", command.subtopic));
                let operation = command_operation(&mut schemas, module, topic, Some(command), id);
                paths.insert(path, json!({"post": operation}));
            }
        }
    }

    let mut document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": title_version,
            "description": "The commands of the loaded modules over HTTP. \
                `POST /v1/topics/{topic}/{subtopic}` takes the message body; the message id \
                comes from `X-Message-Id` (a new UUIDv7 without it) and is the idempotency key: \
                an id already processed answers with its first answer as `duplicate` and is \
                never applied twice. Each `X-Header-<name>` becomes the envelope header \
                `<name>`. The same commands can be sent as envelopes to `POST /v1/messages`. \
                Errors are `{\"error\":{\"kind\",\"message\"}}`.",
        },
        "tags": tags,
        "paths": paths,
        "security": [{}, {"messageToken": []}],
        "components": {
            "schemas": schemas.into_map(),
            "parameters": parameters(),
            "responses": responses(),
            "securitySchemes": {
                "messageToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Only when the host sets `message-token-env`: then the \
                        message endpoints want this bearer token (401 without it).",
                },
            },
        },
    });
    if let Some(http) = &servers.http {
        let (scheme, host, path) = split_url(http, "http");
        let url = format!("{scheme}://{host}{}", path.unwrap_or_default());
        document["servers"] = json!([{"url": url, "description": "This host's HTTP listener."}]);
    }
    document
}

// ---------------------------------------------------------------- AsyncAPI

/// One topic: which modules own, subscribe to and emit it, and the
/// subtopics declared on it (in the order first declared) with every
/// declaration of each.
#[derive(Default)]
struct Topic<'a> {
    owners: Vec<&'a str>,
    subscribers: Vec<&'a str>,
    emitters: Vec<&'a str>,
    subtopics: Vec<(String, Vec<(&'a ModuleContract, &'a MessageContract)>)>,
}

impl<'a> Topic<'a> {
    fn collect(modules: &'a [ModuleContract]) -> BTreeMap<String, Topic<'a>> {
        let mut topics: BTreeMap<String, Topic<'a>> = BTreeMap::new();
        for module in modules {
            for (direction, name) in module_topics(module) {
                let topic = topics.entry(name.to_string()).or_default();
                let role = match direction {
                    Direction::Command => &mut topic.owners,
                    Direction::Consumes => &mut topic.subscribers,
                    Direction::Emits => &mut topic.emitters,
                };
                if !role.contains(&module.module.as_str()) {
                    role.push(&module.module);
                }
            }
            for message in &module.messages {
                let topic = topics.entry(message.topic.clone()).or_default();
                match topic
                    .subtopics
                    .iter_mut()
                    .find(|(s, _)| *s == message.subtopic)
                {
                    Some((_, declarations)) => declarations.push((module, message)),
                    None => topic
                        .subtopics
                        .push((message.subtopic.clone(), vec![(module, message)])),
                }
            }
        }
        topics
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.owners.is_empty() {
            parts.push(format!(
                "Command topic owned by {}.",
                self.owners.join(", ")
            ));
        } else {
            parts.push("Event topic.".to_string());
        }
        if !self.emitters.is_empty() {
            parts.push(format!("Emitted by {}.", self.emitters.join(", ")));
        }
        if !self.subscribers.is_empty() {
            parts.push(format!("Subscribed by {}.", self.subscribers.join(", ")));
        }
        parts.join(" ")
    }
}

/// A channel being built: its key in `channels`, its messages (key in the
/// channel, name in `components/messages`, subtopic) and, once an untyped
/// module needs it, its message of any subtopic.
struct Channel {
    key: String,
    names: Names,
    messages: Vec<(String, String, String)>,
    any: Option<(String, String)>,
}

impl Channel {
    /// The key of the channel's message of any subtopic, made on first use.
    fn any_message(
        &mut self,
        topic: &str,
        message_names: &mut Names,
        components: &mut Map<String, Value>,
    ) -> String {
        if let Some((key, _)) = &self.any {
            return key.clone();
        }
        let key = self.names.claim("any");
        let component = message_names.claim(&format!("{topic}.any"));
        components.insert(
            component.clone(),
            json!({
                "title": format!("{topic} / any subtopic"),
                "summary": format!("Any subtopic of {topic}: no schema is declared."),
                "description": "No loaded module declares the subtopics of this topic (one \
                    built against WIT `switchyard:module@0.1.0` declares none): any subtopic, \
                    any JSON body.",
                "contentType": "application/json",
                "headers": {"$ref": pointer(&["components", "schemas", "Headers"])},
                "correlationId": {"location": format!("$message.header#/{CORRELATION_ID}")},
            }),
        );
        self.any = Some((key.clone(), component));
        key
    }
}

/// The message of one (topic, subtopic). Its payload is the schema of the
/// declaration that speaks for what is on the wire: the owner's for a
/// command, an emitter's for an event, else a subscriber's.
fn declared_message(
    schemas: &mut Schemas,
    topic: &str,
    subtopic: &str,
    declarations: &[(&ModuleContract, &MessageContract)],
) -> Value {
    let rank = |d: Direction| match d {
        Direction::Command => 0,
        Direction::Emits => 1,
        Direction::Consumes => 2,
    };
    let mut ordered: Vec<&(&ModuleContract, &MessageContract)> = declarations.iter().collect();
    ordered.sort_by_key(|(_, m)| (rank(m.direction), m.body.is_none()));
    let mut message = json!({
        "name": subtopic,
        "title": format!("{topic} / {subtopic}"),
        "contentType": "application/json",
        "headers": {"$ref": pointer(&["components", "schemas", "Headers"])},
        "correlationId": {"location": format!("$message.header#/{CORRELATION_ID}")},
    });
    if let Some(summary) = ordered
        .iter()
        .map(|(_, m)| m.summary.trim())
        .find(|s| !s.is_empty())
    {
        message["summary"] = Value::String(summary.to_string());
    }
    let declared_by: Vec<String> = ordered
        .iter()
        .map(|(module, m)| {
            format!(
                "{} {} ({})",
                module.module,
                module.version,
                m.direction.as_str()
            )
        })
        .collect();
    let mut description = format!("Declared by {}.", declared_by.join(", "));
    if let Some((module, m)) = ordered.first() {
        match &m.body {
            Some(body) => {
                message["payload"] = schemas.embed(&module.module, subtopic, body, false);
                if ordered.len() > 1 {
                    description.push_str(&format!(
                        " The payload is the schema {} declares.",
                        module.module
                    ));
                }
            }
            None => description.push_str(" No schema is declared: any JSON body."),
        }
    }
    message["description"] = Value::String(description);
    message
}

/// An operation's summary and, when it takes several declared messages,
/// a description listing each with its summary.
fn operation_text(
    module: &ModuleContract,
    direction: Direction,
    topic: &str,
    declared: &[&MessageContract],
) -> (String, Option<String>) {
    let what = match direction {
        Direction::Command => format!("{} handles the commands of {topic}", module.module),
        Direction::Consumes => format!("{} handles the events of {topic}", module.module),
        Direction::Emits => format!("{} emits events to {topic}", module.module),
    };
    match declared {
        [] => (format!("{what} (any subtopic, no schema declared)."), None),
        [one] if !one.summary.trim().is_empty() => (one.summary.trim().to_string(), None),
        many => {
            let lines: Vec<String> = many
                .iter()
                .map(|m| {
                    if m.summary.trim().is_empty() {
                        format!("- `{}`", m.subtopic)
                    } else {
                        format!("- `{}`: {}", m.subtopic, m.summary.trim())
                    }
                })
                .collect();
            (format!("{what}."), Some(lines.join("\n")))
        }
    }
}

/// The configured servers as AsyncAPI server objects, and the keys of the
/// brokers among them (the servers events travel through).
fn async_servers(servers: &Servers) -> (Map<String, Value>, Vec<String>) {
    let mut objects = Map::new();
    let mut brokers = Vec::new();
    if let Some(http) = &servers.http {
        let (scheme, host, path) = split_url(http, "http");
        let mut server = json!({
            "host": host,
            "protocol": scheme,
            "title": "HTTP API",
            "description": "Commands: `POST /v1/topics/{topic}/{subtopic}` with the body, or \
                `POST /v1/messages` with the envelope; answered once the unit of work commits \
                (`?wait=false`: 202 once appended). See `/v1/openapi.json`.",
        });
        if let Some(path) = path {
            server["pathname"] = Value::String(path);
        }
        objects.insert("http".to_string(), server);
    }
    if let Some(redis) = &servers.redis {
        let (_, host, path) = split_url(redis, "redis");
        let mut server = json!({
            "host": host,
            "protocol": "redis",
            "title": "Redis Streams",
            "description": "The stream of topic T is the key T; an entry holds the field \
                `envelope` (the envelope's JSON) or the flat form `subtopic`, `body`, optional \
                `id`, every other field a header. Each module reads with its own consumer group.",
        });
        if let Some(path) = path {
            server["pathname"] = Value::String(path);
        }
        objects.insert("redis".to_string(), server);
        brokers.push("redis".to_string());
    }
    if let Some(kafka) = &servers.kafka {
        let hosts: Vec<&str> = kafka
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        for (i, broker) in hosts.iter().enumerate() {
            let (_, host, _) = split_url(broker, "kafka");
            let key = if i == 0 {
                "kafka".to_string()
            } else {
                format!("kafka-{}", i + 1)
            };
            objects.insert(
                key.clone(),
                json!({
                    "host": host,
                    "protocol": "kafka",
                    "title": "Kafka",
                    "description": "Topic T is the Kafka topic T; the value is the envelope's \
                        JSON, the key its partition key (or its id).",
                }),
            );
            brokers.push(key);
        }
    }
    (objects, brokers)
}

/// The envelope headers the host sets or reads, as a message's headers.
fn headers_schema() -> Value {
    json!({
        "type": "object",
        "description": "The envelope's headers: a string map.",
        "additionalProperties": {"type": "string"},
        "properties": {
            CORRELATION_ID: {"type": "string", "description": "Kept from the cause, or the message id."},
            CAUSATION_ID: {"type": "string", "description": "The id of the message whose handling emitted this one."},
            TIMESTAMP: {"type": "string", "format": "date-time", "description": "When the event was emitted (RFC 3339)."},
            PARTITION_KEY: {"type": "string", "description": "Messages with the same key are handled one at a time, in order."},
            TRACEPARENT: {"type": "string", "description": "W3C trace context."},
        },
    })
}

// ----------------------------------------------------------------- OpenAPI

/// `POST /v1/topics/{topic}/{subtopic}` of one command (`None`: of any
/// subtopic of an owned topic that declares none).
fn command_operation(
    schemas: &mut Schemas,
    module: &ModuleContract,
    topic: &str,
    command: Option<&MessageContract>,
    operation_id: String,
) -> Value {
    let (subtopic, summary) = match command {
        Some(c) => (
            format!("`{}`", c.subtopic),
            if c.summary.trim().is_empty() {
                format!("{} on {topic}", c.subtopic)
            } else {
                c.summary.trim().to_string()
            },
        ),
        None => (
            "any subtopic".to_string(),
            format!("A command on {topic} (no schema declared)"),
        ),
    };
    let hint = command.map_or("body", |c| c.subtopic.as_str());
    let body = match command.and_then(|c| c.body.as_ref()) {
        Some(schema) => schemas.embed(&module.module, hint, schema, true),
        None => json!({"description": "Any JSON: the module declares no schema."}),
    };
    let output = match command.and_then(|c| c.answer.as_ref()) {
        Some(schema) => schemas.embed(&module.module, &format!("{hint}.answer"), schema, true),
        None => json!({"description": "The module's answer (no schema declared)."}),
    };
    let mut parameters = vec![
        json!({"$ref": "#/components/parameters/Wait"}),
        json!({"$ref": "#/components/parameters/MessageId"}),
        json!({"$ref": "#/components/parameters/PartitionKey"}),
        json!({"$ref": "#/components/parameters/CorrelationId"}),
        json!({"$ref": "#/components/parameters/Traceparent"}),
    ];
    if command.is_none() {
        parameters.insert(
            0,
            json!({
                "name": "subtopic",
                "in": "path",
                "required": true,
                "description": "The subtopic: 1 to 255 bytes of [A-Za-z0-9._-].",
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,255}$"},
            }),
        );
    }
    let typed = if module.typed {
        ""
    } else {
        " The module is untyped (WIT 0.1.0): nothing is validated before it runs."
    };
    json!({
        "operationId": operation_id,
        "summary": summary,
        "description": format!(
            "Command {subtopic} on topic `{topic}`, handled by module `{}` {}.{typed} The same \
             as `POST /v1/messages` with an envelope of this topic and subtopic.",
            module.module, module.version
        ),
        "tags": [module.module],
        "parameters": parameters,
        "requestBody": {
            "required": true,
            "description": "The message body.",
            "content": {"application/json": {"schema": body}},
        },
        "responses": {
            "200": {
                "description": "Handled: the unit of work committed (`processed`), or the \
                    message id was processed before (`duplicate`, with the first answer).",
                "content": {"application/json": {"schema": {
                    "type": "object",
                    "required": ["id", "status", "output", "events"],
                    "properties": {
                        "id": {"type": "string", "description": "The message id."},
                        "status": {"type": "string", "enum": ["processed", "duplicate"]},
                        "output": output,
                        "events": {
                            "type": "array",
                            "description": "The events the handling emitted.",
                            "items": {"$ref": "#/components/schemas/Envelope"},
                        },
                    },
                }}},
            },
            "202": {"$ref": "#/components/responses/Accepted"},
            "400": {"$ref": "#/components/responses/Malformed"},
            "401": {"$ref": "#/components/responses/Unauthorized"},
            "404": {"$ref": "#/components/responses/NoRoute"},
            "409": {"$ref": "#/components/responses/Rejected"},
            "413": {"$ref": "#/components/responses/TooLarge"},
            "422": {"$ref": "#/components/responses/Invalid"},
            "500": {"$ref": "#/components/responses/Trap"},
            "503": {"$ref": "#/components/responses/Unavailable"},
            "504": {"$ref": "#/components/responses/Timeout"},
        },
    })
}

fn parameters() -> Value {
    json!({
        "Wait": {
            "name": "wait",
            "in": "query",
            "required": false,
            "description": "`false`: answer 202 `{\"id\"}` once the message is durably appended \
                to its topic (stream, Kafka topic or embedded log) and handle it later.",
            "schema": {"type": "boolean", "default": true},
        },
        "MessageId": {
            "name": "X-Message-Id",
            "in": "header",
            "required": false,
            "description": "The message id, its idempotency key: an id already processed \
                answers as `duplicate` with the first answer. A new UUIDv7 without it.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
        },
        "PartitionKey": {
            "name": format!("X-Header-{PARTITION_KEY}"),
            "in": "header",
            "required": false,
            "description": "The envelope header `partition-key`: messages with the same key are \
                handled one at a time, in order. Any `X-Header-<name>` becomes header `<name>`.",
            "schema": {"type": "string"},
        },
        "CorrelationId": {
            "name": format!("X-Header-{CORRELATION_ID}"),
            "in": "header",
            "required": false,
            "description": "The envelope header `correlation-id` (the message id without it).",
            "schema": {"type": "string"},
        },
        "Traceparent": {
            "name": TRACEPARENT,
            "in": "header",
            "required": false,
            "description": "W3C trace context: the message joins the caller's trace.",
            "schema": {"type": "string"},
        },
    })
}

fn responses() -> Value {
    let error = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        })
    };
    json!({
        "Accepted": {
            "description": "With `?wait=false`: the message is durably appended to its topic \
                and will be handled.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}},
        },
        "Malformed": error("Not a valid message: a body that is not UTF-8 JSON, a bad header \
            or name (kind `malformed-envelope` or `bad-request`)."),
        "Unauthorized": error("The host sets `message-token-env` and the bearer token is \
            missing or wrong (kind `unauthorized`)."),
        "NoRoute": error("No loaded module owns the topic (kind `no-route`)."),
        "Rejected": error("The module refused the command by a business rule (kind \
            `rejected`); not retried."),
        "TooLarge": error("The body is over the host's limit, 1 MiB by default (kind `too-large`)."),
        "Invalid": error("The body does not fit the declared schema or the module cannot parse \
            it (kind `invalid`, with the JSON path); not retried, dead-lettered."),
        "Trap": error("The module trapped on every attempt (kind `trap`); dead-lettered."),
        "Unavailable": error("The module failed transiently on its last attempt, the store or \
            a broker is unreachable, or the request ran past `request-timeout-ms` (kinds \
            `transient`, `unavailable`, `timeout`). Sending the same id again is safe."),
        "Timeout": error("The module ran past its time on its last attempt (kind `timeout`); \
            dead-lettered."),
    })
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["kind", "message"],
                "properties": {
                    "kind": {
                        "type": "string",
                        "description": "What went wrong, for programs.",
                        "examples": ["malformed-envelope", "no-route", "too-large", "invalid",
                            "rejected", "trap", "timeout", "transient", "unavailable",
                            "unauthorized"],
                    },
                    "message": {"type": "string", "description": "What went wrong, for people."},
                },
            },
        },
    })
}

fn envelope_schema() -> Value {
    let name = json!({"type": "string", "pattern": "^[A-Za-z0-9._-]{1,255}$"});
    json!({
        "type": "object",
        "description": "A message: the same JSON on HTTP, in streams and in Kafka values.",
        "required": ["id", "topic", "subtopic", "body"],
        "properties": {
            "id": {"type": "string", "description": "Unique per message; the idempotency key."},
            "topic": name,
            "subtopic": name,
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "body": {"description": "Any JSON."},
        },
    })
}

// ----------------------------------------------------------------- shared

/// The (direction, topic) pairs of a module: owned, subscribed and emitted
/// topics as listed, then any other topic it declares messages on.
fn module_topics(module: &ModuleContract) -> Vec<(Direction, &String)> {
    let mut pairs: Vec<(Direction, &String)> = Vec::new();
    let listed = module
        .topics
        .iter()
        .map(|t| (Direction::Command, t))
        .chain(module.subscribes.iter().map(|t| (Direction::Consumes, t)))
        .chain(module.emits.iter().map(|t| (Direction::Emits, t)))
        .chain(module.messages.iter().map(|m| (m.direction, &m.topic)));
    for pair in listed {
        if !pairs.contains(&pair) {
            pairs.push(pair);
        }
    }
    pairs
}

/// Unique names that fit every key pattern of both documents
/// (`^[A-Za-z0-9._-]+$`): the wanted one, else with `.2`, `.3`, ...
#[derive(Default)]
struct Names(HashSet<String>);

impl Names {
    fn claim(&mut self, wanted: &str) -> String {
        let base = component_name(wanted);
        if self.0.insert(base.clone()) {
            return base;
        }
        let mut n = 2usize;
        loop {
            let name = format!("{base}.{n}");
            if self.0.insert(name.clone()) {
                return name;
            }
            n += 1;
        }
    }
}

/// `wanted` with every character outside `[A-Za-z0-9._-]` made `_`.
fn component_name(wanted: &str) -> String {
    let name: String = wanted
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "_".to_string()
    } else {
        name
    }
}

/// A JSON pointer into the document, as a `$ref`.
fn pointer(tokens: &[&str]) -> String {
    let mut out = String::from("#");
    for token in tokens {
        out.push('/');
        out.push_str(&fragment_encode(
            &token.replace('~', "~0").replace('/', "~1"),
        ));
    }
    out
}

/// Percent-encodes what may not stand in a URI fragment.
fn fragment_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A path segment: the name percent-encoded where a URL path (or an
/// OpenAPI path template's braces) needs it.
fn path_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Scheme, host (with port, without any user or password) and path of a
/// configured address; `default_scheme` when it has none.
fn split_url(url: &str, default_scheme: &str) -> (String, String, Option<String>) {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://").unwrap_or((default_scheme, url));
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let path = (!path.is_empty() && path != "/").then(|| path.trim_end_matches('/').to_string());
    (scheme.to_ascii_lowercase(), host.to_string(), path)
}

// ---------------------------------------------------------------- schemas

/// Which JSON Schema the schemas of a document are read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// OpenAPI 3.1: JSON Schema 2020-12, as schemars writes it.
    Draft2020,
    /// AsyncAPI 3.0's default schema format: a superset of draft 07.
    Draft07,
}

/// A document's `components/schemas`, filled as schemas are embedded.
struct Schemas {
    dialect: Dialect,
    map: Map<String, Value>,
}

/// One definition of an embedded schema: where it sat (`$defs` or
/// `definitions`), its name there, and its schema.
struct Local {
    container: &'static str,
    name: String,
    schema: Value,
}

/// What a `$ref` of an embedded schema points to.
enum Target {
    /// Into the schema itself (`#`, `#/properties/...`): the rest of the pointer.
    Root(Vec<String>),
    /// Into one of its definitions: its index and the rest of the pointer.
    Local(usize, Vec<String>),
}

impl Schemas {
    fn new(dialect: Dialect) -> Self {
        Self {
            dialect,
            map: Map::new(),
        }
    }

    /// A schema of the document itself, under a fixed name.
    fn shared(&mut self, name: &str, schema: Value) {
        self.map.insert(name.to_string(), schema);
    }

    fn into_map(self) -> Map<String, Value> {
        self.map
    }

    /// `schema`, a module's, made to stand in this document: its definitions
    /// moved to components as `<module>.<Name>`, its `$ref`s pointing there.
    /// With `named`, or when something points at the schema itself, it
    /// becomes a component too (named after its `title`, else `hint`) and a
    /// `$ref` to it is returned.
    fn embed(&mut self, module: &str, hint: &str, schema: &Value, named: bool) -> Value {
        let mut root = match schema {
            Value::Object(object) => object.clone(),
            Value::Bool(false) => return json!({"not": {}}),
            // `true`, or not a schema at all: anything goes.
            _ => return json!({}),
        };
        // Its own dialect and base URI would make the rewritten `$ref`s
        // resolve against something else than the document.
        root.remove("$schema");
        root.remove("$id");
        let mut locals = Vec::new();
        for container in ["$defs", "definitions"] {
            if let Some(Value::Object(definitions)) = root.remove(container) {
                for (name, mut schema) in definitions {
                    if let Value::Object(object) = &mut schema {
                        object.remove("$schema");
                        object.remove("$id");
                    }
                    locals.push(Local {
                        container,
                        name,
                        schema,
                    });
                }
            }
        }
        let root = Value::Object(root);

        let mut points_at_root = false;
        for schema in std::iter::once(&root).chain(locals.iter().map(|l| &l.schema)) {
            for_each_ref(schema, &mut |reference| {
                if matches!(resolve(reference, &locals), Some(Target::Root(_))) {
                    points_at_root = true;
                }
            });
        }
        let root_base = (named || points_at_root).then(|| {
            let title = root.get("title").and_then(Value::as_str).unwrap_or(hint);
            component_name(&format!("{module}.{title}"))
        });
        let bases: Vec<String> = locals
            .iter()
            .map(|l| component_name(&format!("{module}.{}", l.name)))
            .collect();

        // Names: `<module>.<Name>`, suffixed while another schema holds it.
        let mut attempts = vec![1usize; locals.len() + 1];
        let named = |base: &str, attempt: usize| {
            if attempt == 1 {
                base.to_string()
            } else {
                format!("{base}.{attempt}")
            }
        };
        loop {
            let names: Vec<String> = bases
                .iter()
                .zip(&attempts)
                .map(|(base, attempt)| named(base, *attempt))
                .collect();
            let root_name = root_base
                .as_deref()
                .map(|base| named(base, attempts[locals.len()]));
            let finish = |schema: &Value| {
                let mut schema = schema.clone();
                rewrite_refs(&mut schema, &locals, &names, root_name.as_deref());
                if self.dialect == Dialect::Draft07 {
                    to_draft07(&mut schema);
                }
                schema
            };
            let mut entries: Vec<(String, Value)> = names
                .iter()
                .zip(&locals)
                .map(|(name, local)| (name.clone(), finish(&local.schema)))
                .collect();
            let root_schema = finish(&root);
            if let Some(name) = &root_name {
                entries.push((name.clone(), root_schema.clone()));
            }
            let mut seen = HashSet::new();
            let clash = entries.iter().position(|(name, schema)| {
                !seen.insert(name.clone()) || self.map.get(name).is_some_and(|held| held != schema)
            });
            match clash {
                Some(i) => {
                    // Entries follow `locals`, then the root (at `locals.len()`).
                    if let Some(attempt) = attempts.get_mut(i) {
                        *attempt += 1;
                    }
                }
                None => {
                    for (name, schema) in entries {
                        self.map.insert(name, schema);
                    }
                    return match root_name {
                        Some(name) => json!({"$ref": pointer(&["components", "schemas", &name])}),
                        None => root_schema,
                    };
                }
            }
        }
    }
}

/// Where `reference` points inside its own schema; `None` for anything
/// else (another document, an anchor, a definition that is not there).
fn resolve(reference: &str, locals: &[Local]) -> Option<Target> {
    let fragment = percent_decode(reference.strip_prefix('#')?)?;
    if fragment.is_empty() {
        return Some(Target::Root(Vec::new()));
    }
    let tokens: Vec<String> = fragment
        .strip_prefix('/')?
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    if let [container, name, rest @ ..] = tokens.as_slice()
        && (container == "$defs" || container == "definitions")
    {
        let i = locals
            .iter()
            .position(|l| l.container == container && l.name == *name)?;
        return Some(Target::Local(i, rest.to_vec()));
    }
    Some(Target::Root(tokens))
}

/// Points every `$ref` of `schema` at the components `names` (one per
/// local definition) and `root`; drops those that resolve nowhere.
fn rewrite_refs(schema: &mut Value, locals: &[Local], names: &[String], root: Option<&str>) {
    walk_schemas(schema, &mut |node| {
        let Some(Value::String(reference)) = node.get("$ref") else {
            return;
        };
        let (target, rest) = match resolve(reference, locals) {
            Some(Target::Local(i, rest)) => (names.get(i).map(String::as_str), rest),
            Some(Target::Root(rest)) => (root, rest),
            None => (None, Vec::new()),
        };
        match target {
            Some(name) => {
                let mut tokens = vec!["components", "schemas", name];
                tokens.extend(rest.iter().map(String::as_str));
                node.insert("$ref".to_string(), Value::String(pointer(&tokens)));
            }
            None => {
                node.remove("$ref");
            }
        }
    });
}

fn for_each_ref(schema: &Value, f: &mut dyn FnMut(&str)) {
    // The walk needs a mutable tree; a copy keeps `schema` untouched.
    let mut copy = schema.clone();
    walk_schemas(&mut copy, &mut |node| {
        if let Some(Value::String(reference)) = node.get("$ref") {
            f(reference);
        }
    });
}

/// Rewrites one schema (and, through the walk, every subschema) from JSON
/// Schema 2020-12 to draft 07 where schemars' output differs.
fn to_draft07(schema: &mut Value) {
    walk_schemas(schema, &mut |node| {
        // Tuples: `prefixItems` + `items` are draft 07's array `items` +
        // `additionalItems`.
        if let Some(prefix) = node.remove("prefixItems") {
            let rest = node.remove("items");
            if prefix.is_array() {
                node.insert("items".to_string(), prefix);
                if let Some(rest) = rest {
                    node.insert("additionalItems".to_string(), rest);
                }
            }
        }
        // Draft 07 ignores everything beside a `$ref`.
        if node.len() > 1
            && let Some(reference) = node.remove("$ref")
        {
            let wrapped = json!({"$ref": reference});
            match node.get_mut("allOf") {
                Some(Value::Array(all)) => all.insert(0, wrapped),
                _ => {
                    node.insert("allOf".to_string(), json!([wrapped]));
                }
            }
        }
        // `dependentRequired` and `dependentSchemas` are draft 07's `dependencies`.
        for keyword in ["dependentRequired", "dependentSchemas"] {
            if let Some(Value::Object(entries)) = node.remove(keyword) {
                let dependencies = node
                    .entry("dependencies")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(dependencies) = dependencies {
                    dependencies.extend(entries);
                }
            }
        }
    });
}

/// Calls `f` on `schema` and every subschema in it (by keyword: property
/// names and values such as `default` or `examples` are not schemas).
fn walk_schemas(schema: &mut Value, f: &mut dyn FnMut(&mut Map<String, Value>)) {
    let Value::Object(node) = schema else {
        return;
    };
    f(node);
    for (keyword, child) in node.iter_mut() {
        match keyword.as_str() {
            "additionalProperties"
            | "propertyNames"
            | "additionalItems"
            | "contains"
            | "not"
            | "if"
            | "then"
            | "else"
            | "unevaluatedItems"
            | "unevaluatedProperties"
            | "contentSchema" => walk_schemas(child, f),
            "items" | "allOf" | "anyOf" | "oneOf" | "prefixItems" => match child {
                Value::Array(items) => items.iter_mut().for_each(|s| walk_schemas(s, f)),
                other => walk_schemas(other, f),
            },
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas"
            | "dependencies" => {
                if let Value::Object(map) = child {
                    map.values_mut().for_each(|s| walk_schemas(s, f));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
