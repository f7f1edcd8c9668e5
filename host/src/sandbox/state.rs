//! The per-message state a wasmtime store carries: the message's unit of
//! work, the WASI resource table, and the memory limits with the peak they
//! let through.

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits};

use super::uow::UnitOfWork;

/// The state of one store: one message's sandbox. No WASI context: the
/// WASI a module gets has no per-store state beyond the resource table.
pub struct HostState {
    /// WASI streams the guest opened (stdin, stdout, stderr).
    pub(crate) table: ResourceTable,
    limits: MemoryLimiter,
    pub uow: UnitOfWork,
}

impl HostState {
    pub(super) fn new(limits: StoreLimits, uow: UnitOfWork) -> Self {
        Self {
            table: ResourceTable::new(),
            limits: MemoryLimiter {
                inner: limits,
                peak: 0,
            },
            uow,
        }
    }

    /// The memory limiter wasmtime consults on every grow.
    pub(super) fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limits
    }

    /// The largest linear memory this store's instance reached, in bytes.
    pub fn peak_memory(&self) -> usize {
        self.limits.peak
    }
}

/// wasmtime's store limits, plus the peak linear memory they let through
/// (for `switchyard_guest_memory_peak_bytes`).
struct MemoryLimiter {
    inner: StoreLimits,
    peak: usize,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        if allowed {
            self.peak = self.peak.max(desired);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}
