//! Start-up checks: every setting the API server or the dispatcher itself would refuse is
//! refused here, with one line naming the variable, its value and the rule, so that a bad
//! value is never discovered as a 400 or 422 at the first launch.

use super::Config;

/// The first problem with `config`, if any.
pub fn check(config: &Config) -> Result<(), String> {
    limits(config)?;
    job(config)?;
    kube(config)?;
    kernels(config)?;
    broker(config)?;
    memory(config)
}

/// TLS files that load and fit their URL's scheme, and queue arguments that parse.
fn broker(config: &Config) -> Result<(), String> {
    use sluice_contract::tls::Service;
    let (broker, redis) = (&config.broker, &config.redis);
    for (service, files, url, scheme) in [
        (
            Service::Rabbitmq,
            broker.tls(),
            &broker.amqp_url,
            "amqps://",
        ),
        (Service::Redis, redis.tls(), &redis.redis_url, "rediss://"),
    ] {
        files.load(service).map_err(|e| e.to_string())?;
        if files.is_set() && !url.starts_with(scheme) {
            return Err(format!(
                "{}, {} and {} are TLS settings: {}_URL must start with {scheme}",
                service.var("CA"),
                service.var("CERT"),
                service.var("KEY"),
                service.prefix()
            ));
        }
    }
    let route = broker.dead_letter_route()?;
    // Published straight to a queue, the routing key is that queue: one check covers both.
    if route.queue == broker.queue {
        return Err(format!(
            "DEAD_LETTER_QUEUE {} is the work queue: dead letters would run again at once",
            route.queue
        ));
    }
    if config.redis.dead_index_max == 0 {
        return Err("DEAD_INDEX_MAX must be at least 1".into());
    }
    Ok(())
}

fn limits(config: &Config) -> Result<(), String> {
    let (batching, outages) = (&config.batching, &config.outages);
    let problem = if batching.batch_max_messages == 0 {
        "BATCH_MAX_MESSAGES must be at least 1"
    } else if batching.batch_max_bytes == 0 {
        "BATCH_MAX_BYTES must be at least 1"
    } else if !batching.target_job_seconds.is_finite() || batching.target_job_seconds <= 0.0 {
        "TARGET_JOB_SECONDS must be a positive number of seconds"
    } else if config.runner.result_chunk == 0 {
        "RESULT_CHUNK must be at least 1"
    } else if outages.outage_threshold == 0 {
        "OUTAGE_THRESHOLD must be at least 1"
    } else if !(outages.outage_retry_seconds.is_finite()
        && outages.outage_retry_max_seconds.is_finite())
    {
        "OUTAGE_RETRY_SECONDS and OUTAGE_RETRY_MAX_SECONDS must be numbers of seconds"
    } else if batching.max_jobs_in_flight == 0 {
        "MAX_JOBS_IN_FLIGHT must be at least 1"
    } else if !(batching.unacked_max_seconds.is_finite()
        && batching.unacked_max_seconds * 1000.0 > batching.batch_linger_ms as f64)
    {
        "UNACKED_MAX_SECONDS must be a number of seconds longer than BATCH_LINGER_MS"
    } else if !(10..=100).contains(&config.redis.redis_pause_percent) {
        "REDIS_PAUSE_PERCENT must be between 10 and 100"
    } else if !(config.replicas.lease_seconds.is_finite()
        && config.replicas.reconcile_seconds.is_finite()
        && config.replicas.lease_seconds > 0.0
        && config.replicas.reconcile_seconds > 0.0)
    {
        "LEASE_SECONDS and RECONCILE_SECONDS must be positive numbers of seconds"
    } else if config
        .replicas
        .dispatcher_id
        .as_deref()
        .is_some_and(|id| id.is_empty() || id.contains(char::is_whitespace))
    {
        "DISPATCHER_ID must not be empty or contain spaces"
    } else if config.broker.queue.is_empty() || config.redis.key_prefix.is_empty() {
        "QUEUE and KEY_PREFIX must not be empty"
    } else {
        return Ok(());
    };
    Err(problem.into())
}

/// The Job's own values, as the API server validates them.
fn job(config: &Config) -> Result<(), String> {
    let job = &config.job;
    positive_quantity("RUNNER_CPU", &job.runner_cpu)?;
    positive_quantity("RUNNER_MEMORY", &job.runner_memory)?;
    if job.runner_image.trim().is_empty() || job.runner_image.contains(char::is_whitespace) {
        return Err(format!(
            "RUNNER_IMAGE {:?} is not an image reference (such as sluice:0.1.0)",
            job.runner_image
        ));
    }
    if job.job_deadline_seconds == 0 {
        return Err("JOB_DEADLINE_SECONDS must be at least 1 (activeDeadlineSeconds)".into());
    }
    dns_label("NAMESPACE", &job.namespace)?;
    if let Some(queue) = &job.kueue_queue {
        label_value("KUEUE_QUEUE", queue)?;
        if queue.is_empty() {
            return Err("KUEUE_QUEUE must not be empty when set".into());
        }
    }
    // The template's resources (they win over RUNNER_CPU and RUNNER_MEMORY).
    let pod = job
        .job_template
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref());
    let containers = pod.map(|p| p.containers.as_slice()).unwrap_or_default();
    for container in containers {
        let resources = container.resources.clone().unwrap_or_default();
        for (kind, list) in [
            ("requests", resources.requests),
            ("limits", resources.limits),
        ] {
            for (resource, value) in list.unwrap_or_default() {
                let field = format!("the Job template's resources.{kind}.{resource}");
                quantity(&field, &value.0)?;
            }
        }
    }
    Ok(())
}

/// How the dispatcher follows Jobs.
fn kube(config: &Config) -> Result<(), String> {
    let job = &config.job;
    if !job.kube_api_qps.is_finite() || job.kube_api_qps <= 0.0 {
        return Err(format!(
            "KUBE_API_QPS must be a positive number, not {}",
            job.kube_api_qps
        ));
    }
    for (name, value) in [
        ("JOB_SLACK_SECONDS", job.job_slack_seconds),
        ("POD_STUCK_SECONDS", job.pod_stuck_seconds),
        ("POD_CREATE_SECONDS", job.pod_create_seconds),
    ] {
        if value == 0 {
            return Err(format!("{name} must be at least 1"));
        }
    }
    let least = u64::from(job.job_deadline_seconds) + job.job_slack_seconds;
    match job.job_wait_seconds {
        Some(wait) if wait < least => Err(format!(
            "JOB_WAIT_SECONDS {wait} must be at least JOB_DEADLINE_SECONDS + JOB_SLACK_SECONDS ({least}): a Job is given up on only after its own deadline"
        )),
        _ => Ok(()),
    }
}

/// The exec kernel table, with the message a runner would stop with. A local launcher's
/// runners share this filesystem and `PATH`, so their commands must be here too; a cluster's
/// runners have their own image, so a table this dispatcher cannot see is theirs to check.
fn kernels(config: &Config) -> Result<(), String> {
    use sluice_contract::kernels_file::KernelTable;
    let Some(file) = &config.runner.kernels_file else {
        return Ok(());
    };
    let path = std::path::Path::new(file);
    match config.service.launcher {
        super::LauncherKind::Local => KernelTable::load(path).map(drop),
        super::LauncherKind::Kube if path.exists() => KernelTable::read(path).map(drop),
        super::LauncherKind::Kube => Ok(()),
    }
}

/// The dispatcher's worst case against its own memory limit (`DISPATCHER_MEMORY_LIMIT`, the
/// manifests set it from the container's limit through the downward API).
fn memory(config: &Config) -> Result<(), String> {
    let Some(limit) = config.service.dispatcher_memory_limit else {
        return Ok(());
    };
    let need = worst_case_memory(config);
    if need <= limit {
        return Ok(());
    }
    Err(format!(
        "the dispatcher's memory limit ({} MiB) is below its worst case ({} MiB = 64 MiB + 2 × BATCH_MAX_MESSAGES {} × MAX_MESSAGE_BYTES {} + 3 × BATCH_MAX_BYTES {}): raise the limit or lower those settings (README: Sizing)",
        limit >> 20,
        need >> 20,
        config.batching.batch_max_messages,
        config.broker.max_message_bytes,
        config.batching.batch_max_bytes,
    ))
}

/// Bytes the dispatcher may hold at worst: its base, the prefetched deliveries (two batches'
/// worth, each as large as RabbitMQ lets through, which the manifests cap at
/// `MAX_MESSAGE_BYTES`), and a batch being staged (its frames, the command sent to Redis, and
/// the next batch filling).
pub fn worst_case_memory(config: &Config) -> u64 {
    const BASE: u64 = 64 << 20;
    let prefetch = u64::from(config.prefetch());
    let message = config.broker.max_message_bytes as u64;
    let batch = config.batching.batch_max_bytes as u64;
    BASE + prefetch.saturating_mul(message) + batch.saturating_mul(3)
}

fn positive_quantity(name: &str, value: &str) -> Result<(), String> {
    quantity(name, value)?;
    let number: String = value
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '+' | '-'))
        .collect();
    if number.parse::<f64>().map_or(true, |n| n <= 0.0) {
        return Err(format!("{name} {value:?} must be more than zero"));
    }
    Ok(())
}

/// A quantity's suffixes: none, binary, decimal.
const SUFFIXES: [&str; 16] = [
    "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E",
];

/// A Kubernetes resource quantity: a decimal number, then a binary suffix (`Ki` … `Ei`), a
/// decimal suffix (`n`, `u`, `m`, `k`, `M`, `G`, `T`, `P`, `E`) or an exponent (`e3`).
fn quantity(name: &str, value: &str) -> Result<(), String> {
    let invalid = || {
        Err(format!(
            "{name} {value:?} is not a Kubernetes quantity (such as 500m, 1, 256Mi, 1.5Gi)"
        ))
    };
    let unsigned = value.strip_prefix(['+', '-']).unwrap_or(value);
    let digits = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(digits);
    let number_ok = number.chars().any(|c| c.is_ascii_digit()) && number.matches('.').count() <= 1;
    let exponent = suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit()));
    if number_ok && (SUFFIXES.contains(&suffix) || exponent) {
        Ok(())
    } else {
        invalid()
    }
}

/// A label value: at most 63 characters, alphanumerics with `-`, `_` and `.` inside.
fn label_value(name: &str, value: &str) -> Result<(), String> {
    let inner_ok = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let ends_ok = value.is_empty()
        || (value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()));
    if value.len() <= 63 && inner_ok && ends_ok {
        Ok(())
    } else {
        Err(format!(
            "{name} {value:?} is not a valid label value: at most 63 characters, letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

/// A DNS-1123 label, as namespace names are.
fn dns_label(name: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name} {value:?} is not a valid namespace name: at most 63 lowercase letters, digits or '-', starting and ending with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_follow_the_api_servers_grammar() {
        for ok in [
            "1",
            "500m",
            "256Mi",
            "1.5Gi",
            "2e3",
            "0.5",
            "+1",
            "1E6",
            "128974848",
        ] {
            assert_eq!(quantity("Q", ok), Ok(()), "{ok}");
        }
        for bad in [
            "lots", "", "1.2.3", "256MB", "Mi", "1 Gi", "1e", "--1", "1mi",
        ] {
            assert!(quantity("Q", bad).is_err(), "{bad}");
        }
        assert!(positive_quantity("Q", "0").is_err());
        assert!(positive_quantity("Q", "0Mi").is_err());
        assert!(positive_quantity("Q", "-1").is_err());
        assert_eq!(positive_quantity("Q", "0.5"), Ok(()));
    }

    #[test]
    fn label_values_and_namespaces() {
        assert_eq!(label_value("L", "team-a.batch_1"), Ok(()));
        for bad in ["-a", "a-", "a b", "a/b", &"x".repeat(64)] {
            assert!(label_value("L", bad).is_err(), "{bad}");
        }
        assert_eq!(dns_label("N", "sluice-prod"), Ok(()));
        for bad in ["", "Sluice", "a_b", "-a", &"x".repeat(64)] {
            assert!(dns_label("N", bad).is_err(), "{bad}");
        }
    }
}
