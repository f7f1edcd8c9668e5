//! Redis Streams (SPEC §6): the stream of topic `T` is the key `<prefix>T`;
//! each module reads the streams it consumes with its own consumer group
//! `<group>.<module>`, acks an entry only after its unit of work committed
//! (or its failure was recorded), reclaims entries left pending by a dead
//! consumer, and dead-letters to `T.dlq`. The relay (`crate::relay`) appends
//! committed events with [`RedisBus::append`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::consumer::{self, Settle};
use crate::backoff::Backoff;
use crate::broker::redis::{BusError, COMMAND_TIMEOUT, MAX_RECONNECT, RECONNECT, RedisBus};
use crate::dispatch::{Dispatcher, Malformed};
use crate::registry::LoadedModule;
use switchyard_model::envelope::{Envelope, PARTITION_KEY};

/// Most entries one XACK acknowledges.
const ACK_BATCH: usize = 1_000;

/// Starts a consumer per loaded module, and more as modules appear.
pub async fn run(
    bus: Arc<RedisBus>,
    dispatcher: Arc<Dispatcher>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    consumer::for_each_module(&dispatcher.clone(), shutdown.clone(), |name| {
        let consumer = Consumer::new(bus.clone(), dispatcher.clone(), name);
        tracker.spawn(consumer.run(shutdown.clone(), tracker.clone()));
    })
    .await;
}

/// One entry read from a stream, as the consumer handles it.
struct Entry {
    key: String,
    topic: String,
    id: String,
    /// Deliveries so far, this one included.
    deliveries: u32,
    fields: Vec<(String, String)>,
}

/// Entries being handled, refreshed regularly so no other consumer steals
/// them however long the handler runs.
type InFlight = Arc<Mutex<HashMap<String, HashSet<String>>>>;

struct Consumer {
    bus: Arc<RedisBus>,
    dispatcher: Arc<Dispatcher>,
    module: String,
    group: String,
    in_flight: InFlight,
    limit: Arc<Semaphore>,
}

impl Consumer {
    fn new(bus: Arc<RedisBus>, dispatcher: Arc<Dispatcher>, module: String) -> Self {
        let group = bus.group(&module);
        let limit = Arc::new(Semaphore::new(bus.settings.concurrency));
        Self {
            bus,
            dispatcher,
            module,
            group,
            in_flight: Arc::default(),
            limit,
        }
    }

    async fn run(self, shutdown: CancellationToken, tracker: TaskTracker) {
        let this = Arc::new(self);
        tracker.spawn(this.clone().heartbeat(shutdown.clone()));
        // Done entries go to one acker, which acks what has piled up with
        // one XACK per stream.
        let (acks, acked) = mpsc::unbounded_channel();
        tracker.spawn(this.clone().acker(acked));
        let mut tails: HashMap<String, oneshot::Receiver<bool>> = HashMap::new();
        let mut backoff = Backoff::new(RECONNECT, MAX_RECONNECT);
        let mut conn: Option<MultiplexedConnection> = None;
        let mut ready_keys: HashSet<String> = HashSet::new();
        let mut last_claim = tokio::time::Instant::now() - Duration::from_secs(3600);
        while !shutdown.is_cancelled() {
            let Some(module) = this.dispatcher.module(&this.module) else {
                // Removed for now: stop reading; its pending entries wait for it.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(consumer::SUPERVISE_EVERY) => continue,
                }
            };
            // Read only what there is room for: one permit per entry in
            // flight, so `concurrency` bounds the entries read and not done,
            // and reading goes on while earlier entries are handled.
            let mut room = tokio::select! {
                _ = shutdown.cancelled() => return,
                permit = this.limit.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let more = this
                .limit
                .available_permits()
                .min(this.bus.settings.batch.saturating_sub(1));
            if let Ok(extra) = this
                .limit
                .clone()
                .try_acquire_many_owned(u32::try_from(more).unwrap_or(0))
            {
                room.merge(extra);
            }
            let count = room.num_permits();
            let topics = module.consumed_topics();
            let round = async {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => conn.insert(this.connect().await?),
                };
                for topic in &topics {
                    let key = this.bus.key(topic);
                    if !ready_keys.contains(&key) {
                        this.create_group(c, &key).await?;
                        ready_keys.insert(key);
                    }
                }
                let claim_every = Duration::from_millis(this.bus.settings.claim_idle_ms / 2);
                let entries = if last_claim.elapsed() >= claim_every {
                    last_claim = tokio::time::Instant::now();
                    this.reclaim(c, &topics, count).await?
                } else {
                    Vec::new()
                };
                let entries = if entries.is_empty() {
                    this.read(c, &topics, count).await?
                } else {
                    entries
                };
                Ok::<_, BusError>(entries)
            };
            let entries = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = round => r,
            };
            match entries {
                Ok(entries) => {
                    backoff.reset();
                    this.start_entries(&module, entries, room, &mut tails, &acks, &tracker);
                }
                Err(e) => {
                    tracing::warn!(module = %this.module, error = %e, "redis consumer: cannot read; reconnecting");
                    drop(room);
                    conn = None;
                    ready_keys.clear();
                    if !backoff.wait(&shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// A connection of its own: XREADGROUP BLOCK would hold up a shared one.
    async fn connect(&self) -> Result<MultiplexedConnection, BusError> {
        let block = Duration::from_millis(self.bus.settings.block_ms);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(block + COMMAND_TIMEOUT));
        Ok(self
            .bus
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    async fn create_group(
        &self,
        conn: &mut MultiplexedConnection,
        key: &str,
    ) -> Result<(), BusError> {
        // From the start of the stream: entries written before the module
        // first loaded are not lost.
        let created: Result<String, redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn read(
        &self,
        conn: &mut MultiplexedConnection,
        topics: &[String],
        count: usize,
    ) -> Result<Vec<Entry>, BusError> {
        let settings = &self.bus.settings;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.bus.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(settings.block_ms)
            .arg("STREAMS");
        for t in topics {
            cmd.arg(self.bus.key(t));
        }
        for _ in topics {
            cmd.arg(">");
        }
        let reply: Option<StreamReadReply> = cmd.query_async(conn).await?;
        let mut entries = Vec::new();
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            let Some(topic) = self.topic_of(&stream.key, topics) else {
                continue;
            };
            for id in stream.ids {
                entries.push(entry(&stream.key, &topic, id, 1));
            }
        }
        Ok(entries)
    }

    /// Takes over entries idle on any consumer of the group (a dead host's,
    /// or this host's own that failed because the store was down).
    async fn reclaim(
        &self,
        conn: &mut MultiplexedConnection,
        topics: &[String],
        count: usize,
    ) -> Result<Vec<Entry>, BusError> {
        let mut entries = Vec::new();
        for topic in topics {
            if entries.len() >= count {
                break;
            }
            let key = self.bus.key(topic);
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&key)
                .arg(&self.group)
                .arg(&self.bus.consumer)
                .arg(self.bus.settings.claim_idle_ms)
                .arg("0-0")
                .arg("COUNT")
                .arg(count - entries.len())
                .query_async(conn)
                .await?;
            if reply.claimed.is_empty() {
                continue;
            }
            // The delivery counts say how many attempts were already made.
            let first = &reply.claimed[0].id;
            let last = &reply.claimed[reply.claimed.len() - 1].id;
            let pending: StreamPendingCountReply = redis::cmd("XPENDING")
                .arg(&key)
                .arg(&self.group)
                .arg(first)
                .arg(last)
                .arg(reply.claimed.len())
                .arg(&self.bus.consumer)
                .query_async(conn)
                .await?;
            let counts: HashMap<&str, usize> = pending
                .ids
                .iter()
                .map(|p| (p.id.as_str(), p.times_delivered))
                .collect();
            tracing::info!(module = %self.module, stream = %key, count = reply.claimed.len(), "reclaimed pending entries");
            for id in reply.claimed {
                let deliveries = counts.get(id.id.as_str()).copied().unwrap_or(1);
                entries.push(entry(
                    &key,
                    topic,
                    id,
                    u32::try_from(deliveries).unwrap_or(u32::MAX),
                ));
            }
        }
        Ok(entries)
    }

    fn topic_of(&self, key: &str, topics: &[String]) -> Option<String> {
        topics.iter().find(|t| self.bus.key(t) == key).cloned()
    }

    /// Starts handling entries just read, each holding one permit of
    /// `room`: entries sharing a partition key one after another in stream
    /// order (each waits for the one before it, across reads), the rest
    /// concurrently. A done entry is handed to the acker.
    fn start_entries(
        self: &Arc<Self>,
        module: &Arc<LoadedModule>,
        entries: Vec<Entry>,
        mut room: OwnedSemaphorePermit,
        tails: &mut HashMap<String, oneshot::Receiver<bool>>,
        acks: &mpsc::UnboundedSender<(String, String)>,
        tracker: &TaskTracker,
    ) {
        // A key whose last entry is over has no one to wait for.
        tails.retain(|_, last| matches!(last.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            for e in &entries {
                in_flight
                    .entry(e.key.clone())
                    .or_default()
                    .insert(e.id.clone());
            }
        }
        // No more entries were read than `room` holds permits: one each,
        // the last entry takes what is left.
        let mut permits: Vec<OwnedSemaphorePermit> =
            (1..entries.len()).filter_map(|_| room.split(1)).collect();
        permits.push(room);
        for (e, permit) in entries.into_iter().zip(permits) {
            // Decoded once, here: the key orders it, the handler takes it.
            let parsed = parse_entry(&e);
            let key = match &parsed {
                Ok(envelope) => envelope.header(PARTITION_KEY).map(str::to_string),
                // Not an envelope: still behind its key's earlier entries.
                Err(_) => e
                    .fields
                    .iter()
                    .find(|(k, _)| k == PARTITION_KEY)
                    .map(|(_, v)| v.clone()),
            };
            let (before, after) = match key {
                Some(key) => {
                    let (tx, rx) = oneshot::channel();
                    (tails.insert(key, rx), Some(tx))
                }
                None => (None, None),
            };
            let (this, module, acks) = (self.clone(), module.clone(), acks.clone());
            tracker.spawn(async move {
                let _permit = permit;
                let (key, id) = (e.key.clone(), e.id.clone());
                // Left pending before: this one waits too, so the key's
                // order holds when they are reclaimed.
                let ready = match before {
                    Some(before) => before.await.unwrap_or(false),
                    None => true,
                };
                let done = ready && this.handle_entry(&module, e, parsed).await;
                this.in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(key.clone())
                    .or_default()
                    .remove(&id);
                if done {
                    let _ = acks.send((key, id));
                }
                if let Some(after) = after {
                    let _ = after.send(done);
                }
            });
        }
    }

    /// Acknowledges done entries: what piled up while the last XACK ran goes
    /// in one XACK per stream. Their units of work are committed already; an
    /// ack lost here only means a redelivery that the inbox answers.
    async fn acker(self: Arc<Self>, mut done: mpsc::UnboundedReceiver<(String, String)>) {
        while let Some((key, id)) = done.recv().await {
            let mut batch: BTreeMap<String, Vec<String>> = BTreeMap::new();
            batch.entry(key).or_default().push(id);
            let mut taken = 1;
            while taken < ACK_BATCH {
                let Ok((key, id)) = done.try_recv() else {
                    break;
                };
                batch.entry(key).or_default().push(id);
                taken += 1;
            }
            for (key, ids) in batch {
                if let Err(err) = self.bus.ack(&key, &self.group, &ids).await {
                    tracing::warn!(module = %self.module, stream = %key, entries = ids.len(), error = %err, "XACK failed; the entries will be redelivered");
                }
            }
        }
    }

    /// Handles one entry; true when it is done (committed, or its failure
    /// recorded) and may be acknowledged, false when it was left pending.
    async fn handle_entry(
        &self,
        module: &Arc<LoadedModule>,
        e: Entry,
        parsed: Result<Envelope, String>,
    ) -> bool {
        let parsed = parsed.map_err(|reason| malformed(&e, reason));
        match consumer::handle(&self.dispatcher, module, parsed, e.deliveries).await {
            Settle::Ack => true,
            Settle::Retry => false,
            Settle::DeadLetter(reason) => {
                let mut why = reason.fields(&module.name);
                why.push(("entry-id", e.id.clone()));
                match self.bus.dead_letter(&e.topic, &e.fields, &why).await {
                    Ok(()) => true,
                    Err(err) => {
                        tracing::warn!(module = %self.module, error = %err, "cannot write to the dlq stream; entry stays pending");
                        false
                    }
                }
            }
        }
    }

    /// Keeps in-flight entries fresh (XCLAIM ... JUSTID resets their idle
    /// time without counting a delivery) so a slow handler is not stolen.
    async fn heartbeat(self: Arc<Self>, shutdown: CancellationToken) {
        let every = Duration::from_millis((self.bus.settings.claim_idle_ms / 3).max(50));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let snapshot: Vec<(String, Vec<String>)> = {
                let in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
                in_flight
                    .iter()
                    .map(|(k, ids)| (k.clone(), ids.iter().cloned().collect()))
                    .collect()
            };
            for (key, ids) in snapshot.into_iter().filter(|(_, ids)| !ids.is_empty()) {
                let mut cmd = redis::cmd("XCLAIM");
                cmd.arg(&key)
                    .arg(&self.group)
                    .arg(&self.bus.consumer)
                    .arg(0);
                for id in &ids {
                    cmd.arg(id);
                }
                cmd.arg("JUSTID");
                let mut conn = self.bus.conn.clone();
                if let Err(e) = cmd.query_async::<Value>(&mut conn).await {
                    tracing::debug!(module = %self.module, error = %e, "heartbeat XCLAIM failed");
                }
            }
        }
    }
}

fn entry(key: &str, topic: &str, id: StreamId, deliveries: u32) -> Entry {
    let mut fields: Vec<(String, String)> = id
        .map
        .into_iter()
        .map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap_or_default()))
        .collect();
    fields.sort();
    Entry {
        key: key.to_string(),
        topic: topic.to_string(),
        id: id.id,
        deliveries,
        fields,
    }
}

/// An entry that is not an envelope, as its dead letter keeps it: its
/// fields as a JSON object.
fn malformed(e: &Entry, reason: String) -> Malformed {
    let fields: serde_json::Map<String, serde_json::Value> = e
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    Malformed {
        topic: e.topic.clone(),
        message_id: derived_id(&e.key, &e.id),
        subtopic: e
            .fields
            .iter()
            .find(|(k, _)| k == "subtopic")
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
        raw: serde_json::Value::Object(fields),
        reason,
    }
}

/// The id of an entry that carries none: where it sits, so a redelivery is
/// recognised.
pub fn derived_id(key: &str, entry_id: &str) -> String {
    format!("redis:{key}:{entry_id}")
}

/// Both entry forms of SPEC §6: one field `envelope` (JSON), or the flat form
/// `subtopic`, `body`, optional `id`, every other field a header.
fn parse_entry(e: &Entry) -> Result<Envelope, String> {
    Envelope::from_stream_fields(&e.topic, &e.fields, || derived_id(&e.key, &e.id))
        .map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(fields: &[(&str, &str)]) -> Entry {
        Entry {
            key: "p:orders".into(),
            topic: "orders".into(),
            id: "1-0".into(),
            deliveries: 1,
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn flat_form_with_headers_and_derived_id() {
        let e = parse_entry(&flat(&[
            ("subtopic", "place"),
            ("body", r#"{"qty":1}"#),
            ("partition-key", "o1"),
        ]))
        .unwrap();
        assert_eq!(e.id, "redis:p:orders:1-0");
        assert_eq!(e.subtopic, "place");
        assert_eq!(e.header("partition-key"), Some("o1"));
        assert_eq!(e.body_text(), r#"{"qty":1}"#);
    }

    #[test]
    fn poison_entries_say_why() {
        let err = parse_entry(&flat(&[("body", "{}")])).unwrap_err();
        assert!(err.contains("subtopic"), "{err}");
        let err = parse_entry(&flat(&[("subtopic", "place"), ("body", "{not json")])).unwrap_err();
        assert!(err.contains("body"), "{err}");
        let err = parse_entry(&flat(&[(
            "envelope",
            r#"{"topic":"inventory","subtopic":"x","body":1}"#,
        )]))
        .unwrap_err();
        assert!(err.contains("does not match"), "{err}");
    }
}
