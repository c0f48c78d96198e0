//! Where notifications go: Slack, email, webhooks, Alertmanager, a log. Each receiver owns its
//! payload format and the classification of its own errors; it never retries (the outbox is the one
//! place that does).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::domain::{AlertStatus, AlertSummary, GroupStatus, Notification};

/// What a successful delivery returns to remember for the group (e.g. Slack's `channel` + `ts`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delivered {
    pub handle: Option<String>,
}

/// Why a delivery failed, in a word or two: the `reason` of logs and dead letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Connect,
    Transport,
    Timeout,
    RateLimited,
    Http4xx,
    Http5xx,
    HttpStatus,
    InvalidRequest,
    InvalidResponse,
    InvalidMessage,
    Redirect,
    SlackApi,
    Smtp5xx,
    SmtpClient,
    Smtp4xx,
    SmtpResponse,
    Tls,
    Io,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Connect => "connect",
            Reason::Transport => "transport",
            Reason::Timeout => "timeout",
            Reason::RateLimited => "rate_limited",
            Reason::Http4xx => "http_4xx",
            Reason::Http5xx => "http_5xx",
            Reason::HttpStatus => "http_status",
            Reason::InvalidRequest => "invalid_request",
            Reason::InvalidResponse => "invalid_response",
            Reason::InvalidMessage => "invalid_message",
            Reason::Redirect => "redirect",
            Reason::SlackApi => "slack_api",
            Reason::Smtp5xx => "smtp_5xx",
            Reason::SmtpClient => "smtp_client",
            Reason::Smtp4xx => "smtp_4xx",
            Reason::SmtpResponse => "smtp_response",
            Reason::Tls => "tls",
            Reason::Io => "io",
        }
    }
}

/// A failed delivery, classified. Only the outbox decides what to do with it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth retrying: timeouts, connection errors, 5xx, 408, 429 (with the server's `Retry-After`).
    #[error("{}: {message}", reason.as_str())]
    Transient {
        reason: Reason,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help (fail early): 4xx, Slack `invalid_payload`/`channel_not_found`/`invalid_auth`,
    /// SMTP 5xx, a malformed address. Goes straight to dead letters.
    #[error("{}: {message}", reason.as_str())]
    Permanent { reason: Reason, message: String },
}

impl DeliveryError {
    pub fn is_retriable(&self) -> bool {
        matches!(self, DeliveryError::Transient { .. })
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DeliveryError::Transient { retry_after, .. } => *retry_after,
            DeliveryError::Permanent { .. } => None,
        }
    }

    /// Low-cardinality label for metrics.
    pub fn reason(&self) -> Reason {
        match self {
            DeliveryError::Transient { reason, .. } | DeliveryError::Permanent { reason, .. } => {
                *reason
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// The receivers, and the one type the outbox holds them by

pub mod alertmanager;
pub mod email;
pub mod log;
pub mod slack;
pub mod webhook;

pub use alertmanager::{AlertmanagerConfig, AlertmanagerReceiver, RawAlertmanagerConfig};
pub use email::{EmailConfig, EmailReceiver, RawEmailConfig};
pub use log::{LogConfig, LogReceiver, RawLogConfig};
pub use slack::{RawSlackConfig, SlackConfig, SlackReceiver};
pub use webhook::{RawWebhookConfig, WebhookConfig, WebhookReceiver};

/// A receiver configuration that cannot work, found when the receiver is built at start-up, so a
/// typo fails `rabbitwatch check` instead of dead-lettering the first alert.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("receiver {receiver:?}: {message}")]
pub struct InvalidReceiver {
    pub receiver: String,
    pub message: String,
}

impl InvalidReceiver {
    pub(crate) fn new(receiver: &str, message: impl Into<String>) -> Self {
        InvalidReceiver {
            receiver: receiver.to_owned(),
            message: message.into(),
        }
    }
}

/// Every kind of receiver, dispatched by `match` (no trait objects: the set is closed and small).
#[derive(Debug)]
pub enum Receiver {
    Slack(SlackReceiver),
    Email(EmailReceiver),
    Webhook(WebhookReceiver),
    Log(LogReceiver),
    Alertmanager(AlertmanagerReceiver),
}

impl Receiver {
    /// The name the route refers to, e.g. `ops-slack`.
    pub fn name(&self) -> &str {
        match self {
            Receiver::Slack(r) => r.name(),
            Receiver::Email(r) => r.name(),
            Receiver::Webhook(r) => r.name(),
            Receiver::Log(r) => r.name(),
            Receiver::Alertmanager(r) => r.name(),
        }
    }

    /// Low-cardinality kind for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Receiver::Slack(_) => "slack",
            Receiver::Email(_) => "email",
            Receiver::Webhook(_) => "webhook",
            Receiver::Log(_) => "log",
            Receiver::Alertmanager(_) => "alertmanager",
        }
    }

    /// Sends one notification. Never retries: the error says whether the outbox should.
    pub async fn deliver(&self, n: &Notification) -> Result<Delivered, DeliveryError> {
        match self {
            // Config validation sends scaling recommendations to webhooks only; should one reach a
            // chat or mail receiver anyway, it is a dead letter, visible, not an empty message.
            Receiver::Slack(_) | Receiver::Email(_) | Receiver::Alertmanager(_)
                if n.scaling.is_some() =>
            {
                Err(DeliveryError::Permanent {
                    reason: Reason::InvalidRequest,
                    message: "scaling recommendations go to webhook receivers only".into(),
                })
            }
            Receiver::Slack(r) => r.deliver(n).await,
            Receiver::Email(r) => r.deliver(n).await,
            Receiver::Webhook(r) => r.deliver(n).await,
            Receiver::Log(r) => r.deliver(n).await,
            Receiver::Alertmanager(r) => r.deliver(n).await,
        }
    }

    /// Start-up dependency check where the protocol has a cheap one that sends nothing (Slack bot:
    /// `auth.test`; SMTP: connect, EHLO, NOOP). Webhooks and logs have none and always pass.
    pub async fn verify(&self) -> Result<(), DeliveryError> {
        match self {
            Receiver::Email(r) => r.verify().await,
            Receiver::Slack(r) => r.verify().await,
            Receiver::Alertmanager(r) => r.verify().await,
            Receiver::Webhook(_) | Receiver::Log(_) => Ok(()),
        }
    }

    /// The longest one delivery attempt can take, every timeout included: the outbox worker's
    /// liveness interval is at least this, so a slow but bounded attempt never looks stuck.
    pub fn attempt_budget(&self) -> Duration {
        match self {
            // chat.update, then chat.postMessage if the original is gone, plus pacing.
            Receiver::Slack(_) => slack::REQUEST_TIMEOUT * 2 + slack::MIN_INTERVAL,
            Receiver::Email(_) => email::SEND_BUDGET,
            Receiver::Webhook(r) => r.timeout() + Duration::from_secs(1),
            Receiver::Log(_) => Duration::from_secs(1),
            Receiver::Alertmanager(r) => r.attempt_budget(),
        }
    }

    /// Deliveries sharing the key must be spaced at least the interval apart (Slack allows about
    /// one message per second per channel). `None`: no pacing needed.
    pub fn pace(&self) -> Option<(String, Duration)> {
        match self {
            Receiver::Slack(r) => Some((r.pacing_key(), slack::MIN_INTERVAL)),
            Receiver::Email(_)
            | Receiver::Webhook(_)
            | Receiver::Log(_)
            | Receiver::Alertmanager(_) => None,
        }
    }
}

/// Sends `request`; a transport failure or a non-success answer (its body read for the reason) is
/// classified as the outbox needs it. Shared by the HTTP receivers that only need "accepted or why not".
pub(crate) async fn send_classified(
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, DeliveryError> {
    let response = request.send().await.map_err(classify_http_transport)?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    Err(classify_http_status(status, &headers, &text))
}

// ---------------------------------------------------------------------------------------------------
// HTTP error classification, shared by the HTTP receivers (Slack, webhook)

/// Classifies a non-success HTTP answer: 429 and 408 and 5xx are worth retrying (429 with the
/// server's `Retry-After`), any other status is not.
pub(crate) fn classify_http_status(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) -> DeliveryError {
    let message = format!("HTTP {}: {}", status.as_u16(), snippet(body));
    match status.as_u16() {
        429 => DeliveryError::Transient {
            reason: Reason::RateLimited,
            message,
            retry_after: retry_after(headers),
        },
        408 => DeliveryError::Transient {
            reason: Reason::Timeout,
            message,
            retry_after: retry_after(headers),
        },
        500..=599 => DeliveryError::Transient {
            reason: Reason::Http5xx,
            message,
            retry_after: retry_after(headers),
        },
        400..=499 => DeliveryError::Permanent {
            reason: Reason::Http4xx,
            message,
        },
        // 1xx/3xx that reqwest did not resolve: a misconfigured URL, not a passing fault.
        _ => DeliveryError::Permanent {
            reason: Reason::HttpStatus,
            message,
        },
    }
}

/// Classifies a request that got no HTTP answer. The URL is left out of the message: Slack webhook
/// URLs are credentials.
pub(crate) fn classify_http_transport(e: reqwest::Error) -> DeliveryError {
    let e = e.without_url();
    let transient = |reason| DeliveryError::Transient {
        reason,
        message: e.to_string(),
        retry_after: None,
    };
    if e.is_timeout() {
        transient(Reason::Timeout)
    } else if e.is_connect() {
        transient(Reason::Connect)
    } else if e.is_builder() {
        DeliveryError::Permanent {
            reason: Reason::InvalidRequest,
            message: e.to_string(),
        }
    } else if e.is_redirect() {
        DeliveryError::Permanent {
            reason: Reason::Redirect,
            message: e.to_string(),
        }
    } else {
        transient(Reason::Transport)
    }
}

/// `Retry-After` in delta-seconds (what Slack and most APIs send); an HTTP-date is ignored and the
/// outbox's own backoff applies.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A response body cut to a loggable size, without control characters.
pub(crate) fn snippet(body: &str) -> String {
    const MAX: usize = 200;
    let mut out: String = body
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX)
        .collect();
    if body.trim().chars().count() > MAX {
        out.push('…');
    }
    out
}

/// A value safe to put in an HTTP header: visible ASCII and spaces only (idempotency keys are ours,
/// but a header must never be able to end early).
pub(crate) fn header_safe(value: &str) -> String {
    value
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .collect()
}

/// Milliseconds since the epoch as RFC 3339 (`2024-05-01T12:00:00.000Z`).
pub(crate) fn rfc3339_millis(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

// ---------------------------------------------------------------------------------------------------
// Wording shared by the human-facing receivers (Slack, email). Everything returned here is raw:
// each receiver escapes or sanitises it for its own medium.

/// `[FIRING:2]`, `[RESOLVED:1]`, `[FLAPPING:1]`: the status and how many alerts it concerns.
pub(crate) fn status_tag(n: &Notification) -> String {
    let word = match (n.flapping, n.status) {
        (true, _) => "FLAPPING",
        (false, GroupStatus::Firing) => "FIRING",
        (false, GroupStatus::Resolved) => "RESOLVED",
    };
    let count = match n.status {
        GroupStatus::Firing => n
            .alerts
            .iter()
            .filter(|a| a.status == AlertStatus::Firing)
            .count(),
        GroupStatus::Resolved => n.alerts.len(),
    };
    format!("[{word}:{count}]")
}

/// The alert name the group is about, or `N alerts` when it mixes several.
pub(crate) fn group_alertname(n: &Notification) -> String {
    if let Some(name) = n.common_labels.get("alertname") {
        return name.clone();
    }
    let mut names = n.alerts.iter().filter_map(|a| a.labels.get("alertname"));
    match names.next() {
        Some(first) if names.all(|other| other == first) => first.clone(),
        _ => format!("{} alerts", n.alerts.len()),
    }
}

/// What the labels point at: `orders (/) on local`, `rabbit@node1 on local`, `on local`, or "".
pub(crate) fn describe_entity(labels: &BTreeMap<String, String>) -> String {
    let what = match (labels.get("queue"), labels.get("node")) {
        (Some(queue), _) => match labels.get("vhost") {
            Some(vhost) => format!("{queue} ({vhost})"),
            None => queue.clone(),
        },
        (None, Some(node)) => node.clone(),
        (None, None) => String::new(),
    };
    match labels.get("cluster") {
        Some(cluster) if what.is_empty() => format!("on {cluster}"),
        Some(cluster) => format!("{what} on {cluster}"),
        None => what,
    }
}

/// `[FIRING:1] QueueBacklogGrowing orders (/) on local`: the one-line summary of a notification; for
/// a group of several queues (or nodes), how many: `[FIRING:500] QueueNoConsumers: 500 queues in
/// vhost shop on local`.
pub(crate) fn headline(n: &Notification) -> String {
    let mut line = format!("{} {}", status_tag(n), group_alertname(n));
    let a = affected(n);
    let entity = if a.total() > 1 {
        let count = match n.status {
            GroupStatus::Firing => a.firing,
            GroupStatus::Resolved => a.total(),
        };
        let mut text = format!(": {}", a.count(count));
        if let Some(vhost) = n.common_labels.get("vhost") {
            text.push_str(&format!(" in vhost {vhost}"));
        }
        if let Some(cluster) = n.common_labels.get("cluster") {
            text.push_str(&format!(" on {cluster}"));
        }
        text
    } else {
        let entity = describe_entity(&n.common_labels);
        if entity.is_empty() {
            entity
        } else {
            format!(" {entity}")
        }
    };
    line.push_str(&entity);
    line
}

/// How many distinct queues (or nodes) a notification concerns, firing and recovered: what an
/// operator reads first when a storm hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Affected {
    /// `queue`, `node` or, when the group mixes kinds or names none, `alert`.
    pub kind: &'static str,
    pub firing: usize,
    pub resolved: usize,
}

impl Affected {
    pub fn total(&self) -> usize {
        self.firing + self.resolved
    }

    /// `1 queue`, `500 queues`.
    pub fn count(&self, n: usize) -> String {
        let plural = if n == 1 { "" } else { "s" };
        format!("{n} {}{plural}", self.kind)
    }

    /// `500 queues affected`, `480 queues affected, 20 recovered`, `all 500 queues recovered`.
    pub fn summary(&self, status: GroupStatus) -> String {
        match status {
            GroupStatus::Resolved => format!("all {} recovered", self.count(self.total())),
            GroupStatus::Firing if self.resolved == 0 => {
                format!("{} affected", self.count(self.firing))
            }
            GroupStatus::Firing => format!(
                "{} affected, {} recovered",
                self.count(self.firing),
                self.resolved
            ),
        }
    }
}

/// What an alert is about, as a key: (`queue`, vhost, name), (`node`, name) or its fingerprint.
fn entity_key(a: &AlertSummary) -> (&'static str, String) {
    let l = |k: &str| a.labels.get(k).map_or("", String::as_str);
    match (a.labels.get("queue"), a.labels.get("node")) {
        (Some(queue), _) => (
            "queue",
            format!("{}\0{}\0{queue}", l("cluster"), l("vhost")),
        ),
        (None, Some(node)) => ("node", format!("{}\0{node}", l("cluster"))),
        (None, None) => ("alert", describe_entity(&a.labels)),
    }
}

pub(crate) fn affected(n: &Notification) -> Affected {
    let mut firing = std::collections::BTreeSet::new();
    let mut resolved = std::collections::BTreeSet::new();
    let mut kinds = std::collections::BTreeSet::new();
    for a in &n.alerts {
        let (kind, key) = entity_key(a);
        kinds.insert(kind);
        match a.status {
            AlertStatus::Firing => firing.insert(key),
            AlertStatus::Resolved => resolved.insert(key),
        };
    }
    // An entity with one alert still firing and another resolved counts as affected.
    let resolved = resolved.difference(&firing).count();
    let kind = match (kinds.len(), kinds.first()) {
        (1, Some(kind)) => *kind,
        _ => "alert",
    };
    Affected {
        kind,
        firing: firing.len(),
        resolved,
    }
}

/// The size of what an alert is about, for ranking: messages waiting (`messages_ready`, else
/// `messages`), unknown last.
fn weight(a: &AlertSummary) -> f64 {
    ["messages_ready", "messages"]
        .iter()
        .find_map(|k| a.values.get(*k).copied().filter(|v| !v.is_nan()))
        .unwrap_or(f64::NEG_INFINITY)
}

fn severity_rank(a: &AlertSummary) -> u8 {
    match a.labels.get("severity").map(String::as_str) {
        Some("critical") => 3,
        Some("warning") => 2,
        Some(_) => 1,
        None => 0,
    }
}

/// The alerts most worth reading first: firing before recovered, then by severity, then by how
/// many messages wait (the biggest backlog first), then by name, so the order is stable between
/// an incident's messages.
pub(crate) fn worst_first(alerts: &[AlertSummary]) -> Vec<&AlertSummary> {
    let mut ranked: Vec<&AlertSummary> = alerts.iter().collect();
    ranked.sort_by(|a, b| {
        let firing = |x: &AlertSummary| x.status == AlertStatus::Firing;
        firing(b)
            .cmp(&firing(a))
            .then_with(|| severity_rank(b).cmp(&severity_rank(a)))
            .then_with(|| weight(b).total_cmp(&weight(a)))
            .then_with(|| describe_entity(&a.labels).cmp(&describe_entity(&b.labels)))
            .then_with(|| a.fingerprint.cmp(&b.fingerprint))
    });
    ranked
}

/// One alert in a long list, in parts, so a medium can shorten a long name without losing the
/// numbers: `orders (/)` and `1234 ready, 0 consumers, 12/s in, 0/s out`; `recovered: ` in front
/// when it no longer fires. `vhost` and `cluster` are left out when the whole group shares them.
pub(crate) struct CompactLine {
    pub status: &'static str,
    pub entity: String,
    pub facts: String,
}

impl CompactLine {
    /// The line, with the entity passed through `entity` (to shorten or escape it) and the rest
    /// through `rest`.
    pub fn render(&self, entity: impl Fn(&str) -> String, rest: impl Fn(&str) -> String) -> String {
        let mut line = format!("{}{}", rest(self.status), entity(&self.entity));
        if !self.facts.is_empty() {
            line.push_str(&rest(&format!(" — {}", self.facts)));
        }
        line
    }
}

pub(crate) fn compact_line(a: &AlertSummary, common: &BTreeMap<String, String>) -> CompactLine {
    let mut labels = a.labels.clone();
    let about_entity = labels.contains_key("queue") || labels.contains_key("node");
    for key in ["cluster", "vhost"] {
        if about_entity && common.contains_key(key) {
            labels.remove(key);
        }
    }
    let mut entity = describe_entity(&labels);
    if entity.is_empty() {
        entity = a.labels.get("alertname").cloned().unwrap_or_default();
    }
    let get = |k: &str| a.values.get(k).copied().filter(|v| !v.is_nan());
    let mut facts = Vec::new();
    if let Some(ready) = get("messages_ready") {
        facts.push(format!("{} ready", format_number(ready)));
    } else if let Some(messages) = get("messages") {
        facts.push(format!("{} messages", format_number(messages)));
    }
    if let Some(consumers) = get("consumers") {
        let plural = if consumers == 1.0 { "" } else { "s" };
        facts.push(format!("{} consumer{plural}", format_number(consumers)));
    }
    if let (Some(publish), Some(consume)) = (get("publish_rate"), get("consume_rate")) {
        facts.push(format!(
            "{}/s in, {}/s out",
            format_number(publish),
            format_number(consume)
        ));
    }
    CompactLine {
        status: match a.status {
            AlertStatus::Firing => "",
            AlertStatus::Resolved => "recovered: ",
        },
        entity,
        facts: facts.join(", "),
    }
}

/// Where a reader finds every alert of the group: the daemon's `/api/v1/alerts`, filtered by the
/// labels the group shares (`alertname`, `cluster`, `vhost`), under `external_url` when the daemon's
/// address is known (`server.external_url`); else the path, to be read as text.
pub(crate) fn alerts_link(n: &Notification, external_url: Option<&reqwest::Url>) -> String {
    let filters: Vec<(&str, &str)> = ["alertname", "cluster", "vhost"]
        .iter()
        .filter_map(|k| n.common_labels.get(*k).map(|v| (*k, v.as_str())))
        .collect();
    let url = external_url.and_then(|base| {
        // `https://host/rabbitwatch` and `https://host/rabbitwatch/` both mean the same base.
        let mut base = base.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        base.join("api/v1/alerts").ok()
    });
    match url {
        Some(mut url) => {
            url.set_query(None);
            if !filters.is_empty() {
                url.query_pairs_mut().extend_pairs(filters);
            }
            url.to_string()
        }
        None => {
            let query: Vec<String> = filters
                .iter()
                .map(|(k, v)| format!("{k}={}", urlencoding_lite(v)))
                .collect();
            if query.is_empty() {
                "/api/v1/alerts".to_owned()
            } else {
                format!("/api/v1/alerts?{}", query.join("&"))
            }
        }
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn urlencoding_lite(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The correlation ids of `alerts`, each once, in order.
pub(crate) fn correlation_ids<'a>(
    alerts: impl IntoIterator<Item = &'a AlertSummary>,
) -> Vec<&'a str> {
    let mut ids: Vec<&str> = Vec::new();
    for alert in alerts {
        if !ids.contains(&alert.correlation_id.as_str()) {
            ids.push(&alert.correlation_id);
        }
    }
    ids
}

/// A number for people: integers without a fraction, others with up to two decimals.
pub(crate) fn format_number(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "NaN"
        } else if x > 0.0 {
            "+Inf"
        } else {
            "-Inf"
        }
        .to_owned();
    }
    if x.fract() == 0.0 && x.abs() < 1e15 {
        return format!("{x:.0}");
    }
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Seconds for people: `42s`, `5m 30s`, `2h 5m`; infinite is `never` (consumers slower than publishers).
pub(crate) fn format_duration(secs: f64) -> String {
    if !secs.is_finite() {
        return "never".to_owned();
    }
    let secs = secs.max(0.0).round() as u64;
    // Past an hour the seconds are noise.
    let secs = if secs >= 3600 { secs / 60 * 60 } else { secs };
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// The numbers behind an alert as `Label: value` lines, for the ones a person reads first.
pub(crate) fn value_lines(values: &BTreeMap<String, f64>) -> Vec<String> {
    let get = |k: &str| values.get(k).copied().filter(|v| !v.is_nan());
    let mut lines = Vec::new();
    let (publish, consume) = (get("publish_rate"), get("consume_rate"));
    if publish.is_some() || consume.is_some() {
        let rate = |r: Option<f64>| r.map_or("?".to_owned(), format_number);
        lines.push(format!(
            "Rates: {}/s in, {}/s out",
            rate(publish),
            rate(consume)
        ));
    }
    if let Some(backlog) = get("messages").or_else(|| get("messages_ready")) {
        lines.push(format!("Backlog: {} messages", format_number(backlog)));
    }
    if let Some(consumers) = get("consumers") {
        lines.push(format!("Consumers: {}", format_number(consumers)));
    }
    if let Some(eta) = get("drain_eta") {
        lines.push(format!("Drain ETA: {}", format_duration(eta)));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    #[tokio::test]
    async fn a_scaling_recommendation_is_never_posted_to_a_chat_channel() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let slack = SlackReceiver::new(
            "ops",
            SlackConfig {
                // Nothing listens there: the receiver must refuse before trying.
                webhook_url: Some(reqwest::Url::parse("http://127.0.0.1:9/hook").unwrap()),
                ..SlackConfig::default()
            },
            reqwest::Client::new(),
        )
        .unwrap();
        let request = crate::domain::ScalingRequest {
            version: 1,
            scaler: "w".into(),
            cluster: "c".into(),
            vhost: "/".into(),
            queue: "q".into(),
            current: 1,
            desired: 3,
            min: 1,
            max: 5,
            direction: "up".into(),
            reason: "test".into(),
            metrics: crate::domain::ScalingMetrics {
                publish_rate: Some(30.0),
                consume_rate: Some(10.0),
                messages_ready: 0,
                per_consumer_rate: 10.0,
                per_consumer_rate_source: "configured".into(),
            },
            sequence: 1,
            idempotency_key: "scaler:w:1".into(),
            timestamp: String::new(),
        };
        let n = Notification::scaling("ops", request, 0);
        let e = Receiver::Slack(slack).deliver(&n).await.unwrap_err();
        assert!(!e.is_retriable(), "a dead letter at once, not retries: {e}");
    }

    fn with_retry_after(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn http_statuses_are_classified_as_the_design_says() {
        let none = HeaderMap::new();
        let cases: &[(u16, bool, Reason)] = &[
            (400, false, Reason::Http4xx),
            (401, false, Reason::Http4xx),
            (403, false, Reason::Http4xx),
            (404, false, Reason::Http4xx),
            (410, false, Reason::Http4xx),
            (408, true, Reason::Timeout),
            (429, true, Reason::RateLimited),
            (500, true, Reason::Http5xx),
            (502, true, Reason::Http5xx),
            (503, true, Reason::Http5xx),
        ];
        for (status, retriable, reason) in cases {
            let e = classify_http_status(StatusCode::from_u16(*status).unwrap(), &none, "x");
            assert_eq!(e.is_retriable(), *retriable, "{status}");
            assert_eq!(e.reason(), *reason, "{status}");
        }
    }

    #[test]
    fn retry_after_seconds_are_honoured_and_dates_are_not_guessed() {
        let e = classify_http_status(StatusCode::TOO_MANY_REQUESTS, &with_retry_after("2"), "");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        let dated = with_retry_after("Wed, 21 Oct 2015 07:28:00 GMT");
        assert_eq!(retry_after(&dated), None);
    }

    #[test]
    fn snippets_are_short_and_single_line() {
        let long = format!("bad\r\nthing{}", "x".repeat(500));
        let s = snippet(&long);
        assert!(!s.contains('\n') && !s.contains('\r'));
        assert!(s.chars().count() <= 201);
    }

    #[test]
    fn header_values_cannot_break_a_header() {
        assert_eq!(header_safe("a:b\r\nX-Evil: 1"), "a:bX-Evil: 1");
    }

    #[test]
    fn timestamps_render_as_rfc3339() {
        assert_eq!(
            rfc3339_millis(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
    }

    #[test]
    fn durations_read_like_a_person_wrote_them() {
        assert_eq!(format_duration(42.4), "42s");
        assert_eq!(format_duration(330.0), "5m 30s");
        assert_eq!(format_duration(7_530.0), "2h 5m");
        assert_eq!(format_duration(f64::INFINITY), "never");
        assert_eq!(format_duration(-3.0), "0s");
        assert_eq!(format_number(120.0), "120");
        assert_eq!(format_number(80.456), "80.46");
        assert_eq!(format_number(0.5), "0.5");
    }

    #[test]
    fn headlines_name_the_status_count_alert_and_entity() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            describe_entity(&labels(&[
                ("queue", "orders"),
                ("vhost", "/"),
                ("cluster", "local")
            ])),
            "orders (/) on local"
        );
        assert_eq!(
            describe_entity(&labels(&[("node", "rabbit@a"), ("cluster", "local")])),
            "rabbit@a on local"
        );
        assert_eq!(
            describe_entity(&labels(&[("cluster", "local")])),
            "on local"
        );
        let alert = |status| AlertSummary {
            status,
            labels: labels(&[("alertname", "QueueBacklogGrowing")]),
            annotations: BTreeMap::new(),
            starts_at: 0,
            ends_at: None,
            correlation_id: "c".to_owned(),
            fingerprint: "f".to_owned(),
            values: BTreeMap::new(),
        };
        let mut n = Notification {
            receiver: "r".to_owned(),
            group_key: "g".to_owned(),
            status: GroupStatus::Firing,
            group_labels: BTreeMap::new(),
            common_labels: labels(&[("cluster", "local")]),
            common_annotations: BTreeMap::new(),
            alerts: vec![alert(AlertStatus::Firing), alert(AlertStatus::Resolved)],
            idempotency_key: "c:firing:1".to_owned(),
            flapping: false,
            previous: None,
            amends: false,
            created_at: 0,
            scaling: None,
        };
        assert_eq!(headline(&n), "[FIRING:1] QueueBacklogGrowing on local");
        n.status = GroupStatus::Resolved;
        assert_eq!(headline(&n), "[RESOLVED:2] QueueBacklogGrowing on local");
        assert_eq!(correlation_ids(&n.alerts), vec!["c"]);
    }
}
