//! TLS to RabbitMQ and Redis, shared by the dispatcher and the runner: the files that add a
//! private CA or a client certificate, the Redis client built from them, and the one line a
//! TLS failure becomes.
//!
//! Verification is never off: the system's roots are trusted, a CA file adds to them, and
//! there is no switch that skips certificate or host-name checks (redis is built without
//! `tls-rustls-insecure`, so a `rediss://…/#insecure` URL is refused).

mod failure;

pub use failure::{TlsFailure, tls_failure};

use base64::Engine as _;
use std::fmt;
use std::path::{Path, PathBuf};

/// Which server a TLS setting or failure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// The broker (`AMQP_*` variables).
    Rabbitmq,
    /// Redis (`REDIS_*` variables).
    Redis,
}

impl Service {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rabbitmq => "rabbitmq",
            Self::Redis => "redis",
        }
    }

    /// The prefix of its variables: `AMQP` (`AMQP_URL`, `AMQP_CA_FILE`, …) or `REDIS`.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Rabbitmq => "AMQP",
            Self::Redis => "REDIS",
        }
    }

    /// The variable of one of its TLS files: `CA`, `CERT` or `KEY`.
    pub fn var(self, file: &str) -> String {
        format!("{}_{file}_FILE", self.prefix())
    }
}

/// The files of one service's TLS settings (`*_CA_FILE`, `*_CERT_FILE`, `*_KEY_FILE`), all PEM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// A CA trusted besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The client certificate (chain) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// Its private key.
    pub key_file: Option<PathBuf>,
}

/// The files' contents. The key is never printed.
#[derive(Clone, Default)]
pub struct TlsPem {
    /// PEM certificates to trust besides the system's roots.
    pub ca: Option<Vec<u8>>,
    /// PEM client certificate chain and PEM private key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsPem")
            .field("ca", &self.ca.as_ref().map(Vec::len))
            .field("identity", &self.identity.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A TLS setting that cannot be used: named by its variable, never quoting a key.
#[derive(Debug, thiserror::Error)]
#[error("{var} {}: {problem}", path.display())]
pub struct FileError {
    /// The variable, such as `REDIS_CA_FILE`.
    pub var: String,
    /// The file it names.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

impl TlsFiles {
    /// Whether any file is set.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// The files that are set, as the variables for `service` that name them (to hand them on
    /// to another process).
    pub fn vars(&self, service: Service) -> Vec<(String, String)> {
        [
            ("CA", &self.ca_file),
            ("CERT", &self.cert_file),
            ("KEY", &self.key_file),
        ]
        .into_iter()
        .filter_map(|(file, path)| {
            path.as_ref()
                .map(|p| (service.var(file), p.display().to_string()))
        })
        .collect()
    }

    /// Reads the files for `service`, checking that each holds PEM and that a certificate
    /// comes with its key.
    pub fn load(&self, service: Service) -> Result<TlsPem, FileError> {
        let read = |name: &str, path: &Path, label: &str| -> Result<Vec<u8>, FileError> {
            let error = |problem: String| FileError {
                var: service.var(name),
                path: path.to_owned(),
                problem,
            };
            let bytes = std::fs::read(path).map_err(|e| error(format!("cannot be read: {e}")))?;
            let marker = format!("-----BEGIN {label}");
            if !String::from_utf8_lossy(&bytes).contains(&marker) {
                return Err(error(format!("holds no PEM block `{marker}…`")));
            }
            Ok(bytes)
        };
        let ca = match &self.ca_file {
            Some(path) => Some(read("CA", path, "CERTIFICATE")?),
            None => None,
        };
        let identity = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                Some((read("CERT", cert, "CERTIFICATE")?, read("KEY", key, "")?))
            }
            (None, None) => None,
            (Some(path), None) | (None, Some(path)) => {
                return Err(FileError {
                    var: format!("{} and {}", service.var("CERT"), service.var("KEY")),
                    path: path.clone(),
                    problem: "a client certificate needs both, and only one is set".into(),
                });
            }
        };
        Ok(TlsPem { ca, identity })
    }
}

/// Installs ring as the process's crypto provider (the one kube uses too). Idempotent; call
/// it before the first TLS connection.
pub fn install_crypto_provider() {
    // Err means one is installed already, which is all this asks for.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A Redis client for `url`; for `rediss://` it trusts the system's roots plus `pem.ca`, and
/// presents `pem.identity` when set. TLS files with a `redis://` URL are an error, never
/// silently unused.
pub fn redis_client(url: &str, pem: &TlsPem) -> redis::RedisResult<redis::Client> {
    install_crypto_provider();
    let tls = url.starts_with("rediss://");
    if !tls {
        if pem.ca.is_some() || pem.identity.is_some() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "REDIS_CA_FILE, REDIS_CERT_FILE and REDIS_KEY_FILE need a rediss:// URL",
            )));
        }
        return redis::Client::open(url);
    }
    if pem.ca.is_none() && pem.identity.is_none() {
        return refuse_insecure(redis::Client::open(url)?);
    }
    let root_cert = match &pem.ca {
        // redis replaces the roots with the given ones: give it the system's and the CA.
        Some(ca) => {
            let mut roots = system_roots_pem();
            roots.extend_from_slice(ca);
            Some(roots)
        }
        None => None,
    };
    let client_tls = pem
        .identity
        .as_ref()
        .map(|(cert, key)| redis::ClientTlsConfig {
            client_cert: cert.clone(),
            client_key: key.clone(),
        });
    refuse_insecure(redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )?)
}

/// A `rediss://…/#insecure` URL asks for no certificate checks: refused, never obeyed.
fn refuse_insecure(client: redis::Client) -> redis::RedisResult<redis::Client> {
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::TcpTls { insecure: true, .. } => Err(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "REDIS_URL asks for #insecure: sluice never switches certificate checks off (set REDIS_CA_FILE instead)",
        ))),
        _ => Ok(client),
    }
}

/// `host:port` of a Redis client, for error lines.
pub fn redis_host(client: &redis::Client) -> String {
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port)
        | redis::ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        redis::ConnectionAddr::Unix(path) => path.display().to_string(),
        _ => "redis".to_owned(),
    }
}

/// The system's trusted roots as PEM (unreadable ones are skipped, as rustls-native-certs
/// reports them one by one).
fn system_roots_pem() -> Vec<u8> {
    let mut pem = Vec::new();
    for cert in rustls_native_certs::load_native_certs().certs {
        let body = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    pem
}
