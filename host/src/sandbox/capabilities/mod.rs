//! The module's imports: one file per WIT interface, each implementing the
//! generated `Host` trait on the per-message `HostState`. Expected failures
//! travel back as WIT error values; nothing a guest passes can trap the host.

mod clock;
mod config;
mod events;
pub mod log;
mod repository;
pub mod wasi;

#[cfg(test)]
mod tests;

impl crate::sandbox::bindings::switchyard::module::types::Host
    for crate::sandbox::state::HostState
{
}
