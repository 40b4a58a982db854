//! Dead letters for the redrive suite: real ones from a runner build with a bug, fake ones
//! written exactly as the dispatcher's settle step writes them, and readers of the lists and
//! the results stream.

use crate::{TestEnv, binary};
use anyhow::{Context as _, Result, bail};
use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use redis::AsyncCommands;
use serde_json::json;
use sluice_contract::dead::IndexEntry;
use sluice_contract::record::{ResultWrite, WRITE_RESULTS_LUA, unix_millis};
use sluice_contract::{Keys, ResultRecord, Status};
use sluice_dispatcher::dead_letters::{DeadLetter, DeadLetters};
use std::path::PathBuf;

/// Writes a `RUNNER_BIN` for `env` standing for a runner build with a bug: the real runner
/// with `SLUICE_TEST_BUG=1`, so the test kernel `bug` aborts the process while working on a
/// message (as a segfault would) instead of echoing it, as it does in the "fixed" build.
pub fn buggy_runner(env: &TestEnv) -> Result<PathBuf> {
    let script = std::env::temp_dir().join(format!("{}-buggy-runner.sh", env.prefix));
    let text = format!(
        "#!/bin/sh\nSLUICE_TEST_BUG=1 exec '{}'\n",
        binary("runner").display()
    );
    crate::write_script(&script, &text)?;
    Ok(script)
}

impl TestEnv {
    fn keys(&self) -> Keys {
        Keys::new(&self.prefix)
    }

    /// The `{prefix}:dead` list, newest first, as stored.
    pub async fn dead_list(&self) -> Result<Vec<String>> {
        Ok(self
            .redis()
            .await?
            .lrange(self.keys().dead(), 0, -1)
            .await?)
    }

    /// The `{prefix}:redrive` list: entries a redrive took and did not release.
    pub async fn redrive_list(&self) -> Result<Vec<String>> {
        Ok(self
            .redis()
            .await?
            .lrange(self.keys().redrive(), 0, -1)
            .await?)
    }

    /// The `batch` field of `id`'s dead-list entry: the batch it died in.
    pub async fn dead_batch(&self, id: &str) -> Result<String> {
        for entry in self.dead_list().await? {
            let entry: serde_json::Value = serde_json::from_str(&entry)?;
            if entry["id"] == id {
                return entry["batch"]
                    .as_str()
                    .map(str::to_owned)
                    .context("a dead letter without a batch");
            }
        }
        bail!("{id} is not in the dead list")
    }

    /// The batch `batch` was split from, recursively: the batch its messages arrived in.
    pub async fn root_batch(&self, batch: &str) -> Result<String> {
        let mut con = self.redis().await?;
        let mut current = batch.to_owned();
        while let Some(parent) = con
            .hget::<_, _, Option<String>>(self.keys().batch(&current), "parent")
            .await?
        {
            current = parent;
        }
        Ok(current)
    }

    /// The `status` of every results-stream entry for `id`, oldest first.
    pub async fn stream_statuses(&self, id: &str) -> Result<Vec<String>> {
        let reply: redis::streams::StreamRangeReply = self
            .redis()
            .await?
            .xrange_all(self.keys().results_stream())
            .await?;
        Ok(reply
            .ids
            .iter()
            .filter(|e| e.get::<String>("id").as_deref() == Some(id))
            .map(|e| e.get("status").unwrap_or_default())
            .collect())
    }

    /// Dead-letters echo messages `ids` exactly as the dispatcher's settle step does: each
    /// published to the dead-letter queue (confirmed), then a `dead` result through the
    /// write-once script and an index entry pushed to `{prefix}:dead`.
    pub async fn dead_letter_directly(&self, ids: &[&str]) -> Result<()> {
        let batch = "b-direct";
        let reason = "gave up: the message's Job failed on its own: BackoffLimitExceeded";
        let queue = DeadLetters::new(&self.config(&[])?.broker);
        for id in ids {
            let body = json!({"id": id, "kernel": "echo", "input": id}).to_string();
            queue
                .publish(&DeadLetter {
                    id,
                    batch,
                    reason,
                    attempts: 2,
                    message_id: Some(id),
                    body: body.as_bytes(),
                })
                .await?;
        }
        let entries: Vec<String> = ids
            .iter()
            .map(|id| {
                IndexEntry {
                    id: (*id).to_owned(),
                    batch: batch.into(),
                    reason: reason.into(),
                    attempts: 2,
                    body: None,
                }
                .to_json()
            })
            .collect();
        self.write_dead(ids, batch, reason, &entries).await
    }

    /// An index entry as sluice 0.1 wrote it, with the body and no copy in the queue.
    pub async fn dead_letter_old_style(&self, id: &str) -> Result<()> {
        let (batch, reason) = ("b-old", "gave up: the message's Job failed on its own");
        let body = json!({"id": id, "kernel": "echo", "input": id}).to_string();
        let entry = json!({"id": id, "batch": batch, "reason": reason, "body": body}).to_string();
        self.write_dead(&[id], batch, reason, &[entry]).await
    }

    async fn write_dead(
        &self,
        ids: &[&str],
        batch: &str,
        reason: &str,
        entries: &[String],
    ) -> Result<()> {
        let keys = self.keys();
        let records: Vec<ResultRecord> = ids
            .iter()
            .map(|id| ResultRecord {
                id: (*id).to_owned(),
                status: Status::Dead,
                detail: reason.into(),
                kernel: String::new(),
                batch: batch.into(),
                duration_us: 0,
                finished_at: unix_millis(),
                reply: None,
            })
            .collect();
        let call = ResultWrite::new(&keys, batch, &records, 0, 10_000);
        redis::pipe()
            .cmd("EVAL")
            .arg(WRITE_RESULTS_LUA)
            .arg(call.keys.len())
            .arg(&call.keys[..])
            .arg(&call.args[..])
            .ignore()
            .lpush(keys.dead(), entries)
            .ignore()
            .query_async::<()>(&mut self.redis().await?)
            .await?;
        Ok(())
    }

    /// The messages in the test's dead-letter queue (`<queue>.dead`), oldest first, left
    /// there: fetched unacked, returned when the channel closes.
    pub async fn dead_queue(&self) -> Result<Vec<lapin::message::Delivery>> {
        let connection = self.amqp().await?;
        let channel = connection.create_channel().await?;
        let queue = format!("{}.dead", self.queue);
        let mut messages = Vec::new();
        while let Some(got) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        {
            messages.push(got.delivery);
        }
        connection.close(200, "read".into()).await?;
        Ok(messages)
    }
}

/// A header of a dead letter as text.
pub fn header(delivery: &lapin::message::Delivery, name: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}
