//! The kernel registry: each message's kernel is looked up here by name.
//!
//! Typed kernels registered through [`Runner::kernel`](crate::Runner::kernel) and exec kernels
//! from `KERNELS_FILE` ([`crate::exec`]) sit behind the same [`Kernel`] trait, so the rest of
//! the runner (claims, rayon, results, exit codes) does not know which is which.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::marker::PhantomData;
use std::sync::Arc;

/// Why a kernel produced no output. All but [`KernelError::Unavailable`] become
/// `status=error` results.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// No kernel of that name (test kernels count only when compiled in and enabled).
    #[error("unknown kernel {name:?} (known: {known})")]
    Unknown {
        /// The name the message asked for (at most 64 characters of it).
        name: String,
        /// The kernels this runner has, comma-separated.
        known: String,
    },
    /// The input does not fit the kernel.
    #[error("invalid input for kernel {kernel}: {reason}")]
    BadInput {
        /// The kernel.
        kernel: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The input does not deserialise into a registered kernel's input type.
    #[error("invalid input for kernel {kernel}: {reason}")]
    Input {
        /// The kernel.
        kernel: String,
        /// serde's message.
        reason: String,
    },
    /// The computation itself cannot produce a valid output (such as an overflow).
    #[error("kernel {kernel} failed: {reason}")]
    Failed {
        /// The kernel.
        kernel: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A registered kernel's own error, or an exec worker's failure on this message, as text.
    #[error("{0}")]
    Message(String),
    /// The kernel cannot run at all (its command cannot be started): an outage, not this
    /// message's fault. The runner stops with an outage exit code.
    #[error("kernel {kernel} cannot run: {reason}")]
    Unavailable {
        /// The kernel.
        kernel: String,
        /// Why.
        reason: String,
        /// Its program was not found (exit 127) rather than not runnable (exit 126).
        not_found: bool,
    },
}

/// A kernel as the runner calls it: a message's id and JSON input in, JSON output out.
pub(crate) trait Kernel: Send + Sync {
    /// Runs one message. May be called from every rayon thread at once.
    fn call(&self, id: &str, input: Value) -> Result<Value, KernelError>;

    /// The batch is over: release what the kernel holds (worker processes).
    fn finish(&self) {}
}

/// A typed function as a [`Kernel`]: serde does the input and output.
struct Typed<F, I, O, E> {
    name: String,
    f: F,
    types: PhantomData<fn(I) -> Result<O, E>>,
}

impl<F, I, O, E> Kernel for Typed<F, I, O, E>
where
    F: Fn(I) -> Result<O, E> + Send + Sync,
    I: DeserializeOwned,
    O: Serialize,
    E: Display,
{
    fn call(&self, _id: &str, input: Value) -> Result<Value, KernelError> {
        let input = serde_json::from_value(input).map_err(|e| KernelError::Input {
            kernel: self.name.clone(),
            reason: e.to_string(),
        })?;
        let output = (self.f)(input).map_err(|e| KernelError::Message(e.to_string()))?;
        serde_json::to_value(output).map_err(|e| {
            KernelError::Message(format!("kernel {}: its output is not JSON: {e}", self.name))
        })
    }
}

/// The kernels a runner knows, by name.
#[derive(Default, Clone)]
pub(crate) struct Kernels {
    by_name: BTreeMap<String, Arc<dyn Kernel>>,
    /// Known only with `SLUICE_TEST_KERNELS=1`.
    test_only: BTreeSet<String>,
}

impl Kernels {
    /// Adds a typed function under `name`.
    pub fn typed<F, I, O, E>(&mut self, name: String, f: F) -> Result<(), String>
    where
        F: Fn(I) -> Result<O, E> + Send + Sync + 'static,
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
        E: Display + 'static,
    {
        let kernel = Typed {
            name: name.clone(),
            f,
            types: PhantomData,
        };
        self.add(name, Arc::new(kernel))
    }

    /// Adds `kernel` under `name`; a name can be taken once.
    pub fn add(&mut self, name: String, kernel: Arc<dyn Kernel>) -> Result<(), String> {
        if self.by_name.contains_key(&name) {
            return Err(format!("kernel {name} is registered twice"));
        }
        self.by_name.insert(name, kernel);
        Ok(())
    }

    /// Marks `name` as a test kernel.
    pub fn test_only(&mut self, name: &str) {
        self.test_only.insert(name.to_owned());
    }

    /// Whether `name` is taken.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The kernel `name`, or a clear error naming the known ones.
    pub fn get(&self, name: &str, test_kernels: bool) -> Result<&dyn Kernel, KernelError> {
        let visible = |n: &str| test_kernels || !self.test_only.contains(n);
        match self.by_name.get(name) {
            Some(kernel) if visible(name) => Ok(kernel.as_ref()),
            _ => Err(KernelError::Unknown {
                name: name.chars().take(64).collect(),
                known: self
                    .by_name
                    .keys()
                    .filter(|n| visible(n))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Ends the batch for every kernel.
    pub fn finish(&self) {
        for kernel in self.by_name.values() {
            kernel.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(serde::Deserialize)]
    struct Words {
        text: String,
    }

    fn registry() -> Kernels {
        let mut kernels = Kernels::default();
        kernels
            .typed("count".into(), |w: Words| {
                if w.text.is_empty() {
                    Err("empty text")
                } else {
                    Ok(w.text.split_whitespace().count())
                }
            })
            .unwrap();
        kernels
            .typed("hidden".into(), |v: Value| Ok::<_, String>(v))
            .unwrap();
        kernels.test_only("hidden");
        kernels
    }

    #[test]
    fn typed_kernels_get_serde_input_and_errors_as_text() {
        let k = registry();
        let count = k.get("count", false).unwrap();
        assert_eq!(count.call("a", json!({"text": "a b c"})), Ok(json!(3)));
        assert_eq!(
            count.call("a", json!({"text": ""})),
            Err(KernelError::Message("empty text".into()))
        );
        let bad = count.call("a", json!({"txt": 1})).unwrap_err().to_string();
        assert!(
            bad.starts_with("invalid input for kernel count: missing field `text`"),
            "{bad}"
        );
    }

    #[test]
    fn unknown_names_list_what_is_known_and_test_kernels_hide_unless_enabled() {
        let k = registry();
        let unknown = k.get("hidden", false).err().unwrap().to_string();
        assert_eq!(unknown, "unknown kernel \"hidden\" (known: count)");
        assert!(k.get("hidden", true).is_ok());
        let mut twice = registry();
        assert!(
            twice
                .typed("count".into(), |v: Value| Ok::<_, String>(v))
                .is_err()
        );
    }
}
