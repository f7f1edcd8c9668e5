//! Recording failures: the failure event on `T.failed` and the dead letter
//! of a message whose handling failed for good, and the dead letter of a
//! message that was not an envelope at all.

use super::Dispatcher;
use switchyard_model::envelope::{
    self, CAUSATION_ID, CORRELATION_ID, Envelope, PARTITION_KEY, TIMESTAMP,
};
use switchyard_model::outcome::{Failure, FailureKind, failure_event_id};
use switchyard_model::trace;
use switchyard_store::{DeadLetter, StoreError};

/// The `kind` of a dead letter whose entry or record was not an envelope.
pub const MALFORMED: &str = "malformed-envelope";

/// A message that is not an envelope, as the dead-letter table keeps it.
#[derive(Debug, Clone)]
pub struct Malformed {
    /// The topic it was read from.
    pub topic: String,
    /// The id derived from where it sits (`redis:<stream>:<entry-id>`,
    /// `kafka:<topic>:<partition>:<offset>`).
    pub message_id: String,
    /// Its subtopic, if one could be read.
    pub subtopic: String,
    /// What arrived: the stream fields, or the record's value as text.
    pub raw: serde_json::Value,
    /// Why it is not an envelope.
    pub reason: String,
}

impl Dispatcher {
    /// Failure event on `T.failed` and, unless rejected, a dead letter.
    pub(super) async fn record_failure(
        &self,
        envelope: &Envelope,
        failure: &Failure,
    ) -> Result<(), StoreError> {
        let dead_letter = (failure.kind != FailureKind::Rejected).then(|| DeadLetter {
            id: envelope::new_id(),
            module: failure.module.clone(),
            message_id: envelope.id.clone(),
            topic: envelope.topic.clone(),
            subtopic: envelope.subtopic.clone(),
            envelope: serde_json::to_value(envelope).unwrap_or_default(),
            error_kind: failure.kind.as_str().to_string(),
            error_message: failure.message.clone(),
            attempts: failure.attempts,
            created_at: String::new(),
            replayed_at: None,
        });
        let event = failure_event(envelope, failure);
        self.store
            .record_failure(dead_letter.as_ref(), event.as_ref())
            .await?;
        if event.is_some() {
            self.log_appended.notify_waiters();
        }
        Ok(())
    }

    /// Records a message that is not an envelope as a dead letter (kind
    /// `malformed-envelope`), so it is listed and can be replayed like any
    /// other; no failure event (there is no message to announce).
    pub async fn record_malformed(
        &self,
        module: &str,
        malformed: &Malformed,
    ) -> Result<(), StoreError> {
        let letter = DeadLetter {
            id: envelope::new_id(),
            module: module.to_string(),
            message_id: malformed.message_id.clone(),
            topic: malformed.topic.clone(),
            subtopic: malformed.subtopic.clone(),
            envelope: malformed.raw.clone(),
            error_kind: MALFORMED.to_string(),
            error_message: malformed.reason.clone(),
            attempts: 1,
            created_at: String::new(),
            replayed_at: None,
        };
        self.store.record_failure(Some(&letter), None).await?;
        self.metrics.dead_lettered(module, &malformed.topic);
        Ok(())
    }
}

/// The host's failure event for a message of topic `T`: on `T.failed`, with a
/// deterministic id so a redelivered failure is not announced twice. Failures
/// of `*.failed` messages are not announced again (no failure loops).
fn failure_event(envelope: &Envelope, failure: &Failure) -> Option<Envelope> {
    if envelope.topic.ends_with(".failed") {
        return None;
    }
    let id = failure_event_id(&failure.module, &envelope.id);
    let mut headers = std::collections::BTreeMap::new();
    let trace = trace::Handling::of(&failure.module, envelope);
    headers.insert(trace::TRACEPARENT.to_string(), trace.child());
    headers.insert(
        CORRELATION_ID.to_string(),
        envelope.correlation_id().to_string(),
    );
    headers.insert(CAUSATION_ID.to_string(), envelope.id.clone());
    headers.insert(TIMESTAMP.to_string(), envelope::now_rfc3339());
    if let Some(key) = envelope.header(PARTITION_KEY) {
        headers.insert(PARTITION_KEY.to_string(), key.to_string());
    }
    let body = serde_json::json!({
        "kind": failure.kind.as_str(),
        "message": failure.message,
        "attempt": failure.attempts,
        "original_id": envelope.id,
        "module": failure.module,
    });
    match Envelope::new(
        id,
        format!("{}.failed", envelope.topic),
        envelope.subtopic.clone(),
        headers,
        &body.to_string(),
    ) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!(topic = %envelope.topic, error = %e, "no failure event for this topic");
            None
        }
    }
}
