//! The host's side of Redis (SPEC §6): the stream of topic `T` is the key
//! `<prefix>T`. Appends (the relay, `?wait=false`), acks and dead-letter
//! copies to `T.dlq` for the stream consumers, consumer-group lag, health.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use switchyard_model::envelope::{self, Envelope};
use switchyard_model::manifest::RedisSettings;

/// Commands other than the blocking read give up after this long.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// First pause after Redis failed; doubled up to `MAX_RECONNECT`.
pub(crate) const RECONNECT: Duration = Duration::from_millis(200);
pub(crate) const MAX_RECONNECT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The host's side of Redis: appends, acks, dead letters, health.
pub struct RedisBus {
    pub settings: RedisSettings,
    pub(crate) client: redis::Client,
    pub(crate) conn: ConnectionManager,
    /// Unique per host process, so a restarted host never mistakes a dead
    /// process's pending entries for its own in-flight work.
    pub(crate) consumer: String,
}

impl RedisBus {
    /// Prepares the connection; it is made lazily, so the host starts (not
    /// ready) while Redis is down.
    pub fn new(settings: RedisSettings) -> Result<Arc<Self>, BusError> {
        let client = redis::Client::open(settings.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_max_delay(MAX_RECONNECT);
        let conn = client.get_connection_manager_lazy(config)?;
        let consumer = format!("{}-{}", std::process::id(), &envelope::new_id()[24..]);
        Ok(Arc::new(Self {
            settings,
            client,
            conn,
            consumer,
        }))
    }

    /// The stream key of a topic.
    pub fn key(&self, topic: &str) -> String {
        format!("{}{topic}", self.settings.prefix)
    }

    pub(crate) fn group(&self, module: &str) -> String {
        format!("{}.{module}", self.settings.group)
    }

    fn xadd(&self, key: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(key);
        if let Some(maxlen) = self.settings.maxlen {
            cmd.arg("MAXLEN").arg("~").arg(maxlen);
        }
        cmd.arg("*");
        cmd
    }

    /// Appends envelopes to their topics' streams (one round trip); returns
    /// once Redis has them all.
    pub async fn append(&self, envelopes: &[Envelope]) -> Result<(), BusError> {
        let mut pipe = redis::pipe();
        for e in envelopes {
            let mut cmd = self.xadd(&self.key(&e.topic));
            cmd.arg("envelope").arg(e.to_json());
            pipe.add_command(cmd).ignore();
        }
        let mut conn = self.conn.clone();
        let () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    pub async fn ping(&self) -> bool {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok()
    }

    pub(crate) async fn ack(&self, key: &str, group: &str, ids: &[String]) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("XACK")
            .arg(key)
            .arg(group)
            .arg(ids)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Writes a dead letter to `T.dlq`: the original fields plus why.
    pub(crate) async fn dead_letter(
        &self,
        topic: &str,
        fields: &[(String, String)],
        why: &[(&str, String)],
    ) -> Result<(), BusError> {
        let mut cmd = self.xadd(&self.key(&format!("{topic}.dlq")));
        for (k, v) in fields {
            cmd.arg(k).arg(v);
        }
        for (k, v) in why {
            cmd.arg(format!("dlq-{k}")).arg(v);
        }
        let mut conn = self.conn.clone();
        let _: String = cmd.query_async(&mut conn).await?;
        Ok(())
    }

    /// How far `module`'s consumer group is behind on the stream of `topic`
    /// (XINFO GROUPS `lag`), as (stream key, group, lag); `None` while the
    /// stream or the group does not exist or Redis cannot tell.
    pub async fn group_lag(
        &self,
        module: &str,
        topic: &str,
    ) -> Result<Option<(String, String, u64)>, BusError> {
        let key = self.key(topic);
        let group = self.group(module);
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamInfoGroupsReply = match redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&key)
            .query_async(&mut conn)
            .await
        {
            Ok(reply) => reply,
            Err(e) if e.to_string().contains("no such key") => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let lag = reply
            .groups
            .into_iter()
            .find(|g| g.name == group)
            .and_then(|g| g.lag);
        Ok(lag.map(|lag| (key, group, lag as u64)))
    }
}
