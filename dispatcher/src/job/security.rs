//! Pod Security "restricted" for runner pods, filled in around whatever the template set.
//!
//! Settings the template left unset get sluice's restricted values; settings it made stricter
//! (a Localhost seccomp profile, another non-root user) are kept. Settings that would weaken
//! "restricted" never reach here: [`job_template::check`](crate::config::job_template::check) refuses them.

use k8s_openapi::api::core::v1::{
    Capabilities, PodSecurityContext, SeccompProfile, SecurityContext,
};

/// The numeric non-root user the runner image runs as.
pub const RUNNER_UID: i64 = 65_532;

/// The pod's security context: non-root (as the image's user unless the template names
/// another), `RuntimeDefault` seccomp unless the template chose a profile.
pub fn pod(template: Option<PodSecurityContext>) -> PodSecurityContext {
    let mut sc = template.unwrap_or_default();
    sc.run_as_non_root = Some(true);
    sc.run_as_user.get_or_insert(RUNNER_UID);
    sc.run_as_group.get_or_insert(RUNNER_UID);
    sc.seccomp_profile.get_or_insert_with(runtime_default);
    sc
}

/// A container's security context: no privilege escalation, every capability dropped, a
/// read-only root filesystem unless the template asks for a writable one.
pub fn container(template: Option<SecurityContext>) -> SecurityContext {
    let mut sc = template.unwrap_or_default();
    sc.allow_privilege_escalation = Some(false);
    sc.run_as_non_root = Some(true);
    sc.read_only_root_filesystem.get_or_insert(true);
    let capabilities = sc.capabilities.get_or_insert_with(Capabilities::default);
    capabilities.drop = Some(vec!["ALL".into()]);
    sc
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_fields_get_restricted_values_and_stricter_ones_are_kept() {
        let filled = pod(None);
        assert_eq!(
            (filled.run_as_non_root, filled.run_as_user),
            (Some(true), Some(RUNNER_UID))
        );
        let localhost = PodSecurityContext {
            run_as_user: Some(1000),
            seccomp_profile: Some(SeccompProfile {
                type_: "Localhost".into(),
                localhost_profile: Some("runner.json".into()),
            }),
            ..Default::default()
        };
        let kept = pod(Some(localhost));
        assert_eq!(kept.run_as_user, Some(1000));
        assert_eq!(kept.seccomp_profile.unwrap().type_, "Localhost");

        let writable = SecurityContext {
            read_only_root_filesystem: Some(false),
            ..Default::default()
        };
        let c = container(Some(writable));
        assert_eq!(
            (c.read_only_root_filesystem, c.allow_privilege_escalation),
            (Some(false), Some(false))
        );
        assert_eq!(c.capabilities.unwrap().drop, Some(vec!["ALL".into()]));
        assert_eq!(container(None).read_only_root_filesystem, Some(true));
    }
}
