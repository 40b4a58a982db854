//! `textstats`: statistics of a text, the kernel of this example runner.
//!
//! A plain function from a typed input to a typed output, with no sluice type in sight:
//! `main.rs` registers it on `sluice_runner::Runner`, which does everything else.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// A message's input: `{"text": "...", "top": 3}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The text to measure.
    pub text: String,
    /// How many of the most frequent words to list.
    #[serde(default = "default_top")]
    pub top: usize,
}

fn default_top() -> usize {
    3
}

/// What the kernel answers.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Lines, as `str::lines` counts them.
    pub lines: usize,
    /// Whitespace-separated words.
    pub words: usize,
    /// Unicode scalar values.
    pub chars: usize,
    /// The most frequent words (lower-cased, letters and digits only), most frequent first,
    /// ties in alphabetical order.
    pub top_words: Vec<(String, usize)>,
    /// SHA-256 of the text's UTF-8 bytes, hex.
    pub sha256: String,
}


/// Measures `input.text`; refuses a `top` above 100 with a clear error.
///
/// # Errors
/// `top` is more than 100.
pub fn textstats(input: Input) -> Result<Stats, String> {
    if input.top > 100 {
        return Err(format!("top must be at most 100, got {}", input.top));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for word in input.text.split_whitespace() {
        let word: String = word
            .chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect();
        if !word.is_empty() {
            *counts.entry(word).or_default() += 1;
        }
    }
    let mut top_words: Vec<(String, usize)> = counts.into_iter().collect();
    top_words.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top_words.truncate(input.top);
    let digest = Sha256::digest(input.text.as_bytes());
    Ok(Stats {
        lines: input.text.lines().count(),
        words: input.text.split_whitespace().count(),
        chars: input.text.chars().count(),
        top_words,
        sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lines_words_and_the_most_frequent_words() {
        let stats = textstats(Input {
            text: "The cat.\nthe dog, THE end".into(),
            top: 2,
        })
        .unwrap();
        assert_eq!((stats.lines, stats.words, stats.chars), (2, 6, 25));
        assert_eq!(stats.top_words, [("the".to_owned(), 3), ("cat".to_owned(), 1)]);
        assert_eq!(stats.sha256.len(), 64);
    }

    #[test]
    fn a_top_above_100_is_refused() {
        let refused = textstats(Input {
            text: String::new(),
            top: 101,
        });
        assert_eq!(refused, Err("top must be at most 100, got 101".into()));
    }
}
