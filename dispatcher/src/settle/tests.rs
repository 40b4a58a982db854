use super::*;
use crate::reason::FailureKind;

fn message(id: &str) -> Unfinished {
    Unfinished {
        id: id.to_owned(),
        message: StagedMessage {
            message_id: Some(id.to_owned()),
            fallback_id: format!("f-{id}"),
            reply_to: None,
            correlation_id: None,
            dropped_size: None,
            body: id.as_bytes().to_vec(),
        },
    }
}

fn messages(ids: &[&str]) -> Vec<Unfinished> {
    ids.iter().map(|id| message(id)).collect()
}

fn working(runs: u64, ids: &[&str]) -> Attribution {
    Attribution {
        runs,
        working: ids.iter().map(|id| (*id).to_owned()).collect(),
    }
}

fn crash() -> Failure {
    Failure::new(
        FailureKind::BackoffLimitExceeded,
        "BackoffLimitExceeded: signal 6",
    )
}

fn ids(group: &[Unfinished]) -> Vec<&str> {
    group.iter().map(|u| u.id.as_str()).collect()
}

#[test]
fn a_failure_after_the_last_result_closes_the_batch_as_succeeded() {
    let plan = plan(&crash(), Vec::new(), &working(1, &["a"]));
    assert_eq!(
        plan,
        Plan::Close {
            state: BatchState::Succeeded,
            failure: Some(crash())
        }
    );
}

#[test]
fn an_outage_retries_every_unfinished_message_whole_even_with_suspects() {
    let outage = Failure::new(FailureKind::OutageExit, "PodFailurePolicy: exit code 69");
    let Plan::Retry { failure, messages } =
        plan(&outage, messages(&["a", "b"]), &working(1, &["a"]))
    else {
        panic!("an outage is retried whole");
    };
    assert_eq!(failure, outage, "an outage keeps its own reason");
    assert_eq!(ids(&messages), ["a", "b"]);
}

#[test]
fn a_crash_before_any_run_reached_the_batch_is_retried_as_an_outage() {
    let Plan::Retry { failure, .. } = plan(&crash(), messages(&["a"]), &working(0, &[])) else {
        panic!("no run reached the batch");
    };
    assert_eq!(failure.kind, FailureKind::BackoffLimitExceeded);
    assert!(
        failure
            .reason
            .ends_with("(its runner never reached the batch)")
    );
}

#[test]
fn a_crash_with_nothing_in_hand_is_retried_whole() {
    let Plan::Retry { failure, messages } =
        plan(&crash(), messages(&["a", "b"]), &working(2, &["done"]))
    else {
        panic!("no suspect");
    };
    assert!(failure.reason.ends_with("(with no message in hand)"));
    assert_eq!(messages.len(), 2);
}

#[test]
fn a_lone_suspect_is_dead_lettered() {
    let plan = plan(&crash(), messages(&["p"]), &working(3, &["p"]));
    assert_eq!(
        plan,
        Plan::DeadLetter {
            failure: crash(),
            message: message("p")
        }
    );
}

#[test]
fn suspects_are_halved_and_innocents_go_on_in_a_batch_of_their_own() {
    let Plan::Split { groups, .. } = plan(
        &crash(),
        messages(&["i1", "s1", "s2", "s3", "i2"]),
        &working(1, &["s1", "s2", "s3"]),
    ) else {
        panic!("a crash with suspects splits");
    };
    let named: Vec<(&str, Vec<&str>)> = groups.iter().map(|(n, g)| (*n, ids(g))).collect();
    assert_eq!(
        named,
        [
            ("innocents", vec!["i1", "i2"]),
            ("half-0", vec!["s1"]),
            ("half-1", vec!["s2", "s3"]),
        ]
    );
}

#[test]
fn one_suspect_among_innocents_is_split_off_alone() {
    let Plan::Split { groups, .. } = plan(&crash(), messages(&["i", "s"]), &working(1, &["s"]))
    else {
        panic!("split");
    };
    let named: Vec<(&str, Vec<&str>)> = groups.iter().map(|(n, g)| (*n, ids(g))).collect();
    assert_eq!(named, [("innocents", vec!["i"]), ("suspect", vec!["s"])]);
}
