//! `switchyard:module/events`: emission into the unit of work's outbox.

use crate::sandbox::bindings::switchyard::module::events::{EmitError, Host};
use crate::sandbox::state::HostState;
use crate::sandbox::uow::EmitFailure;

impl Host for HostState {
    async fn emit(
        &mut self,
        topic: String,
        subtopic: String,
        body: String,
        headers: Vec<(String, String)>,
    ) -> Result<String, EmitError> {
        self.uow.emit(topic, subtopic, body, headers).map_err(|f| {
            // Under the module's log rate; the failure quotes little of the
            // guest's text.
            if self.uow.grants.may_log() {
                tracing::warn!(module = %self.uow.grants.name, error = ?f, "emit refused");
            }
            match f {
                EmitFailure::NotPermitted(m) => EmitError::NotPermitted(m),
                EmitFailure::TooLarge(m) => EmitError::TooLarge(m),
                EmitFailure::Invalid(m) => EmitError::Invalid(m),
            }
        })
    }
}
