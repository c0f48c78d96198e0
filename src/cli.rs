//! The subcommands that print or talk to a running daemon: `check`, `test rules`, `rules export`,
//! `status`, `silence`, `deadletters`, `notify test` and `healthcheck`.
//!
//! Owns what a user sees of these commands (stdout, stderr) and the exit code each one ends with.
//! Arguments arrive already parsed (`main` owns clap); the daemon's own wiring is `app`'s, and
//! nothing here runs inside the daemon.

mod table;

use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::config::{self, ConfigError};
use crate::http::QueuesBody;
use crate::{app, domain};

/// A command's standard output, written with `write!`/`writeln!`. Every write is flushed, so an
/// error surfaces where it happens instead of in the flush at exit, where it would be lost.
///
/// A reader that goes away (`rabbitwatch status | head -3`) has read all it wanted: the first broken
/// pipe marks the output closed, later writes are dropped, and the command ends as it would have,
/// with its own exit code and nothing on stderr, as `ls | head` does (`println!` panics there).
/// Dropping the output rather than stopping keeps a verdict honest: `test rules | head` still exits 1
/// when a test failed, for `set -o pipefail` scripts. Restoring SIGPIPE's default action instead would
/// end the process by a signal (status 141 in a shell, no destructors), not quietly with 0. Any other
/// write error, such as a full disk behind `>`, is an error.
struct Out<W: Write = io::Stdout> {
    w: W,
    closed: bool,
}

impl Out {
    fn stdout() -> Out {
        Out::to(io::stdout())
    }
}

impl<W: Write> Out<W> {
    fn to(w: W) -> Out<W> {
        Out { w, closed: false }
    }

    /// Whether the reader has gone away; a command that would go on printing (`status --watch`)
    /// stops here.
    fn closed(&self) -> bool {
        self.closed
    }

    /// What `write!` and `writeln!` call.
    fn write_fmt(&mut self, args: fmt::Arguments<'_>) -> anyhow::Result<()> {
        if self.closed {
            return Ok(());
        }
        match self.w.write_fmt(args).and_then(|()| self.w.flush()) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            other => other.context("cannot write to stdout"),
        }
    }
}

/// Loads and validates the config at `path` (or the default path). On failure every diagnostic has
/// been printed to stderr and the exit code to end with is returned.
pub fn load_config(path: Option<PathBuf>) -> Result<config::Config, ExitCode> {
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

/// `rabbitwatch check`: the config loads, every receiver builds; with a shard, which clusters it takes.
pub fn check(config: Option<PathBuf>, shard: Option<config::Shard>) -> anyhow::Result<ExitCode> {
    let mut out = Out::stdout();
    let mut cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if let Err(errs) = app::build_receivers(&cfg) {
        for e in &errs {
            eprintln!("{}: {e}", cfg.source.display());
        }
        eprintln!("{} error(s); nothing was started", errs.len());
        return Ok(ExitCode::FAILURE);
    }
    // Knowable from the config: probe rules whose selection leaves out every canary there is. (With
    // no canary configured at all, the default pack's canary rules are dormant, not mistaken: no
    // warning at every check.) What the stats mode cannot
    // supply (rates in depth-only mode) is known only once a cluster answers: the daemon warns then.
    let clusters: Vec<(&str, bool)> = cfg
        .clusters
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                cfg.probes.iter().any(|p| p.cluster == c.name),
            )
        })
        .collect();
    let any_probe = clusters.iter().any(|(_, has)| *has);
    for rule in cfg
        .rules
        .probe_rules_without_probes(&clusters)
        .into_iter()
        .filter(|_| any_probe)
    {
        eprintln!(
            "warning: {}:{}: rule {} (scope: probe) never has anything to judge: no cluster it selects has a probe: entry, so its fields are always unknown",
            rule.file.display(),
            rule.line,
            rule.alert
        );
    }
    writeln!(
        out,
        "{}: ok ({} cluster(s), {} rule(s), {} receiver(s), listen {})",
        cfg.source.display(),
        cfg.clusters.len(),
        cfg.rules.len(),
        cfg.receivers.len(),
        cfg.server.listen
    )?;
    if let Some(shard) = shard {
        let others = cfg.keep_shard(shard);
        let mine: Vec<&str> = cfg.clusters.iter().map(|c| c.name.as_str()).collect();
        writeln!(
            out,
            "shard {shard} watches: {}; left to other shards: {}",
            list_or_none(&mine),
            list_or_none(&others)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `rabbitwatch test rules`: runs every file, prints each failure and a count per file.
pub fn test_rules(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut out = Out::stdout();
    let (mut passed, mut failed) = (0, 0);
    for f in files {
        match crate::ruletest::run_file(f) {
            Ok(report) => {
                passed += report.passed;
                failed += report.failures.len();
                for failure in &report.failures {
                    writeln!(out, "FAIL {}: {failure}", report.file.display())?;
                }
                writeln!(
                    out,
                    "{}: {} passed, {} failed",
                    report.file.display(),
                    report.passed,
                    report.failures.len()
                )?;
            }
            Err(diags) => {
                failed += 1;
                for d in diags {
                    writeln!(out, "{d}")?;
                }
            }
        }
    }
    writeln!(out, "{passed} passed, {failed} failed")?;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Exit status of `rules export` when a part of some rule could not be carried over (said on
/// stderr); the output holds everything else. 1 stays "nothing was exported" (a rule file with
/// mistakes).
pub const EXIT_EXPORT_DROPPED: u8 = 3;

/// `rabbitwatch rules export --format prometheus [FILE…]`: the rule files (default: the config's)
/// as one Prometheus rule file on stdout; every piece not carried over is said on stderr, per rule.
pub fn rules_export(config: Option<PathBuf>, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut out = Out::stdout();
    let rules = if files.is_empty() {
        match load_config(config) {
            Ok(cfg) => cfg.rules,
            Err(code) => return Ok(code),
        }
    } else {
        let patterns: Vec<(String, Option<domain::Diagnostic>)> = files
            .iter()
            .map(|f| (f.to_string_lossy().into_owned(), None))
            .collect();
        match crate::rules::load_files(&patterns, std::path::Path::new(".")) {
            Ok(r) => r,
            Err(diags) => {
                for d in &diags {
                    eprintln!("{d}");
                }
                eprintln!("{} error(s); nothing was exported", diags.len());
                return Ok(ExitCode::FAILURE);
            }
        }
    };
    let mut sources: Vec<String> = Vec::new();
    for r in &rules.rules {
        let f = r.file.display().to_string();
        if !sources.contains(&f) {
            sources.push(f);
        }
    }
    let export = crate::rules::export::to_prometheus(&rules, &sources);
    for note in &export.notes {
        eprintln!("{note}");
    }
    write!(out, "{}", export.yaml)?;
    Ok(export_status(
        export.dropped_anything(),
        export.exported.len(),
        rules.len(),
    ))
}

fn export_status(dropped: bool, exported: usize, total: usize) -> ExitCode {
    if dropped {
        eprintln!(
            "{exported} of {total} rule(s) exported; something was dropped (above): exit status {EXIT_EXPORT_DROPPED}"
        );
        ExitCode::from(EXIT_EXPORT_DROPPED)
    } else {
        ExitCode::SUCCESS
    }
}

/// `rabbitwatch rules export-tests --out DIR TESTFILE…`: each rabbitwatch rule-test file as a
/// promtool test (`DIR/<name>.test.yaml`) over its rules exported (`DIR/<name>.rules.yaml`), for
/// `promtool test rules`. Checks that cannot agree (their rule was not exported exactly) are left
/// out and said on stderr.
pub fn rules_export_tests(files: &[PathBuf], dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let mut out = Out::stdout();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut failed = false;
    let mut dropped = false;
    for f in files {
        let stem = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "rules".to_string());
        let rules_name = format!("{stem}.rules.yaml");
        match crate::ruletest::to_promtool(f, &rules_name) {
            Ok(p) => {
                for note in &p.export.notes {
                    eprintln!("{note}");
                }
                for l in &p.left_out {
                    eprintln!("{l}");
                }
                dropped |= !p.left_out.is_empty() || p.export.dropped_anything();
                let rules_path = dir.join(&rules_name);
                let test_path = dir.join(format!("{stem}.test.yaml"));
                std::fs::write(&rules_path, &p.rules_yaml)
                    .with_context(|| format!("cannot write {}", rules_path.display()))?;
                std::fs::write(&test_path, &p.tests_yaml)
                    .with_context(|| format!("cannot write {}", test_path.display()))?;
                writeln!(out, "{}", test_path.display())?;
            }
            Err(diags) => {
                failed = true;
                for d in &diags {
                    eprintln!("{d}");
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else if dropped {
        ExitCode::from(EXIT_EXPORT_DROPPED)
    } else {
        ExitCode::SUCCESS
    })
}

/// A running daemon's API: its base URL and the token for mutating calls, if there is one.
pub struct Daemon {
    base: String,
    token: Option<String>,
}

impl Daemon {
    /// From `--url` or the config's `server.listen`; the token from the config, else
    /// `$RABBITWATCH_API_TOKEN`. A config that does not load has printed why: its exit code is returned.
    pub fn locate(config: Option<PathBuf>, url: Option<String>) -> Result<Daemon, ExitCode> {
        let cfg = match (&url, config) {
            (Some(_), None) => None,
            (_, config) => Some(load_config(config)?),
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
        Ok(Daemon { base, token })
    }

    /// From `--url`, else the config's `server.listen`; no token (for read-only commands).
    pub fn locate_read_only(
        config: Option<PathBuf>,
        url: Option<String>,
    ) -> Result<Daemon, ExitCode> {
        let base = match url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("http://{}", load_config(config)?.server.listen),
        };
        Ok(Daemon { base, token: None })
    }
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// `rabbitwatch status`: the queue table, once or (`watch`) every `interval` until Ctrl-C. With
/// `watch`, each table replaces the last on a terminal; into a file or a pipe they follow one another,
/// a blank line apart, without the screen-clearing codes that a terminal alone makes sense of.
pub async fn status(daemon: &Daemon, watch: bool, interval: Duration) -> anyhow::Result<ExitCode> {
    let mut out = Out::stdout();
    let redraw = io::stdout().is_terminal();
    let client = client()?;
    let url = format!("{}/api/v1/queues", daemon.base);
    loop {
        let body: QueuesBody = get_json(&client, &url).await?;
        let mut table = table::render_table(body.queues);
        let readers: crate::http::StreamConsumersBody =
            get_json(&client, &format!("{}/api/v1/stream_consumers", daemon.base)).await?;
        table.push_str(&table::render_stream_readers(&readers));
        table.push_str(&table::render_scalers(&scalers(&client, daemon).await?));
        table.push_str(&table::render_probes(&probes(&client, daemon).await?));
        if watch {
            if redraw {
                // Clear the screen and home the cursor, like `watch`.
                write!(out, "\x1b[2J\x1b[H{table}")?;
            } else {
                writeln!(out, "{table}")?;
            }
            if out.closed() {
                return Ok(ExitCode::SUCCESS);
            }
        } else {
            write!(out, "{table}")?;
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// The daemon's scalers (`GET /api/v1/scalers`).
async fn scalers(
    client: &reqwest::Client,
    daemon: &Daemon,
) -> anyhow::Result<Vec<table::ScalerRow>> {
    #[derive(serde::Deserialize)]
    struct Body {
        scalers: Vec<table::ScalerRow>,
    }
    let url = format!("{}/api/v1/scalers", daemon.base);
    let body: Body = get_json(client, &url).await?;
    Ok(body.scalers)
}

/// Every cluster's canaries (`GET /api/v1/status`), each with its cluster's name.
async fn probes(client: &reqwest::Client, daemon: &Daemon) -> anyhow::Result<Vec<table::ProbeRow>> {
    #[derive(serde::Deserialize)]
    struct Cluster {
        name: String,
        #[serde(default)]
        probes: Vec<table::ProbeRow>,
    }
    #[derive(serde::Deserialize)]
    struct Body {
        clusters: Vec<Cluster>,
    }
    let url = format!("{}/api/v1/status", daemon.base);
    let body: Body = get_json(client, &url).await?;
    Ok(body
        .clusters
        .into_iter()
        .flat_map(|c| {
            let cluster = c.name;
            c.probes.into_iter().map(move |mut p| {
                p.cluster = cluster.clone();
                p
            })
        })
        .collect())
}

/// GETs `url` from the daemon and reads its JSON answer.
async fn get_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
) -> anyhow::Result<T> {
    client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| {
            format!("cannot reach the daemon at {url}; is `rabbitwatch run` running?")
        })?
        .json()
        .await
        .with_context(|| format!("unexpected answer from {url}"))
}

/// What `rabbitwatch silence` asks of the daemon.
pub enum SilenceRequest {
    Add(crate::http::NewSilence),
    List,
    Expire(String),
}

/// `rabbitwatch silence add|list|expire`; prints the silences the daemon answers with.
pub async fn silence(daemon: &Daemon, request: SilenceRequest) -> anyhow::Result<ExitCode> {
    let mut out = Out::stdout();
    let client = client()?;
    let auth = |req: reqwest::RequestBuilder| match &daemon.token {
        Some(t) => req.bearer_auth(t),
        None => req,
    };
    let url = format!("{}/api/v1/silences", daemon.base);
    let resp = match request {
        SilenceRequest::Add(body) => auth(client.post(&url).json(&body)).send().await,
        SilenceRequest::List => client.get(&url).send().await,
        SilenceRequest::Expire(id) => auth(client.delete(format!("{url}/{id}"))).send().await,
    }
    .with_context(|| format!("cannot reach the daemon at {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        eprintln!("{status}: {text}");
        return Ok(ExitCode::FAILURE);
    }
    match serde_json::from_str::<crate::http::SilencesBody>(&text) {
        Ok(list) => {
            let now = domain::Timestamp::now().0;
            if list.silences.is_empty() {
                writeln!(out, "no silences")?;
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
                writeln!(
                    out,
                    "{}  {state:<7} ends in {left:<10} {}  {}",
                    s.id,
                    s.matchers.join(","),
                    table::terminal_safe(&s.comment)
                )?;
            }
        }
        Err(_) if text.is_empty() => writeln!(out, "ok")?,
        Err(_) => writeln!(out, "{text}")?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `rabbitwatch deadletters list`.
pub async fn deadletters_list(daemon: &Daemon) -> anyhow::Result<ExitCode> {
    let mut out = Out::stdout();
    let client = client()?;
    let url = format!("{}/api/v1/deadletters", daemon.base);
    let body: crate::http::DeadLettersBody = get_json(&client, &url).await?;
    if body.dead_letters.is_empty() {
        writeln!(out, "no dead letters")?;
    }
    for d in body.dead_letters {
        let n = &d.letter.notification;
        let what = match &n.scaling {
            Some(r) => format!("scaler={} sequence={}", r.scaler, r.sequence),
            None => format!(
                "alerts={} correlation_id={}",
                n.alerts.len(),
                n.alerts.first().map_or("-", |a| a.correlation_id.as_str())
            ),
        };
        writeln!(
            out,
            "{:>6}  {:<16} {:<10} attempts={} {} error={}",
            d.id,
            table::terminal_safe(&n.receiver),
            d.letter.reason,
            d.letter.attempts,
            table::terminal_safe(&what),
            table::terminal_safe(&d.letter.error)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `rabbitwatch deadletters replay ID`.
pub async fn deadletters_replay(daemon: &Daemon, id: u64) -> anyhow::Result<ExitCode> {
    let mut out = Out::stdout();
    let client = client()?;
    let url = format!("{}/api/v1/deadletters/{id}/replay", daemon.base);
    let mut req = client.post(&url);
    if let Some(t) = &daemon.token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach the daemon at {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if status.is_success() {
        writeln!(out, "replaying dead letter {id}: {text}")?;
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("replay of {id} refused: {status}: {text}");
        Ok(ExitCode::FAILURE)
    }
}

/// `rabbitwatch notify test`: one synthetic firing notification straight through receiver `name`
/// (no outbox, no retries), and what the daemon would have made of the outcome.
pub async fn notify_test(cfg: &config::Config, name: &str) -> anyhow::Result<ExitCode> {
    use crate::domain::{AlertStatus, AlertSummary, GroupStatus, Notification, fingerprint};
    use std::collections::BTreeMap;
    let mut out = Out::stdout();
    let receivers = app::receivers(cfg)?;
    let Some(r) = receivers.iter().find(|r| r.name() == name) else {
        let names: Vec<&str> = receivers.iter().map(|r| r.name()).collect();
        eprintln!(
            "no receiver named {name:?}; configured: {}",
            names.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    };
    let now = domain::Timestamp::now().0;
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
        labels,
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
            writeln!(
                out,
                "delivered to {name} ({}), correlation_id={id}",
                r.kind()
            )?;
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

/// `rabbitwatch healthcheck`: exit 0 if `url` answers 2xx; otherwise say why on stderr and exit 1.
pub async fn healthcheck(url: &str) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    match client.get(url).send().await {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts `room` writes, then fails every later one with `error`.
    struct Reader {
        written: Vec<u8>,
        room: usize,
        error: io::ErrorKind,
    }

    impl Write for Reader {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(self.error.into());
            }
            self.room -= 1;
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn out(room: usize, error: io::ErrorKind) -> Out<Reader> {
        Out::to(Reader {
            written: Vec::new(),
            room,
            error,
        })
    }

    #[test]
    fn a_reader_that_went_away_ends_the_output_quietly() {
        let mut out = out(1, io::ErrorKind::BrokenPipe);
        writeln!(out, "first").expect("written");
        assert!(!out.closed());
        writeln!(out, "second").expect("a broken pipe is not an error");
        assert!(out.closed());
        writeln!(out, "third").expect("nor is anything after it");
        assert_eq!(out.w.written, b"first\n");
    }

    #[test]
    fn other_write_errors_are_errors() {
        let mut out = out(0, io::ErrorKind::StorageFull);
        let e = writeln!(out, "x").expect_err("a full disk is an error");
        assert!(
            format!("{e:#}").starts_with("cannot write to stdout"),
            "{e:#}"
        );
        assert!(!out.closed());
    }
}
