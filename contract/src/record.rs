//! What users read back: the per-message result hash and the batch state hash.

use crate::Keys;
use std::borrow::Cow;
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
    /// Where the message asked its result to be replied (its `reply_to`), if it did.
    pub reply: Option<Reply>,
}

/// A message's `reply_to` and `correlation_id`: its result's stream entry carries them, and the
/// dispatcher publishes the result there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The routing key on the default exchange (a queue, or `amq.rabbitmq.reply-to…`).
    pub to: String,
    /// Handed back as the reply's `correlation_id`.
    pub correlation_id: Option<String>,
}

impl ResultRecord {
    /// The field `detail` is stored under: `output` when ok, `error` otherwise.
    pub fn detail_field(&self) -> &'static str {
        if self.status == Status::Ok {
            "output"
        } else {
            "error"
        }
    }
}

/// The write-once loop shared by [`WRITE_RESULTS_LUA`] and [`WRITE_RESULTS_BODY`].
macro_rules! write_results_body {
    () => {
        r"
local ttl = tonumber(ARGV[1])
local written, by_status, count = {}, {}, 0
for i = 1, #KEYS - 3 do
  local key, a = KEYS[3 + i], 3 + (i - 1) * 9
  if redis.call('EXISTS', key) == 1 then
    written[i] = 0
  else
    local status = ARGV[a + 2]
    redis.call('HSET', key, 'status', status, ARGV[a + 3], ARGV[a + 4], 'kernel', ARGV[a + 5],
      'batch', ARGV[3], 'duration_us', ARGV[a + 6], 'finished_at', ARGV[a + 7])
    if ttl > 0 then redis.call('EXPIRE', key, ttl) end
    if ARGV[a + 8] == '' then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'id', ARGV[a + 1], 'status', status)
    else
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'id', ARGV[a + 1], 'status', status,
        'reply_to', ARGV[a + 8], 'correlation_id', ARGV[a + 9])
    end
    by_status[status] = (by_status[status] or 0) + 1
    count = count + 1
    written[i] = 1
  end
end
for status, n in pairs(by_status) do redis.call('HINCRBY', KEYS[2], status, n) end
local ok = by_status['ok'] or 0
local errors = count - ok
if ok > 0 then redis.call('HINCRBY', KEYS[3], 'ok', ok) end
if errors > 0 then redis.call('HINCRBY', KEYS[3], 'errors', errors) end
"
    };
}

/// Writes a chunk of one batch's results, each exactly once: a result whose hash already
/// exists (a redelivery, a Job retry, two runners racing on one batch) is not written, counted
/// or streamed. One call per chunk, not per result: Lua's per-call set-up was most of Redis's
/// time per message, and the counters are bumped once per chunk.
///
/// KEYS: results stream, stats hash, batch hash, then one result hash per record.
/// ARGV: ttl seconds (0 = keep), stream maxlen, batch id, then [`ARGS_PER_RESULT`] per record:
/// id, status, detail field, detail, kernel, `duration_us`, `finished_at`, `reply_to` and
/// `correlation_id` (both empty when no reply is asked for; else the stream entry carries them).
/// Returns one integer per record: 1 when written, 0 when it already existed.
pub const WRITE_RESULTS_LUA: &str = concat!(write_results_body!(), "return written\n");

/// The body of [`WRITE_RESULTS_LUA`] without its `return`, for scripts that write results as one
/// step of a larger atomic change (the dispatcher's dead letters, applied only if their batch is
/// still as the decision saw it). It leaves the per-record flags in the Lua table `written`.
pub const WRITE_RESULTS_BODY: &str = write_results_body!();

/// ARGV entries [`WRITE_RESULTS_LUA`] takes per record.
pub const ARGS_PER_RESULT: usize = 9;

/// One call of [`WRITE_RESULTS_LUA`]: the KEYS and ARGV for results of one batch, borrowing
/// the records' strings rather than copying them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultWrite<'a> {
    /// KEYS, in the script's order.
    pub keys: Vec<String>,
    /// ARGV, in the script's order.
    pub args: Vec<Cow<'a, str>>,
}

impl<'a> ResultWrite<'a> {
    /// The call writing `records`, which all belong to batch `batch` (see [`by_batch`]).
    pub fn new(
        keys: &Keys,
        batch: &'a str,
        records: &'a [ResultRecord],
        ttl_seconds: u64,
        stream_maxlen: u64,
    ) -> Self {
        let mut script_keys = Vec::with_capacity(3 + records.len());
        script_keys.extend([keys.results_stream(), keys.stats(), keys.batch(batch)]);
        let mut args = Vec::with_capacity(3 + ARGS_PER_RESULT * records.len());
        args.extend([
            Cow::Owned(ttl_seconds.to_string()),
            Cow::Owned(stream_maxlen.to_string()),
            Cow::Borrowed(batch),
        ]);
        for record in records {
            debug_assert_eq!(record.batch, batch, "one call writes one batch's results");
            script_keys.push(keys.result(&record.id));
            args.extend([
                Cow::Borrowed(record.id.as_str()),
                Cow::Borrowed(record.status.as_str()),
                Cow::Borrowed(record.detail_field()),
                Cow::Borrowed(record.detail.as_str()),
                Cow::Borrowed(record.kernel.as_str()),
                Cow::Owned(record.duration_us.to_string()),
                Cow::Owned(record.finished_at.to_string()),
                Cow::Borrowed(record.reply.as_ref().map_or("", |r| r.to.as_str())),
                Cow::Borrowed(
                    record
                        .reply
                        .as_ref()
                        .and_then(|r| r.correlation_id.as_deref())
                        .unwrap_or(""),
                ),
            ]);
        }
        Self {
            keys: script_keys,
            args,
        }
    }
}

/// Splits `records` into runs of one batch each: one [`ResultWrite`] per run.
pub fn by_batch(records: &[ResultRecord]) -> impl Iterator<Item = &[ResultRecord]> {
    records.chunk_by(|a, b| a.batch == b.batch)
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
    /// Its Job could not do its work (an outage: the runner could not start, its image could
    /// not be pulled, its pod was refused or evicted); its messages were staged again, whole,
    /// as a new batch (`parent` names this one), to be launched after a backoff.
    Retried,
}

impl BatchState {
    /// Every state, in life order.
    pub const ALL: [Self; 6] = [
        Self::Staged,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Split,
        Self::Retried,
    ];

    /// The string stored in Redis.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Staged => "staged",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Split => "split",
            Self::Retried => "retried",
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
            reply: None,
        };
        assert_eq!(r.detail_field(), "output");
        r.status = Status::Error;
        assert_eq!(r.detail_field(), "error");
    }

    fn record(id: &str, batch: &str, status: Status) -> ResultRecord {
        ResultRecord {
            id: id.into(),
            status,
            detail: format!("d-{id}"),
            kernel: "echo".into(),
            batch: batch.into(),
            duration_us: 3,
            finished_at: 9,
            reply: None,
        }
    }

    #[test]
    fn a_result_write_lays_out_keys_and_args_in_the_scripts_order() {
        let mut replied = record("z", "b1", Status::Error);
        replied.reply = Some(Reply {
            to: "q".into(),
            correlation_id: Some("c".into()),
        });
        let records = [record("a", "b1", Status::Ok), replied];
        let call = ResultWrite::new(&Keys::new("p"), "b1", &records, 60, 1000);
        assert_eq!(
            call.keys,
            [
                "p:results",
                "p:stats",
                "p:batch:b1",
                "p:result:a",
                "p:result:z"
            ]
        );
        assert_eq!(call.args.len(), 3 + 2 * ARGS_PER_RESULT);
        assert_eq!(call.args[..3], ["60", "1000", "b1"]);
        assert_eq!(
            call.args[3..3 + ARGS_PER_RESULT],
            ["a", "ok", "output", "d-a", "echo", "3", "9", "", ""]
        );
        assert_eq!(
            call.args[3 + ARGS_PER_RESULT..],
            ["z", "error", "error", "d-z", "echo", "3", "9", "q", "c"]
        );
    }

    #[test]
    fn the_script_strides_by_the_args_per_result() {
        let stride = format!("(i - 1) * {ARGS_PER_RESULT}");
        assert!(WRITE_RESULTS_LUA.contains(&stride), "{stride}");
    }

    #[test]
    fn results_are_grouped_into_runs_of_one_batch() {
        let records = [
            record("a", "b1", Status::Ok),
            record("b", "b1", Status::Ok),
            record("c", "b2", Status::Ok),
        ];
        let runs: Vec<usize> = by_batch(&records).map(<[_]>::len).collect();
        assert_eq!(runs, [2, 1]);
    }

    #[test]
    fn batch_states_round_trip() {
        for state in BatchState::ALL {
            assert_eq!(BatchState::parse(state.as_str()), Some(state));
        }
        assert_eq!(BatchState::parse("nope"), None);
    }
}
