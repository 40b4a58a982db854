//! Writing results: one write-once Lua call (`EVALSHA`) and one Redis round trip per chunk.

use crate::error::Result;
use crate::store::Store;
use sluice_contract::record::{ResultWrite, WRITE_RESULTS_LUA, by_batch};
use sluice_contract::{Keys, ResultRecord, Status};

/// Buffers results and writes them a chunk at a time.
pub struct ResultSink<'a> {
    store: &'a mut Store,
    keys: &'a Keys,
    ttl_seconds: u64,
    stream_maxlen: u64,
    chunk: usize,
    pending: Vec<ResultRecord>,
    /// When the oldest pending result arrived.
    pending_since: Option<std::time::Instant>,
    max_age: std::time::Duration,
    script: redis::Script,
    /// Counts of what was written (results that already existed are not counted).
    pub tally: Tally,
}

/// What a sink wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// New `ok` results.
    pub ok: usize,
    /// New `error` results.
    pub errors: usize,
    /// Results another writer had already written.
    pub already_written: usize,
}

impl<'a> ResultSink<'a> {
    /// A sink writing `chunk` results per round trip.
    pub fn new(
        store: &'a mut Store,
        keys: &'a Keys,
        ttl_seconds: u64,
        stream_maxlen: u64,
        chunk: usize,
    ) -> Self {
        Self {
            store,
            keys,
            ttl_seconds,
            stream_maxlen,
            chunk,
            pending: Vec::new(),
            pending_since: None,
            max_age: std::time::Duration::MAX,
            script: redis::Script::new(WRITE_RESULTS_LUA),
            tally: Tally::default(),
        }
    }

    /// Writes a partial chunk once its oldest result is `max_age` old, even while results keep
    /// arriving: a crash then loses at most a chunk or `max_age` of finished work.
    #[must_use]
    pub fn with_max_age(mut self, max_age: std::time::Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Queues a result, writing the chunk once it is full or old enough.
    pub fn push(&mut self, record: ResultRecord) -> Result<()> {
        let since = *self
            .pending_since
            .get_or_insert_with(std::time::Instant::now);
        self.pending.push(record);
        if self.pending.len() >= self.chunk || since.elapsed() >= self.max_age {
            self.flush()?;
        }
        Ok(())
    }

    /// The connection and key layout, for other writes between chunks (the claims).
    pub fn store(&mut self) -> (&mut Store, &Keys) {
        (self.store, self.keys)
    }

    /// Whether results are waiting to be written.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes every queued result: one `EVALSHA` per batch in the chunk (the script is loaded
    /// once, and again if Redis lost it, say after a restart), pipelined.
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (keys, ttl, maxlen, pending) = (
            self.keys,
            self.ttl_seconds,
            self.stream_maxlen,
            &self.pending,
        );
        let mut pipe = redis::pipe();
        for run in by_batch(pending) {
            let call = ResultWrite::new(keys, &run[0].batch, run, ttl, maxlen);
            pipe.cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(call.keys.len())
                .arg(&call.keys[..])
                .arg(&call.args[..]);
        }
        let script = &self.script;
        let runs: Vec<Vec<i64>> =
            self.store
                .call("writing results", |con| match pipe.query(con) {
                    Err(e) if e.to_string().to_ascii_lowercase().contains("noscript") => {
                        script.prepare_invoke().load(con)?;
                        pipe.query(con)
                    }
                    other => other,
                })?;
        let written = runs.into_iter().flatten();
        for (record, was_written) in pending.iter().zip(written) {
            match (was_written == 1, record.status) {
                (false, _) => self.tally.already_written += 1,
                (true, Status::Ok) => self.tally.ok += 1,
                (true, _) => self.tally.errors += 1,
            }
        }
        self.pending.clear();
        self.pending_since = None;
        Ok(())
    }
}
