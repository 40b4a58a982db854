//! `modsum`: the sum of `(i*i) % m` for `i` in `1..n`, the classic CPU-bound demo.
//!
//! Every index is visited (this is the benchmark's unit of work, so no closed form), but the
//! square is carried from one index to the next, `(i+1)^2 = i^2 + 2i + 1`, so the inner loop
//! has no division. Index ranges are split into chunks that rayon sums in parallel.

use super::{KernelError, parse_input};
use rayon::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};

const KERNEL: &str = "modsum";
/// About 0.3 ms of work: small enough that the last chunk leaves the other cores idle for
/// under 1% of a 10^8 run (with 2^20 it was ~1%, measurable on 2 cores), large enough that
/// rayon's per-chunk cost is noise.
const CHUNK: u64 = 1 << 18;
/// Below this modulus a chunk's residues and sums fit comfortably in u64.
const FAST_MODULUS_LIMIT: u64 = 1 << 32;

/// The kernel's input; a string input (plain-text body) means the defaults.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Exclusive upper bound of `i`.
    #[serde(default = "default_n")]
    pub n: u64,
    /// The modulus, > 0.
    #[serde(default = "default_m")]
    pub m: u64,
}

fn default_n() -> u64 {
    10_000_000
}
fn default_m() -> u64 {
    997
}

/// Runs the kernel on JSON input.
pub fn run(input: Value) -> Result<Value, KernelError> {
    let Input { n, m } = match input {
        Value::Null | Value::String(_) => Input {
            n: default_n(),
            m: default_m(),
        },
        object @ Value::Object(_) => parse_input(KERNEL, object)?,
        other => {
            let found = sluice_contract::envelope::json_type(&other);
            return Err(KernelError::BadInput {
                kernel: KERNEL,
                reason: format!("input must be an object or a string, got {found}"),
            });
        }
    };
    if m == 0 {
        return Err(KernelError::BadInput {
            kernel: KERNEL,
            reason: "m must be > 0".into(),
        });
    }
    let sum = modsum(n, m).ok_or_else(|| KernelError::Failed {
        kernel: KERNEL,
        reason: format!("the sum for n={n}, m={m} does not fit in u64"),
    })?;
    Ok(json!({ "sum": sum }))
}

/// Sum of `(i*i) % m` for `i` in `1..n`; `None` when it overflows u64.
pub fn modsum(n: u64, m: u64) -> Option<u64> {
    if n <= 1 || m == 1 {
        return Some(0);
    }
    let chunks = (n - 1).div_ceil(CHUNK);
    let total: u128 = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let start = 1 + c * CHUNK;
            let end = start.saturating_add(CHUNK).min(n);
            chunk_sum(start, end, m)
        })
        .sum();
    u64::try_from(total).ok()
}

fn chunk_sum(start: u64, end: u64, m: u64) -> u128 {
    if m > FAST_MODULUS_LIMIT {
        return (start..end).map(|i| mul_mod(i, i, m)).map(u128::from).sum();
    }
    // Invariants: sq = i^2 mod m, step = (2i + 1) mod m; both < m <= 2^32, so sums fit.
    let r = start % m;
    let mut sq = r * r % m;
    let mut step = (2 * r + 1) % m;
    let mut sum: u64 = 0;
    for _ in start..end {
        sum += sq;
        sq += step;
        if sq >= m {
            sq -= m;
        }
        step += 2;
        if step >= m {
            step -= m;
        }
    }
    u128::from(sum)
}

fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    (u128::from(a % m) * u128::from(b % m) % u128::from(m)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(n: u64, m: u64) -> u128 {
        (1..n).map(|i| u128::from(mul_mod(i, i, m))).sum()
    }

    #[test]
    fn default_input_gives_the_known_answer() {
        assert_eq!(modsum(10_000_000, 997), Some(4_979_993_748));
        assert_eq!(
            run(Value::String("anything".into())).unwrap(),
            json!({"sum": 4_979_993_748_u64})
        );
    }

    #[test]
    fn incremental_squares_match_the_naive_formula() {
        for (n, m) in [
            (0, 5),
            (1, 5),
            (2, 5),
            (100, 1),
            (100, 2),
            (5000, 7),
            (3_000_000, 65_537),
        ] {
            assert_eq!(
                modsum(n, m).map(u128::from),
                Some(naive(n, m)),
                "n={n} m={m}"
            );
        }
        let big_m = (1 << 40) + 15;
        assert_eq!(
            modsum(2000, big_m).map(u128::from),
            Some(naive(2000, big_m))
        );
    }

    #[test]
    fn bad_inputs_are_rejected_with_reasons() {
        assert!(matches!(
            run(json!({"m": 0})),
            Err(KernelError::BadInput { .. })
        ));
        let err = run(json!({"n": -5})).unwrap_err().to_string();
        assert!(err.contains("invalid value: integer `-5`"), "{err}");
        let err = run(json!({"n": 1e30})).unwrap_err().to_string();
        assert!(err.contains("invalid type: floating point"), "{err}");
        assert!(
            run(json!({"nn": 5}))
                .unwrap_err()
                .to_string()
                .contains("unknown field")
        );
        assert!(run(json!([1])).is_err());
    }

    #[test]
    fn overflowing_sums_are_errors() {
        // Sum of i^2 below 4e6 is about 2.1e19, past u64::MAX; no term wraps modulo m.
        assert!(matches!(
            run(json!({"n": 4_000_000, "m": u64::MAX})),
            Err(KernelError::Failed { .. })
        ));
    }
}
