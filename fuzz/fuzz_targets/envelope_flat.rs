//! The flat Redis stream form (`subtopic`, `body`, optional `id`, every other
//! field a header) and the one-field `envelope` form, as a stream entry
//! hands them over: arbitrary field names and values decode or are refused
//! with an error, never a panic; what decodes is valid.
//!
//! Input (text, so the seeds are readable): the first line is the stream's
//! topic, each further line one field, `name=value`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_model::envelope::Envelope;

fuzz_target!(|text: &str| {
    let mut lines = text.split('\n');
    let topic = lines.next().unwrap_or_default();
    let fields: Vec<(String, String)> = lines
        .map(|line| match line.split_once('=') {
            Some((name, value)) => (name.to_string(), value.to_string()),
            None => (line.to_string(), String::new()),
        })
        .collect();
    if let Ok(envelope) = Envelope::from_stream_fields(topic, &fields, || "redis:t:1-0".into()) {
        envelope.validate().expect("a decoded envelope is valid");
        assert_eq!(envelope.topic, topic);
    }
});
