//! Events a message emits: buffered in the unit of work, under the module's
//! `emits` grant, a count and the message's write budget.

use std::collections::BTreeMap;

use switchyard_model::envelope::{self, CAUSATION_ID, CORRELATION_ID, Envelope, TIMESTAMP};
use switchyard_model::grants::quote;
use switchyard_model::trace::TRACEPARENT;

use super::{EmitFailure, MAX_EVENTS, UnitOfWork};

impl UnitOfWork {
    /// Buffers an event; returns its id.
    pub fn emit(
        &mut self,
        topic: String,
        subtopic: String,
        body: String,
        headers: Vec<(String, String)>,
    ) -> Result<String, EmitFailure> {
        let Some(message) = &self.message else {
            return Err(EmitFailure::Invalid("no message is being handled".into()));
        };
        if !self.grants.emits.contains(&topic) {
            return Err(EmitFailure::NotPermitted(format!(
                "module '{}' may not emit to '{}': add it to `emits` (declared: {})",
                self.grants.name,
                quote(&topic),
                self.grants.emits.join(", ")
            )));
        }
        if self.events.len() >= MAX_EVENTS {
            return Err(EmitFailure::TooLarge(format!(
                "more than {MAX_EVENTS} events from one message"
            )));
        }
        let size = topic.len()
            + subtopic.len()
            + body.len()
            + headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        let total = self.buffered.saturating_add(size);
        if total > self.budgets().write_bytes {
            return Err(EmitFailure::TooLarge(self.over_write_budget(total)));
        }
        let mut map: BTreeMap<String, String> = headers.into_iter().collect();
        map.insert(CORRELATION_ID.into(), message.correlation_id.clone());
        map.insert(CAUSATION_ID.into(), message.id.clone());
        map.insert(TIMESTAMP.into(), envelope::now_rfc3339());
        map.insert(TRACEPARENT.into(), message.traceparent.clone());
        let event = Envelope::new(envelope::new_id(), topic, subtopic, map, &body)
            .map_err(|e| EmitFailure::Invalid(e.to_string()))?;
        let id = event.id.clone();
        self.buffered = total;
        self.events.push(event);
        Ok(id)
    }
}
