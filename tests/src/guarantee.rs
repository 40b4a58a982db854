//! The reliability guarantee, checked message by message: every published message ends with
//! exactly one result record and exactly one results-stream entry. Each fault test records a
//! row of figures in `target/reliability.tsv`; `make test` prints them as a table.

use crate::TestEnv;
use anyhow::Result;
use redis::AsyncCommands;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::Duration;

/// One fault test's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figures {
    /// Messages published.
    pub messages: usize,
    /// Messages without a result.
    pub lost: usize,
    /// Results or stream entries beyond one per message.
    pub duplicated: usize,
    /// Messages that ended `dead`.
    pub dead: usize,
}

impl TestEnv {
    /// Waits up to `timeout` for every id's result, then counts lost, duplicated and dead.
    pub async fn figures(&self, ids: &[String], timeout: Duration) -> Result<Figures> {
        // A timeout is not an error here: what is missing is counted as lost.
        let _ = self.wait_for_results(ids, timeout).await;
        let mut con = self.redis().await?;
        let stream_key = format!("{}:results", self.prefix);
        let mut entries: HashMap<String, usize> = HashMap::new();
        let mut start = "-".to_owned();
        loop {
            let reply: redis::streams::StreamRangeReply =
                con.xrange_count(&stream_key, &start, "+", 5_000).await?;
            let Some(last) = reply.ids.last().map(|e| e.id.clone()) else {
                break;
            };
            for entry in &reply.ids {
                let id: String = entry.get("id").unwrap_or_default();
                *entries.entry(id).or_default() += 1;
            }
            start = format!("({last}");
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hget(format!("{}:result:{id}", self.prefix), "status");
        }
        let statuses: Vec<Option<String>> = pipe.query_async(&mut con).await?;
        let known: HashSet<&String> = ids.iter().collect();
        // Lost: no result, or no stream entry announcing it.
        let lost = ids
            .iter()
            .zip(&statuses)
            .filter(|(id, status)| status.is_none() || !entries.contains_key(*id))
            .count();
        let dead = statuses
            .iter()
            .filter(|s| s.as_deref() == Some("dead"))
            .count();
        // Duplicated: a second entry for a message, or an entry under an id nobody published
        // (a message that got a second id).
        let duplicated: usize = entries
            .iter()
            .map(|(id, n)| if known.contains(id) { n - 1 } else { *n })
            .sum();
        Ok(Figures {
            messages: ids.len(),
            lost,
            duplicated,
            dead,
        })
    }
}

/// Appends a row to `target/reliability.tsv` and prints it.
pub fn record(fault: &str, injected: usize, figures: &Figures) {
    let row = format!(
        "{fault}\t{}\t{injected}\t{}\t{}\t{}\n",
        figures.messages, figures.lost, figures.duplicated, figures.dead
    );
    print!("reliability: {row}");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/reliability.tsv");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = file.write_all(row.as_bytes());
    }
}
