//! Every Redis key sluice reads or writes, under one configurable prefix (`KEY_PREFIX`).

/// Builds key names under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (default `sluice`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}:result:{id}`: one hash per finished message.
    pub fn result(&self, id: &str) -> String {
        format!("{}:result:{id}", self.prefix)
    }

    /// `{prefix}:results`: the stream of finished messages.
    pub fn results_stream(&self) -> String {
        format!("{}:results", self.prefix)
    }

    /// `{prefix}:batch:{batch_id}`: the batch's state hash.
    pub fn batch(&self, batch_id: &str) -> String {
        format!("{}:batch:{batch_id}", self.prefix)
    }

    /// `{prefix}:batch:{batch_id}:messages`: the staged messages, a list of [`crate::StagedMessage`] frames.
    pub fn batch_messages(&self, batch_id: &str) -> String {
        format!("{}:batch:{batch_id}:messages", self.prefix)
    }

    /// `{prefix}:batch:{batch_id}:working`: ids the runner recorded before working on them;
    /// those still without a result when it dies are the crash's suspects.
    pub fn batch_working(&self, batch_id: &str) -> String {
        format!("{}:batch:{batch_id}:working", self.prefix)
    }

    /// `{prefix}:batches:open`: ids of batches staged but not yet finished, for recovery and status.
    pub fn open_batches(&self) -> String {
        format!("{}:batches:open", self.prefix)
    }

    /// `{prefix}:batches:running`: ids of open batches whose Job is launched; its size is the
    /// number of Jobs in flight across every dispatcher, held under `MAX_JOBS_IN_FLIGHT` by the
    /// scripts that launch a batch.
    pub fn running_batches(&self) -> String {
        format!("{}:batches:running", self.prefix)
    }

    /// `{prefix}:dispatcher:{id}`: a dispatcher's lease, set with an expiry and renewed while it
    /// runs; the open batches of a dispatcher whose lease is gone are adopted by another.
    pub fn dispatcher_lease(&self, id: &str) -> String {
        format!("{}:dispatcher:{id}", self.prefix)
    }

    /// `{prefix}:dead`: envelopes given up on.
    pub fn dead(&self) -> String {
        format!("{}:dead", self.prefix)
    }

    /// `{prefix}:redrive`: dead letters `dispatcher redrive` has taken from `{prefix}:dead` and
    /// not yet seen confirmed on the queue; the next run re-publishes any left here.
    pub fn redrive(&self) -> String {
        format!("{}:redrive", self.prefix)
    }

    /// `{prefix}:redrive:lock`: the lease of the `dispatcher redrive` running now, if any.
    pub fn redrive_lock(&self) -> String {
        format!("{}:redrive:lock", self.prefix)
    }

    /// `{prefix}:runner`: whether runners can do their work, as the dispatcher's circuit
    /// breaker last saw it (`state` healthy | unhealthy, `reason`, `since` in Unix ms).
    pub fn runner_health(&self) -> String {
        format!("{}:runner", self.prefix)
    }

    /// `{prefix}:stats`: counters (received, batches, ok, error, dead, redriven).
    pub fn stats(&self) -> String {
        format!("{}:stats", self.prefix)
    }
}

impl Default for Keys {
    fn default() -> Self {
        Self::new("sluice")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_contract() {
        let k = Keys::new("p");
        assert_eq!(k.result("a:b c"), "p:result:a:b c");
        assert_eq!(k.results_stream(), "p:results");
        assert_eq!(k.batch("b1"), "p:batch:b1");
        assert_eq!(k.batch_messages("b1"), "p:batch:b1:messages");
        assert_eq!(k.batch_working("b1"), "p:batch:b1:working");
        assert_eq!(k.dead(), "p:dead");
        assert_eq!(k.redrive(), "p:redrive");
        assert_eq!(k.redrive_lock(), "p:redrive:lock");
        assert_eq!(k.stats(), "p:stats");
        assert_eq!(k.runner_health(), "p:runner");
        assert_eq!(k.running_batches(), "p:batches:running");
        assert_eq!(k.dispatcher_lease("d1"), "p:dispatcher:d1");
    }
}
