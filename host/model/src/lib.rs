//! Switchyard's data model, the bottom layer of the host: what a message,
//! a manifest, a module's grants and a handling's outcome are. It knows no
//! runtime (no wasmtime, no database, no broker), so everything above can
//! name it and the fuzz targets build against it alone.
//!
//! - [`contract`]: the schemas a module declares, compatibility between
//!   versions, and the AsyncAPI / OpenAPI documents;
//! - [`envelope`]: the message format and its validation (JSON and stream forms);
//! - [`manifest`]: `plugins.toml` parsed into validated settings;
//! - [`grants`]: what a loaded module may touch, and its log rate;
//! - [`outcome`]: how handling a message ended, and the failure kinds;
//! - [`trace`]: W3C `traceparent` carried from a message to its events.

pub mod contract;
pub mod envelope;
pub mod grants;
pub mod manifest;
pub mod outcome;
pub mod trace;
