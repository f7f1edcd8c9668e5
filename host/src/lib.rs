//! Switchyard: a host for event-driven modular monoliths whose modules are
//! sandboxed WebAssembly components.
//!
//! The flow of one message, file by file:
//!
//! - [`ingress`]: HTTP, Redis Streams and the embedded log turn input into envelopes;
//! - [`relay`]: committed outbox events -> their topics' streams;
//! - [`envelope`]: the message format and its validation;
//! - [`registry`]: loaded modules and the topic -> module routes, swapped
//!   on reload, with rollback of a new version that fails its first messages;
//! - [`watch`]: hot reload: the plugins folder and plugins.toml -> registry;
//! - [`cache`]: compiled components on disk, keyed by sha256 and engine;
//! - [`dispatch`]: one message through one module: fresh instance, `handle`,
//!   commit, retries, failure events and dead letters;
//! - [`engine`]: wasmtime (pooling allocator, epoch deadlines, memory caps);
//! - [`capabilities`]: the WIT imports a module gets (repository, events,
//!   config, log, clock), bound to the message's [`uow`] unit of work;
//! - [`store`]: documents, inbox, outbox/log, dead letters (SQLite, or
//!   PostgreSQL for several hosts on one database); [`retention`] deletes
//!   old inbox and outbox rows;
//! - [`trace`]: W3C `traceparent` carried from a message to its events;
//!   [`telemetry`]: its spans exported over OTLP when configured;
//! - [`manifest`]: `plugins.toml`; [`builder`]: `switchyard build`;
//!   [`lint`]: `switchyard check`'s module lints (WIT version, grants);
//! - [`metrics`]: the Prometheus series of `/metrics`;
//! - [`server`]: wiring and shutdown; [`cli`]: the command line.

pub mod app;
pub mod backoff;
pub mod broker;
pub mod builder;
pub mod cli;
pub mod dispatch;
pub mod ingress;
pub mod lint;
pub mod metrics;
pub mod registry;
pub mod relay;
pub mod sandbox;
pub mod telemetry;

// The model crate's modules, under the names they had when they lived here.
pub use switchyard_model::{envelope, grants, manifest, outcome, trace};
/// The store crate, under the name it had when it lived here.
pub use switchyard_store as store;
