//! Redis's memory, as the dispatcher, the runner and `dispatcher status` see it: a write refused
//! because `maxmemory` is reached, and what `INFO memory` says.
//!
//! Under the `noeviction` policy sluice needs (an evicting Redis would drop staged batches),
//! Redis answers every command that may grow memory with `-OOM command not allowed when used
//! memory > 'maxmemory'` once it is full, a script's first write included; reads, deletes and
//! expiries still work. That refusal is an outage, never a verdict on a message: it is retried,
//! and whatever waits for it waits in RabbitMQ.

/// Whether Redis refused a command because `maxmemory` is reached (`-OOM …`), alone or as
/// one command of a pipeline.
pub fn is_full(e: &redis::RedisError) -> bool {
    e.code() == Some("OOM")
        || e.clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, error)| error.code() == "OOM"))
}

/// What `INFO memory` says about how full Redis is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    /// `used_memory`: bytes Redis has allocated.
    pub used: u64,
    /// `maxmemory`: the limit (0: none, Redis grows until the machine or container runs out).
    pub max: u64,
    /// `maxmemory_policy`: what Redis does at the limit (`noeviction`: refuse writes).
    pub policy: String,
}

impl Memory {
    /// Reads the fields sluice needs from an `INFO memory` reply (other fields are ignored,
    /// missing ones are 0 or empty).
    pub fn parse(info: &str) -> Self {
        let mut memory = Self::default();
        for line in info.lines() {
            let Some((field, value)) = line.trim_end().split_once(':') else {
                continue;
            };
            match field {
                "used_memory" => memory.used = value.parse().unwrap_or(0),
                "maxmemory" => memory.max = value.parse().unwrap_or(0),
                "maxmemory_policy" => value.clone_into(&mut memory.policy),
                _ => {}
            }
        }
        memory
    }

    /// Used memory as a percentage of `maxmemory`; `None` without a limit.
    pub fn percent(&self) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)] // a percentage: bytes beyond 2^52 don't matter
        (self.max > 0).then(|| self.used as f64 * 100.0 / self.max as f64)
    }

    /// Whether Redis evicts keys at its limit instead of refusing writes: staged batches and
    /// results could then vanish.
    pub fn evicts(&self) -> bool {
        self.max > 0 && !self.policy.is_empty() && self.policy != "noeviction"
    }
}

/// Bytes in the units people read (`3.6 MB`), for logs and `dispatcher status`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    #[allow(clippy::cast_precision_loss)] // one decimal shown
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_memory_is_read_for_the_fields_that_matter() {
        let info = "# Memory\r\nused_memory:914696\r\nused_memory_human:893.26K\r\n\
                    maxmemory:2097152\r\nmaxmemory_human:2.00M\r\nmaxmemory_policy:noeviction\r\n";
        let memory = Memory::parse(info);
        assert_eq!(
            memory,
            Memory {
                used: 914_696,
                max: 2_097_152,
                policy: "noeviction".into()
            }
        );
        assert!((memory.percent().unwrap_or(0.0) - 43.6).abs() < 0.1);
        assert!(!memory.evicts());
    }

    #[test]
    fn no_limit_has_no_percentage_and_an_evicting_policy_is_told() {
        let memory = Memory::parse("used_memory:10\nmaxmemory:0\nmaxmemory_policy:allkeys-lru\n");
        assert_eq!(memory.percent(), None);
        assert!(!memory.evicts(), "without a limit nothing is evicted");
        let limited = Memory { max: 100, ..memory };
        assert!(limited.evicts());
    }

    #[test]
    fn a_refusal_for_memory_is_told_apart_from_other_errors() {
        let reply = |line: &str| {
            redis::parse_redis_value(format!("-{line}\r\n").as_bytes())
                .and_then(redis::Value::extract_error)
                .expect_err("an error reply")
        };
        let oom = "OOM command not allowed when used memory > 'maxmemory'.";
        assert!(is_full(&reply(oom)));
        assert!(is_full(&reply(&format!(
            "{oom} script: 1f2e, on @user_script:1."
        ))));
        assert!(!is_full(&reply("ERR syntax error")));
        // A pipeline's refusal (the runner's) cannot be built outside the driver: the
        // redis_full suite meets it for real.
        let io = redis::RedisError::from(std::io::Error::other("reset"));
        assert!(!is_full(&io));
    }

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3_600_000), "3.6 MB");
        assert_eq!(human_bytes(402_653_184), "402.7 MB");
    }
}
