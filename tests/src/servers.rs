//! Private RabbitMQ and Redis instances for suites whose settings would disturb the shared
//! ones: TLS listeners with a CA the suite makes (scripts/tls-certs.sh), a short
//! `consumer_timeout`. Started by scripts/test-server.sh, stopped when dropped.

use anyhow::{Context, Result, bail};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A RabbitMQ node and a Redis server of one test, each with a plain and a TLS port.
pub struct Servers {
    dir: PathBuf,
    /// Plain AMQP port.
    pub amqp_port: u16,
    /// AMQPS port.
    pub amqps_port: u16,
    /// Plain Redis port (0 when the server takes TLS only).
    pub redis_port: u16,
    /// Redis TLS port.
    pub rediss_port: u16,
}

/// What to start.
#[derive(Default)]
pub struct Options<'a> {
    /// Lines added to the node's rabbitmq.conf.
    pub rabbitmq_conf: &'a [&'a str],
    /// Redis takes TLS only: no plaintext port.
    pub redis_tls_only: bool,
    /// Arguments added to redis-server's command line (such as `--maxmemory 4mb`).
    pub redis_args: &'a [&'a str],
    /// Only Redis: the suite uses the shared broker.
    pub redis_only: bool,
}

impl Servers {
    /// Makes a CA and certificates, then starts both servers (each in its own directory under
    /// target/test-servers).
    pub fn start(name: &str, options: &Options<'_>) -> Result<Self> {
        let tag = uuid::Uuid::now_v7().simple().to_string();
        let dir = root()
            .join("target/test-servers")
            .join(format!("{name}-{}", &tag[20..]));
        std::fs::create_dir_all(&dir)?;
        script("tls-certs.sh", &[dir.join("tls").to_str().context("path")?])?;
        // Plain and TLS AMQP, Erlang distribution, plain and TLS Redis.
        let ports: [u16; 5] = free_ports()?;
        let dist_port = ports[2];
        let servers = Self {
            dir,
            amqp_port: ports[0],
            amqps_port: ports[1],
            redis_port: if options.redis_tls_only { 0 } else { ports[3] },
            rediss_port: ports[4],
        };
        let rabbit = servers.dir.join("rabbitmq");
        let redis = servers.dir.join("redis");
        for sub in [&rabbit, &redis] {
            std::fs::create_dir_all(sub)?;
            std::os::unix::fs::symlink(servers.dir.join("tls"), sub.join("tls"))?;
        }
        let mut args = vec![
            "rabbitmq".to_owned(),
            path(&rabbit)?,
            servers.amqp_port.to_string(),
            servers.amqps_port.to_string(),
            dist_port.to_string(),
        ];
        args.extend(options.rabbitmq_conf.iter().map(|l| (*l).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if !options.redis_only {
            script("test-server.sh", &args)?;
        }
        let mut args = vec![
            "redis".to_owned(),
            path(&redis)?,
            servers.redis_port.to_string(),
            servers.rediss_port.to_string(),
        ];
        args.extend(options.redis_args.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        script("test-server.sh", &args)?;
        Ok(servers)
    }

    /// A file of the test CA's set: `ca.pem`, `other-ca.pem`, `client.pem`, `client.key`.
    pub fn tls_file(&self, name: &str) -> String {
        self.dir.join("tls").join(name).display().to_string()
    }

    /// `amqp://` to the plain port.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@localhost:{}/%2f", self.amqp_port)
    }

    /// `amqps://` to the TLS port.
    pub fn amqps_url(&self) -> String {
        format!("amqps://guest:guest@localhost:{}/%2f", self.amqps_port)
    }

    /// `redis://` to the plain port.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.redis_port)
    }

    /// `rediss://` to the TLS port.
    pub fn rediss_url(&self) -> String {
        format!("rediss://localhost:{}/", self.rediss_port)
    }

    /// Runs the node's rabbitmqctl.
    pub fn rabbitmqctl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(self.dir.join("rabbitmq/bin/rabbitmqctl"))
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "rabbitmqctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for sub in ["rabbitmq", "redis"] {
            if let Ok(dir) = path(&self.dir.join(sub)) {
                let _ = script("test-server.sh", &["stop", &dir]);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn path(p: &Path) -> Result<String> {
    Ok(p.to_str().context("non-UTF-8 path")?.to_owned())
}

fn script(name: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(root().join("scripts").join(name))
        .args(args)
        .output()
        .with_context(|| format!("running scripts/{name}"))?;
    if !out.status.success() {
        bail!(
            "scripts/{name} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Ports free now, all held until each is known so none is handed out twice.
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()?;
    ports.try_into().map_err(|_| anyhow::anyhow!("port count"))
}
