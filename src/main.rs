//! The `rabbitwatch` command line: parses arguments, sets up logging, maps outcomes to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use rabbitwatch::config::{self, ConfigError};
use rabbitwatch::{app, console, http::QueuesBody};

#[derive(Parser)]
#[command(
    name = "rabbitwatch",
    version,
    about = "Queue-health alerting for RabbitMQ"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "RABBITWATCH_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// Config file [default: $RABBITWATCH_CONFIG, else ./rabbitwatch.yaml]
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate the config and print every error with file:line:col.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Show a table of watched queues from the running daemon.
    Status {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Daemon base URL [default: http://<server.listen from the config>]
        #[arg(long)]
        url: Option<String>,
        /// Refresh until interrupted.
        #[arg(long)]
        watch: bool,
        /// Refresh interval with --watch.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// Exit 0 if the daemon's /healthz answers 200, else 1 (for container HEALTHCHECKs).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:9488/healthz")]
        url: String,
    },
}

fn main() -> ExitCode {
    // One crypto provider for every TLS user in the process (reqwest); see CRATES.md.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RABBITWATCH_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn load(path: Option<PathBuf>) -> Result<config::Config, ExitCode> {
    let path = config::resolve_path(path);
    config::load(&path).map_err(|e| {
        match e {
            ConfigError::Invalid(diags) => {
                for d in &diags {
                    eprintln!("{d}");
                }
                eprintln!("{} error(s); nothing was started", diags.len());
            }
            other => eprintln!("error: {other}"),
        }
        ExitCode::FAILURE
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            let cfg = match load(config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            runtime()?.block_on(app::run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => match load(config) {
            Ok(cfg) => {
                println!(
                    "{}: ok ({} cluster(s), listen {})",
                    cfg.source.display(),
                    cfg.clusters.len(),
                    cfg.server.listen
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(code) => Ok(code),
        },
        Command::Status {
            config,
            url,
            watch,
            interval,
        } => {
            let base = match url {
                Some(u) => u.trim_end_matches('/').to_string(),
                None => match load(config) {
                    Ok(cfg) => format!("http://{}", cfg.server.listen),
                    Err(code) => return Ok(code),
                },
            };
            runtime()?.block_on(status(&base, watch, interval))
        }
        Command::Healthcheck { url } => runtime()?.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?;
            match client.get(&url).send().await {
                Ok(r) if r.status().is_success() => Ok(ExitCode::SUCCESS),
                Ok(r) => {
                    eprintln!(
                        "unhealthy: {url} answered {}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    );
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => {
                    eprintln!("unhealthy: {url}: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }),
    }
}

async fn status(base: &str, watch: bool, interval: Duration) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = format!("{base}/api/v1/queues");
    loop {
        let body: QueuesBody = client
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| {
                format!("cannot reach the daemon at {url}; is `rabbitwatch run` running?")
            })?
            .json()
            .await
            .with_context(|| format!("unexpected answer from {url}"))?;
        let table = console::render_table(body.queues);
        if watch {
            // Clear the screen and home the cursor, like `watch`.
            print!("\x1b[2J\x1b[H{table}");
        } else {
            print!("{table}");
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}
