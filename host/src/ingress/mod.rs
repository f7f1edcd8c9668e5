//! Ways messages come in. Each turns its input into envelopes and hands them
//! to the dispatcher.

pub mod embedded;
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod redis;

use std::collections::HashSet;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::registry::Registry;

/// How often a consumer supervisor looks for newly loaded modules.
pub(crate) const SUPERVISE_EVERY: Duration = Duration::from_millis(250);

/// Calls `start(module name)` once for every module loaded now and for every
/// module loaded later, until shutdown. Each consumer then follows its
/// module by name through reloads (and idles while it is unloaded).
pub async fn for_each_module(
    registry: &Registry,
    shutdown: CancellationToken,
    mut start: impl FnMut(String),
) {
    let mut started: HashSet<String> = HashSet::new();
    loop {
        for name in registry.routes().modules.keys() {
            if started.insert(name.clone()) {
                start(name.clone());
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SUPERVISE_EVERY) => {}
        }
    }
}
