//! Configuration: YAML → `RawConfig` (serde, every unknown key reported) → `Validator` → `Config`.
//!
//! Everything a user can get wrong is checked here, once, and every mistake is reported together with
//! its `file:line:col`. Downstream code receives compiled regexes, parsed durations and read secrets,
//! and never re-validates. Nothing here panics on user input.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::alerts::dispatch::Route;
use crate::alerts::mute::InhibitRule;
use crate::domain::{Matcher, Secret};
use crate::outbox::Policy;
use crate::probe::{ClusterDefaults, ProbeConfig, RawProbeConfig};
use crate::receivers::{
    AlertmanagerConfig, EmailConfig, LogConfig, RawAlertmanagerConfig, RawEmailConfig,
    RawLogConfig, RawSlackConfig, RawWebhookConfig, SlackConfig, WebhookConfig,
};
use crate::rules::RuleSet;
use crate::scale::{RawScalerConfig, ScalerConfig};
pub use crate::scrape::{
    ClusterConfig, DEFAULT_MAX_RESPONSE_SIZE, NameFilter, SourceChoice, TlsConfig,
};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9488";
/// `route.group_by` when the top-level route sets none: one message per rule and vhost, however
/// many queues it fires on.
pub const DEFAULT_GROUP_BY: [&str; 3] = ["cluster", "vhost", "alertname"];

/// `tls.ca_file`: a PEM bundle; the whole system store is well under this.
const MAX_CA_BYTES: u64 = 4 << 20;

pub use crate::domain::Diagnostic;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} error(s) in {}:\n{}", .0.len(), .0[0].file.display(), .0.iter().map(|d| format!("  {d}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
}

// ---------------------------------------------------------------- validated config

#[derive(Clone, Debug)]
pub struct Config {
    pub source: PathBuf,
    pub server: ServerConfig,
    pub state: StateConfig,
    pub clusters: Vec<ClusterConfig>,
    pub analysis: AnalysisConfig,
    pub rules: RuleSet,
    pub receivers: Vec<ReceiverConfig>,
    /// `None` when no receivers are configured: alerts are evaluated and shown, not sent.
    pub route: Option<Route>,
    pub inhibit: Vec<InhibitRule>,
    pub outbox: Policy,
    pub startup: Require,
    pub heartbeat: Option<Heartbeat>,
    pub watchdog: Watchdog,
    /// `scalers:` — desired consumer counts (`scale`), sent to a webhook (`active`) or only exported.
    pub scalers: Vec<ScalerConfig>,
    /// Every cluster's `probe:` entries: the AMQP canaries.
    pub probes: Vec<ProbeConfig>,
}

/// `watchdog:` — how long the daemon's own loops may go without progress (see `liveness`).
#[derive(Clone, Copy, Debug)]
pub struct Watchdog {
    /// A loop is unhealthy (`/healthz` 503) after 3 of its intervals + `grace`; the process exits
    /// with status 70 after 5 intervals + 2 × `grace`.
    pub grace: Duration,
}

/// `startup.require`: which start-up checks must pass for `run` to go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Require {
    /// Every cluster must be reachable with usable credentials.
    All,
    /// At least one cluster (the default): a monitor that can watch something starts and pages about
    /// the rest through `ClusterUnreachable`.
    Any,
    /// Only report.
    None,
}

/// `heartbeat:` — a dead-man's switch: GET `url` every `interval` while the daemon is healthy.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    pub url: reqwest::Url,
    pub interval: Duration,
}

#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    pub name: String,
    pub send_resolved: bool,
    /// Check the receiver live at start-up (Slack `auth.test`, SMTP connect + EHLO); a failure is a
    /// failed start-up check, subject to `startup.require`.
    pub verify_on_start: bool,
    pub kind: ReceiverKind,
}

#[derive(Clone, Debug)]
pub enum ReceiverKind {
    Slack(SlackConfig),
    Email(EmailConfig),
    Webhook(WebhookConfig),
    Log(LogConfig),
    Alertmanager(AlertmanagerConfig),
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub api_token: Option<Secret>,
    /// The daemon's address as people reach it (behind a proxy, say); notifications link to the
    /// full list of a group's alerts under it. Like Alertmanager's `--web.external-url`.
    pub external_url: Option<reqwest::Url>,
}

#[derive(Clone, Debug)]
pub struct StateConfig {
    pub path: PathBuf,
}

#[derive(Clone, Debug)]
pub struct AnalysisConfig {
    pub window: Duration,
}

// ---------------------------------------------------------------- raw (serde) config

use crate::yaml::{S, Values};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    state: RawState,
    clusters: Spanned<Vec<RawCluster>>,
    #[serde(default)]
    analysis: RawAnalysis,
    #[serde(default)]
    rules: Vec<S>,
    #[serde(default)]
    receivers: Vec<RawReceiver>,
    route: Option<RawRoute>,
    #[serde(default)]
    inhibit: Vec<RawInhibit>,
    #[serde(default)]
    startup: RawStartup,
    heartbeat: Option<RawHeartbeat>,
    #[serde(default)]
    outbox: RawOutbox,
    #[serde(default)]
    watchdog: RawWatchdog,
    #[serde(default)]
    scalers: Vec<RawScalerConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatchdog {
    grace: Option<S>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStartup {
    require: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeartbeat {
    url: S,
    interval: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInhibit {
    source_matchers: Vec<S>,
    target_matchers: Vec<S>,
    #[serde(default)]
    equal: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReceiver {
    name: S,
    send_resolved: Option<bool>,
    verify_on_start: Option<Spanned<bool>>,
    slack: Option<RawSlackConfig>,
    email: Option<RawEmailConfig>,
    webhook: Option<RawWebhookConfig>,
    log: Option<RawLogConfig>,
    alertmanager: Option<RawAlertmanagerConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    receiver: Option<S>,
    #[serde(default)]
    matchers: Vec<S>,
    group_by: Option<Vec<String>>,
    group_wait: Option<S>,
    group_interval: Option<S>,
    repeat_interval: Option<S>,
    #[serde(default, rename = "continue")]
    continue_: bool,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbox {
    max_attempts: Option<Spanned<u32>>,
    max_age: Option<S>,
    max_backoff: Option<S>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<S>,
    api_token_file: Option<S>,
    external_url: Option<S>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    path: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: S,
    url: S,
    username: Option<S>,
    password: Option<S>,
    password_file: Option<S>,
    tls: Option<RawTls>,
    poll_interval: Option<S>,
    timeout: Option<S>,
    page_size: Option<Spanned<u32>>,
    vhosts: Option<RawFilter>,
    queues: Option<RawFilter>,
    max_queues: Option<Spanned<usize>>,
    max_response_size: Option<S>,
    cycle_timeout: Option<S>,
    source: Option<S>,
    prometheus: Option<Spanned<RawPrometheus>>,
    #[serde(default)]
    probe: Vec<RawProbeConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrometheus {
    #[serde(default)]
    urls: Vec<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: Option<S>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    include: Option<S>,
    exclude: Option<S>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnalysis {
    window: Option<S>,
}

/// Parses a size such as `64MiB`, `512 KiB`, `1GB` or a plain number of bytes. IEC units (KiB, MiB,
/// GiB) are powers of 1024, SI units (KB, MB, GB) powers of 1000.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().map_err(|_| {
        format!("invalid size {text:?}; expected e.g. \"64MiB\", \"512KiB\", \"1GiB\"")
    })?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use B, KiB, MiB, GiB (or KB, MB, GB)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

// ---------------------------------------------------------------- loading

/// Where the config comes from: `--config`, else `$RABBITWATCH_CONFIG`, else `./rabbitwatch.yaml`.
pub fn resolve_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("RABBITWATCH_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("rabbitwatch.yaml"))
}

pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text =
        crate::yaml::read_text_limited(path, crate::yaml::MAX_YAML_BYTES).map_err(|source| {
            ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }
        })?;
    parse(path, &text, &|name| std::env::var(name).ok())
}

/// Parses and validates config text. `env` looks up `${VAR}` references (injected for tests).
pub fn parse(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    // Unknown keys (typos) are all reported, and the values of the rest are still checked, so one
    // run of `rabbitwatch check` shows every mistake.
    let (raw, unknown) = crate::yaml::parse_lenient::<RawConfig>(path, text);
    let mut v = Validator {
        v: Values::new(path, env),
    };
    v.diags.extend(unknown);
    let config = raw.map(|raw| v.config(raw));
    match (config, v.v.diags.finish(())) {
        (Some(config), Ok(())) => Ok(config),
        (_, Err(errors)) => Err(ConfigError::Invalid(errors)),
        // parse_lenient says why whenever it returns nothing; never start on nothing regardless.
        (None, Ok(())) => Err(ConfigError::Invalid(vec![Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            message: "cannot parse the file".into(),
        }])),
    }
}

/// Config-specific validation on top of `Values` (which reads and reports each value).
struct Validator<'a> {
    v: Values<'a>,
}

impl<'a> std::ops::Deref for Validator<'a> {
    type Target = Values<'a>;
    fn deref(&self) -> &Values<'a> {
        &self.v
    }
}

impl std::ops::DerefMut for Validator<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.v
    }
}

impl Validator<'_> {
    fn filter(
        &mut self,
        raw: Option<&RawFilter>,
        default_exclude: Option<&str>,
        key: &str,
    ) -> NameFilter {
        let include = raw
            .and_then(|f| f.include.as_ref())
            .and_then(|s| self.regex(s, &format!("{key}.include")))
            .unwrap_or_else(|| Regex::new(".*").expect("literal regex"));
        let exclude = match raw.and_then(|f| f.exclude.as_ref()) {
            Some(s) if s.value.is_empty() => None,
            Some(s) => self.regex(s, &format!("{key}.exclude")),
            None => default_exclude.map(|d| Regex::new(d).expect("literal regex")),
        };
        NameFilter { include, exclude }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let server = self.server(&raw.server);
        let state = StateConfig {
            path: match &raw.state.path {
                Some(s) => self.path(s),
                None => self.dir.join("data"),
            },
        };
        let analysis = AnalysisConfig {
            window: self.duration(
                raw.analysis.window.as_ref(),
                Duration::from_secs(300),
                Duration::from_secs(1),
                "analysis.window",
            ),
        };
        let watchdog = Watchdog {
            grace: self.duration(
                raw.watchdog.grace.as_ref(),
                crate::liveness::DEFAULT_GRACE,
                Duration::from_secs(1),
                "watchdog.grace",
            ),
        };
        if raw.clusters.value.is_empty() {
            self.error_at(&raw.clusters, "clusters: at least one cluster is required");
        }
        let mut clusters: Vec<ClusterConfig> = Vec::new();
        let mut probes: Vec<ProbeConfig> = Vec::new();
        for rc in &raw.clusters.value {
            let c = self.cluster(rc, watchdog.grace);
            self.probes(rc, &c, &mut probes);
            if clusters.iter().any(|o| o.name == c.name) {
                self.error_at(&rc.name, format!("duplicate cluster name {:?}", c.name));
            }
            if analysis.window < c.poll_interval * 3 {
                let at = raw.analysis.window.as_ref().unwrap_or(&rc.name);
                self.error_at(
                    at,
                    format!(
                        "analysis.window ({}) must hold at least 3 polls of cluster {:?} (poll_interval {})",
                        humantime::format_duration(analysis.window),
                        c.name,
                        humantime::format_duration(c.poll_interval)
                    ),
                );
            }
            clusters.push(c);
        }
        let rules = self.rules(&raw.rules);
        // Where Alertmanager's `generatorURL` points: the daemon's alert list, at its external URL
        // when one is set.
        let generator = match &server.external_url {
            Some(u) => format!("{}/api/v1/alerts", u.as_str().trim_end_matches('/')),
            None => format!("http://{}/api/v1/alerts", server.listen),
        };
        let mut receivers: Vec<ReceiverConfig> = raw
            .receivers
            .iter()
            .filter_map(|r| self.receiver(r, &generator))
            .collect();
        for r in &mut receivers {
            let url = server.external_url.clone();
            match &mut r.kind {
                ReceiverKind::Slack(c) => c.external_url = url,
                ReceiverKind::Email(c) => c.external_url = url,
                ReceiverKind::Webhook(c) => c.external_url = url,
                // Alertmanager links back through generatorURL (above).
                ReceiverKind::Log(_) | ReceiverKind::Alertmanager(_) => {}
            }
        }
        for (i, r) in raw.receivers.iter().enumerate() {
            if raw.receivers[..i]
                .iter()
                .any(|o| o.name.value == r.name.value)
            {
                self.error_at(
                    &r.name,
                    format!("duplicate receiver name {:?}", r.name.value),
                );
            }
        }
        let names: Vec<String> = raw.receivers.iter().map(|r| r.name.value.clone()).collect();
        let route = match &raw.route {
            Some(rr) => self.route(rr, None, &names),
            None => {
                if let Some(first) = raw.receivers.first() {
                    self.error_at(&first.name, "receivers are configured but there is no `route:` saying which alerts go to them");
                }
                None
            }
        };
        let outbox = self.outbox(&raw.outbox);
        let inhibit = raw
            .inhibit
            .iter()
            .map(|r| InhibitRule {
                source: self.matchers(&r.source_matchers),
                target: self.matchers(&r.target_matchers),
                equal: r.equal.clone(),
            })
            .collect();
        let startup = match raw.startup.require.as_ref().map(|r| (r, r.value.trim())) {
            None | Some((_, "any")) => Require::Any,
            Some((_, "all")) => Require::All,
            Some((_, "none")) => Require::None,
            Some((r, other)) => {
                self.error_at(
                    r,
                    format!("startup.require: unknown value {other:?}; expected all, any or none"),
                );
                Require::Any
            }
        };
        let heartbeat = raw.heartbeat.as_ref().and_then(|h| {
            Some(Heartbeat {
                url: self.url(&h.url, "heartbeat.url")?,
                interval: self.duration(
                    h.interval.as_ref(),
                    Duration::from_secs(60),
                    Duration::from_secs(1),
                    "heartbeat.interval",
                ),
            })
        });
        let scalers = self.scalers(&raw.scalers, &clusters, &receivers);
        Config {
            source: self.diags.file.clone(),
            server,
            state,
            clusters,
            analysis,
            rules,
            receivers,
            route,
            inhibit,
            outbox,
            startup,
            heartbeat,
            watchdog,
            scalers,
            probes,
        }
    }

    /// A cluster's `probe:` entries; a probe is known by its cluster, vhost and name.
    fn probes(&mut self, rc: &RawCluster, c: &ClusterConfig, out: &mut Vec<ProbeConfig>) {
        let defaults = ClusterDefaults {
            cluster: &c.name,
            management_url: &c.url,
            username: &c.username,
            password: &c.password,
            ca_pem: c.tls.ca_pem.as_deref(),
        };
        for rp in &rc.probe {
            let Some(p) = rp.validate(self, &defaults) else {
                continue;
            };
            if out
                .iter()
                .any(|o| (&o.cluster, &o.vhost, &o.name) == (&p.cluster, &p.vhost, &p.name))
            {
                self.error_at(
                    rp.name.as_ref().unwrap_or(&rp.vhost),
                    format!(
                        "duplicate probe {:?} in vhost {:?} of cluster {:?}: give each a distinct name",
                        p.name, p.vhost, p.cluster
                    ),
                );
            }
            out.push(p);
        }
    }

    /// Each entry checks its own keys; here, that its cluster and receiver exist.
    fn scalers(
        &mut self,
        raw: &[RawScalerConfig],
        clusters: &[ClusterConfig],
        receivers: &[ReceiverConfig],
    ) -> Vec<ScalerConfig> {
        let mut out: Vec<ScalerConfig> = Vec::new();
        for r in raw {
            let cluster = self.string(&r.cluster);
            if !clusters.iter().any(|c| c.name == cluster) {
                let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
                self.error_at(
                    &r.cluster,
                    format!(
                        "scalers.cluster {cluster:?} is not defined under clusters: (defined: {})",
                        names.join(", ")
                    ),
                );
            }
            if let Some(at) = &r.receiver {
                let name = self.string(at);
                let kind = receivers.iter().find(|x| x.name == name).map(|x| &x.kind);
                if !matches!(kind, Some(ReceiverKind::Webhook(_))) {
                    self.error_at(
                        at,
                        format!(
                            "scalers.receiver {name:?} must name a webhook receiver (recommendations are signed JSON POSTs)"
                        ),
                    );
                }
            }
            let Some(cfg) = r.validate(self) else {
                continue;
            };
            if out.iter().any(|o| o.name == cfg.name) {
                self.error_at(&r.name, format!("duplicate scaler name {:?}", cfg.name));
            }
            out.push(cfg);
        }
        out
    }

    fn matchers(&mut self, raw: &[S]) -> Vec<Matcher> {
        let mut out = Vec::new();
        for m in raw {
            match Matcher::parse(&m.value) {
                Ok(mm) => out.push(mm),
                Err(e) => self.error_at(m, e),
            }
        }
        out
    }

    fn rules(&mut self, patterns: &[S]) -> RuleSet {
        let located: Vec<(String, Option<Diagnostic>)> = patterns
            .iter()
            .map(|p| {
                let (line, col) = crate::yaml::position(&p.referenced);
                (
                    p.value.clone(),
                    Some(Diagnostic {
                        file: self.diags.file.clone(),
                        line,
                        col,
                        message: String::new(),
                    }),
                )
            })
            .collect();
        match crate::rules::load_files(&located, &self.dir) {
            Ok(set) => set,
            Err(found) => {
                self.diags.extend(found);
                RuleSet::default()
            }
        }
    }

    /// `generator`: the daemon's own alert list, where Alertmanager's `generatorURL` points.
    fn receiver(&mut self, r: &RawReceiver, generator: &str) -> Option<ReceiverConfig> {
        let name = self.string(&r.name);
        // Each receiver checks its own settings, reporting through the same collector.
        let kind = match (&r.slack, &r.email, &r.webhook, &r.log, &r.alertmanager) {
            (Some(raw), None, None, None, None) => {
                ReceiverKind::Slack(raw.validate(self, &r.name)?)
            }
            (None, Some(raw), None, None, None) => ReceiverKind::Email(raw.validate(self)?),
            (None, None, Some(raw), None, None) => ReceiverKind::Webhook(raw.validate(self)?),
            (None, None, None, Some(raw), None) => ReceiverKind::Log(raw.validate(self)),
            (None, None, None, None, Some(raw)) => {
                if raw.has_no_urls() {
                    self.error_at(&r.name, "alertmanager.urls needs at least one URL (every peer of the Alertmanager cluster)");
                    return None;
                }
                ReceiverKind::Alertmanager(raw.validate(self, generator)?)
            }
            _ => {
                self.error_at(
                    &r.name,
                    format!("receiver {name:?} needs exactly one of slack, email, webhook, log, alertmanager"),
                );
                return None;
            }
        };
        let verify_on_start = match &r.verify_on_start {
            Some(v) if v.value => {
                let checkable = match &kind {
                    ReceiverKind::Slack(c) => c.bot_token.is_some(),
                    ReceiverKind::Email(_) | ReceiverKind::Alertmanager(_) => true,
                    ReceiverKind::Webhook(_) | ReceiverKind::Log(_) => false,
                };
                if !checkable {
                    self.error_at(
                        v,
                        "verify_on_start is supported for slack with bot_token_file (auth.test), email (SMTP connect + EHLO) and alertmanager (/-/ready); a webhook cannot be checked without sending something",
                    );
                }
                true
            }
            _ => false,
        };
        Some(ReceiverConfig {
            name,
            send_resolved: r.send_resolved.unwrap_or(true),
            verify_on_start,
            kind,
        })
    }

    fn route(&mut self, r: &RawRoute, parent: Option<&Route>, names: &[String]) -> Option<Route> {
        let receiver = match (&r.receiver, parent) {
            (Some(s), _) => {
                let name = self.string(s);
                if !names.contains(&name) {
                    self.error_at(
                        s,
                        format!(
                            "route receiver {name:?} is not defined under receivers: (defined: {})",
                            names.join(", ")
                        ),
                    );
                }
                name
            }
            (None, Some(p)) => p.receiver.clone(),
            (None, None) => {
                self.diags
                    .error(1, 1, "route: the top-level route needs a receiver");
                String::new()
            }
        };
        let matchers = self.matchers(&r.matchers);
        let inherit = |pick: fn(&Route) -> Duration, default: u64| {
            parent.map_or(Duration::from_secs(default), pick)
        };
        let group_wait_default = inherit(|p| p.group_wait, 10);
        let group_interval_default = inherit(|p| p.group_interval, 60);
        let repeat_default = inherit(|p| p.repeat_interval, 4 * 3600);
        let mut route = Route {
            receiver,
            matchers,
            group_by: r
                .group_by
                .clone()
                .or_else(|| parent.map(|p| p.group_by.clone()))
                // One incident, one message: a deployment that dies takes the consumers of
                // hundreds of queues with it, and they page as one group per rule and vhost
                // (docs/delivery.md "Storms"). Per-queue messages: `group_by: [cluster, vhost,
                // queue, alertname]`.
                .unwrap_or_else(|| DEFAULT_GROUP_BY.iter().map(|s| s.to_string()).collect()),
            group_wait: self.duration(
                r.group_wait.as_ref(),
                group_wait_default,
                Duration::ZERO,
                "group_wait",
            ),
            group_interval: self.duration(
                r.group_interval.as_ref(),
                group_interval_default,
                Duration::from_secs(1),
                "group_interval",
            ),
            repeat_interval: self.duration(
                r.repeat_interval.as_ref(),
                repeat_default,
                Duration::from_secs(60),
                "repeat_interval",
            ),
            continue_: r.continue_,
            routes: Vec::new(),
        };
        let children: Vec<Route> = r
            .routes
            .iter()
            .filter_map(|c| self.route(c, Some(&route), names))
            .collect();
        route.routes = children;
        Some(route)
    }

    fn outbox(&mut self, raw: &RawOutbox) -> Policy {
        let d = Policy::default();
        Policy {
            max_attempts: match &raw.max_attempts {
                Some(m) if m.value == 0 => {
                    self.error_at(m, "outbox.max_attempts must be at least 1");
                    d.max_attempts
                }
                Some(m) => m.value,
                None => d.max_attempts,
            },
            max_age: self.duration(
                raw.max_age.as_ref(),
                d.max_age,
                Duration::from_secs(1),
                "outbox.max_age",
            ),
            max_backoff: self.duration(
                raw.max_backoff.as_ref(),
                d.max_backoff,
                Duration::from_secs(1),
                "outbox.max_backoff",
            ),
        }
    }

    fn server(&mut self, raw: &RawServer) -> ServerConfig {
        let listen = match &raw.listen {
            Some(s) => {
                let text = self.string(s);
                text.parse::<SocketAddr>().unwrap_or_else(|e| {
                    self.error_at(
                        s,
                        format!("server.listen: {e}; expected host:port such as {DEFAULT_LISTEN}"),
                    );
                    DEFAULT_LISTEN.parse().expect("literal address")
                })
            }
            None => DEFAULT_LISTEN.parse().expect("literal address"),
        };
        let api_token = raw
            .api_token_file
            .as_ref()
            .and_then(|s| self.secret_file(s, "server.api_token_file"));
        if let (Some(token), Some(s)) = (&api_token, &raw.api_token_file)
            && token.expose().is_empty()
        {
            self.error_at(s, "server.api_token_file is empty");
        }
        if !listen.ip().is_loopback() && api_token.is_none() && raw.api_token_file.is_none() {
            let at = raw
                .listen
                .as_ref()
                .expect("a non-default address was given");
            self.error_at(
                at,
                format!(
                    "refusing to listen on non-loopback address {listen} without server.api_token_file \
                     (anyone who can reach it could change alerting); set a token or listen on 127.0.0.1"
                ),
            );
        }
        let external_url = raw
            .external_url
            .as_ref()
            .and_then(|s| self.url(s, "server.external_url"));
        ServerConfig {
            listen,
            api_token,
            external_url,
        }
    }

    fn cluster(&mut self, rc: &RawCluster, grace: Duration) -> ClusterConfig {
        let name = self.string(&rc.name);
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            self.error_at(
                &rc.name,
                format!("cluster name {name:?} must be non-empty and use only A-Z a-z 0-9 - _ ."),
            );
        }
        let url_text = self.string(&rc.url);
        let url = match reqwest::Url::parse(url_text.trim_end_matches('/')) {
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                // Credentials in a URL end up in error messages and logs; keep them in their own keys.
                self.error_at(&rc.url, "url must not contain credentials; use username and password (or password_file)");
                u
            }
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
            Ok(_) | Err(_) => {
                self.error_at(
                    &rc.url,
                    format!("url {url_text:?} is not an http(s) URL of the management API, e.g. http://127.0.0.1:15672"),
                );
                reqwest::Url::parse("http://invalid.invalid").expect("literal url")
            }
        };
        let username = match &rc.username {
            Some(s) => self.string(s),
            None => {
                self.error_at(
                    &rc.name,
                    "username is required (a user with the monitoring tag)",
                );
                String::new()
            }
        };
        let password = match (&rc.password, &rc.password_file) {
            (Some(p), None) => Secret::new(self.string(p)),
            (None, Some(f)) => self.secret_file(f, "password_file").unwrap_or_default(),
            (Some(p), Some(_)) => {
                self.error_at(p, "set either password or password_file, not both");
                Secret::default()
            }
            (None, None) => {
                self.error_at(&rc.name, "password or password_file is required");
                Secret::default()
            }
        };
        let tls = match &rc.tls {
            Some(t) => TlsConfig {
                ca_pem: t
                    .ca_file
                    .as_ref()
                    .and_then(|s| self.read_file(s, "tls.ca_file", MAX_CA_BYTES)),
                insecure_skip_verify: t.insecure_skip_verify,
            },
            None => TlsConfig::default(),
        };
        let poll_interval = self.duration(
            rc.poll_interval.as_ref(),
            Duration::from_secs(10),
            Duration::from_secs(1),
            "poll_interval",
        );
        let timeout = self.duration(
            rc.timeout.as_ref(),
            Duration::from_secs(5),
            Duration::from_millis(100),
            "timeout",
        );
        let page_size = match &rc.page_size {
            Some(s) if s.value != 0 && !(100..=500).contains(&s.value) => {
                self.error_at(
                    s,
                    "page_size must be 0 (one request, the default) or between 100 and 500 (RabbitMQ rejects pages above 500)",
                );
                0
            }
            Some(s) => s.value,
            None => 0,
        };
        let max_queues = match &rc.max_queues {
            Some(s) if s.value == 0 => {
                self.error_at(s, "max_queues must be at least 1");
                50_000
            }
            Some(s) => s.value,
            None => 50_000,
        };
        let max_response_size = match &rc.max_response_size {
            None => DEFAULT_MAX_RESPONSE_SIZE,
            Some(s) => match parse_size(&self.string(s)) {
                Ok(n) if n >= 1024 => n,
                Ok(_) => {
                    self.error_at(s, "max_response_size must be at least 1KiB");
                    DEFAULT_MAX_RESPONSE_SIZE
                }
                Err(e) => {
                    self.error_at(s, format!("max_response_size: {e}"));
                    DEFAULT_MAX_RESPONSE_SIZE
                }
            },
        };
        let cycle_timeout = self.duration(
            rc.cycle_timeout.as_ref(),
            (poll_interval * 3 + grace).max(timeout),
            Duration::from_secs(1),
            "cycle_timeout",
        );
        if let Some(at) = &rc.cycle_timeout
            && cycle_timeout < timeout
        {
            self.error_at(
                at,
                format!(
                    "cycle_timeout ({}) must be at least timeout ({}): one request must fit in a cycle",
                    humantime::format_duration(cycle_timeout),
                    humantime::format_duration(timeout)
                ),
            );
        }
        let source = match rc.source.as_ref().map(|s| (s, self.string(s))) {
            None => SourceChoice::Auto,
            Some((_, v)) if v == "auto" => SourceChoice::Auto,
            Some((_, v)) if v == "management" => SourceChoice::Management,
            Some((_, v)) if v == "prometheus" => SourceChoice::Prometheus,
            Some((at, other)) => {
                self.error_at(
                    at,
                    format!(
                        "source: unknown value {other:?}; expected auto, management or prometheus"
                    ),
                );
                SourceChoice::Auto
            }
        };
        let mut prometheus_urls = Vec::new();
        for u in rc.prometheus.iter().flat_map(|p| &p.value.urls) {
            let text = self.string(u);
            match reqwest::Url::parse(text.trim_end_matches('/')) {
                Ok(url) if !url.username().is_empty() || url.password().is_some() => self.error_at(
                    u,
                    "prometheus.urls must not contain credentials (the cluster's username and password are sent)",
                ),
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                    prometheus_urls.push(url)
                }
                Ok(_) | Err(_) => self.error_at(
                    u,
                    format!("prometheus.urls: {text:?} is not an http(s) URL of a node's rabbitmq_prometheus listener, e.g. http://10.0.0.1:15692"),
                ),
            }
        }
        if let Some(p) = &rc.prometheus
            && p.value.urls.is_empty()
        {
            self.error_at(
                p,
                "prometheus.urls is empty; leave prometheus out to read each node's host on port 15692",
            );
        }
        ClusterConfig {
            source,
            prometheus_urls,
            max_response_size,
            cycle_timeout,
            name,
            url,
            username,
            password,
            tls,
            poll_interval,
            timeout,
            page_size,
            vhosts: self.filter(rc.vhosts.as_ref(), None, "vhosts"),
            queues: self.filter(rc.queues.as_ref(), Some(r"^amq\."), "queues"),
            max_queues,
        }
    }
}

/// `run --shard i/n`: this daemon takes the clusters whose name hashes to `i` out of `n`, so `n`
/// replicas given the same config split the clusters between them with no coordination. The hash is
/// the first 8 bytes of SHA-256 of the cluster's name (UTF-8), big-endian, modulo `n` — what
/// `printf %s NAME | sha256sum` shows, so every replica, every release and an operator's shell agree
/// on who takes what, and adding a cluster moves no other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub fn owns(&self, cluster: &str) -> bool {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(cluster.as_bytes());
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(head) % u64::from(self.count) == u64::from(self.index)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected = || format!("expected i/n with 0 <= i < n (e.g. 0/3), got {s:?}");
        let (i, n) = s.split_once('/').ok_or_else(expected)?;
        let (Ok(index), Ok(count)) = (i.trim().parse::<u32>(), n.trim().parse::<u32>()) else {
            return Err(expected());
        };
        if index >= count {
            return Err(expected());
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Config {
    /// Keeps only the clusters `shard` takes; returns the names of those it left to other shards.
    pub fn keep_shard(&mut self, shard: Shard) -> Vec<String> {
        let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.clusters)
            .into_iter()
            .partition(|c| shard.owns(&c.name));
        self.clusters = mine;
        self.probes.retain(|p| shard.owns(&p.cluster));
        others.into_iter().map(|c| c.name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Config, ConfigError> {
        parse(
            Path::new("/etc/rw/rabbitwatch.yaml"),
            text,
            &|name| match name {
                "RW_PASSWORD" => Some("s3cret".into()),
                _ => None,
            },
        )
    }

    fn errors(text: &str) -> Vec<String> {
        match parse_str(text) {
            Ok(_) => panic!("expected errors"),
            Err(ConfigError::Invalid(d)) => d.iter().map(ToString::to_string).collect(),
            Err(e) => panic!("unexpected {e}"),
        }
    }

    const MINIMAL: &str = "clusters:\n  - name: local\n    url: http://127.0.0.1:15672\n    username: guest\n    password: ${RW_PASSWORD}\n";

    #[test]
    fn an_alertmanager_receiver_gets_its_defaults_and_its_mistakes_are_located() {
        let c = parse_str(&format!(
            "{MINIMAL}receivers:\n  - name: am\n    alertmanager: {{ urls: [http://am1:9093, http://am2:9093] }}\nroute: {{ receiver: am }}\n"
        ))
        .unwrap();
        let ReceiverKind::Alertmanager(am) = &c.receivers[0].kind else {
            panic!("{:?}", c.receivers[0].kind)
        };
        assert_eq!(am.urls.len(), 2);
        assert_eq!(am.resend_interval, Duration::from_secs(60));
        assert_eq!(
            am.generator_url,
            format!("http://{DEFAULT_LISTEN}/api/v1/alerts")
        );
        let errs = errors(&format!(
            "{MINIMAL}receivers:\n  - name: a\n    alertmanager: {{ urls: [] }}\n  - name: b\n    alertmanager: {{ urls: [\"am:9093\"], resend_interval: 0s }}\nroute: {{ receiver: a }}\n"
        ));
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(
            errs[0].contains(":7:11:")
                && errs[0].contains("alertmanager.urls needs at least one URL"),
            "{errs:#?}"
        );
        assert!(
            errs[1].contains(":10:28:")
                && errs[1].contains("alertmanager.urls is not an http(s) URL"),
            "{errs:#?}"
        );
        assert!(
            errs[2].contains(":10:57:") && errs[2].contains("resend_interval must be at least 1s"),
            "{errs:#?}"
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse_str(MINIMAL).unwrap();
        assert_eq!(c.server.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.state.path, PathBuf::from("/etc/rw/data"));
        let cl = &c.clusters[0];
        assert_eq!(cl.password.expose(), "s3cret");
        assert_eq!(cl.poll_interval, Duration::from_secs(10));
        assert_eq!(cl.page_size, 0);
        assert!(cl.queues.matches("orders"));
        assert!(!cl.queues.matches("amq.gen-123"));
        assert_eq!(c.analysis.window, Duration::from_secs(300));
    }

    #[test]
    fn the_default_route_groups_a_storm_into_one_message_per_rule_and_vhost() {
        let c = parse_str(&format!(
            "{MINIMAL}server:\n  external_url: https://rw.example.com/rabbitwatch\n\
             receivers:\n  - {{ name: s, slack: {{ webhook_url: https://hooks.slack.com/x }} }}\n\
             route:\n  receiver: s\n  routes:\n    - {{ matchers: [severity=critical], group_by: [cluster, vhost, queue, alertname] }}\n"
        ))
        .unwrap();
        let route = c.route.expect("a route");
        assert_eq!(route.group_by, DEFAULT_GROUP_BY);
        assert_eq!(
            (
                route.group_wait,
                route.group_interval,
                route.repeat_interval
            ),
            (
                Duration::from_secs(10),
                Duration::from_secs(60),
                Duration::from_secs(4 * 3600)
            )
        );
        assert_eq!(
            route.routes[0].group_by,
            ["cluster", "vhost", "queue", "alertname"],
            "per-queue messages, for those who ask"
        );
        let ReceiverKind::Slack(slack) = &c.receivers[0].kind else {
            panic!("a Slack receiver");
        };
        assert_eq!(
            slack.external_url.as_ref().map(|u| u.as_str()),
            Some("https://rw.example.com/rabbitwatch")
        );
    }

    #[test]
    fn scalers_get_their_defaults_in_shadow_mode() {
        let text = format!(
            "{MINIMAL}scalers:\n  - {{ name: w, cluster: local, vhost: /, queue: orders, max: 20, mode: shadow }}\n"
        );
        let c = parse_str(&text).unwrap();
        let s = &c.scalers[0];
        assert_eq!((s.min, s.max, s.tolerance), (1, 20, 0.1));
        assert_eq!(s.target_drain_time, Duration::from_secs(120));
        assert_eq!(s.scale_down_stabilization, Duration::from_secs(300));
        assert_eq!(s.cooldown, Duration::from_secs(60));
        assert_eq!(s.per_consumer_rate, None);
        assert_eq!(s.mode, crate::scale::ScalerMode::Shadow);
    }

    #[test]
    fn scaler_mistakes_are_reported_at_their_keys() {
        let text = format!(
            "{MINIMAL}receivers:\n  - name: ops\n    log: {{}}\nroute: {{ receiver: ops }}\nscalers:\n  - name: a\n    cluster: elsewhere\n    vhost: /\n    queue: q\n    max: 5\n    min: 9\n    tolerance: 1.5\n    receiver: ops\n    mode: shadow\n  - {{ name: b, cluster: local, vhost: /, queue: q, max: 5, mode: active }}\n  - {{ name: c, cluster: local, vhost: /, queue: q, max: 5 }}\n"
        );
        let errs = errors(&text);
        let want = [
            (":12:14:", "scalers.cluster \"elsewhere\" is not defined"),
            (":16:10:", "scalers.min: must not exceed max"),
            (
                ":17:16:",
                "scalers.tolerance: must be at least 0 and below 1",
            ),
            (":18:15:", "must name a webhook receiver"),
            // `active` (explicit, and the default) needs a webhook receiver to send to.
            (":20:13:", "scalers.receiver is required with mode: active"),
            (":21:13:", "scalers.receiver is required with mode: active"),
        ];
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
        for (at, what) in want {
            assert!(
                errs.iter().any(|e| e.contains(at) && e.contains(what)),
                "{what} at {at}: {errs:#?}"
            );
        }
    }

    #[test]
    fn every_mistake_is_reported_with_its_line() {
        let text = "clusters:\n  - name: local\n    url: not-a-url\n    username: guest\n    password: ${NOPE}\n    poll_interval: 10 parsecs\n    queues: { include: \"([\" }\n";
        let errs = errors(text);
        assert_eq!(errs.len(), 4, "{errs:#?}");
        assert!(
            errs[0].starts_with("/etc/rw/rabbitwatch.yaml:3:"),
            "{}",
            errs[0]
        );
        assert!(errs[0].contains("not-a-url"));
        assert!(errs[1].starts_with("/etc/rw/rabbitwatch.yaml:5:") && errs[1].contains("NOPE"));
        assert!(errs[2].starts_with("/etc/rw/rabbitwatch.yaml:6:") && errs[2].contains("parsecs"));
        assert!(errs[3].starts_with("/etc/rw/rabbitwatch.yaml:7:") && errs[3].contains("regex"));
    }

    #[test]
    fn unknown_key_is_rejected_with_location() {
        let errs = errors(&format!("{MINIMAL}    pol_interval: 5s\n"));
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("/etc/rw/rabbitwatch.yaml:6:"),
            "{}",
            errs[0]
        );
        assert!(errs[0].contains("pol_interval"), "{}", errs[0]);
    }

    #[test]
    fn credentials_in_the_cluster_url_are_refused_without_echoing_them() {
        let errs = errors(&MINIMAL.replace(
            "http://127.0.0.1:15672",
            "http://admin:hunter2@127.0.0.1:15672",
        ));
        assert!(errs[0].contains("must not contain credentials"), "{errs:?}");
        assert!(!errs[0].contains("hunter2"), "{errs:?}");
    }

    #[test]
    fn non_loopback_listen_without_token_is_refused() {
        let errs = errors(&format!("server:\n  listen: 0.0.0.0:9488\n{MINIMAL}"));
        assert!(errs[0].contains("refusing to listen"), "{errs:?}");
    }

    #[test]
    fn window_must_hold_three_polls() {
        let errs = errors(&format!(
            "{MINIMAL}    poll_interval: 30s\nanalysis:\n  window: 1m\n"
        ));
        assert!(errs[0].contains("at least 3 polls"), "{errs:?}");
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let c = parse_str(MINIMAL).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn a_secret_file_that_never_ends_is_an_error_not_a_hang() {
        let errs = errors(&MINIMAL.replace("password: ${RW_PASSWORD}", "password_file: /dev/zero"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("/etc/rw/rabbitwatch.yaml:5:")
                && errs[0].contains("cannot read password_file /dev/zero: larger than 64 KiB"),
            "{}",
            errs[0]
        );
        let errs = errors(&format!("{MINIMAL}    tls: {{ ca_file: /dev/zero }}\n"));
        assert!(errs[0].contains("larger than 4 MiB"), "{errs:?}");
    }

    #[test]
    fn a_rules_pattern_naming_an_endless_file_is_an_error_not_a_hang() {
        let errs = errors(&format!("{MINIMAL}rules: [/dev/zero]\n"));
        assert!(
            errs[0].starts_with("/dev/zero:1:1:") && errs[0].contains("larger than 16 MiB"),
            "{errs:?}"
        );
    }

    #[test]
    fn dollar_dollar_is_a_literal_dollar() {
        let c = parse_str(&MINIMAL.replace("${RW_PASSWORD}", "pa$$word")).unwrap();
        assert_eq!(c.clusters[0].password.expose(), "pa$word");
    }

    #[test]
    fn verify_on_start_is_refused_where_there_is_nothing_to_check() {
        let errs = errors(&format!(
            "{MINIMAL}receivers:\n  - name: hook\n    verify_on_start: true\n    webhook: {{ url: http://127.0.0.1:1/x }}\nroute: {{ receiver: hook }}\n"
        ));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains(":8:") && errs[0].contains("verify_on_start is supported for"),
            "{errs:?}"
        );
        let c = parse_str(&format!(
            "{MINIMAL}receivers:\n  - name: mail\n    verify_on_start: true\n    email: {{ smtp_url: smtp://127.0.0.1:1, from: a@b.c, to: [d@e.f] }}\nroute: {{ receiver: mail }}\n"
        ))
        .unwrap();
        assert!(c.receivers[0].verify_on_start);
    }

    #[test]
    fn the_cycle_deadline_follows_the_poll_interval_and_the_watchdog_grace() {
        let c = parse_str(MINIMAL).unwrap();
        assert_eq!(c.watchdog.grace, Duration::from_secs(30));
        assert_eq!(c.clusters[0].cycle_timeout, Duration::from_secs(60));
        let c = parse_str(&format!("{MINIMAL}watchdog: {{ grace: 5s }}\n")).unwrap();
        assert_eq!(c.clusters[0].cycle_timeout, Duration::from_secs(35));
        let errs = errors(&format!("{MINIMAL}    cycle_timeout: 2s\n"));
        assert!(errs[0].contains("must be at least timeout"), "{errs:?}");
    }

    #[test]
    fn sizes_accept_iec_and_si_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("2048"), Ok(2048));
        assert!(
            parse_size("12 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }

    #[test]
    fn max_response_size_defaults_and_is_validated() {
        let c = parse_str(MINIMAL).unwrap();
        assert_eq!(c.clusters[0].max_response_size, 256 << 20);
        let c = parse_str(&format!("{MINIMAL}    max_response_size: 64MiB\n")).unwrap();
        assert_eq!(c.clusters[0].max_response_size, 64 << 20);
        let errs = errors(&format!("{MINIMAL}    max_response_size: 12 parsecs\n"));
        assert!(
            errs[0].contains("max_response_size") && errs[0].contains(":6:"),
            "{errs:?}"
        );
    }

    #[test]
    fn source_defaults_to_auto_and_its_mistakes_are_located_together() {
        let c = parse_str(MINIMAL).unwrap();
        assert_eq!(c.clusters[0].source, SourceChoice::Auto);
        assert!(c.clusters[0].prometheus_urls.is_empty());
        let c = parse_str(&format!(
            "{MINIMAL}    source: prometheus\n    prometheus: {{ urls: [http://10.0.0.1:15692, http://10.0.0.2:15692/] }}\n"
        ))
        .unwrap();
        assert_eq!(c.clusters[0].source, SourceChoice::Prometheus);
        let urls: Vec<&str> = c.clusters[0]
            .prometheus_urls
            .iter()
            .map(|u| u.as_str())
            .collect();
        assert_eq!(urls, ["http://10.0.0.1:15692/", "http://10.0.0.2:15692/"]);

        let errs = errors(&format!(
            "{MINIMAL}    source: plugin\n    prometheus: {{ urls: [ftp://x, 'http://u:p@h:15692'] }}\n"
        ));
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].contains(":6:") && errs[0].contains("expected auto, management or prometheus"),
            "{errs:?}"
        );
        assert!(
            errs[1].contains(":7:") && errs[1].contains("\"ftp://x\""),
            "{errs:?}"
        );
        assert!(
            errs[2].contains(":7:") && errs[2].contains("credentials"),
            "{errs:?}"
        );
        let errs = errors(&format!(
            "{MINIMAL}    prometheus: {{ url: http://h:15692 }}\n"
        ));
        assert!(
            errs.iter()
                .any(|e| e.contains(":6:") && e.contains("unknown field `url`")),
            "{errs:?}"
        );
    }

    #[test]
    fn every_cluster_belongs_to_exactly_one_shard() {
        let names: Vec<String> = (0..200).map(|i| format!("cluster-{i}")).collect();
        for count in 1..=5 {
            let mut taken = vec![0; names.len()];
            for index in 0..count {
                let shard = Shard { index, count };
                for (i, n) in names.iter().enumerate() {
                    taken[i] += usize::from(shard.owns(n));
                }
            }
            assert!(taken.iter().all(|&t| t == 1), "n={count}: {taken:?}");
        }
        // A spread, not everything on one shard.
        let first = Shard { index: 0, count: 4 };
        let on_first = names.iter().filter(|n| first.owns(n)).count();
        assert!(
            (25..=75).contains(&on_first),
            "{on_first} of 200 on shard 0/4"
        );
    }

    #[test]
    fn the_shard_hash_is_the_head_of_sha256_of_the_name() {
        // `printf %s a | sha256sum` starts ca978112ca1bbdca: replicas of any release, and an
        // operator's shell, must agree on the split.
        for (name, hash) in [
            ("a", 0xca97_8112_ca1b_bdca_u64),
            ("foobar", 0xc3ab_8ff1_3720_e8ad),
        ] {
            let count = 1_000_003;
            let index = (hash % count) as u32;
            let count = count as u32;
            assert!(Shard { index, count }.owns(name), "{name}");
            assert!(
                !Shard {
                    index: (index + 1) % count,
                    count
                }
                .owns(name),
                "{name}"
            );
        }
    }

    #[test]
    fn shard_arguments_are_checked() {
        assert_eq!("1/3".parse(), Ok(Shard { index: 1, count: 3 }));
        for bad in ["3/3", "0/0", "1", "a/2", "-1/2", "1/2/3"] {
            let err = bad.parse::<Shard>().unwrap_err();
            assert!(err.contains("expected i/n"), "{bad}: {err}");
        }
    }
}
