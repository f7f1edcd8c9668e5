//! How many messages run at once: at most `max-concurrency` of each module,
//! and at most a fixed number of instances over all modules.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

/// The guest slots of the host, shared by all modules, and each module's
/// share of them.
pub(super) struct Slots {
    /// Bounds live instances below the pool size, so a burst waits rather
    /// than failing to instantiate.
    instances: Semaphore,
    /// One semaphore per module name, sized by its `max-concurrency` when it
    /// was made: kept across reloads (a new version shares its module's
    /// slots), replaced when the limit changes (messages already holding a
    /// slot of the old one finish on it).
    modules: Mutex<HashMap<String, (u32, Arc<Semaphore>)>>,
}

/// One message's right to run: a slot of its module, then an instance.
pub(super) struct Slot<'a> {
    _instance: SemaphorePermit<'a>,
    _module: OwnedSemaphorePermit,
}

impl Slots {
    pub(super) fn new(instances: usize) -> Self {
        Self {
            instances: Semaphore::new(instances),
            modules: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a slot of `module` (whose limit is `limit`), then for an
    /// instance. The module's slot comes first: messages queued behind a
    /// busy module hold none of the instances other modules need.
    pub(super) async fn acquire(&self, module: &str, limit: u32) -> Option<Slot<'_>> {
        let per_module = self.module(module, limit).acquire_owned().await.ok()?;
        let instance = self.instances.acquire().await.ok()?;
        Some(Slot {
            _instance: instance,
            _module: per_module,
        })
    }

    fn module(&self, name: &str, limit: u32) -> Arc<Semaphore> {
        let mut modules = match self.modules.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        match modules.get(name) {
            Some((size, semaphore)) if *size == limit => semaphore.clone(),
            _ => {
                let semaphore = Arc::new(Semaphore::new(usize::try_from(limit).unwrap_or(1)));
                modules.insert(name.to_string(), (limit, semaphore.clone()));
                semaphore
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_busy_module_waits_while_others_run() {
        let slots = Slots::new(3);
        let a1 = slots.acquire("a", 2).await.unwrap();
        let _a2 = slots.acquire("a", 2).await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(50), slots.acquire("a", 2)).await;
        assert!(third.is_err(), "module a is at its limit of 2");
        let b = tokio::time::timeout(Duration::from_millis(50), slots.acquire("b", 2)).await;
        assert!(b.is_ok(), "module b still gets the host's last instance");
        drop(a1);
        let again = tokio::time::timeout(Duration::from_millis(50), slots.acquire("a", 2)).await;
        assert!(again.is_ok(), "a freed slot of module a is taken again");
    }

    #[tokio::test]
    async fn a_new_limit_takes_effect_for_new_messages() {
        let slots = Slots::new(10);
        let _held = slots.acquire("a", 1).await.unwrap();
        let more = tokio::time::timeout(Duration::from_millis(50), slots.acquire("a", 2)).await;
        assert!(more.is_ok(), "the raised limit gives fresh slots");
    }
}
