//! What a failed TLS connection failed on, read from the driver's error chain, so that the
//! log, `/readyz` and `dispatcher status` all say it in one line that names the server.

use super::Service;
use rustls::{AlertDescription, CertificateError};
use std::error::Error as StdError;
use std::sync::Arc;

/// Why a TLS session could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// The other side does not speak TLS: most likely a plaintext port.
    NotTls,
    /// The server's certificate is signed by no CA trusted here.
    UnknownIssuer,
    /// The server's certificate is not valid for the host name in the URL.
    NameMismatch,
    /// The server's certificate has expired or is not valid yet.
    Expired,
    /// The server ended the handshake with an alert (it refused our certificate, or wanted one).
    Alert(String),
    /// The server's certificate is unacceptable for another reason.
    BadCertificate(String),
    /// Any other handshake failure.
    Handshake(String),
}

impl TlsFailure {
    /// The line for a failure talking to `service` at `host`, with what fixes it where known.
    pub fn line(&self, service: Service, host: &str) -> String {
        format!(
            "TLS to {} at {host} failed: {}",
            service.name(),
            self.describe(service)
        )
    }

    fn describe(&self, service: Service) -> String {
        match self {
            Self::NotTls => {
                "the server does not speak TLS (a plaintext port? use a TLS port, or a non-TLS URL on purpose)".into()
            }
            Self::UnknownIssuer => format!(
                "its certificate is signed by an unknown issuer (set {} to the CA that signed it)",
                service.var("CA")
            ),
            Self::NameMismatch => {
                "its certificate is not valid for this host name (name mismatch)".into()
            }
            Self::Expired => "its certificate has expired or is not valid yet".into(),
            Self::Alert(alert) => format!(
                "the server refused the handshake ({alert}; does it require a client certificate? set {} and {})",
                service.var("CERT"),
                service.var("KEY")
            ),
            Self::BadCertificate(why) => format!("its certificate is refused: {why}"),
            Self::Handshake(why) => format!("handshake failed: {why}"),
        }
    }

    fn from_rustls(error: &rustls::Error) -> Self {
        match error {
            rustls::Error::InvalidCertificate(certificate) => match certificate {
                CertificateError::UnknownIssuer => Self::UnknownIssuer,
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => Self::NameMismatch,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => Self::Expired,
                other => Self::BadCertificate(format!("{other:?}")),
            },
            rustls::Error::AlertReceived(alert) => Self::Alert(alert_name(*alert)),
            // A plaintext server answers the ClientHello with its own bytes (AMQP's protocol
            // header, a Redis error line), which are no TLS record.
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                Self::NotTls
            }
            other => Self::Handshake(other.to_string()),
        }
    }
}

fn alert_name(alert: AlertDescription) -> String {
    match alert {
        AlertDescription::CertificateRequired => "certificate required".into(),
        AlertDescription::BadCertificate => "bad certificate".into(),
        AlertDescription::UnknownCA => "unknown CA".into(),
        AlertDescription::HandshakeFailure => "handshake failure".into(),
        other => format!("{other:?}"),
    }
}

/// The TLS failure somewhere in `error`'s chain, if it is one. Drivers wrap rustls's error in
/// an `io::Error`, whose `source()` skips the error it wraps, so each one is opened too.
pub fn tls_failure(error: &(dyn StdError + 'static)) -> Option<TlsFailure> {
    let mut next = Some(error);
    while let Some(current) = next {
        if let Some(rustls) = current.downcast_ref::<rustls::Error>() {
            return Some(TlsFailure::from_rustls(rustls));
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(found) = tls_failure(inner)
        {
            return Some(found);
        }
        // redis hands out its cause as the `Arc` it keeps it in.
        if let Some(shared) = current.downcast_ref::<Arc<dyn StdError + Send + Sync>>()
            && let Some(found) = tls_failure(&**shared)
        {
            return Some(found);
        }
        next = current.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_found_through_io_errors_and_named() {
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, unknown);
        let wrapped = std::io::Error::other(io);
        assert_eq!(tls_failure(&wrapped), Some(TlsFailure::UnknownIssuer));
        assert_eq!(
            TlsFailure::UnknownIssuer.line(Service::Redis, "cache.internal:6380"),
            "TLS to redis at cache.internal:6380 failed: its certificate is signed by an unknown issuer (set REDIS_CA_FILE to the CA that signed it)"
        );
        let plain = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        assert_eq!(tls_failure(&plain), Some(TlsFailure::NotTls));
        let shared: Arc<dyn StdError + Send + Sync> = Arc::new(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
        ));
        let redis = redis::RedisError::from(std::io::Error::other("x"));
        assert_eq!(tls_failure(&redis), None);
        let in_arc: &(dyn StdError + 'static) = &shared;
        assert_eq!(tls_failure(in_arc), Some(TlsFailure::NameMismatch));
        let other = std::io::Error::other("connection refused");
        assert_eq!(tls_failure(&other), None);
    }
}
