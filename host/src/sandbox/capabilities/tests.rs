//! The host's own log lines about what a guest did: under the module's log
//! rate, with guest-chosen text cut short.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::sandbox::bindings::switchyard::module::events::Host as Events;
use crate::sandbox::bindings::switchyard::module::repository::Host as Repository;
use crate::sandbox::state::HostState;
use crate::sandbox::uow::{MessageMeta, UnitOfWork};
use switchyard_model::grants::{Grants, LogLimiter};
use switchyard_store::MemoryStore;

/// What the host logged, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn state(log_limiter: Arc<LogLimiter>) -> HostState {
    let grants = Arc::new(Grants {
        name: "noisy".into(),
        emits: vec!["noisy.events".into()],
        log_limiter,
        ..Grants::default()
    });
    let meta = MessageMeta {
        id: "msg-1".into(),
        correlation_id: "corr-1".into(),
        traceparent: String::new(),
    };
    let uow = UnitOfWork::new(grants, Arc::new(MemoryStore::new()), meta);
    HostState::new(wasmtime::StoreLimitsBuilder::new().build(), uow)
}

#[tokio::test]
async fn refused_calls_in_a_loop_log_under_the_modules_rate_and_cut_guest_text() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Callsites first hit by another test thread (without this subscriber)
    // may have cached "not interested": ask them again.
    tracing::callsite::rebuild_interest_cache();

    // 100 lines/s, bursts of 50; 2,000 refusals of each kind in a loop,
    // every one naming 4 KiB of guest-chosen text.
    let limiter = Arc::new(LogLimiter::new(100, 50));
    let mut state = state(limiter.clone());
    let long = "t".repeat(4096);
    for _ in 0..2_000 {
        let emitted = state
            .emit(long.clone(), "s".into(), "{}".into(), Vec::new())
            .await;
        assert!(emitted.is_err());
        let read = state.read(long.clone(), "c".into(), "k".into()).await;
        assert!(read.is_err());
        let bad_name = state
            .put("/".repeat(4096), "k".into(), "1".into(), None)
            .await;
        assert!(bad_name.is_err());
    }
    let text = captured.text();
    let lines = text.lines().count();
    // The burst, what trickled in meanwhile, and the "dropping" notes.
    assert!(lines < 300, "{lines} lines");
    let longest = text.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 1024, "a line of {longest} bytes");
    // Counted rather than read from the log: the limiter's own note comes
    // from a callsite other test threads may hit without a subscriber, and
    // tracing's interest cache then sometimes hides it from this one.
    assert!(
        limiter.dropped_total() > 1_000,
        "{}",
        limiter.dropped_total()
    );
}
