//! The Redis side of a redrive: reading dead letters, the run's lease, and the scripts that
//! move an entry from `{prefix}:dead` to `{prefix}:redrive` and out again.
//!
//! No call here is retried: a take whose reply was lost may have happened, and a blind retry
//! would then find nothing to take and forget the entry in `{prefix}:redrive`. An error ends
//! the run instead, and the next run re-publishes whatever that left taken.

use crate::error::{Error, Result};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use sluice_contract::Keys;
use std::time::Duration;

/// How long a run's lease lasts without being renewed. Every take renews it, so only a run
/// that died (or stalled this long) loses it; a dead run blocks the next one for at most this.
pub const LEASE: Duration = Duration::from_secs(30);

/// Takes dead letters for redriving, each at most once, atomically per entry.
///
/// KEYS: lease, dead list, redrive list, stats hash, then one result hash per entry.
/// ARGV: lease token, lease ms, then the entries, exactly as stored in the dead list.
/// Returns `{-1}` when the lease is not this run's; otherwise one code per entry:
/// 1 taken (moved to the redrive list, its `dead` result deleted, `redriven` counted),
/// 2 dropped (its message has an `ok` or `error` result by now: the entry is stale),
/// 0 gone (no longer in the dead list).
const TAKE_LUA: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local codes = {}
for i = 3, #ARGV do
  local result = KEYS[2 + i]
  if redis.call('LREM', KEYS[2], 1, ARGV[i]) == 0 then
    codes[i - 2] = 0
  else
    local status = redis.call('HGET', result, 'status')
    if status and status ~= 'dead' then
      codes[i - 2] = 2
    else
      redis.call('RPUSH', KEYS[3], ARGV[i])
      redis.call('DEL', result)
      redis.call('HINCRBY', KEYS[4], 'redriven', 1)
      codes[i - 2] = 1
    end
  end
end
return codes
";

/// Renews the lease if it is still ours: KEYS lease; ARGV token, lease ms. Returns 1 or 0.
const RENEW_LUA: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
";

/// Ends the lease if it is still ours: KEYS lease; ARGV token.
const END_LUA: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
";

/// What the take script did with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Moved to the redrive list; its `dead` result is gone; it must be published.
    Taken,
    /// Its message already has an `ok` or `error` result: removed, nothing to publish.
    Finished,
    /// No longer in the dead list (removed by hand since it was read).
    Gone,
}

/// A run's hold on the key prefix's redrive lease.
#[derive(Debug)]
pub struct Lease {
    token: String,
}

/// The Redis connection and key layout of one redrive.
pub struct Store {
    con: MultiplexedConnection,
    keys: Keys,
}

impl Store {
    /// Connects; a redrive is one-shot, so an unreachable Redis is reported, not waited out.
    pub async fn connect(client: redis::Client, keys: Keys) -> Result<Self> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        let con = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(Error::redis_connect(&client))?;
        Ok(Self { con, keys })
    }

    /// Every entry of `{prefix}:dead`, oldest first (settle pushes to the head).
    pub async fn dead_entries(&mut self) -> Result<Vec<String>> {
        let mut entries: Vec<String> = self
            .con
            .lrange(self.keys.dead(), 0, -1)
            .await
            .map_err(Error::redis("reading the dead letters"))?;
        entries.reverse();
        Ok(entries)
    }

    /// Every entry of `{prefix}:redrive`: taken by a run, not yet confirmed on the queue.
    pub async fn redrive_entries(&mut self) -> Result<Vec<String>> {
        self.con
            .lrange(self.keys.redrive(), 0, -1)
            .await
            .map_err(Error::redis("reading the redrive list"))
    }

    /// How many entries `{prefix}:dead` holds.
    pub async fn dead_len(&mut self) -> Result<u64> {
        self.con
            .llen(self.keys.dead())
            .await
            .map_err(Error::redis("counting the dead letters"))
    }

    /// The `status` of each id's result (`None`: no result).
    pub async fn statuses(&mut self, ids: &[&str]) -> Result<Vec<Option<String>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hget(self.keys.result(id), "status");
        }
        pipe.query_async(&mut self.con)
            .await
            .map_err(Error::redis("reading result statuses"))
    }

    /// The batch `batch` was split from, while its state hash lives.
    pub async fn parent(&mut self, batch: &str) -> Result<Option<String>> {
        self.con
            .hget(self.keys.batch(batch), "parent")
            .await
            .map_err(Error::redis("reading a batch's parent"))
    }

    /// Whether some run holds the lease now.
    pub async fn leased(&mut self) -> Result<bool> {
        self.con
            .exists(self.keys.redrive_lock())
            .await
            .map_err(Error::redis("reading the redrive lease"))
    }

    /// Takes the lease, or says who has it and for how long.
    pub async fn lease(&mut self) -> Result<Lease> {
        let token = uuid::Uuid::now_v7().to_string();
        let key = self.keys.redrive_lock();
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(lease_ms())
            .query_async(&mut self.con)
            .await
            .map_err(Error::redis("taking the redrive lease"))?;
        if set.is_some() {
            return Ok(Lease { token });
        }
        let left_ms: i64 = self
            .con
            .pttl(&key)
            .await
            .map_err(Error::redis("reading the redrive lease"))?;
        Err(Error::RedriveLease {
            reason: format!(
                "another `dispatcher redrive` is running on key prefix {} (or died less than {}s ago; its lease ends within {}s); run this again then",
                self.keys.prefix(),
                LEASE.as_secs(),
                left_ms.max(0).unsigned_abs().div_ceil(1000)
            ),
        })
    }

    /// Renews the lease; fails if this run no longer holds it.
    pub async fn renew(&mut self, lease: &Lease) -> Result<()> {
        let renewed: i64 = redis::Script::new(RENEW_LUA)
            .key(self.keys.redrive_lock())
            .arg(&lease.token)
            .arg(lease_ms())
            .invoke_async(&mut self.con)
            .await
            .map_err(Error::redis("renewing the redrive lease"))?;
        if renewed == 1 {
            Ok(())
        } else {
            Err(self.lost())
        }
    }

    /// Gives the lease back, if it is still this run's.
    pub async fn end(&mut self, lease: Lease) -> Result<()> {
        redis::Script::new(END_LUA)
            .key(self.keys.redrive_lock())
            .arg(&lease.token)
            .invoke_async::<i64>(&mut self.con)
            .await
            .map_err(Error::redis("ending the redrive lease"))?;
        Ok(())
    }

    /// Runs the take script on `entries` (`(id, entry as stored)`), renewing the lease.
    pub async fn take(&mut self, lease: &Lease, entries: &[(&str, &str)]) -> Result<Vec<Take>> {
        let keys = &self.keys;
        let take = redis::Script::new(TAKE_LUA);
        let mut script = take.prepare_invoke();
        script
            .key(keys.redrive_lock())
            .key(keys.dead())
            .key(keys.redrive())
            .key(keys.stats())
            .arg(&lease.token)
            .arg(lease_ms());
        for (id, entry) in entries {
            script.key(keys.result(id)).arg(*entry);
        }
        let codes: Vec<i64> = script
            .invoke_async(&mut self.con)
            .await
            .map_err(Error::redis("taking dead letters"))?;
        if codes.first() == Some(&-1) {
            return Err(self.lost());
        }
        Ok(codes
            .into_iter()
            .map(|code| match code {
                1 => Take::Taken,
                2 => Take::Finished,
                _ => Take::Gone,
            })
            .collect())
    }

    /// Puts entries back at the old end of `{prefix}:dead` (dead letters in the queue whose
    /// entry the index's cap dropped), so the take script finds them.
    pub async fn restore(&mut self, entries: &[&str]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.con
            .rpush::<_, _, ()>(self.keys.dead(), entries)
            .await
            .map_err(Error::redis("restoring dead-letter index entries"))
    }

    /// Removes entries from `{prefix}:redrive` once their messages are confirmed on the queue
    /// (or found already finished).
    pub async fn release(&mut self, entries: &[&str]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for entry in entries {
            pipe.lrem(self.keys.redrive(), 1, *entry).ignore();
        }
        pipe.query_async::<()>(&mut self.con)
            .await
            .map_err(Error::redis("clearing the redrive list"))
    }

    fn lost(&self) -> Error {
        Error::RedriveLease {
            reason: format!(
                "this run lost its lease on key prefix {} (it stalled for over {}s); what it took is in {} and the next `dispatcher redrive` re-publishes it",
                self.keys.prefix(),
                LEASE.as_secs(),
                self.keys.redrive()
            ),
        }
    }
}

fn lease_ms() -> u64 {
    LEASE.as_millis() as u64
}
