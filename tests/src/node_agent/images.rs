//! The image table (`NODE_IMAGES`), image references, and a container's argv.
//!
//! An "image" is an entry of a JSON table re-read on every pull, so a test can load one later:
//! `{"name:tag": {"entrypoint": [..], "cmd": [..], "user": "uid[:gid]", "env": {"NAME": "value"},
//! "files": {"/path/in/image": "/host/path"}}}`. Pulling one that is not there fails like a registry without the image.

use super::env::expand;
use k8s_openapi::api::core::v1::Container;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One image of the table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Image {
    /// The image's ENTRYPOINT.
    pub entrypoint: Vec<String>,
    /// The image's CMD.
    pub cmd: Vec<String>,
    /// The image's USER, `uid` or `uid:gid` (numeric only).
    pub user: Option<String>,
    /// Paths inside the image mapped to host files (argv\[0\] goes through this table).
    pub files: HashMap<String, PathBuf>,
    /// The image's ENV: under the container's own variables, which override it.
    pub env: std::collections::BTreeMap<String, String>,
}

/// Why a pull failed, named like the kubelet's waiting reasons.
#[derive(Debug, PartialEq, Eq)]
pub enum PullError {
    /// `InvalidImageName`: never retried.
    Invalid(String),
    /// `ErrImagePull`: retried with backoff.
    NotFound(String),
}

/// Looks `image` up in the table at `table` (read anew on every call).
pub fn pull(table: &Path, image: &str) -> Result<Image, PullError> {
    if !valid_reference(image) {
        return Err(PullError::Invalid(format!(
            "Failed to apply default image tag \"{image}\": couldn't parse image name \"{image}\": invalid reference format"
        )));
    }
    let read = std::fs::read(table)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()));
    match read {
        Ok(images) => lookup(&images, image).ok_or_else(|| {
            PullError::NotFound(format!(
                "failed to pull image \"{image}\": not found in the node agent's image table"
            ))
        }),
        Err(e) => Err(PullError::NotFound(format!(
            "failed to pull image \"{image}\": image table {}: {e}",
            table.display()
        ))),
    }
}

/// Exact name first, then the name as a registry would normalise it.
fn lookup(images: &HashMap<String, Image>, image: &str) -> Option<Image> {
    let short = image
        .strip_prefix("docker.io/library/")
        .or_else(|| image.strip_prefix("docker.io/"))
        .unwrap_or(image);
    let tagged = |s: &str| {
        let last = s.rsplit('/').next().unwrap_or(s);
        if last.contains(':') || s.contains('@') {
            s.to_owned()
        } else {
            format!("{s}:latest")
        }
    };
    [
        image.to_owned(),
        short.to_owned(),
        tagged(image),
        tagged(short),
    ]
    .iter()
    .find_map(|name| images.get(name).cloned())
}

/// A reference as the distribution grammar has it: `[host[:port]/]path[:tag][@digest]`, path
/// components lowercase.
pub fn valid_reference(image: &str) -> bool {
    let (rest, digest) = image.split_once('@').unwrap_or((image, ""));
    if !digest.is_empty()
        && !digest.split_once(':').is_some_and(|(a, h)| {
            !a.is_empty() && h.len() >= 32 && h.bytes().all(|b| b.is_ascii_hexdigit())
        })
    {
        return false;
    }
    let (path, tag) = match rest.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') => (p, Some(t)),
        _ => (rest, None),
    };
    let tag_ok = tag.is_none_or(|t| {
        !t.is_empty()
            && t.len() <= 128
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            && !t.starts_with(['.', '-'])
    });
    let mut parts: Vec<&str> = path.split('/').collect();
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        let host = parts.remove(0);
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
        {
            return false;
        }
    }
    let component_ok = |c: &&str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
    };
    tag_ok && parts.iter().all(component_ok)
}

/// The image's user as `(uid, gid)`; a bare uid gets gid 0, as container runtimes do.
pub fn user(image: &Image) -> Option<(u32, u32)> {
    let user = image.user.as_deref()?;
    let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
    Some((uid.parse().ok()?, gid.parse().ok()?))
}

/// The process argv the kubelet would hand the runtime: `command` replaces the entrypoint
/// (and drops the image's cmd), `args` replaces the cmd; `$(VAR)` expands from `env`. argv\[0\]
/// is then mapped to a host file through the image's `files` (a bare name via PATH's
/// directories).
pub fn argv(image: &Image, c: &Container, env: &[(String, String)]) -> Result<Vec<String>, String> {
    let lookup = |k: &str| {
        env.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    let exp = |v: &Vec<String>| v.iter().map(|s| expand(s, &lookup)).collect::<Vec<_>>();
    let mut argv = match (&c.command, &c.args) {
        (Some(cmd), args) => [exp(cmd), args.as_ref().map(exp).unwrap_or_default()].concat(),
        (None, Some(args)) => [image.entrypoint.clone(), exp(args)].concat(),
        (None, None) => [image.entrypoint.clone(), image.cmd.clone()].concat(),
    };
    let Some(first) = argv.first_mut() else {
        return Err(format!("no command specified for container {:?}", c.name));
    };
    let candidates = if first.contains('/') {
        vec![first.clone()]
    } else {
        [
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ]
        .iter()
        .map(|d| format!("{d}/{first}"))
        .collect()
    };
    if let Some(host) = candidates.iter().find_map(|p| image.files.get(p)) {
        *first = host.to_string_lossy().into_owned();
    }
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Image {
        serde_json::from_value(serde_json::json!({
            "entrypoint": ["/usr/local/bin/dispatcher"], "cmd": ["serve"], "user": "65532:65532",
            "files": {"/usr/local/bin/dispatcher": "/h/dispatcher", "/usr/local/bin/runner": "/h/runner"}
        }))
        .unwrap()
    }

    fn container(command: Option<&[&str]>, args: Option<&[&str]>) -> Container {
        let own = |v: &[&str]| v.iter().map(ToString::to_string).collect();
        Container {
            name: "c".into(),
            command: command.map(own),
            args: args.map(own),
            ..Default::default()
        }
    }

    #[test]
    fn argv_follows_the_kubelet_rules() {
        let env = vec![("Q".to_owned(), "jobs".to_owned())];
        let img = image();
        assert_eq!(
            argv(&img, &container(None, None), &env).unwrap(),
            ["/h/dispatcher", "serve"]
        );
        assert_eq!(
            argv(&img, &container(None, Some(&["x", "$(Q)"])), &env).unwrap(),
            ["/h/dispatcher", "x", "jobs"]
        );
        assert_eq!(
            argv(&img, &container(Some(&["runner"]), None), &env).unwrap(),
            ["/h/runner"]
        );
        assert_eq!(
            argv(
                &img,
                &container(Some(&["/bin/sh", "-c"]), Some(&["echo $(Q) $$(Q) $(NOPE)"])),
                &env
            )
            .unwrap(),
            ["/bin/sh", "-c", "echo jobs $(Q) $(NOPE)"]
        );
        assert!(argv(&Image::default(), &container(None, None), &env).is_err());
        assert_eq!(user(&img), Some((65532, 65532)));
    }

    #[test]
    fn references_and_lookup() {
        for ok in [
            "sluice:0.1.0",
            "sluice",
            "localhost:5000/a/b:v1",
            "Reg.IO/x/y",
            "x@sha256:0123456789abcdef0123456789abcdef",
        ] {
            assert!(valid_reference(ok), "{ok}");
        }
        for bad in ["Sluice:1", "a b", "", "x:", "x:-y", "a//b", "x@sha256:zz"] {
            assert!(!valid_reference(bad), "{bad}");
        }
        let table: HashMap<String, Image> = [
            ("sluice:0.1.0".to_owned(), image()),
            ("busy:latest".to_owned(), Image::default()),
        ]
        .into();
        assert!(lookup(&table, "sluice:0.1.0").is_some());
        assert!(lookup(&table, "docker.io/library/sluice:0.1.0").is_some());
        assert!(lookup(&table, "busy").is_some());
        assert!(lookup(&table, "sluice:0.2.0").is_none());
        assert!(matches!(
            pull(Path::new("/nonexistent"), "A B"),
            Err(PullError::Invalid(_))
        ));
        assert!(matches!(
            pull(Path::new("/nonexistent"), "x:1"),
            Err(PullError::NotFound(_))
        ));
    }
}
