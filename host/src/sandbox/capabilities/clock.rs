//! `switchyard:module/clock`: wall-clock time.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::sandbox::bindings::switchyard::module::clock::Host;
use crate::sandbox::state::HostState;

impl Host for HostState {
    async fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}
