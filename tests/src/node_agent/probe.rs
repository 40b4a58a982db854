//! Readiness probes: httpGet (`GET http://<pod ip>:<port><path>`, 2xx or 3xx) and tcpSocket,
//! named ports resolved from the container's ports; exec and gRPC probes are not modelled
//! (such a container is ready once it runs).

use super::containers::secs;
use super::pod::PodRun;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

impl PodRun {
    /// Runs the readiness probes that are due.
    pub(super) async fn probe(&mut self) {
        let now = Instant::now();
        for r in &mut self.ctrs {
            let (Some(at), Some(p)) = (r.probe_at, r.spec.readiness_probe.as_ref()) else {
                continue;
            };
            if at > now || r.pid.is_none() {
                continue;
            }
            let port = |port: &IntOrString| match port {
                IntOrString::Int(n) => u16::try_from(*n).ok(),
                IntOrString::String(name) => {
                    let named = r
                        .spec
                        .ports
                        .iter()
                        .flatten()
                        .find(|cp| cp.name.as_deref() == Some(name));
                    named.and_then(|cp| u16::try_from(cp.container_port).ok())
                }
            };
            let timeout = secs(p.timeout_seconds, 1);
            let ok = match (&p.http_get, &p.tcp_socket) {
                (Some(h), _) => match port(&h.port) {
                    Some(port) => {
                        http_ok(&self.ip, port, h.path.as_deref().unwrap_or("/"), timeout).await
                    }
                    None => false,
                },
                (None, Some(t)) => match port(&t.port) {
                    Some(port) => matches!(
                        tokio::time::timeout(timeout, TcpStream::connect((self.ip.as_str(), port)))
                            .await,
                        Ok(Ok(_))
                    ),
                    None => false,
                },
                (None, None) => true,
            };
            if ok {
                (r.fails, r.s.ready) = (0, true);
            } else {
                r.fails += 1;
                r.s.ready &= r.fails < p.failure_threshold.unwrap_or(3);
            }
            r.probe_at = Some(Instant::now() + secs(p.period_seconds, 10));
        }
    }
}

/// `GET http://<ip>:<port><path>` answers 2xx or 3xx within `timeout`.
async fn http_ok(ip: &str, port: u16, path: &str, timeout: Duration) -> bool {
    let get = async {
        let mut s = TcpStream::connect((ip, port)).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await?;
        let (mut head, mut buf) = (Vec::new(), [0u8; 256]);
        while head.len() < 12 {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(head)
    };
    let Ok(Ok(head)) = tokio::time::timeout(timeout, get).await else {
        return false;
    };
    let code = std::str::from_utf8(&head)
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .and_then(|c| c.parse::<u16>().ok());
    code.is_some_and(|c| (200..400).contains(&c))
}
