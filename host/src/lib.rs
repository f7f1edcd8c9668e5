//! Switchyard: a host for event-driven modular monoliths whose modules are
//! sandboxed WebAssembly components.
//!
//! The host is three crates, each layer naming only the layers below it
//! (`docs/architecture.md` has the picture, one message's path through the
//! functions, and where to add a broker, a capability or a store):
//!
//! - `switchyard-model` (re-exported here as [`envelope`], [`manifest`],
//!   [`grants`], [`outcome`], [`trace`]): the data model, no runtime;
//! - `switchyard-store` (re-exported as [`store`]): documents, inbox,
//!   outbox/log, cursors and dead letters on SQLite or PostgreSQL;
//! - this crate, bottom to top:
//!   - [`backoff`], [`metrics`]: the one retry pause; the Prometheus series;
//!   - [`broker`]: the Redis and Kafka clients (append, ack, `T.dlq`, lag);
//!   - [`sandbox`]: wasmtime, the WIT bindings, the capabilities a module
//!     imports, the message's unit of work, the compiled-component cache;
//!   - [`registry`]: loaded modules and the topic routes, reload, rollback,
//!     the plugins-folder watcher;
//!   - [`telemetry`]: span export over OTLP;
//!   - [`dispatch`]: one message through one module, and the failure policy
//!     (retries, failure events, dead letters);
//!   - [`relay`]: committed outbox events -> the broker;
//!   - [`ingress`]: HTTP, Redis Streams, Kafka and the embedded log, the
//!     broker consumers on one core ([`ingress::consumer`]);
//!   - [`app`]: wiring, shutdown, retention and the HTTP listener
//!     (connection cap, header-read and idle timeouts);
//!   - [`cli`], [`builder`], [`lint`]: the command line, `switchyard build`,
//!     `switchyard check`'s lints.

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
pub use switchyard_model::{contract, envelope, grants, manifest, outcome, trace};
/// The store crate, under the name it had when it lived here.
pub use switchyard_store as store;
