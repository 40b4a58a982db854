//! The `dispatcher` binary: `serve` (default), `publish`, `status`, `redrive`, `render-job`.

use anyhow::Context as _;
use clap::{ArgGroup, Parser, Subcommand};
use sluice_dispatcher::publish::{Source, publish};
use sluice_dispatcher::redrive::{self, Selector};
use sluice_dispatcher::{Config, job, metrics, serve, shutdown, status};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::BufReader;

/// sluice's dispatcher: RabbitMQ batches in, one Job per batch out.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run until SIGTERM/SIGINT, then finish in-flight work and exit 0 (the default).
    Serve,
    /// Push messages: COUNT generated envelopes, or JSON lines from --file (`-` for stdin).
    Publish {
        /// How many messages to generate.
        #[arg(short = 'n', long, default_value_t = 100, conflicts_with = "file")]
        count: u64,
        /// Kernel of generated messages.
        #[arg(short, long, default_value = "modsum")]
        kernel: String,
        /// Input of generated messages, as JSON (default: the kernel's defaults).
        #[arg(short, long)]
        input: Option<String>,
        /// Ids of generated messages are PREFIX-0, PREFIX-1, …
        #[arg(long, default_value = "msg")]
        id_prefix: String,
        /// Publish each line of this file (or `-` for stdin) as one message.
        #[arg(short, long)]
        file: Option<PathBuf>,
    },
    /// Show queue depth, Redis reachability, batches by state and owner, Jobs in flight and
    /// result counts; exits 1 when Redis is unreachable.
    Status,
    /// Put dead letters back on the queue, each once: --all, or those of --id or --batch.
    #[command(group(ArgGroup::new("which").required(true).args(["all", "id", "batch"])))]
    Redrive {
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// The dead letters of these message ids.
        #[arg(long, num_args = 1.., value_name = "ID")]
        id: Vec<String>,
        /// The dead letters of messages that arrived in these batches (or died in them).
        #[arg(long, num_args = 1.., value_name = "BATCH")]
        batch: Vec<String>,
        /// List what would be redriven, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the Job the dispatcher would create for a batch, as YAML.
    RenderJob {
        /// The batch id to render the Job for.
        #[arg(long, default_value = "example")]
        batch_id: String,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, causes joined, whatever RUST_BACKTRACE says: refusals must be readable.
            eprintln!("dispatcher: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let config = Config::from_env().context("reading the environment")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => run_server(config).await,
        Command::Publish {
            count,
            kernel,
            input,
            id_prefix,
            file,
        } => {
            let source: Source<Box<dyn tokio::io::AsyncBufRead + Unpin>> = match file {
                Some(path) if path.as_os_str() == "-" => {
                    Source::Lines(Box::new(BufReader::new(tokio::io::stdin())))
                }
                Some(path) => {
                    let file = tokio::fs::File::open(&path)
                        .await
                        .with_context(|| format!("opening {}", path.display()))?;
                    Source::Lines(Box::new(BufReader::new(file)))
                }
                None => {
                    let input = input
                        .as_deref()
                        .map(serde_json::from_str)
                        .transpose()
                        .context("--input is not JSON")?;
                    Source::Generated {
                        count,
                        kernel,
                        input: input.unwrap_or(serde_json::Value::Null),
                        id_prefix,
                    }
                }
            };
            let published = publish(&config.broker, source).await?;
            println!(
                "published {published} message(s) to queue {}",
                config.broker.queue
            );
            Ok(())
        }
        Command::Status => {
            let report = status::report(&config).await?;
            print!("{report}");
            // Scripts and probes see an unreachable Redis in the exit code too.
            if report.redis.is_err() {
                anyhow::bail!("Redis is unreachable");
            }
            Ok(())
        }
        Command::Redrive {
            all,
            id,
            batch,
            dry_run,
        } => {
            let selector = if all {
                Selector::All
            } else if id.is_empty() {
                Selector::Batches(batch)
            } else {
                Selector::Ids(id)
            };
            run_redrive(&config, &selector, dry_run).await
        }
        Command::RenderJob { batch_id } => {
            print!(
                "{}",
                serde_yaml_ng::to_string(&job::build(&config, &batch_id))?
            );
            Ok(())
        }
    }
}

async fn run_redrive(config: &Config, selector: &Selector, dry_run: bool) -> anyhow::Result<()> {
    if dry_run {
        print!("{}", redrive::plan(config, selector).await?);
        return Ok(());
    }
    match redrive::run(config, selector).await {
        Ok(summary) => {
            print!("{summary}");
            Ok(())
        }
        // Says itself when to try again.
        Err(e @ sluice_dispatcher::Error::RedriveLease { .. }) => Err(e.into()),
        Err(e) => Err(anyhow::Error::new(e).context(
            "redrive failed; run it again: a run first re-publishes what a failed one had taken",
        )),
    }
}

async fn run_server(config: Config) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal();
    let metrics = Arc::new(metrics::Metrics::new());
    let server = if config.service.metrics_addr.is_empty() {
        None
    } else {
        let listener = metrics::bind(&config.service.metrics_addr).await?;
        Some(tokio::spawn(metrics::serve(
            listener,
            Arc::clone(&metrics),
            shutdown.clone(),
        )))
    };
    let summary = serve::run(config, metrics, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(server) = server {
        server.await.context("metrics server task")??;
    }
    summary?;
    Ok(())
}
