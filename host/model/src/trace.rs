//! W3C Trace Context across the outbox hop: the `traceparent` header of a
//! message names its trace; the events its handler emits carry the same
//! trace id with the handling's own span id as their parent, so a saga
//! (command -> event -> reaction) is one trace.
//!
//! A message without a valid `traceparent` starts a trace whose id is
//! derived from the message id, and the handling's span id from the module
//! and the message id: a retried or redelivered message stays in the same
//! trace and span, and emits events with the same parent.

use sha2::{Digest, Sha256};

use crate::envelope::Envelope;

/// The header that carries the trace context (W3C Trace Context).
pub const TRACEPARENT: &str = "traceparent";

/// The only version this host writes.
const VERSION: &str = "00";
/// `sampled`: whoever records traces should keep this one.
const SAMPLED: u8 = 0x01;

/// A `traceparent` as parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// Parses a header value; `None` for one that breaks the W3C format
    /// (which then starts a new trace, as the recommendation says).
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let mut parts = value.splitn(5, '-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let parent_id = parts.next()?;
        let flags = parts.next()?;
        let rest = parts.next();
        if version.len() != 2 || !is_lower_hex(version) || version == "ff" {
            return None;
        }
        // Version 00 has exactly four fields; later versions may append some.
        if version == VERSION && rest.is_some() {
            return None;
        }
        if trace_id.len() != 32 || parent_id.len() != 16 || flags.len() != 2 {
            return None;
        }
        if ![trace_id, parent_id, flags].iter().all(|p| is_lower_hex(p)) {
            return None;
        }
        let parsed = Self {
            trace_id: u128::from_str_radix(trace_id, 16).ok()?,
            parent_id: u64::from_str_radix(parent_id, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (parsed.trace_id != 0 && parsed.parent_id != 0).then_some(parsed)
    }

    /// The header value.
    pub fn header(&self) -> String {
        format!(
            "{VERSION}-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

/// The trace context of one module handling one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handling {
    pub trace_id: u128,
    /// This handling's span.
    pub span_id: u64,
    /// The span that sent the message, when it said.
    pub parent_id: Option<u64>,
    flags: u8,
}

impl Handling {
    /// The context of `module` handling `envelope`.
    pub fn of(module: &str, envelope: &Envelope) -> Self {
        let incoming = envelope.header(TRACEPARENT).and_then(TraceParent::parse);
        let trace_id = match incoming {
            Some(p) => p.trace_id,
            None => non_zero(u128::from_be_bytes(digest::<16>(&["trace", &envelope.id]))),
        };
        let span_id = non_zero(u64::from_be_bytes(digest::<8>(&[
            "span",
            module,
            &envelope.id,
        ])));
        Self {
            trace_id,
            span_id,
            parent_id: incoming.map(|p| p.parent_id),
            flags: incoming.map_or(SAMPLED, |p| p.flags),
        }
    }

    /// The `traceparent` of an event emitted by this handling: same trace,
    /// this span as the parent.
    pub fn child(&self) -> String {
        TraceParent {
            trace_id: self.trace_id,
            parent_id: self.span_id,
            flags: self.flags,
        }
        .header()
    }

    /// The W3C trace flags (bit 0: sampled) this handling inherited.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// The trace id as the header writes it (32 hex digits).
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// This handling's span id (16 hex digits).
    pub fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The first `N` bytes of the sha256 of `parts`, each ended by a newline.
fn digest<const N: usize>(parts: &[&str]) -> [u8; N] {
    let mut hasher = Sha256::new();
    for p in parts {
        hasher.update(p.as_bytes());
        hasher.update(b"\n");
    }
    let full = hasher.finalize();
    let mut out = [0u8; N];
    out.copy_from_slice(&full[..N]);
    out
}

/// All-zero ids are invalid in W3C Trace Context.
fn non_zero<T: PartialEq + From<u8>>(id: T) -> T {
    if id == T::from(0) { T::from(1) } else { id }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn envelope(id: &str, traceparent: Option<&str>) -> Envelope {
        let mut headers = BTreeMap::new();
        if let Some(t) = traceparent {
            headers.insert(TRACEPARENT.to_string(), t.to_string());
        }
        Envelope::new(id.into(), "orders".into(), "place".into(), headers, "{}").expect("valid")
    }

    #[test]
    fn parses_the_w3c_example_and_writes_it_back() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = TraceParent::parse(h).expect("valid");
        assert_eq!(p.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(p.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(p.flags, 1);
        assert_eq!(p.header(), h);
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A later version may carry more fields.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }

    #[test]
    fn events_keep_the_trace_and_name_the_handling_as_parent() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let h = Handling::of("orders", &envelope("m1", Some(incoming)));
        assert_eq!(h.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(h.parent_id, Some(0x00f067aa0ba902b7));
        let child = TraceParent::parse(&h.child()).expect("valid child");
        assert_eq!(child.trace_id, h.trace_id);
        assert_eq!(child.parent_id, h.span_id);
        assert_ne!(child.parent_id, 0x00f067aa0ba902b7, "a new span id");
        // Another module handling the same event is another span.
        assert_ne!(
            Handling::of("inventory", &envelope("m1", Some(incoming))).span_id,
            h.span_id
        );
    }

    #[test]
    fn a_message_without_one_starts_a_trace_that_survives_redelivery() {
        let first = Handling::of("orders", &envelope("m2", None));
        let again = Handling::of("orders", &envelope("m2", Some("garbage")));
        assert_eq!(first, again);
        assert_eq!(first.parent_id, None);
        assert_ne!(
            Handling::of("orders", &envelope("m3", None)).trace_id,
            first.trace_id
        );
        assert!(TraceParent::parse(&first.child()).is_some());
    }
}
