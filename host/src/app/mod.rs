//! The application layer: wires every layer below into a running host and
//! drains it on shutdown ([`server`]), and runs the host's own upkeep
//! ([`retention`]: old inbox and outbox rows, unused cached components),
//! and serves HTTP connections under their limits ([`listener`]).

pub mod listener;
pub mod retention;
pub mod server;
