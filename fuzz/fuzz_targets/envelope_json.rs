//! The envelope's JSON form (HTTP bodies, `envelope` stream fields, Kafka
//! values): any bytes either decode into an envelope that passes validation
//! and survives a round trip, or are refused with an error. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_model::envelope::Envelope;

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = Envelope::from_json(data, || "generated".to_string()) else {
        return;
    };
    envelope.validate().expect("a decoded envelope is valid");
    let again = Envelope::from_json(envelope.to_json().as_bytes(), || unreachable!())
        .expect("an encoded envelope decodes");
    assert_eq!(again.id, envelope.id);
    assert_eq!(again.topic, envelope.topic);
    assert_eq!(again.subtopic, envelope.subtopic);
    assert_eq!(again.headers, envelope.headers);
    assert_eq!(again.body_text(), envelope.body_text());
});
