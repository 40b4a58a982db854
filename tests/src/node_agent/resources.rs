//! Resource values for `resourceFieldRef` (env and downward API volumes) and Kubernetes
//! quantities.

use super::env::PodCtx;
use k8s_openapi::api::core::v1::{Container, ResourceFieldSelector};

/// A `resourceFieldRef`'s value: unset limits default to the node's allocatable, cpu rounds up
/// to whole divisors (millicores), memory to whole divisors of bytes.
pub fn resource(p: &PodCtx, c: &Container, sel: &ResourceFieldSelector) -> Result<String, String> {
    let c = match sel.container_name.as_deref() {
        Some(name) if name != c.name => {
            let spec = p.pod.spec.as_ref();
            let all = spec.into_iter().flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            });
            all.into_iter()
                .find(|o| o.name == name)
                .ok_or_else(|| format!("container {name} not found"))?
        }
        _ => c,
    };
    let (kind, name) = sel
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource: {}", sel.resource))?;
    let res = c.resources.as_ref();
    let set = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => return Err(format!("unsupported resource: {}", sel.resource)),
    };
    let given = set
        .and_then(|m| m.get(name))
        .map(|q| parse_quantity(&q.0).ok_or_else(|| format!("bad quantity {}", q.0)));
    let value = match (given.transpose()?, kind, name) {
        (Some(v), _, _) => v,
        (None, "limits", "cpu") => i128::from(p.node.0) * 1_000_000_000,
        (None, "limits", "memory") => i128::from(p.node.1) * 1_000_000_000,
        (None, _, _) => 0,
    };
    let divisor = sel
        .divisor
        .as_ref()
        .map_or(Some(1_000_000_000), |d| parse_quantity(&d.0))
        .filter(|d| *d > 0);
    let divisor = divisor.unwrap_or(1_000_000_000);
    // cpu compares millicores, everything else whole units, as the kubelet does.
    let unit = if name == "cpu" {
        1_000_000
    } else {
        1_000_000_000
    };
    let (value, divisor) = (ceil_div(value, unit), ceil_div(divisor, unit).max(1));
    Ok(ceil_div(value, divisor).to_string())
}

fn ceil_div(a: i128, b: i128) -> i128 {
    (a + b - 1).div_euclid(b)
}

/// A quantity (`100m`, `1.5Gi`, `2e3`, `500M`) in nano-units, rounded up.
pub fn parse_quantity(s: &str) -> Option<i128> {
    let s = s.trim().trim_start_matches('+');
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let digits: i128 = format!("{int}{frac}").parse().ok()?;
    let scale = 10i128.checked_pow(u32::try_from(frac.len()).ok()?)?;
    let nano: i128 = 1_000_000_000;
    let mult = match suffix {
        "n" => 1,
        "u" => 1_000,
        "m" => 1_000_000,
        "" => nano,
        _ => {
            let binary = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
                .iter()
                .position(|b| *b == suffix);
            let decimal = ["k", "M", "G", "T", "P", "E"]
                .iter()
                .position(|b| *b == suffix);
            match (
                binary,
                decimal,
                suffix.strip_prefix(['e', 'E']).map(str::parse::<i32>),
            ) {
                (Some(i), _, _) => 1024i128.pow(u32::try_from(i).ok()? + 1) * nano,
                (None, Some(i), _) => 1000i128.pow(u32::try_from(i).ok()? + 1) * nano,
                (None, None, Some(Ok(e))) if (-9..=18).contains(&e) => {
                    10i128.pow(u32::try_from(e + 9).ok()?)
                }
                _ => return None,
            }
        }
    };
    Some(ceil_div(digits.checked_mul(mult)?, scale))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_agent::env::Refs;
    use crate::node_agent::env::tests::{container, pod};
    use serde_json::json;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("100m"), Some(100_000_000));
        assert_eq!(parse_quantity("1.5Gi"), Some(1_610_612_736_000_000_000));
        assert_eq!(parse_quantity("2e3"), Some(2_000_000_000_000));
        assert_eq!(parse_quantity("1k"), Some(1_000_000_000_000));
        assert_eq!(parse_quantity("x"), None);
        let pod = pod();
        let refs = Refs::new();
        let p = PodCtx {
            pod: &pod,
            host_ip: "",
            node: (4, 0),
            refs: &refs,
            service: &[],
        };
        let c = container(json!({"resources": {"limits": {"cpu": "1500m"}}}));
        let sel = |d: Option<&str>| ResourceFieldSelector {
            resource: "limits.cpu".into(),
            divisor: d.map(|d| k8s_openapi::apimachinery::pkg::api::resource::Quantity(d.into())),
            container_name: None,
        };
        assert_eq!(resource(&p, &c, &sel(None)).unwrap(), "2");
        assert_eq!(resource(&p, &c, &sel(Some("1m"))).unwrap(), "1500");
    }
}
