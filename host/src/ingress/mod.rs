//! Ways messages come in. Each turns its input into envelopes and hands them
//! to the dispatcher.

pub mod consumer;
pub mod embedded;
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod redis;
pub mod scrape;
