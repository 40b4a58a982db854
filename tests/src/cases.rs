//! Messages of every kernel and every kind of bad input, with the result each must end with.

// Test data: a wrong expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use crate::Outgoing;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// `count` messages to the `echo` kernel, ids `{prefix}{i}`, each echoing its id; and the ids.
pub fn echoes(prefix: &str, count: usize) -> (Vec<String>, Vec<Outgoing>) {
    numbered(
        prefix,
        count,
        |id| json!({"id": id, "kernel": "echo", "input": id}),
    )
}

/// `count` messages to the `sleep` kernel of `ms` each, ids `{prefix}{i}`; and the ids.
pub fn sleepers(prefix: &str, count: usize, ms: u64) -> (Vec<String>, Vec<Outgoing>) {
    numbered(
        prefix,
        count,
        |id| json!({"id": id, "kernel": "sleep", "input": {"ms": ms}}),
    )
}

fn numbered(
    prefix: &str,
    count: usize,
    envelope: impl Fn(&str) -> Value,
) -> (Vec<String>, Vec<Outgoing>) {
    let ids: Vec<String> = (0..count).map(|i| format!("{prefix}{i}")).collect();
    let messages = ids.iter().map(|id| Outgoing::json(&envelope(id))).collect();
    (ids, messages)
}

/// One message and its expected result.
pub struct Case {
    /// The id its result is keyed by.
    pub id: String,
    /// What is published.
    pub message: Outgoing,
    /// What its result must be.
    pub expect: Expect,
}

/// `count` messages: every kind of bad input, plain text, an id with spaces, colons and
/// non-ASCII characters, then `modsum`, `pow`, `primes` and `echo` in turn.
pub fn mixed(count: usize) -> Vec<Case> {
    let mut cases = bad_inputs();
    cases.push((
        Outgoing::raw("plain-text", "run the classic job"),
        Expect::Output(json!({"sum": 4_979_993_748_u64})),
    ));
    let odd_id = "order 42: größe/ü";
    cases.push((
        Outgoing::raw(odd_id, r#"{"kernel":"echo","input":"odd id"}"#),
        Expect::Output(json!("odd id")),
    ));
    let good = count.saturating_sub(cases.len());
    cases.extend(good_inputs(good));
    cases
        .into_iter()
        .map(|(message, expect)| {
            let id = message.message_id.clone().unwrap_or_else(|| {
                serde_json::from_slice::<Value>(&message.body).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            });
            Case {
                id,
                message,
                expect,
            }
        })
        .collect()
}

/// What a message's result must be.
#[derive(Debug, Clone)]
pub enum Expect {
    /// `status=ok` with exactly this output.
    Output(Value),
    /// An ok `pow` result: checked against a brute-force search.
    /// `status=ok` with the minimal nonce for `data` at `difficulty`.
    Pow {
        /// The data hashed.
        data: String,
        /// The difficulty asked for.
        difficulty: u32,
    },
    /// `status=error` with this text in `error`.
    Error(&'static str),
}

fn modsum(n: u64, m: u64) -> u64 {
    (1..n).map(|i| (i % m) * (i % m) % m).sum()
}

fn prime_counts(limit: usize) -> Vec<u64> {
    let mut composite = vec![false; limit + 1];
    let mut counts = vec![0; limit + 1];
    let mut count = 0;
    for k in 2..=limit {
        if !composite[k] {
            count += 1;
            (k * k..=limit).step_by(k).for_each(|j| composite[j] = true);
        }
        counts[k] = count;
    }
    counts
}

fn zero_bits(digest: &[u8]) -> u32 {
    let mut bits = 0;
    for &b in digest {
        if b != 0 {
            return bits + b.leading_zeros();
        }
        bits += 8;
    }
    bits
}

fn pow_nonce(data: &str, difficulty: u32) -> u64 {
    (0..u64::MAX)
        .find(|n| zero_bits(&Sha256::digest(format!("{data}{n}"))) >= difficulty)
        .unwrap()
}

/// Every kind of bad input the contract promises an error result for, keyed by message id.
fn bad_inputs() -> Vec<(Outgoing, Expect)> {
    let deep = format!(
        "{{\"kernel\":\"echo\",\"input\":{}{}}}",
        "[".repeat(500),
        "]".repeat(500)
    );
    let cases: Vec<(&str, Vec<u8>, &'static str)> = vec![
        ("bad-empty", vec![], "empty message body"),
        ("bad-utf8", b"\xff\xfe\xfd".to_vec(), "not valid UTF-8"),
        ("bad-json", br#"{"kernel": "#.to_vec(), "not valid JSON"),
        ("bad-array", b"[1,2,3]".to_vec(), "got an array"),
        ("bad-number", b"42".to_vec(), "got a number"),
        ("bad-string", br#""hi""#.to_vec(), "got a string"),
        (
            "bad-kernel",
            br#"{"kernel":"teleport"}"#.to_vec(),
            "unknown kernel",
        ),
        (
            "bad-kernel-type",
            br#"{"kernel":7}"#.to_vec(),
            "`kernel` must be a string",
        ),
        (
            "bad-missing",
            br#"{"kernel":"pow","input":{"data":"x"}}"#.to_vec(),
            "missing field `difficulty`",
        ),
        (
            "bad-type",
            br#"{"kernel":"modsum","input":{"n":"ten"}}"#.to_vec(),
            "invalid type: string",
        ),
        (
            "bad-negative",
            br#"{"kernel":"modsum","input":{"n":-1}}"#.to_vec(),
            "invalid value: integer `-1`",
        ),
        (
            "bad-overflow",
            br#"{"kernel":"primes","input":{"n":18446744073709551616}}"#.to_vec(),
            "invalid type",
        ),
        (
            "bad-m-zero",
            br#"{"kernel":"modsum","input":{"m":0}}"#.to_vec(),
            "m must be > 0",
        ),
        (
            "bad-difficulty",
            br#"{"kernel":"pow","input":{"data":"x","difficulty":65}}"#.to_vec(),
            "over the maximum",
        ),
        (
            "bad-primes-n",
            br#"{"kernel":"primes","input":{"n":10000000001}}"#.to_vec(),
            "over the limit",
        ),
        (
            "bad-oversize",
            format!(r#"{{"kernel":"echo","input":"{}"}}"#, "x".repeat(5000)).into_bytes(),
            "exceeds MAX_MESSAGE_BYTES",
        ),
        ("bad-deep", deep.into_bytes(), "recursion limit"),
        ("bad-panic", br#"{"kernel":"panic"}"#.to_vec(), "panicked"),
        (
            "bad-unknown-field",
            br#"{"kernel":"primes","input":{"n":5,"x":1}}"#.to_vec(),
            "unknown field",
        ),
    ];
    cases
        .into_iter()
        .map(|(id, body, err)| (Outgoing::raw(id, body), Expect::Error(err)))
        .collect()
}

fn good_inputs(count: usize) -> Vec<(Outgoing, Expect)> {
    let primes = prime_counts(100_000);
    (0..count)
        .map(|i| {
            let id = format!("good-{i}");
            let i64 = i as u64;
            let (kernel, input, expect) = match i % 4 {
                0 => {
                    let (n, m) = (1_000 + i64 * 37 % 50_000, 2 + i64 % 1_000);
                    (
                        "modsum",
                        json!({"n": n, "m": m}),
                        Expect::Output(json!({"sum": modsum(n, m)})),
                    )
                }
                1 => {
                    let (data, difficulty) = (format!("d{i}"), (i % 9) as u32);
                    (
                        "pow",
                        json!({"data": data, "difficulty": difficulty}),
                        Expect::Pow { data, difficulty },
                    )
                }
                2 => {
                    let n = i * 97 % 100_000;
                    (
                        "primes",
                        json!({"n": n}),
                        Expect::Output(json!({"count": primes[n]})),
                    )
                }
                _ => {
                    let input = json!({"i": i, "tags": ["a", "b"], "nested": {"ok": true}});
                    ("echo", input.clone(), Expect::Output(input))
                }
            };
            (
                Outgoing::json(&json!({"id": id, "kernel": kernel, "input": input})),
                expect,
            )
        })
        .collect()
}

impl Case {
    /// Asserts that `result` is what this case must end with.
    pub fn check(&self, result: &HashMap<String, String>) {
        let (id, expect) = (&self.id, &self.expect);
        match expect {
            Expect::Output(value) => {
                assert_eq!(
                    result.get("status").map(String::as_str),
                    Some("ok"),
                    "{id}: {result:?}"
                );
                let output: Value = serde_json::from_str(&result["output"]).unwrap();
                assert_eq!(&output, value, "{id}");
            }
            Expect::Pow { data, difficulty } => {
                let output: Value = serde_json::from_str(&result["output"]).unwrap();
                assert_eq!(
                    output["nonce"],
                    json!(pow_nonce(data, *difficulty)),
                    "{id}: nonce not minimal"
                );
            }
            Expect::Error(text) => {
                assert_eq!(
                    result.get("status").map(String::as_str),
                    Some("error"),
                    "{id}: {result:?}"
                );
                assert!(
                    result["error"].contains(text),
                    "{id}: expected {text:?} in {:?}",
                    result["error"]
                );
            }
        }
    }
}
