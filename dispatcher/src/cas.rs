//! Compare-and-set on a batch: a step is applied only if the batch is still in the generation
//! the step was decided from.
//!
//! Every change a dispatcher makes to an open batch (launch, adopt, settle, split, retry,
//! dead-letter) bumps its `gen` field in the same atomic script that checks it. Two
//! dispatchers that decide the same step from the same observation therefore apply it once:
//! the second finds a newer generation and does nothing ([`Applied::Stale`]), then decides
//! again from what it now sees. A launch also checks the shared in-flight cap
//! (`{prefix}:batches:running`) in the same script, so `MAX_JOBS_IN_FLIGHT` holds across every
//! dispatcher.
//!
//! A step is a list of plain Redis commands ([`Step::command`]) run by one Lua script after
//! its checks. Lua scripts run atomically, so a crash leaves all of a step or none of it.
//! sluice uses one Redis (not Redis Cluster), so a step may touch any of its keys.

use sluice_contract::record::{ARGS_PER_RESULT, WRITE_RESULTS_BODY};
use std::sync::LazyLock;

/// The checks, then the commands; shared by both scripts. `base` is the ARGV index before the
/// step's own arguments: expected generation, running set, cap, then the commands.
const CHECK_AND_RUN: &str = r"
local gen = redis.call('HGET', batch, 'gen') or ''
if gen ~= ARGV[base + 1] then return 0 end
local cap = tonumber(ARGV[base + 3])
if cap > 0 and redis.call('SCARD', ARGV[base + 2]) >= cap then return 2 end
local i = base + 4
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
";

/// A step on its own: ARGV[1] is the batch hash, then the step's arguments.
static STEP: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "local batch, base = ARGV[1], 1\n{CHECK_AND_RUN}\nreturn 1\n"
    ))
});

/// A step that also writes results, each once (the dead-letter step): KEYS and the first ARGV
/// are the result write's ([`sluice_contract::record::ResultWrite`]), the step's arguments
/// follow them.
static STEP_WITH_RESULTS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "local batch, base = KEYS[3], 3 + (#KEYS - 3) * {ARGS_PER_RESULT}\n{CHECK_AND_RUN}\n{WRITE_RESULTS_BODY}\nreturn 1\n"
    ))
});

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Done.
    Yes,
    /// Not done: the batch is no longer in the expected generation.
    Stale,
    /// Not done: the in-flight cap is reached.
    Full,
}

/// Redis commands to apply together, if the batch is still in `expected` generation.
#[derive(Debug, Clone)]
pub struct Step {
    batch_key: String,
    expected: String,
    running_key: String,
    cap: usize,
    commands: Vec<Vec<u8>>,
}

/// The longest run of values one command in a step passes to Lua's `unpack`, far below its
/// stack limit (a long list of frames is pushed in several commands).
pub const MAX_VALUES: usize = 1000;

impl Step {
    /// A step on the batch at `batch_key`, applied only while its `gen` is `expected` (empty:
    /// the batch must not exist yet).
    pub fn new(batch_key: String, expected: &str) -> Self {
        Self {
            batch_key,
            expected: expected.to_owned(),
            running_key: String::new(),
            cap: 0,
            commands: Vec::new(),
        }
    }

    /// Applied only while fewer than `cap` batches are in the running set `running_key`.
    #[must_use]
    pub fn under_cap(mut self, running_key: String, cap: usize) -> Self {
        self.running_key = running_key;
        self.cap = cap;
        self
    }

    /// Appends a command (name first).
    pub fn command<I, A>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = A>,
        A: AsRef<[u8]>,
    {
        let start = self.commands.len();
        self.commands.push(Vec::new());
        self.commands
            .extend(args.into_iter().map(|a| a.as_ref().to_vec()));
        let n = self.commands.len() - start - 1;
        self.commands[start] = n.to_string().into_bytes();
        self
    }

    fn push_tail(&self, invocation: &mut redis::ScriptInvocation<'_>) {
        invocation
            .arg(&self.expected)
            .arg(&self.running_key)
            .arg(self.cap);
        for part in &self.commands {
            invocation.arg(&part[..]);
        }
    }

    /// The script call for this step alone.
    pub fn invocation(&self) -> redis::ScriptInvocation<'static> {
        let mut invocation = STEP.prepare_invoke();
        invocation.arg(&self.batch_key);
        self.push_tail(&mut invocation);
        invocation
    }

    /// The script call for this step with a result write's KEYS and ARGV first.
    pub fn invocation_with_results<K, A>(
        &self,
        keys: &[K],
        args: &[A],
    ) -> redis::ScriptInvocation<'static>
    where
        K: redis::ToRedisArgs,
        A: redis::ToRedisArgs,
    {
        let mut invocation = STEP_WITH_RESULTS.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        self.push_tail(&mut invocation);
        invocation
    }
}

/// What the scripts return.
pub fn applied(code: i64) -> Applied {
    match code {
        1 => Applied::Yes,
        2 => Applied::Full,
        _ => Applied::Stale,
    }
}
