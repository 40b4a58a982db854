//! Dispatchers' leases (`{prefix}:dispatcher:{id}`, [`crate::reconcile::lease`]).

use super::Stager;
use crate::error::{Error, Result};
use redis::AsyncCommands;
use sluice_contract::record::unix_millis;
use std::time::Duration;

impl Stager {
    /// Sets or renews dispatcher `id`'s lease for `ttl`. One attempt: the renewal loop is
    /// the retry, and a failure is what tells readiness that Redis is gone. A held lease is
    /// renewed by `PEXPIRE`, which a full Redis still takes, so a full Redis does not make
    /// every dispatcher look lost.
    pub async fn renew_lease(&self, id: &str, ttl: Duration) -> Result<()> {
        let key = self.keys.dispatcher_lease(id);
        let mut con = self.con.clone();
        let millis = ttl.as_millis().max(1) as u64;
        let failed = Error::redis("renewing the dispatcher's lease");
        let renewed: bool = con
            .pexpire(&key, i64::try_from(millis).unwrap_or(i64::MAX))
            .await
            .map_err(failed)?;
        if renewed {
            return Ok(());
        }
        redis::cmd("SET")
            .arg(&key)
            .arg(unix_millis())
            .arg("PX")
            .arg(millis)
            .query_async::<()>(&mut con)
            .await
            .map_err(|e| self.noted(e))
            .map_err(Error::redis("setting the dispatcher's lease"))
    }

    /// Gives up dispatcher `id`'s lease, so that others adopt its batches at once.
    pub async fn release_lease(&self, id: &str) -> Result<()> {
        let key = self.keys.dispatcher_lease(id);
        self.retry("releasing the dispatcher's lease", move |mut con| {
            let key = key.clone();
            async move { con.del(key).await }
        })
        .await
    }

    /// Whether each dispatcher's lease is held.
    pub async fn leases_held(&self, ids: &[&str]) -> Result<Vec<bool>> {
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.keys.dispatcher_lease(id))
            .collect();
        self.exist(&keys, "reading dispatcher leases").await
    }
}
