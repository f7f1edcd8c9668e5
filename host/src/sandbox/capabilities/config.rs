//! `switchyard:module/config`: the module's `config` table from plugins.toml.

use crate::sandbox::bindings::switchyard::module::config::Host;
use crate::sandbox::state::HostState;

impl Host for HostState {
    async fn get(&mut self, key: String) -> Option<String> {
        self.uow.grants.config.get(&key).cloned()
    }

    async fn get_all(&mut self) -> Vec<(String, String)> {
        self.uow
            .grants
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
