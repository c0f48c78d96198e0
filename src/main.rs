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

fn list_or_none(names: &[impl AsRef<str>]) -> String {
    if names.is_empty() {
        return "none".to_string();
    }
    names
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ")
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
        Command::Run { config, shard } => {
            let mut cfg = match load(config) {
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
        Command::Check { config, shard } => match load(config) {
            Ok(mut cfg) => {
                if let Err(errs) = app::build_receivers(&cfg) {
                    for e in &errs {
                        eprintln!("{}: {e}", cfg.source.display());
                    }
                    eprintln!("{} error(s); nothing was started", errs.len());
                    return Ok(ExitCode::FAILURE);
                }
                println!(
                    "{}: ok ({} cluster(s), {} rule(s), {} receiver(s), listen {})",
                    cfg.source.display(),
                    cfg.clusters.len(),
                    cfg.rules.len(),
                    cfg.receivers.len(),
                    cfg.server.listen
                );
                if let Some(shard) = shard {
                    let others = cfg.keep_shard(shard);
                    let mine: Vec<&str> = cfg.clusters.iter().map(|c| c.name.as_str()).collect();
                    println!(
                        "shard {shard} watches: {}; left to other shards: {}",
                        list_or_none(&mine),
                        list_or_none(&others)
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(code) => Ok(code),
        },
        Command::Test {
            what: TestWhat::Rules { files },
        } => Ok(test_rules(&files)),
        Command::Deadletters {
            action,
            config,
            url,
        } => {
            let (base, token) = match daemon_target(config, url) {
                Ok(t) => t,
                Err(code) => return Ok(code),
            };
            runtime()?.block_on(deadletters(&base, action, token))
        }
        Command::Silence {
            action,
            config,
            url,
        } => {
            let (base, token) = match daemon_target(config, url) {
                Ok(t) => t,
                Err(code) => return Ok(code),
            };
            runtime()?.block_on(silence(&base, action, token))
        }
        Command::Notify {
            action: NotifyAction::Test { receiver, config },
        } => {
            let cfg = match load(config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            runtime()?.block_on(notify_test(&cfg, &receiver))
        }
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

/// The daemon's base URL and API token, from `--url` or the config's `server.listen`.
fn daemon_target(
    config: Option<PathBuf>,
    url: Option<String>,
) -> Result<(String, Option<String>), ExitCode> {
    let cfg = match (&url, config) {
        (Some(_), None) => None,
        (_, config) => Some(load(config)?),
    };
    let base = match url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => format!(
            "http://{}",
            cfg.as_ref().map(|c| c.server.listen).expect("loaded above")
        ),
    };
    let token = cfg
        .and_then(|c| c.server.api_token.map(|t| t.expose().to_string()))
        .or_else(|| std::env::var("RABBITWATCH_API_TOKEN").ok());
    Ok((base, token))
}

async fn silence(
    base: &str,
    action: SilenceAction,
    token: Option<String>,
) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let auth = |req: reqwest::RequestBuilder| match &token {
        Some(t) => req.bearer_auth(t),
        None => req,
    };
    let url = format!("{base}/api/v1/silences");
    let resp = match action {
        SilenceAction::Add {
            matchers,
            duration,
            comment,
            created_by,
        } => {
            let body = rabbitwatch::http::NewSilence {
                matchers,
                duration: Some(duration),
                ends_at: None,
                comment,
                created_by,
            };
            auth(client.post(&url).json(&body)).send().await
        }
        SilenceAction::List => client.get(&url).send().await,
        SilenceAction::Expire { id } => auth(client.delete(format!("{url}/{id}"))).send().await,
    }
    .with_context(|| format!("cannot reach the daemon at {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        eprintln!("{status}: {text}");
        return Ok(ExitCode::FAILURE);
    }
    match serde_json::from_str::<rabbitwatch::http::SilencesBody>(&text) {
        Ok(list) => {
            let now = rabbitwatch::domain::Timestamp::now().0;
            if list.silences.is_empty() {
                println!("no silences");
            }
            for s in list.silences {
                let state = if s.is_active(now) {
                    "active"
                } else {
                    "expired"
                };
                let left = humantime::format_duration(Duration::from_secs(
                    (s.ends_at - now).max(0) as u64 / 1000,
                ));
                println!(
                    "{}  {state:<7} ends in {left:<10} {}  {}",
                    s.id,
                    s.matchers.join(","),
                    console::terminal_safe(&s.comment)
                );
            }
        }
        Err(_) if text.is_empty() => println!("ok"),
        Err(_) => println!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn test_rules(files: &[PathBuf]) -> ExitCode {
    let (mut passed, mut failed) = (0, 0);
    for f in files {
        match rabbitwatch::ruletest::run_file(f) {
            Ok(report) => {
                passed += report.passed;
                failed += report.failures.len();
                for failure in &report.failures {
                    println!("FAIL {}: {failure}", report.file.display());
                }
                println!(
                    "{}: {} passed, {} failed",
                    report.file.display(),
                    report.passed,
                    report.failures.len()
                );
            }
            Err(diags) => {
                failed += 1;
                for d in diags {
                    println!("{d}");
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn deadletters(
    base: &str,
    action: DeadlettersAction,
    token: Option<String>,
) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    match action {
        DeadlettersAction::List => {
            let url = format!("{base}/api/v1/deadletters");
            let body: rabbitwatch::http::DeadLettersBody = client
                .get(&url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .with_context(|| format!("cannot reach the daemon at {url}"))?
                .json()
                .await?;
            if body.dead_letters.is_empty() {
                println!("no dead letters");
            }
            for d in body.dead_letters {
                let n = &d.letter.notification;
                let first = n.alerts.first();
                println!(
                    "{:>6}  {:<16} {:<10} attempts={} alerts={} correlation_id={} error={}",
                    d.id,
                    console::terminal_safe(&n.receiver),
                    d.letter.reason,
                    d.letter.attempts,
                    n.alerts.len(),
                    first.map_or("-", |a| a.correlation_id.as_str()),
                    console::terminal_safe(&d.letter.error)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DeadlettersAction::Replay { id } => {
            let url = format!("{base}/api/v1/deadletters/{id}/replay");
            let mut req = client.post(&url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req
                .send()
                .await
                .with_context(|| format!("cannot reach the daemon at {url}"))?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if status.is_success() {
                println!("replaying dead letter {id}: {text}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("replay of {id} refused: {status}: {text}");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

async fn notify_test(cfg: &config::Config, name: &str) -> anyhow::Result<ExitCode> {
    use rabbitwatch::domain::{AlertStatus, AlertSummary, GroupStatus, Notification, fingerprint};
    use std::collections::BTreeMap;
    let receivers = app::build_receivers(cfg).map_err(|e| {
        anyhow::anyhow!(
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    let Some(r) = receivers.iter().find(|r| r.name() == name) else {
        let names: Vec<&str> = receivers.iter().map(|r| r.name()).collect();
        eprintln!(
            "no receiver named {name:?}; configured: {}",
            names.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    };
    let now = rabbitwatch::domain::Timestamp::now().0;
    let id = uuid::Uuid::now_v7().to_string();
    let labels = BTreeMap::from([
        (
            "alertname".to_string(),
            "RabbitwatchTestNotification".to_string(),
        ),
        ("severity".to_string(), "info".to_string()),
        ("cluster".to_string(), "test".to_string()),
    ]);
    let alert = AlertSummary {
        status: AlertStatus::Firing,
        annotations: BTreeMap::from([(
            "summary".to_string(),
            "Test notification from rabbitwatch notify test".to_string(),
        )]),
        fingerprint: fingerprint(&labels),
        labels: labels.clone(),
        starts_at: now,
        ends_at: None,
        correlation_id: id.clone(),
        values: BTreeMap::new(),
    };
    let n = Notification::new(
        name,
        "test",
        GroupStatus::Firing,
        BTreeMap::new(),
        vec![alert],
        1,
        false,
        now,
    );
    match r.deliver(&n).await {
        Ok(_) => {
            println!("delivered to {name} ({}), correlation_id={id}", r.kind());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let kind = if e.is_retriable() {
                "transient (the daemon would retry)"
            } else {
                "permanent (the daemon would dead-letter it)"
            };
            eprintln!("delivery to {name} failed, {kind}: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
