//! The consumer core shared by every broker consumer (Redis Streams, Kafka,
//! the embedded log): supervision (a consumer per module, started as
//! modules appear), the module's current version ([`Dispatcher::module`],
//! asked for every message so reloads are followed), one [`Settle`]
//! decision per handled message with a typed [`DeadReason`], and the
//! dead-letter record of a message that is not an envelope. Pauses after
//! failures use the one [`Backoff`](crate::backoff::Backoff). A broker file
//! keeps only what is its own: how it reads, acknowledges and copies to
//! `T.dlq`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::dispatch::{Dispatcher, MALFORMED, Malformed};
use crate::registry::LoadedModule;
use switchyard_model::envelope::Envelope;
use switchyard_model::outcome::{Failure, FailureKind, Outcome};

/// How often a consumer supervisor looks for newly loaded modules, and how
/// often an idle consumer looks whether its module is back or changed.
pub(crate) const SUPERVISE_EVERY: Duration = Duration::from_millis(250);

/// Calls `start(module name)` once for every module loaded now and for every
/// module loaded later, until shutdown. Each consumer then follows its
/// module by name through reloads (and idles while it is unloaded).
pub async fn for_each_module(
    dispatcher: &Dispatcher,
    shutdown: CancellationToken,
    mut start: impl FnMut(String),
) {
    let mut started: HashSet<String> = HashSet::new();
    loop {
        for name in dispatcher.module_names() {
            if started.insert(name.clone()) {
                start(name);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SUPERVISE_EVERY) => {}
        }
    }
}

/// Waits until `name` is loaded (or shutdown: `None`).
pub async fn loaded(
    dispatcher: &Dispatcher,
    name: &str,
    shutdown: &CancellationToken,
) -> Option<Arc<LoadedModule>> {
    loop {
        if let Some(module) = dispatcher.module(name) {
            return Some(module);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(SUPERVISE_EVERY) => {}
        }
    }
}

/// Why a message goes to the dead letters.
#[derive(Debug, Clone)]
pub enum DeadReason {
    /// The entry or record is not an envelope (or not one of its topic).
    Malformed(String),
    /// Handling failed for good (the dispatcher recorded the dead letter
    /// and the failure event already).
    Failed(Failure),
}

impl DeadReason {
    /// The `dlq-*` fields a broker adds to its `T.dlq` copy, in one order
    /// for every broker; the broker appends where the message sat.
    pub fn fields(&self, module: &str) -> Vec<(&'static str, String)> {
        match self {
            DeadReason::Malformed(reason) => vec![
                ("kind", MALFORMED.to_string()),
                ("error", reason.clone()),
                ("attempts", "1".to_string()),
                ("module", module.to_string()),
            ],
            DeadReason::Failed(f) => vec![
                ("kind", f.kind.as_str().to_string()),
                ("error", f.message.clone()),
                ("attempts", f.attempts.to_string()),
                ("module", f.module.clone()),
            ],
        }
    }
}

/// What a consumer does with a message once handled: the one failure
/// policy of SPEC §7 as every broker applies it.
#[derive(Debug, Clone)]
pub enum Settle {
    /// Done (committed, a duplicate, or rejected): acknowledge it.
    Ack,
    /// Failed for good: copy it to `T.dlq` with the reason, then acknowledge.
    DeadLetter(DeadReason),
    /// Nothing was recorded (the store was unreachable): leave it
    /// unacknowledged and handle it again later.
    Retry,
}

impl Settle {
    /// The decision for a handled message.
    pub fn of(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Processed(_) | Outcome::Duplicate(_) => Settle::Ack,
            Outcome::Failed(f) => match f.kind {
                FailureKind::Unavailable => Settle::Retry,
                // A business refusal is an answer, not a dead letter.
                FailureKind::Rejected => Settle::Ack,
                _ => Settle::DeadLetter(DeadReason::Failed(f)),
            },
        }
    }
}

/// Handles a message that decoded (`Ok`) or did not (`Err(reason)`) and
/// says how to settle it. A message that is not an envelope gets its
/// dead-letter row here (so `GET /v1/dead-letters` lists it and it can be
/// replayed) before the broker copies it to `T.dlq`; if that row cannot be
/// written the message is left to be tried again.
pub async fn handle(
    dispatcher: &Dispatcher,
    module: &Arc<LoadedModule>,
    parsed: Result<Envelope, Malformed>,
    delivery: u32,
) -> Settle {
    match parsed {
        Ok(envelope) => Settle::of(dispatcher.deliver_from(module, &envelope, delivery).await),
        Err(malformed) => {
            tracing::warn!(
                module = %module.name, topic = %malformed.topic, at = %malformed.message_id,
                reason = %malformed.reason, "not an envelope: dead-lettered"
            );
            match dispatcher.record_malformed(&module.name, &malformed).await {
                Ok(()) => Settle::DeadLetter(DeadReason::Malformed(malformed.reason)),
                Err(e) => {
                    tracing::warn!(module = %module.name, error = %e, "cannot record the dead letter; the message stays unacknowledged");
                    Settle::Retry
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_model::outcome::Answer;

    fn failed(kind: FailureKind) -> Outcome {
        Outcome::Failed(Failure {
            kind,
            message: "why".into(),
            module: "m".into(),
            attempts: 3,
        })
    }

    #[test]
    fn settle_follows_the_failure_policy() {
        let answer = || Answer {
            output: serde_json::value::RawValue::from_string("1".into()).unwrap(),
            events: vec![],
        };
        assert!(matches!(
            Settle::of(Outcome::Processed(answer())),
            Settle::Ack
        ));
        assert!(matches!(
            Settle::of(Outcome::Duplicate(answer())),
            Settle::Ack
        ));
        assert!(matches!(
            Settle::of(failed(FailureKind::Rejected)),
            Settle::Ack
        ));
        assert!(matches!(
            Settle::of(failed(FailureKind::Unavailable)),
            Settle::Retry
        ));
        for kind in [
            FailureKind::Invalid,
            FailureKind::Transient,
            FailureKind::Trap,
            FailureKind::Timeout,
        ] {
            match Settle::of(failed(kind)) {
                Settle::DeadLetter(DeadReason::Failed(f)) => assert_eq!(f.kind, kind),
                other => panic!("{kind:?} settled as {other:?}"),
            }
        }
    }

    #[test]
    fn dead_letter_fields_are_the_same_list_for_every_reason() {
        let names = |r: &DeadReason| r.fields("m").iter().map(|(k, _)| *k).collect::<Vec<_>>();
        let malformed = DeadReason::Malformed("no subtopic".into());
        let Settle::DeadLetter(failed) = Settle::of(failed(FailureKind::Trap)) else {
            panic!("a trap is dead-lettered");
        };
        assert_eq!(names(&malformed), ["kind", "error", "attempts", "module"]);
        assert_eq!(names(&malformed), names(&failed));
        assert_eq!(malformed.fields("m")[0].1, MALFORMED);
        assert_eq!(failed.fields("m")[2].1, "3");
    }
}
