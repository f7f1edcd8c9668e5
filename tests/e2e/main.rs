#![allow(clippy::unwrap_used)]
//! End-to-end tests: real components built from `plugins/`, a real SQLite
//! file (or PostgreSQL database) per test, a real host on an ephemeral port,
//! real HTTP.

mod support;

mod cli;
mod concurrency;
mod connections;
mod console;
mod contracts;
mod failures;
#[cfg(feature = "kafka")]
mod kafka_ids;
#[cfg(feature = "kafka")]
mod kafka_keys;
#[cfg(feature = "kafka")]
mod kafka_reload;
#[cfg(feature = "kafka")]
mod kafka_topics;
mod operations;
mod postgres;
mod python;
mod redis_streams;
mod reload;
mod responsive;
mod saga;
mod sandbox;
mod shadow;
mod soak;
mod telemetry;
