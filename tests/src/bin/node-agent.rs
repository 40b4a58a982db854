//! The test-only node agent: runs the pods bound to its Node as local processes (see
//! `sluice_tests::node_agent` for its configuration). Stops on SIGTERM or ctrl-c.

use anyhow::Result;
use sluice_tests::node_agent;
use std::io::IsTerminal;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> Result<()> {
    // A container being started: becomes it (exec) and never returns.
    node_agent::exec_helper_if_requested();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let config = node_agent::Config::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let stop = CancellationToken::new();
        let mut term = signal(SignalKind::terminate())?;
        let on_signal = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("stopping");
            on_signal.cancel();
        });
        node_agent::run(config, stop).await
    })
}
