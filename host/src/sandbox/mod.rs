//! The sandbox layer: everything that runs one module's code for one
//! message. Below it are the model and the store; above it the registry
//! (which loads modules into it) and dispatch (which runs messages in it).
//!
//! - [`engine`]: wasmtime (pooling allocator, epoch time slices and
//!   deadlines, memory caps), the linker, per-message stores;
//! - [`bindings`]: the generated host side of `wit/switchyard.wit`;
//! - [`state`]: what one store carries ([`state::HostState`]);
//! - [`capabilities`]: the WIT imports a module gets (repository, events,
//!   config, log, clock, a little WASI), one file per interface;
//! - [`uow`]: the message's unit of work the capabilities write into;
//! - [`cache`]: compiled components on disk, keyed by sha256 and engine.

pub mod bindings;
pub mod cache;
pub mod capabilities;
pub mod engine;
pub mod state;
pub mod uow;
