//! `switchyard:module/log`: the guest's lines in the host's structured log,
//! under a per-module rate limit shared with the module's stdout/stderr.

use crate::sandbox::bindings::switchyard::module::log::{Host, Level};
use crate::sandbox::state::HostState;

/// Longest guest log line kept; the rest is cut.
const MAX_LINE: usize = 4 * 1024;

impl Host for HostState {
    async fn log(&mut self, level: Level, message: String) {
        let module = self.uow.grants.name.as_str();
        if !self.uow.grants.log_limiter.admit(module) {
            return;
        }
        let mut line = message;
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str("...");
        }
        let (message_id, correlation_id) = self
            .uow
            .message
            .as_ref()
            .map_or(("", ""), |m| (m.id.as_str(), m.correlation_id.as_str()));
        match level {
            Level::Trace => {
                tracing::trace!(target: "module", module, message_id, correlation_id, "{line}")
            }
            Level::Debug => {
                tracing::debug!(target: "module", module, message_id, correlation_id, "{line}")
            }
            Level::Info => {
                tracing::info!(target: "module", module, message_id, correlation_id, "{line}")
            }
            Level::Warn => {
                tracing::warn!(target: "module", module, message_id, correlation_id, "{line}")
            }
            Level::Error => {
                tracing::error!(target: "module", module, message_id, correlation_id, "{line}")
            }
        }
    }
}
