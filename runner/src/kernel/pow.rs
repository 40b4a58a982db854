//! `pow`: proof of work. The smallest nonce such that SHA-256(data ‖ decimal(nonce)) starts
//! with at least `difficulty` zero bits.
//!
//! Nonces are searched in windows; inside a window, chunks run in parallel and the smallest hit
//! wins, so the answer is the same as a sequential search whatever the thread count.

use super::{KernelError, parse_input};
use rayon::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

const KERNEL: &str = "pow";
/// The contract's ceiling: a SHA-256 prefix longer than 64 bits is never asked for.
pub const MAX_DIFFICULTY: u32 = 64;
const CHUNK: u64 = 4096;
/// Easy searches finish in the first few thousand nonces; don't pay for threads there.
const SEQUENTIAL_PREFIX: u64 = 4 * CHUNK;

/// The kernel's input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The bytes hashed before the nonce.
    pub data: String,
    /// Required leading zero bits, at most 64.
    pub difficulty: u32,
}

/// Runs the kernel on JSON input.
pub fn run(input: Value) -> Result<Value, KernelError> {
    let Input { data, difficulty } = parse_input(KERNEL, input)?;
    if difficulty > MAX_DIFFICULTY {
        return Err(KernelError::BadInput {
            kernel: KERNEL,
            reason: format!("difficulty {difficulty} is over the maximum of {MAX_DIFFICULTY}"),
        });
    }
    let (nonce, digest) = solve(data.as_bytes(), difficulty);
    Ok(json!({ "nonce": nonce, "hash": hex(&digest) }))
}

/// Finds the smallest nonce meeting `difficulty`, with its digest.
pub fn solve(data: &[u8], difficulty: u32) -> (u64, [u8; 32]) {
    let mut prefix = Sha256::new();
    prefix.update(data);
    if let Some(hit) = search(&prefix, 0, SEQUENTIAL_PREFIX, difficulty) {
        return hit;
    }
    let window = CHUNK * 64 * rayon::current_num_threads() as u64;
    let mut start = SEQUENTIAL_PREFIX;
    loop {
        let chunks = window / CHUNK;
        let hit = (0..chunks)
            .into_par_iter()
            .filter_map(|c| {
                let lo = start.saturating_add(c * CHUNK);
                search(&prefix, lo, lo.saturating_add(CHUNK), difficulty)
            })
            .min_by_key(|(nonce, _)| *nonce);
        if let Some(hit) = hit {
            return hit;
        }
        start = start.saturating_add(window);
    }
}

fn search(prefix: &Sha256, lo: u64, hi: u64, difficulty: u32) -> Option<(u64, [u8; 32])> {
    let mut digits = itoa::Buffer::new();
    (lo..hi).find_map(|nonce| {
        let mut hasher = prefix.clone();
        hasher.update(digits.format(nonce).as_bytes());
        let digest: [u8; 32] = hasher.finalize().into();
        (leading_zero_bits(&digest) >= difficulty).then_some((nonce, digest))
    })
}

/// Number of leading zero bits of a digest.
pub fn leading_zero_bits(digest: &[u8]) -> u32 {
    let mut bits = 0;
    for &byte in digest {
        if byte == 0 {
            bits += 8;
        } else {
            return bits + byte.leading_zeros();
        }
    }
    bits
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_force(data: &[u8], difficulty: u32) -> u64 {
        (0..u64::MAX)
            .find(|n: &u64| {
                let digest = Sha256::digest([data, n.to_string().as_bytes()].concat());
                leading_zero_bits(&digest) >= difficulty
            })
            .unwrap()
    }

    #[test]
    fn nonce_is_the_smallest_for_small_difficulties() {
        for difficulty in 0..=14 {
            let (nonce, digest) = solve(b"sluice", difficulty);
            assert_eq!(
                nonce,
                brute_force(b"sluice", difficulty),
                "difficulty {difficulty}"
            );
            assert!(leading_zero_bits(&digest) >= difficulty);
        }
    }

    #[test]
    fn parallel_windows_find_the_same_nonce_as_a_sequential_search() {
        // Difficulty 18 needs ~260k hashes on average, well past the sequential prefix.
        let (nonce, _) = solve(b"window", 18);
        assert_eq!(nonce, brute_force(b"window", 18));
        assert!(nonce > SEQUENTIAL_PREFIX);
    }

    #[test]
    fn output_is_nonce_and_hex_hash() {
        let out = run(json!({"data": "abc", "difficulty": 0})).unwrap();
        let expected = hex(&Sha256::digest(b"abc0"));
        assert_eq!(out, json!({"nonce": 0, "hash": expected}));
    }

    #[test]
    fn difficulty_over_64_and_missing_fields_are_rejected() {
        assert!(
            run(json!({"data": "a", "difficulty": 65}))
                .unwrap_err()
                .to_string()
                .contains("over the maximum")
        );
        assert!(
            run(json!({"data": "a"}))
                .unwrap_err()
                .to_string()
                .contains("missing field `difficulty`")
        );
        assert!(run(json!({"data": 1, "difficulty": 1})).is_err());
    }

    #[test]
    fn leading_zero_bits_counts_across_bytes() {
        assert_eq!(leading_zero_bits(&[0, 0, 0b0001_0000]), 19);
        assert_eq!(leading_zero_bits(&[0; 4]), 32);
    }
}
