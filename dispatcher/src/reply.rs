//! Replies, as RabbitMQ's RPC pattern expects them: a message published with `reply_to` gets its
//! result published there once it is written to Redis, on the default exchange with routing key
//! `reply_to` (a named queue, or direct reply-to's `amq.rabbitmq.reply-to…`), its
//! `correlation_id`, `content_type: application/json`, the result record as the body.
//!
//! The result's stream entry (`{prefix}:results`) carries `reply_to` and `correlation_id`
//! ([`sluice_contract::record::Reply`]), so every result *write* asks for one reply, whoever
//! wrote it (a runner, or the dispatcher for a dead letter). Every dispatcher reads the stream in
//! the consumer group [`GROUP`]: each entry goes to one of them, which publishes the reply with
//! publisher confirms and only then acks the entry. A dispatcher that dies holding entries has
//! them claimed by another after [`CLAIM_IDLE`]. So a reply is published once per result write,
//! and twice only when a dispatcher dies (or loses Redis) between the broker's confirm and its
//! ack: the second copy is the same body with the same `correlation_id`. A redelivered message
//! whose result was already written writes nothing, so it is not replied again.
//!
//! A reply the broker cannot take (it is down) is tried again with backoff, never dropped, and
//! never holds up results: they are in Redis already. A reply to a queue that no longer exists
//! comes back (mandatory) and is counted as `unroutable`, not retried; one to a direct reply-to
//! requester that is gone is dropped by the broker.

use crate::amqp::Confirming;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimOptions, StreamId, StreamReadOptions, StreamReadReply};
use serde_json::{Value, json};
use sluice_contract::Keys;
use sluice_contract::retry::Policy;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The results stream's consumer group every dispatcher replies through.
pub const GROUP: &str = "sluice-replies";
/// Entries pending this long with a consumer are taken over (its dispatcher is presumed gone).
pub const CLAIM_IDLE: Duration = Duration::from_secs(60);
/// The prefix of direct reply-to's routing keys.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Delays between attempts while Redis or the broker is unreachable: 200 ms doubling to 10 s,
/// plus jitter, for as long as it lasts.
const RETRY: Policy = Policy::new(Duration::from_millis(200), Duration::from_secs(10), None);
/// Entries read per call.
const COUNT: usize = 256;
/// How long a read waits for new entries.
const BLOCK: Duration = Duration::from_secs(1);

/// One reply to send: the stream entry it answers and where it goes.
struct Pending {
    entry: String,
    to: String,
    correlation_id: Option<String>,
    body: Vec<u8>,
}

/// Replies until `stop`: reads the results stream as consumer `me` of [`GROUP`].
pub async fn serve(
    config: Arc<Config>,
    me: String,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let keys = Keys::new(&config.redis.key_prefix);
    let mut replier = Replier {
        amqp: Confirming::new(&config.broker, "sluice-replies", None),
        config,
        keys,
        me,
        metrics,
    };
    let mut delays = RETRY.backoff();
    while !stop.is_cancelled() {
        let Err(e) = replier.session(&stop).await else {
            return;
        };
        let delay = delays.next_delay().unwrap_or(RETRY.max_delay());
        tracing::warn!(error = %e, retry_in = ?delay, "replies wait: cannot read the results stream");
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

struct Replier {
    config: Arc<Config>,
    keys: Keys,
    me: String,
    metrics: Arc<Metrics>,
    amqp: Confirming,
}

impl Replier {
    /// One Redis connection's worth of replying; returns `Ok` once `stop` is cancelled.
    async fn session(&mut self, stop: &CancellationToken) -> Result<()> {
        let client = self.config.redis.client()?;
        let settings = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(BLOCK + Duration::from_secs(10)));
        let mut con = client
            .get_multiplexed_async_connection_with_config(&settings)
            .await
            .map_err(Error::redis_connect(&client))?;
        self.ensure_group(&mut con).await?;
        // Claimed at once on start: a dispatcher replaced by this one may have left entries.
        let mut claimed_at: Option<Instant> = None;
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            let entries = if claimed_at.is_none_or(|at| at.elapsed() >= CLAIM_IDLE / 2) {
                claimed_at = Some(Instant::now());
                self.claim(&mut con).await?
            } else {
                self.read(&mut con, stop).await?
            };
            if !entries.is_empty() {
                self.answer(&mut con, entries, stop).await?;
            }
        }
    }

    async fn ensure_group(&self, con: &mut MultiplexedConnection) -> Result<()> {
        let created: redis::RedisResult<()> = con
            .xgroup_create_mkstream(self.keys.results_stream(), GROUP, "$")
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other.map_err(Error::redis("creating the replies' consumer group")),
        }
    }

    async fn read(
        &self,
        con: &mut MultiplexedConnection,
        stop: &CancellationToken,
    ) -> Result<Vec<StreamId>> {
        let options = StreamReadOptions::default()
            .group(GROUP, &self.me)
            .count(COUNT)
            .block(BLOCK.as_millis() as usize);
        let key = self.keys.results_stream();
        let keys = [key.as_str()];
        let read = con.xread_options::<_, _, Option<StreamReadReply>>(&keys, &[">"], &options);
        let reply: Option<StreamReadReply> = tokio::select! {
            // An unanswered read holds nothing: its entries stay new for the next one.
            () = stop.cancelled() => return Ok(Vec::new()),
            reply = read => reply.map_err(Error::redis("reading the results stream"))?,
        };
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default())
    }

    /// Entries another consumer took and did not ack within [`CLAIM_IDLE`].
    async fn claim(&self, con: &mut MultiplexedConnection) -> Result<Vec<StreamId>> {
        let claimed: redis::streams::StreamAutoClaimReply = con
            .xautoclaim_options(
                self.keys.results_stream(),
                GROUP,
                &self.me,
                CLAIM_IDLE.as_millis() as u64,
                "0-0",
                StreamAutoClaimOptions::default().count(COUNT),
            )
            .await
            .map_err(Error::redis("claiming replies of a dispatcher gone"))?;
        Ok(claimed.claimed)
    }

    /// Publishes the replies `entries` ask for, then acks every one of them.
    async fn answer(
        &mut self,
        con: &mut MultiplexedConnection,
        entries: Vec<StreamId>,
        stop: &CancellationToken,
    ) -> Result<()> {
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        let pending = self.pending(con, entries).await?;
        let mut delays = RETRY.backoff();
        while !pending.is_empty() {
            let Err(e) = self.publish(&pending).await else {
                break;
            };
            self.metrics.replied("failed", pending.len() as u64);
            let delay = delays.next_delay().unwrap_or(RETRY.max_delay());
            tracing::warn!(error = %e, replies = pending.len(), retry_in = ?delay, "replies not published yet; results are in redis");
            self.amqp.reset("reply publish failed").await;
            tokio::select! {
                // Not acked: the next dispatcher to claim them replies.
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
        if !ids.is_empty() {
            con.xack::<_, _, _, ()>(self.keys.results_stream(), GROUP, &ids)
                .await
                .map_err(Error::redis("acking replied results"))?;
        }
        Ok(())
    }

    /// The replies `entries` ask for, with their results read from Redis.
    async fn pending(
        &self,
        con: &mut MultiplexedConnection,
        entries: Vec<StreamId>,
    ) -> Result<Vec<Pending>> {
        let wanted: Vec<(StreamId, String, String)> = entries
            .into_iter()
            .filter_map(|e| {
                let to: String = e.get("reply_to")?;
                let id: String = e.get("id")?;
                (!to.is_empty()).then_some((e, id, to))
            })
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (_, id, _) in &wanted {
            pipe.hgetall(self.keys.result(id));
        }
        let results: Vec<HashMap<String, String>> = pipe
            .query_async(con)
            .await
            .map_err(Error::redis("reading results to reply"))?;
        Ok(wanted
            .into_iter()
            .zip(results)
            .map(|((entry, id, to), result)| Pending {
                correlation_id: entry
                    .get::<String>("correlation_id")
                    .filter(|c| !c.is_empty()),
                body: body(&id, &entry, &result),
                entry: entry.id,
                to,
            })
            .collect())
    }

    async fn publish(&mut self, replies: &[Pending]) -> Result<()> {
        let channel = self.amqp.channel().await?;
        let mut confirms = Vec::with_capacity(replies.len());
        for reply in replies {
            // Direct reply-to routes to a channel, not a queue: RabbitMQ (3.10 here) returns a
            // mandatory reply it has delivered, so those go without (one to a requester gone is
            // dropped by the broker).
            let options = BasicPublishOptions {
                mandatory: !reply.to.starts_with(DIRECT_REPLY_TO),
                ..BasicPublishOptions::default()
            };
            let confirm = channel
                .basic_publish(
                    "".into(),
                    reply.to.as_str().into(),
                    options,
                    &reply.body,
                    properties(reply),
                )
                .await
                .map_err(Error::amqp("publishing a reply"))?;
            confirms.push(confirm);
        }
        let (mut sent, mut unroutable) = (0, 0);
        for (confirm, reply) in confirms.into_iter().zip(replies) {
            let confirmation = confirm
                .await
                .map_err(Error::amqp("waiting for a reply's confirm"))?;
            if !confirmation.is_ack() {
                return Err(Error::BrokerRefused {
                    reason: "a reply was nacked".into(),
                });
            }
            if confirmation.take_message().is_some() {
                tracing::warn!(reply_to = %reply.to, entry = %reply.entry, "reply queue is gone; the result stays in redis");
                unroutable += 1;
            } else {
                sent += 1;
            }
        }
        self.metrics.replied("sent", sent);
        self.metrics.replied("unroutable", unroutable);
        Ok(())
    }
}

fn properties(reply: &Pending) -> BasicProperties {
    let properties = BasicProperties::default().with_content_type("application/json".into());
    match reply.correlation_id.as_deref().map(ShortString::try_new) {
        Some(Ok(id)) => properties.with_correlation_id(id),
        _ => properties,
    }
}

/// The reply's body: the result record as JSON (`output` as the kernel's JSON), or only the
/// id and status when the result has expired since.
fn body(id: &str, entry: &StreamId, result: &HashMap<String, String>) -> Vec<u8> {
    let field = |name: &str| result.get(name).cloned();
    let status = field("status")
        .or_else(|| entry.get("status"))
        .unwrap_or_default();
    let mut record = json!({"id": id, "status": status});
    if let Some(output) = field("output") {
        record["output"] = serde_json::from_str(&output).unwrap_or(Value::String(output));
    }
    if let Some(error) = field("error") {
        record["error"] = Value::String(error);
    }
    for name in ["kernel", "batch"] {
        if let Some(value) = field(name) {
            record[name] = Value::String(value);
        }
    }
    for name in ["duration_us", "finished_at"] {
        if let Some(value) = field(name).and_then(|v| v.parse::<u64>().ok()) {
            record[name] = json!(value);
        }
    }
    record.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_the_result_record_with_its_output_as_json() {
        let entry = StreamId::default();
        let result: HashMap<String, String> = [
            ("status", "ok"),
            ("output", "{\"sum\":3}"),
            ("kernel", "modsum"),
            ("batch", "b"),
            ("duration_us", "12"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let reply: Value = serde_json::from_slice(&body("m1", &entry, &result)).unwrap();
        assert_eq!(
            reply,
            json!({"id": "m1", "status": "ok", "output": {"sum": 3}, "kernel": "modsum", "batch": "b", "duration_us": 12})
        );
        let expired: Value = serde_json::from_slice(&body("m2", &entry, &HashMap::new())).unwrap();
        assert_eq!(expired, json!({"id": "m2", "status": ""}));
    }
}
