//! The `rabbitwatch` command line: parses arguments, sets up the allocator and logging, and maps
//! outcomes to exit codes. What each subcommand does is elsewhere: the daemon is `app::run`, every
//! other subcommand is in `rabbitwatch::cli`.

use std::ffi::OsStr;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use rabbitwatch::http::NewSilence;
use rabbitwatch::{app, cli, config};

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
        /// Watch only the clusters whose name hashes to shard i of n (n replicas, same config).
        #[arg(long, value_name = "i/n", env = "RABBITWATCH_SHARD")]
        shard: Option<config::Shard>,
    },
    /// Validate the config and print every error with file:line:col.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Also print which clusters shard i of n would watch.
        #[arg(long, value_name = "i/n", env = "RABBITWATCH_SHARD")]
        shard: Option<config::Shard>,
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
    /// Translate the rule files for another engine.
    Rules {
        #[command(subcommand)]
        action: RulesAction,
    },
    /// Rule unit tests.
    Test {
        #[command(subcommand)]
        what: TestWhat,
    },
    /// Notifications that could not be delivered (through the daemon's API).
    Deadletters {
        #[command(subcommand)]
        action: DeadlettersAction,
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Daemon base URL [default: http://<server.listen from the config>]
        #[arg(long, global = true)]
        url: Option<String>,
    },
    /// Silences: mute matching alerts for a while (through the daemon's API).
    Silence {
        #[command(subcommand)]
        action: SilenceAction,
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Daemon base URL [default: http://<server.listen from the config>]
        #[arg(long, global = true)]
        url: Option<String>,
    },
    /// Send a test notification through a configured receiver.
    Notify {
        #[command(subcommand)]
        action: NotifyAction,
    },
}

#[derive(Subcommand)]
enum TestWhat {
    /// Run rule test files (synthetic series, expected alerts), like `promtool test rules`.
    Rules {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RulesAction {
    /// Print the rule files as a Prometheus rule file over rabbitwatch's metrics. What cannot be
    /// translated is said on stderr per rule; exit status 3 when something was dropped.
    Export {
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Config whose rule files are exported when no FILE is given.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Rule files to export instead of the config's.
        files: Vec<PathBuf>,
    },
    /// Convert rule test files (`rabbitwatch test rules`) into promtool tests over the exported
    /// rules: DIR/<name>.rules.yaml and DIR/<name>.test.yaml, for `promtool test rules`.
    ExportTests {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    Prometheus,
}

#[derive(Subcommand)]
enum DeadlettersAction {
    /// List dead letters.
    List,
    /// Put a dead letter back into the outbox for delivery.
    Replay { id: u64 },
}

#[derive(Subcommand)]
enum SilenceAction {
    /// Add a silence: every matcher (name=value, name!=value, name=~regex, name!~regex) must hold.
    Add {
        #[arg(long = "matcher", short = 'm', required = true)]
        matchers: Vec<String>,
        #[arg(long, default_value = "2h")]
        duration: String,
        #[arg(long, default_value = "")]
        comment: String,
        #[arg(long, env = "USER", default_value = "")]
        created_by: String,
    },
    /// List silences (active and expired).
    List,
    /// End a silence now.
    Expire { id: String },
}

#[derive(Subcommand)]
enum NotifyAction {
    /// Deliver a synthetic firing notification to RECEIVER now (no retries) and report the outcome.
    Test {
        #[arg(long)]
        receiver: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tune_allocator();
    // One crypto provider for every TLS user in the process (reqwest); see docs/crates.md.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Cli::parse();
    init_tracing(args.log_format);
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sets glibc's allocator up for a process whose big allocations are one cycle's listing, samples and
/// views (tens of MB at 100k queues), all freed a cycle later. By default glibc raises its mmap
/// threshold after the first such free, so later ones come from the heap and arenas that it keeps at
/// their high-water mark, and it gives each busy thread an arena of its own. A fixed 1 MiB threshold
/// returns big blocks to the system when they are freed, and two arenas are plenty for a daemon
/// whose work is one scrape per cluster and a few HTTP requests. The threshold stays above
/// `export::CHUNK_BYTES`: /metrics pieces mapped and unmapped one by one made a 100k-queue scrape
/// take 1.5-2x as long. Measured side by side at 100k fixture queues (docs/performance.md): peak
/// RSS 275 -> 202 MB with the same CPU and /metrics times. An operator's own `MALLOC_ARENA_MAX` /
/// `MALLOC_MMAP_THRESHOLD_` win: nothing is changed then.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    const MMAP_THRESHOLD: usize = 1 << 20;
    const _: () = assert!(rabbitwatch::export::CHUNK_BYTES * 2 <= MMAP_THRESHOLD);
    if std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
    {
        return;
    }
    // SAFETY: mallopt only changes allocator parameters; it is called before any other thread
    // exists, and a refused value (return 0) leaves glibc's default in place, which is harmless.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RABBITWATCH_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        // lapin logs each channel the broker closes as an error, the canary's expected ones too; the
        // canary reports what went wrong itself (`probe_error`, its detail, its log line).
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lapin=off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let colour = log_colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            );
            builder.with_ansi(colour).init();
        }
        // For machines, wherever it goes.
        LogFormat::Json => builder.with_ansi(false).json().flatten_event(true).init(),
    }
}

/// Colour only for a person watching the logs come in (stderr is a terminal), and never when
/// `NO_COLOR` is set to anything non-empty (no-color.org). tracing-subscriber's own default honours
/// `NO_COLOR` but colours files and pipes too, which leaves escape codes in log files and collectors.
fn log_colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(args: Cli) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Run { config, shard } => {
            let mut cfg = match cli::load_config(config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            if let Some(shard) = shard {
                let others = cfg.keep_shard(shard);
                let mine: Vec<&str> = cfg.clusters.iter().map(|c| c.name.as_str()).collect();
                if mine.is_empty() {
                    tracing::warn!(%shard, left_to_other_shards = ?others, "this shard takes none of the configured clusters: it watches nothing");
                } else {
                    tracing::info!(%shard, clusters = ?mine, left_to_other_shards = ?others, "watching this shard's clusters");
                }
            }
            runtime()?.block_on(app::run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config, shard } => cli::check(config, shard),
        Command::Test {
            what: TestWhat::Rules { files },
        } => cli::test_rules(&files),
        Command::Rules {
            action:
                RulesAction::Export {
                    format: ExportFormat::Prometheus,
                    config,
                    files,
                },
        } => cli::rules_export(config, &files),
        Command::Rules {
            action: RulesAction::ExportTests { out, files },
        } => cli::rules_export_tests(&files, &out),
        Command::Status {
            config,
            url,
            watch,
            interval,
        } => match cli::Daemon::locate_read_only(config, url) {
            Ok(daemon) => runtime()?.block_on(cli::status(&daemon, watch, interval)),
            Err(code) => Ok(code),
        },
        Command::Silence {
            action,
            config,
            url,
        } => {
            let daemon = match cli::Daemon::locate(config, url) {
                Ok(d) => d,
                Err(code) => return Ok(code),
            };
            let request = match action {
                SilenceAction::Add {
                    matchers,
                    duration,
                    comment,
                    created_by,
                } => cli::SilenceRequest::Add(NewSilence {
                    matchers,
                    duration: Some(duration),
                    ends_at: None,
                    comment,
                    created_by,
                }),
                SilenceAction::List => cli::SilenceRequest::List,
                SilenceAction::Expire { id } => cli::SilenceRequest::Expire(id),
            };
            runtime()?.block_on(cli::silence(&daemon, request))
        }
        Command::Deadletters {
            action,
            config,
            url,
        } => {
            let daemon = match cli::Daemon::locate(config, url) {
                Ok(d) => d,
                Err(code) => return Ok(code),
            };
            runtime()?.block_on(async {
                match action {
                    DeadlettersAction::List => cli::deadletters_list(&daemon).await,
                    DeadlettersAction::Replay { id } => cli::deadletters_replay(&daemon, id).await,
                }
            })
        }
        Command::Notify {
            action: NotifyAction::Test { receiver, config },
        } => match cli::load_config(config) {
            Ok(cfg) => runtime()?.block_on(cli::notify_test(&cfg, &receiver)),
            Err(code) => Ok(code),
        },
        Command::Healthcheck { url } => runtime()?.block_on(cli::healthcheck(&url)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        let set = |v: &'static str| Some(OsStr::new(v));
        // (stderr is a terminal, NO_COLOR, colour)
        let cases = [
            (true, None, true),
            (true, set(""), true), // empty counts as unset (no-color.org)
            (true, set("1"), false),
            (true, set("0"), false), // any non-empty value
            (false, None, false),
            (false, set(""), false),
            (false, set("1"), false),
        ];
        for (terminal, no_color, want) in cases {
            assert_eq!(
                log_colour(terminal, no_color),
                want,
                "terminal={terminal} NO_COLOR={no_color:?}"
            );
        }
    }
}
