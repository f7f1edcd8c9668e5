//! `[telemetry]`: where each message's span is exported over OTLP/HTTP.

use serde::Deserialize;

use super::Invalid;

/// `[telemetry]`: export each message's span over OTLP/HTTP, so a saga shows
/// as one trace in Jaeger, Tempo or any OpenTelemetry collector.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TelemetrySettings {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`); spans
    /// are posted to `<otlp-endpoint>/v1/traces`.
    pub otlp_endpoint: String,
    /// `http/protobuf` (the OTLP default) or `http/json`.
    #[serde(default)]
    pub otlp_protocol: OtlpProtocol,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

impl TelemetrySettings {
    pub(super) fn validate(self) -> Result<Self, Invalid> {
        check_otlp_endpoint(&self.otlp_endpoint)
            .map_err(|m| Invalid::new("telemetry.otlp-endpoint", m))?;
        if self.service_name.trim().is_empty() {
            return Err(Invalid::new("telemetry.service-name", "must not be empty"));
        }
        Ok(self)
    }
}

fn default_service_name() -> String {
    "switchyard".to_string()
}

/// An `http://host[:port][/path]` URL. The exporter is built without TLS:
/// send to a collector (or agent) on the host's network, which forwards.
fn check_otlp_endpoint(endpoint: &str) -> Result<(), String> {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return Err(format!(
            "{endpoint:?} must be an http:// URL (https is not built in: point it at a local OpenTelemetry collector)"
        ));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains(char::is_whitespace) {
        return Err(format!("{endpoint:?} has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::parse_test_manifest as parse;
    use super::*;

    #[test]
    fn telemetry_section_defaults_and_checks() {
        assert_eq!(parse("").unwrap().telemetry, None);
        let m = parse("[telemetry]\notlp-endpoint = \"http://otel:4318\"\n").expect("valid");
        assert_eq!(
            m.telemetry,
            Some(TelemetrySettings {
                otlp_endpoint: "http://otel:4318".into(),
                otlp_protocol: OtlpProtocol::HttpProtobuf,
                service_name: "switchyard".into(),
            })
        );
        let m = parse(
            "[telemetry]\notlp-endpoint = \"http://otel:4318\"\notlp-protocol = \"http/json\"\nservice-name = \"shop\"\n",
        )
        .expect("valid");
        let t = m.telemetry.expect("telemetry");
        assert_eq!(
            (t.otlp_protocol, t.service_name.as_str()),
            (OtlpProtocol::HttpJson, "shop")
        );
        for (text, key) in [
            (
                "otlp-endpoint = \"https://otel:4318\"",
                "telemetry.otlp-endpoint",
            ),
            ("otlp-endpoint = \"otel:4318\"", "telemetry.otlp-endpoint"),
            (
                "otlp-endpoint = \"http:///v1/traces\"",
                "telemetry.otlp-endpoint",
            ),
            (
                "otlp-endpoint = \"http://otel\"\nservice-name = \" \"",
                "telemetry.service-name",
            ),
        ] {
            let err = parse(&format!("[telemetry]\n{text}\n")).expect_err("must be refused");
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
        let err = parse("[telemetry]\notlp-endpoint = \"http://otel\"\notlp-protocol = \"grpc\"\n")
            .expect_err("must be refused");
        assert!(err.to_string().contains("grpc"), "{err}");
    }
}
