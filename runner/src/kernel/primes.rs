//! `primes`: how many primes are ≤ n, by a segmented sieve of Eratosthenes over odd numbers.
//!
//! Base primes up to √n are sieved once; then each segment (a fixed range of odd numbers, sized
//! to stay in L2 cache) is sieved and counted independently, in parallel.

use super::{KernelError, parse_input};
use rayon::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};

const KERNEL: &str = "primes";
/// The contract's ceiling on `n`.
pub const MAX_N: u64 = 10_000_000_000;
/// Odd numbers per segment (one byte each).
const SEGMENT: u64 = 1 << 18;

/// The kernel's input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Count primes ≤ n; at most 10^10.
    pub n: u64,
}

/// Runs the kernel on JSON input.
pub fn run(input: Value) -> Result<Value, KernelError> {
    let Input { n } = parse_input(KERNEL, input)?;
    if n > MAX_N {
        return Err(KernelError::BadInput {
            kernel: KERNEL,
            reason: format!("n={n} is over the limit of {MAX_N}"),
        });
    }
    Ok(json!({ "count": count_primes(n) }))
}

/// Number of primes ≤ n.
pub fn count_primes(n: u64) -> u64 {
    if n < 2 {
        return 0;
    }
    // Odd number 2j+1 has index j; index 0 (the number 1) is not prime and is skipped.
    let last = (n - 1) / 2;
    let base = odd_base_primes(n.isqrt());
    let segments = last.div_ceil(SEGMENT);
    let odd: u64 = (0..segments)
        .into_par_iter()
        .map_init(Vec::new, |buf, s| {
            let lo = 1 + s * SEGMENT;
            let hi = (lo + SEGMENT).min(last + 1);
            count_segment(buf, lo, hi, &base)
        })
        .sum();
    1 + odd
}

/// Counts the primes among odd numbers with indices in `lo..hi`.
fn count_segment(buf: &mut Vec<bool>, lo: u64, hi: u64, base: &[u64]) -> u64 {
    buf.clear();
    buf.resize((hi - lo) as usize, true);
    let top = 2 * (hi - 1) + 1;
    for &p in base.iter().take_while(|&&p| p * p <= top) {
        let first_value = 2 * lo + 1;
        let mut start = (p * p).max(first_value.div_ceil(p) * p);
        if start % 2 == 0 {
            start += p;
        }
        let mut j = (start - 1) / 2;
        while j < hi {
            buf[(j - lo) as usize] = false;
            j += p;
        }
    }
    buf.iter().filter(|&&is_prime| is_prime).count() as u64
}

/// Odd primes ≤ limit, by a plain sieve.
fn odd_base_primes(limit: u64) -> Vec<u64> {
    let limit = limit as usize;
    let mut composite = vec![false; limit + 1];
    let mut primes = Vec::new();
    for i in (3..=limit).step_by(2) {
        if !composite[i] {
            primes.push(i as u64);
            for k in (i * i..=limit).step_by(2 * i) {
                composite[k] = true;
            }
        }
    }
    primes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prime counts for every k <= limit, by trial division: slow but obviously right.
    fn naive_counts(limit: u64) -> Vec<u64> {
        let mut counts = Vec::with_capacity(limit as usize + 1);
        let mut count = 0;
        for k in 0..=limit {
            if k >= 2 && (2..=k.isqrt()).all(|d| k % d != 0) {
                count += 1;
            }
            counts.push(count);
        }
        counts
    }

    #[test]
    fn known_counts() {
        assert_eq!(count_primes(1_000_000), 78_498);
        assert_eq!(count_primes(10_000_000), 664_579);
    }

    #[test]
    fn small_n_match_trial_division_including_segment_edges() {
        let naive = naive_counts(SEGMENT * 2 + 3);
        for n in (0..200).chain([
            SEGMENT * 2 - 1,
            SEGMENT * 2,
            SEGMENT * 2 + 1,
            SEGMENT * 2 + 3,
        ]) {
            assert_eq!(count_primes(n), naive[n as usize], "n={n}");
        }
    }

    #[test]
    fn n_over_the_limit_is_rejected() {
        assert!(
            run(json!({"n": MAX_N + 1}))
                .unwrap_err()
                .to_string()
                .contains("over the limit")
        );
        assert!(run(json!({"n": "ten"})).is_err());
    }
}
