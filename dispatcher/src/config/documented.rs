//! Every variable the dispatcher and its runners read is documented in README.md. The names
//! come from the configuration's own serde field lists (what envy matches), never from a copy,
//! so a new setting without its README row fails here.

use super::{
    Batching, Broker, JobSettings, LocalSettings, Outages, Redis, Replicas, RunnerSettings, Service,
};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use sluice_contract::RunnerEnv;

/// A deserializer that only records the field names a struct asks for.
struct FieldNames<'a>(&'a mut Vec<&'static str>);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.extend(fields);
        Err(de::Error::custom("names taken"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The variables `T` reads, as envy names them.
fn variables<T: for<'de> Deserialize<'de>>() -> Vec<String> {
    let mut names = Vec::new();
    // The error is how the capture stops: the names are what it was for.
    let _ = T::deserialize(FieldNames(&mut names));
    names.iter().map(|n| n.to_uppercase()).collect()
}

/// The names in the first cell of README's table rows (`| `A`, `B` | default | meaning |`).
fn documented(readme: &str) -> Vec<&str> {
    readme
        .lines()
        .filter_map(|line| line.strip_prefix("| "))
        .filter_map(|row| row.split(" | ").next())
        .flat_map(|cell| cell.split('`').skip(1).step_by(2))
        .collect()
}

#[test]
fn every_variable_the_dispatcher_or_a_runner_reads_has_a_readme_row() {
    let readme = include_str!("../../../README.md");
    let rows = documented(readme);
    let read: Vec<String> = [
        variables::<Broker>(),
        variables::<Redis>(),
        variables::<Batching>(),
        variables::<JobSettings>(),
        variables::<LocalSettings>(),
        variables::<Outages>(),
        variables::<RunnerSettings>(),
        variables::<Replicas>(),
        variables::<Service>(),
        variables::<RunnerEnv>(),
    ]
    .concat();
    assert!(read.len() > 50, "the field lists were read: {read:?}");
    let missing: Vec<&String> = read
        .iter()
        .filter(|name| !rows.contains(&name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "read but not in README's tables: {missing:?}"
    );
}
