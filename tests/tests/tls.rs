//! TLS to RabbitMQ and Redis with a CA these tests make, against the servers' own TLS
//! listeners (RabbitMQ's `listeners.ssl`, Redis's `tls-port`; no proxy in between), started
//! privately by scripts/test-server.sh.
// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use sluice_dispatcher::metrics::Metrics;
use sluice_tests::cases::mixed;
use sluice_tests::servers::{Options, Servers};
use sluice_tests::{TestEnv, binary, require_binaries, spawn_dispatcher, spawn_dispatcher_with};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The variables that trust the test CA and present the client certificate, to both.
fn mutual_tls(servers: &Servers) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    for service in ["AMQP", "REDIS"] {
        vars.push((format!("{service}_CA_FILE"), servers.tls_file("ca.pem")));
        vars.push((
            format!("{service}_CERT_FILE"),
            servers.tls_file("client.pem"),
        ));
        vars.push((
            format!("{service}_KEY_FILE"),
            servers.tls_file("client.key"),
        ));
    }
    vars
}

fn borrowed(vars: &[(String, String)]) -> Vec<(&str, &str)> {
    vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_pipeline_runs_over_mutual_tls_to_both_runners_included() {
    require_binaries().unwrap();
    // Redis takes TLS only: a runner that did not speak TLS could not write a single result.
    let options = Options {
        redis_tls_only: true,
        ..Options::default()
    };
    let servers = Servers::start("tls-pipeline", &options).unwrap();
    let vars = mutual_tls(&servers);
    let env = TestEnv::on(
        "tls",
        &servers.amqps_url(),
        &servers.rediss_url(),
        &borrowed(&vars),
    )
    .await
    .unwrap();
    let cases = mixed(300);
    let config = env
        .config(&[("BATCH_MAX_MESSAGES", "50"), ("MAX_MESSAGE_BYTES", "4096")])
        .unwrap();
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(config, stop.clone());
    env.run_cases(&cases, Duration::from_secs(120))
        .await
        .unwrap();
    let stats = env.stats().await.unwrap();
    assert_eq!(stats["ok"] + stats["error"], 300, "{stats:?}");

    // The connections this private broker holds (all ours) are TLS ones, presenting our
    // client certificate.
    let connections = servers
        .rabbitmqctl(&["list_connections", "name", "ssl", "peer_cert_subject"])
        .unwrap();
    let ours: Vec<&str> = connections.lines().filter(|l| l.contains(" -> ")).collect();
    assert!(!ours.is_empty(), "{connections}");
    for line in ours {
        assert!(
            line.contains("true") && line.contains("sluice-test-client"),
            "{line}"
        );
    }
    stop.cancel();
    assert_eq!(dispatcher.await.unwrap().unwrap().abandoned, 0);
}

/// Waits until readiness names `expected`, or fails with what it said.
async fn readiness_says(metrics: &Metrics, expected: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let said = metrics.health().ready().err().unwrap_or_default();
        if said.contains(expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness never said {expected:?}; it says {said:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_port_or_a_certificate_another_ca_signed_is_refused_in_one_line() {
    require_binaries().unwrap();
    let servers = Servers::start("tls-refused", &Options::default()).unwrap();
    let (ca, other) = (servers.tls_file("ca.pem"), servers.tls_file("other-ca.pem"));
    let amqps_to_plain = format!("amqps://guest:guest@localhost:{}/%2f", servers.amqp_port);
    let env = TestEnv::on(
        "tls-refused",
        &servers.amqp_url(),
        &servers.rediss_url(),
        &[("REDIS_CA_FILE", &ca)],
    )
    .await
    .unwrap();

    // amqps:// to the plaintext port: never a plaintext session, and readiness says why.
    let plain = format!(
        "TLS to rabbitmq at localhost:{} failed: the server does not speak TLS",
        servers.amqp_port
    );
    let metrics = Arc::new(Metrics::new());
    let stop = CancellationToken::new();
    let config = env.config(&[("AMQP_URL", &amqps_to_plain)]).unwrap();
    let dispatcher = spawn_dispatcher_with(config, Arc::clone(&metrics), stop.clone());
    readiness_says(&metrics, &plain).await;
    stop.cancel();
    dispatcher.await.unwrap().unwrap();

    // A server certificate that the CA we trust did not sign, in `dispatcher status`.
    let unknown = "failed: its certificate is signed by an unknown issuer (set AMQP_CA_FILE";
    let status = Command::new(binary("dispatcher"))
        .arg("status")
        .envs(env.vars())
        .env("AMQP_URL", servers.amqps_url())
        .env("AMQP_CA_FILE", &other)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(!status.status.success());
    assert!(
        stderr.contains(&format!(
            "TLS to rabbitmq at localhost:{} {unknown}",
            servers.amqps_port
        )),
        "{stderr}"
    );

    // The same for Redis, in readiness.
    let metrics = Arc::new(Metrics::new());
    let stop = CancellationToken::new();
    let config = env.config(&[("REDIS_CA_FILE", &other)]).unwrap();
    let dispatcher = spawn_dispatcher_with(config, Arc::clone(&metrics), stop.clone());
    let redis_line = format!(
        "redis: TLS to redis at localhost:{} failed: its certificate is signed by an unknown issuer (set REDIS_CA_FILE",
        servers.rediss_port
    );
    readiness_says(&metrics, &redis_line).await;
    stop.cancel();
    dispatcher.await.unwrap().unwrap();

    // And a runner: an outage exit code, with the line in its log.
    let runner = Command::new(binary("runner"))
        .env_clear()
        .env("BATCH_ID", "b")
        .env("KEY_PREFIX", &env.prefix)
        .env("REDIS_URL", servers.rediss_url())
        .env("REDIS_CA_FILE", &other)
        .env("REDIS_RETRY_SECONDS", "1")
        .output()
        .unwrap();
    assert_eq!(
        runner.status.code(),
        Some(sluice_contract::exit::UNAVAILABLE)
    );
    let log = String::from_utf8_lossy(&runner.stderr);
    assert!(
        log.contains(&format!(
            "TLS to redis at localhost:{} failed",
            servers.rediss_port
        )),
        "{log}"
    );
}
