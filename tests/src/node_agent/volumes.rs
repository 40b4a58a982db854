//! Volumes materialised as directories `<pod dir>/volumes/<name>/`: configMap, secret,
//! downwardAPI, projected (serviceAccountToken, configMap, secret, downwardAPI) and emptyDir.
//! Files are replaced atomically (write, then rename), so a refresh is safe while a container
//! reads them; they are owned by the pod's user so its containers can read them.

use super::env::{Kind, PodCtx, field, not_found};
use super::process::Mount;
use super::resources::resource;
use super::token;
use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, KeyToPath};
use kube::Client;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};
use std::time::Duration;

type Files = Vec<(String, Vec<u8>, i32)>;

/// Writes every volume of the pod under `dir`. Returns when the soonest token needs renewing
/// (at 80% of its life), if the pod has tokens.
pub async fn materialise(
    client: &Client,
    p: &PodCtx<'_>,
    dir: &Path,
    owner: Option<(u32, u32)>,
) -> Result<Option<Duration>, String> {
    let mut refresh: Option<Duration> = None;
    let volumes = p.pod.spec.iter().flat_map(|s| s.volumes.iter().flatten());
    for v in volumes {
        let vdir = dir.join(&v.name);
        std::fs::create_dir_all(&vdir).map_err(|e| format!("{}: {e}", vdir.display()))?;
        let mut files = Files::new();
        if v.empty_dir.is_some() {
            let _ = std::fs::set_permissions(&vdir, std::fs::Permissions::from_mode(0o777));
        } else if let Some(cm) = &v.config_map {
            let mode = cm.default_mode.unwrap_or(0o644);
            project(
                p,
                Kind::ConfigMap,
                &cm.name,
                cm.items.as_ref(),
                cm.optional,
                mode,
                &mut files,
            )?;
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.as_deref().unwrap_or_default();
            project(
                p,
                Kind::Secret,
                name,
                s.items.as_ref(),
                s.optional,
                s.default_mode.unwrap_or(0o644),
                &mut files,
            )?;
        } else if let Some(d) = &v.downward_api {
            downward(
                p,
                d.items.iter().flatten(),
                d.default_mode.unwrap_or(0o644),
                &mut files,
            )?;
        } else if let Some(proj) = &v.projected {
            let mode = proj.default_mode.unwrap_or(0o644);
            for src in proj.sources.iter().flatten() {
                if let Some(cm) = &src.config_map {
                    project(
                        p,
                        Kind::ConfigMap,
                        &cm.name,
                        cm.items.as_ref(),
                        cm.optional,
                        mode,
                        &mut files,
                    )?;
                } else if let Some(s) = &src.secret {
                    project(
                        p,
                        Kind::Secret,
                        &s.name,
                        s.items.as_ref(),
                        s.optional,
                        mode,
                        &mut files,
                    )?;
                } else if let Some(d) = &src.downward_api {
                    downward(p, d.items.iter().flatten(), mode, &mut files)?;
                } else if let Some(t) = &src.service_account_token {
                    let seconds = t.expiration_seconds.unwrap_or(3600);
                    let token = token::request(
                        client,
                        p.pod,
                        t.audience.as_deref().filter(|a| !a.is_empty()),
                        seconds,
                    )
                    .await?;
                    files.push((t.path.clone(), token.into_bytes(), mode));
                    let renew = Duration::from_secs(u64::try_from(seconds * 8 / 10).unwrap_or(60));
                    refresh = Some(refresh.map_or(renew, |r| r.min(renew)));
                } else {
                    return Err(format!("volume {}: unsupported projection", v.name));
                }
            }
        } else {
            return Err(format!("volume {}: unsupported volume type", v.name));
        }
        write(&vdir, files, owner).map_err(|e| format!("volume {}: {e}", v.name))?;
    }
    Ok(refresh)
}

fn project(
    p: &PodCtx,
    kind: Kind,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    optional: Option<bool>,
    mode: i32,
    files: &mut Files,
) -> Result<(), String> {
    let Some(data) = p.refs.get(&(kind, name.to_owned())).cloned().flatten() else {
        return if optional == Some(true) {
            Ok(())
        } else {
            Err(not_found(kind, name))
        };
    };
    match items {
        None => files.extend(data.into_iter().map(|(k, v)| (k, v, mode))),
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => {
                        files.push((item.path.clone(), v.clone(), item.mode.unwrap_or(mode)));
                    }
                    None if optional == Some(true) => {}
                    None => {
                        let label = if kind == Kind::Secret {
                            "secret"
                        } else {
                            "configmap"
                        };
                        return Err(format!("{label} \"{name}\" has no key {}", item.key));
                    }
                }
            }
        }
    }
    Ok(())
}

fn downward<'a>(
    p: &PodCtx,
    items: impl Iterator<Item = &'a DownwardAPIVolumeFile>,
    mode: i32,
    files: &mut Files,
) -> Result<(), String> {
    for item in items {
        let value = match (&item.field_ref, &item.resource_field_ref) {
            (Some(f), _) => field(p.pod, &f.field_path, p.host_ip)?,
            (None, Some(r)) => resource(p, &Container::default(), r)?,
            (None, None) => continue,
        };
        files.push((
            item.path.clone(),
            value.into_bytes(),
            item.mode.unwrap_or(mode),
        ));
    }
    Ok(())
}

fn write(dir: &Path, files: Files, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    for (rel, data, mode) in files {
        let rel = Path::new(&rel);
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            continue;
        }
        let path = dir.join(rel);
        let parent = path.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent)?;
        let tmp = parent.join(format!(
            ".{}.tmp",
            rel.file_name().unwrap_or_default().to_string_lossy()
        ));
        std::fs::write(&tmp, data)?;
        std::fs::set_permissions(
            &tmp,
            std::fs::Permissions::from_mode(mode.unsigned_abs() & 0o777),
        )?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))?;
        }
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}

/// The container's volume mounts (secret, configMap, projected and downwardAPI volumes are
/// always read-only, as the kubelet mounts them).
pub fn mounts(p: &PodCtx, c: &Container, dir: &Path) -> Vec<Mount> {
    let volumes = p.pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    let writable = |name: &str| {
        volumes
            .into_iter()
            .flatten()
            .any(|v| v.name == name && v.empty_dir.is_some())
    };
    let mounts = c.volume_mounts.iter().flatten().map(|m| Mount {
        source: dir.join(&m.name).join(m.sub_path.as_deref().unwrap_or("")),
        target: m.mount_path.clone().into(),
        read_only: m.read_only == Some(true) || !writable(&m.name),
    });
    mounts.collect()
}
