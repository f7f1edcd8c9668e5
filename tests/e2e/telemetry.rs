//! OTLP span export (`[telemetry]`): a collector on a free port receives
//! what the host's exporter posts, decoded as a collector would (protobuf
//! with the OTLP schema, or OTLP JSON).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::{Value, json};

use crate::support::{EXAMPLES, Project, eventually};

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    kind: i32,
    start_ns: u64,
    end_ns: u64,
    status_code: i32,
    status_message: String,
    attributes: BTreeMap<String, String>,
    /// The request's content type.
    encoding: String,
}

impl Received {
    fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

/// An OTLP/HTTP trace receiver.
struct Collector {
    endpoint: String,
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    async fn start() -> Self {
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let sink = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let sink = sink.clone();
                async move {
                    let encoding = headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let decoded = if encoding == "application/json" {
                        decode_json(&body)
                    } else {
                        decode_protobuf(&body)
                    };
                    match decoded {
                        Ok(mut spans) => {
                            for s in &mut spans {
                                s.encoding = encoding.clone();
                            }
                            sink.lock().unwrap().extend(spans);
                            let reply = ExportTraceServiceResponse::default().encode_to_vec();
                            (
                                StatusCode::OK,
                                [(header::CONTENT_TYPE, "application/x-protobuf")],
                                reply,
                            )
                        }
                        Err(e) => (
                            StatusCode::BAD_REQUEST,
                            [(header::CONTENT_TYPE, "text/plain")],
                            e.into_bytes(),
                        ),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { endpoint, spans }
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }
}

fn decode_protobuf(body: &[u8]) -> Result<Vec<Received>, String> {
    let request = ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())?;
    let text = |kv: &KeyValue| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    };
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(text)
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                let status = s.status.unwrap_or_default();
                out.push(Received {
                    service: service.clone(),
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    kind: s.kind,
                    start_ns: s.start_time_unix_nano,
                    end_ns: s.end_time_unix_nano,
                    status_code: status.code,
                    status_message: status.message,
                    attributes: s
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv)))
                        .collect(),
                    encoding: String::new(),
                });
            }
        }
    }
    Ok(out)
}

/// OTLP JSON: ids are hex strings, 64-bit integers may be strings.
fn decode_json(body: &[u8]) -> Result<Vec<Received>, String> {
    let request: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let text = |v: &Value| match &v["value"] {
        Value::Object(m) => m
            .values()
            .next()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .unwrap_or_default(),
        other => other.to_string(),
    };
    let number = |v: &Value| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(0)
    };
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for rs in list(&request["resourceSpans"]) {
        let service = list(&rs["resource"]["attributes"])
            .iter()
            .find(|kv| kv["key"] == "service.name")
            .map(text)
            .unwrap_or_default();
        for ss in list(&rs["scopeSpans"]) {
            for s in list(&ss["spans"]) {
                out.push(Received {
                    service: service.clone(),
                    name: s["name"].as_str().unwrap_or_default().to_string(),
                    trace_id: s["traceId"].as_str().unwrap_or_default().to_lowercase(),
                    span_id: s["spanId"].as_str().unwrap_or_default().to_lowercase(),
                    parent_span_id: s["parentSpanId"]
                        .as_str()
                        .unwrap_or_default()
                        .to_lowercase(),
                    kind: i32::try_from(number(&s["kind"])).unwrap_or(-1),
                    start_ns: number(&s["startTimeUnixNano"]),
                    end_ns: number(&s["endTimeUnixNano"]),
                    status_code: i32::try_from(number(&s["status"]["code"])).unwrap_or(-1),
                    status_message: s["status"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    attributes: list(&s["attributes"])
                        .iter()
                        .map(|kv| (kv["key"].as_str().unwrap_or_default().to_string(), text(kv)))
                        .collect(),
                    encoding: String::new(),
                });
            }
        }
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// OTLP `SpanKind` and `Status.code` values.
const SPAN_KIND_CONSUMER: i32 = 5;
const STATUS_OK: i32 = 1;
const STATUS_ERROR: i32 = 2;

fn parent_in_traceparent(headers: &Value) -> String {
    let value = headers["traceparent"].as_str().unwrap_or_default();
    value.split('-').nth(2).unwrap_or_default().to_string()
}

#[tokio::test]
async fn the_saga_is_exported_as_one_span_tree_over_otlp() {
    let collector = Collector::start().await;
    let telemetry = format!(
        "[telemetry]\notlp-endpoint = \"{}\"\nservice-name = \"shop\"\n",
        collector.endpoint
    );
    let project = Project::new(&["orders", "inventory"], &format!("{telemetry}{EXAMPLES}"));
    let host = project.start().await;
    let (status, _) = host
        .command("inventory", "restock", json!({"sku": "apple", "qty": 5}))
        .await;
    assert_eq!(status, 200);

    let trace = "5bf9a3c1d2e4f60718293a4b5c6d7e8f";
    let caller = "00f067aa0ba902b7";
    let (status, answer) = host
        .send(json!({
            "id": "otlp-1", "topic": "orders", "subtopic": "place",
            "headers": {"traceparent": format!("00-{trace}-{caller}-01")},
            "body": {"order_id": "o1", "sku": "apple", "qty": 2}
        }))
        .await;
    assert_eq!(status, 200, "{answer}");
    // The handling's span id, as its event names it for the next hop.
    let place_span = parent_in_traceparent(&answer["events"][0]["headers"]);
    eventually("o1 confirmed", Duration::from_secs(10), || async {
        let (_, a) = host
            .command("orders", "get", json!({"order_id": "o1"}))
            .await;
        (a["output"]["status"] == "confirmed").then_some(())
    })
    .await;
    // A message its module refuses: the span says why.
    let (status, _) = host
        .send(json!({
            "id": "otlp-bad", "topic": "orders", "subtopic": "place",
            "headers": {"traceparent": format!("00-{trace}-{caller}-01")},
            "body": {"order_id": "", "sku": "apple", "qty": 1}
        }))
        .await;
    assert_eq!(status, 422);
    // A trace the caller chose not to sample is not exported.
    let unsampled = "7e57a3c1d2e4f60718293a4b5c6d7e8f";
    let (status, _) = host
        .send(json!({
            "topic": "inventory", "subtopic": "restock",
            "headers": {"traceparent": format!("00-{unsampled}-{caller}-00")},
            "body": {"sku": "pear", "qty": 1}
        }))
        .await;
    assert_eq!(status, 200);
    // Stopping flushes what is queued (the batch interval is 5 s).
    host.stop().await;

    let spans = collector.spans();
    assert!(
        spans.iter().all(|s| s.trace_id != unsampled),
        "an unsampled trace was exported"
    );
    let mine: Vec<&Received> = spans.iter().filter(|s| s.trace_id == trace).collect();
    let find = |module: &str, topic: &str, subtopic: &str| -> &Received {
        let found: Vec<&&Received> = mine
            .iter()
            .filter(|s| {
                s.attr("switchyard.module") == module
                    && s.attr("messaging.destination.name") == topic
                    && s.attr("switchyard.subtopic") == subtopic
                    && s.attr("messaging.message.id") != "otlp-bad"
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one span {module} {topic}/{subtopic} in {mine:#?}"
        );
        found[0]
    };
    let place = find("orders", "orders", "place");
    let placed = find("inventory", "orders.events", "placed");
    let reserved = find("orders", "inventory.events", "reserved");
    let confirmed = find("inventory", "orders.events", "confirmed");
    // The tree: caller -> place -> placed -> reserved -> confirmed, with the
    // ids the events carried in their traceparent headers.
    assert_eq!(place.parent_span_id, caller);
    assert_eq!(place.span_id, place_span);
    assert_eq!(placed.parent_span_id, place.span_id);
    assert_eq!(reserved.parent_span_id, placed.span_id);
    assert_eq!(confirmed.parent_span_id, reserved.span_id);
    for s in [place, placed, reserved, confirmed] {
        assert_eq!(s.service, "shop");
        assert_eq!(s.kind, SPAN_KIND_CONSUMER, "{s:?}");
        assert_eq!(s.status_code, STATUS_OK, "{s:?}");
        assert_eq!(s.attr("switchyard.outcome"), "processed", "{s:?}");
        assert_eq!(s.attr("messaging.message.conversation_id"), "otlp-1");
        assert!(s.start_ns > 0 && s.end_ns >= s.start_ns, "{s:?}");
        assert_eq!(s.encoding, "application/x-protobuf");
    }
    assert_eq!(place.name, "orders orders/place");
    assert_eq!(place.attr("messaging.message.id"), "otlp-1");

    let bad: Vec<&&Received> = mine
        .iter()
        .filter(|s| s.attr("messaging.message.id") == "otlp-bad")
        .collect();
    assert_eq!(bad.len(), 1, "{mine:#?}");
    assert_eq!(bad[0].status_code, STATUS_ERROR);
    assert_eq!(bad[0].attr("switchyard.outcome"), "invalid");
    assert!(
        bad[0].status_message.contains("must not be empty"),
        "{:?}",
        bad[0]
    );
}

#[tokio::test]
async fn otlp_json_is_spoken_when_the_manifest_asks() {
    let collector = Collector::start().await;
    let telemetry = format!(
        "[telemetry]\notlp-endpoint = \"{}/v1/traces\"\notlp-protocol = \"http/json\"\n",
        collector.endpoint
    );
    let project = Project::new(&["inventory"], &format!("{telemetry}{EXAMPLES_INVENTORY}"));
    let host = project.start().await;
    let (status, answer) = host
        .send(json!({
            "id": "json-1", "topic": "inventory", "subtopic": "restock",
            "body": {"sku": "fig", "qty": 3}
        }))
        .await;
    assert_eq!(status, 200, "{answer}");
    let child = parent_in_traceparent(&answer["events"][0]["headers"]);
    let span = eventually("the span exported", Duration::from_secs(20), || async {
        collector
            .spans()
            .into_iter()
            .find(|s| s.attr("messaging.message.id") == "json-1")
    })
    .await;
    assert_eq!(span.encoding, "application/json");
    assert_eq!(span.service, "switchyard");
    assert_eq!(span.span_id, child);
    assert_eq!(
        span.parent_span_id, "",
        "a message without traceparent starts a trace"
    );
    assert_eq!(span.trace_id.len(), 32);
    assert_eq!(span.name, "inventory inventory/restock");
    host.stop().await;
}

const EXAMPLES_INVENTORY: &str = r#"
[modules.inventory]
file = "inventory.wasm"
"#;
