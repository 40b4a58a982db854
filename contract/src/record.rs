//! What users read back: the per-message result hash and the batch state hash.

use std::fmt;

/// How a message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// The kernel ran and produced `output`.
    Ok,
    /// The message was invalid or its kernel failed; `error` says why.
    Error,
    /// The message kept killing its runner and was given up on.
    Dead,
}

impl Status {
    /// The string stored in Redis.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Dead => "dead",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finished message, as stored in `{prefix}:result:{id}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRecord {
    /// The message id (the key suffix, not a field).
    pub id: String,
    /// How it ended.
    pub status: Status,
    /// The kernel's output as JSON when `status` is ok; the reason otherwise.
    pub detail: String,
    /// The kernel that ran (or was asked for).
    pub kernel: String,
    /// The batch the message belonged to.
    pub batch: String,
    /// Time spent in the kernel, microseconds.
    pub duration_us: u64,
    /// Unix time in milliseconds when the result was written.
    pub finished_at: u64,
}

impl ResultRecord {
    /// The hash fields in the contract's names.
    pub fn fields(&self) -> [(&'static str, String); 6] {
        let detail_field = if self.status == Status::Ok {
            "output"
        } else {
            "error"
        };
        [
            ("status", self.status.as_str().to_owned()),
            (detail_field, self.detail.clone()),
            ("kernel", self.kernel.clone()),
            ("batch", self.batch.clone()),
            ("duration_us", self.duration_us.to_string()),
            ("finished_at", self.finished_at.to_string()),
        ]
    }
}

/// Writes one result exactly once: if the result hash already exists (a redelivery, a Job
/// retry, two runners racing on one batch) nothing is written, counted or streamed.
///
/// KEYS: result hash, results stream, stats hash, batch hash.
/// ARGV: ttl seconds (0 = keep), stream maxlen, id, status, detail field, detail, kernel,
/// batch, `duration_us`, `finished_at`. Returns 1 when written, 0 when it already existed.
pub const WRITE_RESULT_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[4], ARGV[5], ARGV[6], 'kernel', ARGV[7],
  'batch', ARGV[8], 'duration_us', ARGV[9], 'finished_at', ARGV[10])
local ttl = tonumber(ARGV[1])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'id', ARGV[3], 'status', ARGV[4])
redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
if ARGV[4] == 'ok' then
  redis.call('HINCRBY', KEYS[4], 'ok', 1)
else
  redis.call('HINCRBY', KEYS[4], 'errors', 1)
end
return 1
";

impl ResultRecord {
    /// The KEYS of [`WRITE_RESULT_LUA`] for this record.
    pub fn script_keys(&self, keys: &crate::Keys) -> [String; 4] {
        [
            keys.result(&self.id),
            keys.results_stream(),
            keys.stats(),
            keys.batch(&self.batch),
        ]
    }

    /// The ARGV of [`WRITE_RESULT_LUA`] for this record.
    pub fn script_args(&self, ttl_seconds: u64, stream_maxlen: u64) -> [String; 10] {
        let [
            (_, status),
            (detail_field, detail),
            (_, kernel),
            (_, batch),
            (_, dur),
            (_, fin),
        ] = self.fields();
        [
            ttl_seconds.to_string(),
            stream_maxlen.to_string(),
            self.id.clone(),
            status,
            detail_field.to_owned(),
            detail,
            kernel,
            batch,
            dur,
            fin,
        ]
    }
}

/// The life of a batch, stored as `state` in `{prefix}:batch:{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchState {
    /// Messages are in Redis; no Job has been created yet.
    Staged,
    /// Its Job has been launched.
    Running,
    /// Its Job finished with every message given a result.
    Succeeded,
    /// Its Job failed after all retries.
    Failed,
    /// It was split into smaller batches to isolate a poison message.
    Split,
}

impl BatchState {
    /// Every state, in life order.
    pub const ALL: [Self; 5] = [
        Self::Staged,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Split,
    ];

    /// The string stored in Redis.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Staged => "staged",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Split => "split",
        }
    }

    /// Parses the stored string.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

impl fmt::Display for BatchState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Milliseconds since the Unix epoch, as stored in `finished_at` and `created_at`.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_results_carry_output_and_others_carry_error() {
        let mut r = ResultRecord {
            id: "x".into(),
            status: Status::Ok,
            detail: "{\"sum\":1}".into(),
            kernel: "modsum".into(),
            batch: "b".into(),
            duration_us: 5,
            finished_at: 7,
        };
        assert_eq!(r.fields()[1].0, "output");
        r.status = Status::Error;
        assert_eq!(r.fields()[1].0, "error");
    }

    #[test]
    fn batch_states_round_trip() {
        for state in BatchState::ALL {
            assert_eq!(BatchState::parse(state.as_str()), Some(state));
        }
        assert_eq!(BatchState::parse("nope"), None);
    }
}
