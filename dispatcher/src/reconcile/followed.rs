//! The Jobs this dispatcher follows: what its launcher observes of them, by batch and the
//! generation the batch had when this dispatcher launched or adopted it.
//!
//! This is an observation, not state: a restart loses it and the batches are adopted again
//! from Redis; an entry whose generation no longer matches the batch (another dispatcher took
//! it over) is dropped when it is next looked at.

use super::decide::Observation;
use crate::launcher::Outcome;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One followed Job.
#[derive(Debug)]
struct Entry {
    generation: String,
    started: Instant,
    /// The outcome, once the launcher reported it, with how long the Job took.
    ended: Option<(Outcome, Duration)>,
}

/// The followed Jobs, shared by the consumer's launches, the follow tasks and the reconciler.
#[derive(Debug, Default)]
pub struct Followed {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Followed {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Single inserts, updates and removes: a panic cannot leave an entry half-written.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts following `batch` at generation `generation` (before the step that makes it so is
    /// applied, so no pass sees the batch as unfollowed in between).
    pub fn start(&self, batch: &str, generation: &str) {
        self.lock().insert(
            batch.to_owned(),
            Entry {
                generation: generation.to_owned(),
                started: Instant::now(),
                ended: None,
            },
        );
    }

    /// Records the Job's outcome; `false` if the batch is no longer followed at `generation`.
    pub fn ended(&self, batch: &str, generation: &str, outcome: Outcome) -> bool {
        match self.lock().get_mut(batch) {
            Some(entry) if entry.generation == generation => {
                let lasted = entry.started.elapsed();
                entry.ended = Some((outcome, lasted));
                true
            }
            _ => false,
        }
    }

    /// Stops following `batch`.
    pub fn stop(&self, batch: &str) {
        self.lock().remove(batch);
    }

    /// What is observed of `batch` in generation `generation`; an entry of another generation is
    /// dropped (the batch moved on without this dispatcher).
    pub fn observe(&self, batch: &str, generation: &str) -> Observation {
        let mut entries = self.lock();
        match entries.get(batch) {
            Some(entry) if entry.generation == generation => match &entry.ended {
                Some((outcome, _)) => Observation::Ended(outcome.clone()),
                None => Observation::Running,
            },
            Some(_) => {
                entries.remove(batch);
                Observation::NotFollowed
            }
            None => Observation::NotFollowed,
        }
    }

    /// How long the followed Job of `batch` took, once ended.
    pub fn lasted(&self, batch: &str) -> Option<Duration> {
        self.lock().get(batch)?.ended.as_ref().map(|(_, d)| *d)
    }

    /// How many Jobs are followed.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The followed batches whose Job has not ended, with their generation.
    pub fn unended(&self) -> Vec<(String, String)> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.ended.is_none())
            .map(|(id, e)| (id.clone(), e.generation.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_answers_only_for_its_generation() {
        let f = Followed::default();
        f.start("b", "2");
        assert_eq!(f.observe("b", "2"), Observation::Running);
        assert!(
            !f.ended("b", "1", Outcome::Succeeded),
            "an older follow's outcome"
        );
        assert!(f.ended("b", "2", Outcome::Succeeded));
        assert_eq!(f.observe("b", "2"), Observation::Ended(Outcome::Succeeded));
        assert!(f.lasted("b").is_some());
        assert_eq!(f.observe("b", "3"), Observation::NotFollowed, "taken over");
        assert!(f.is_empty(), "the stale entry is dropped");
    }
}
