//! What [`crate::memory`] reads of Redis: `INFO memory`, how many results were written, and
//! what one result costs. One attempt each: the watch's next look is the retry.

use super::Stager;
use crate::error::{Error, Result};
use redis::AsyncCommands;
use sluice_contract::memory::Memory;

/// What one result costs in Redis, as `MEMORY USAGE` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Its hash (`{prefix}:result:{id}`), kept `RESULT_TTL_SECONDS`.
    pub hash: u64,
    /// Its entry in the results stream, kept while the stream is under `RESULTS_MAXLEN`.
    pub entry: u64,
}

impl Stager {
    /// What `INFO memory` says.
    pub async fn memory(&self) -> Result<Memory> {
        let mut con = self.con.clone();
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut con)
            .await
            .map_err(Error::redis("reading redis's memory"))?;
        Ok(Memory::parse(&info))
    }

    /// Results written so far under this prefix, whatever their status (the `{prefix}:stats`
    /// counters).
    pub async fn results_written(&self) -> Result<u64> {
        let mut con = self.con.clone();
        let counts: Vec<Option<u64>> = con
            .hmget(self.keys.stats(), &["ok", "error", "dead"])
            .await
            .map_err(Error::redis("reading result counts"))?;
        Ok(counts.into_iter().flatten().sum())
    }

    /// What the newest result costs (`MEMORY USAGE` of its hash, and the results stream's
    /// per entry); `None` before the first result.
    pub async fn result_footprint(&self) -> Result<Option<Footprint>> {
        let mut con = self.con.clone();
        let failed = || Error::redis("sampling a result's memory");
        let stream = self.keys.results_stream();
        let newest: redis::streams::StreamRangeReply = con
            .xrevrange_count(&stream, "+", "-", 1)
            .await
            .map_err(failed())?;
        let Some(id) = newest
            .ids
            .first()
            .and_then(|entry| entry.get::<String>("id"))
        else {
            return Ok(None);
        };
        let usage = |key: String| redis::cmd("MEMORY").arg("USAGE").arg(key).clone();
        let (hash, stream_bytes, entries): (Option<u64>, Option<u64>, u64) = redis::pipe()
            .add_command(usage(self.keys.result(&id)))
            .add_command(usage(stream.clone()))
            .xlen(&stream)
            .query_async(&mut con)
            .await
            .map_err(failed())?;
        Ok(hash.map(|hash| Footprint {
            hash,
            entry: stream_bytes.unwrap_or(0) / entries.max(1),
        }))
    }
}
