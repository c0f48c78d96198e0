//! Slack: a Block Kit message per notification, through an incoming webhook or the Web API with a
//! bot token (`chat.postMessage`, and `chat.update` so a resolve edits the original message).
//!
//! Owns the message layout, the escaping of everything interpolated into it, and the classification
//! of Slack's answers. Must never retry (the outbox does) and never put untrusted text (labels,
//! annotations, queue names) where Slack would parse it as mrkdwn: untrusted text only goes into
//! `plain_text` objects, escaped (`&`, `<`, `>`), so a queue named `<!channel>` pings nobody.
//!
//! Talks HTTP through the process's one `reqwest::Client` rather than slack-morphism: every request
//! must carry an `Idempotency-Key` header, which slack-morphism's connector cannot add, and one HTTP
//! stack means one TLS setup (ring only).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{
    AlertStatus, AlertSummary, Delivered, DeliveryError, GroupStatus, InvalidReceiver,
    Notification, Reason, affected, alerts_link, classify_http_status, classify_http_transport,
    compact_line, correlation_ids, describe_entity, header_safe, headline, retry_after, snippet,
    value_lines, worst_first,
};
use crate::domain::Secret;
use crate::yaml::{S, Values};

pub const DEFAULT_API_URL: &str = "https://slack.com/api";
/// Slack accepts about one message per second per channel.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Alerts shown in full (up to 4 blocks each); the next ones get a line each in one section.
const MAX_ALERTS_SHOWN: usize = 5;
/// Lines in that section at most; past them (or its 3000 characters) the rest are counted
/// ("… and N more").
const MAX_ALERTS_LISTED: usize = 40;
/// A queue name in that list, at most (escaped); the numbers after it are never cut.
const NAME_MAX: usize = 120;
const JSON_UTF8: &str = "application/json; charset=utf-8";

// Slack's limits, in characters.
const HEADER_MAX: usize = 150;
const TEXT_MAX: usize = 3000;
const FIELD_MAX: usize = 2000;

const COLOR_CRITICAL: &str = "#E01E5A";
const COLOR_WARNING: &str = "#F2952F";
const COLOR_OTHER: &str = "#439FE0";
const COLOR_RESOLVED: &str = "#2EB67D";

#[derive(Clone, Debug)]
pub struct SlackConfig {
    /// Incoming webhook; a credential in itself, so it never appears in logs or errors.
    pub webhook_url: Option<Url>,
    /// With `channel`: post through the Web API, and update the message when the alert resolves.
    pub bot_token: Option<Secret>,
    pub channel: Option<String>,
    /// The Web API base, `https://slack.com/api`; tests point it at a fake.
    pub api_url: Url,
    /// Linked from every alert.
    pub dashboard_url: Option<String>,
    /// The daemon's address as readers reach it (`server.external_url`): a grouped message links
    /// its full list under it (`/api/v1/alerts?alertname=…`).
    pub external_url: Option<Url>,
}

impl SlackConfig {
    pub fn default_api_url() -> Url {
        Url::parse(DEFAULT_API_URL).expect("DEFAULT_API_URL is a valid URL")
    }
}

impl Default for SlackConfig {
    fn default() -> Self {
        SlackConfig {
            webhook_url: None,
            bot_token: None,
            channel: None,
            api_url: SlackConfig::default_api_url(),
            dashboard_url: None,
            external_url: None,
        }
    }
}

#[derive(Clone)]
pub struct SlackReceiver {
    name: String,
    target: Target,
    dashboard_url: Option<Url>,
    external_url: Option<Url>,
    http: reqwest::Client,
}

#[derive(Clone)]
enum Target {
    Webhook(Url),
    Bot {
        token: Secret,
        channel: String,
        /// Without a trailing slash: methods are appended as `/{method}`.
        api_url: String,
    },
}

impl fmt::Debug for SlackReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match &self.target {
            Target::Webhook(_) => "webhook(***)".to_owned(),
            Target::Bot {
                channel, api_url, ..
            } => format!("bot(channel {channel}, {api_url})"),
        };
        f.debug_struct("SlackReceiver")
            .field("name", &self.name)
            .field("target", &target)
            .finish_non_exhaustive()
    }
}

/// Slack errors that retrying cannot fix: the payload, the credentials or the channel are wrong.
const PERMANENT_ERRORS: &[&str] = &[
    "invalid_payload",
    "channel_not_found",
    "invalid_auth",
    "not_authed",
    "account_inactive",
    "token_revoked",
    "token_expired",
    "no_permission",
    "missing_scope",
    "is_archived",
    "channel_is_archived",
    "msg_too_long",
    "invalid_blocks",
    "invalid_attachments",
    "too_many_attachments",
    "no_text",
    "not_in_channel",
    "message_not_found",
    "cant_update_message",
    "edit_window_closed",
    "restricted_action",
    "not_allowed_token_type",
    "invalid_arguments",
    "invalid_json",
    "json_not_object",
    "invalid_charset",
    "method_deprecated",
    "deprecated_endpoint",
    "team_access_not_granted",
    "ekm_access_denied",
];

/// Classifies the `error` of a Slack `ok:false` answer. Unknown codes are retried: at worst the
/// notification dead-letters after `max_attempts`, whereas a wrong "permanent" would lose it early.
pub fn classify_slack_error(code: &str, retry_after: Option<Duration>) -> DeliveryError {
    if matches!(code, "ratelimited" | "rate_limited") {
        return DeliveryError::Transient {
            reason: Reason::RateLimited,
            message: code.to_owned(),
            retry_after,
        };
    }
    if PERMANENT_ERRORS.contains(&code) {
        return DeliveryError::Permanent {
            reason: Reason::SlackApi,
            message: code.to_owned(),
        };
    }
    DeliveryError::Transient {
        reason: Reason::SlackApi,
        message: if code.is_empty() {
            "ok:false without an error code".to_owned()
        } else {
            code.to_owned()
        },
        retry_after,
    }
}

/// Slack errors on `chat.update` after which the resolve is posted as a new message instead: the
/// original is gone or no longer editable, and a resolve must not be lost.
fn original_is_gone(code: &str) -> bool {
    matches!(
        code,
        "message_not_found" | "cant_update_message" | "edit_window_closed"
    )
}

/// The Web API's answer, as far as we read it.
#[derive(Debug, Deserialize)]
struct ApiAnswer {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    ts: Option<String>,
}

enum CallError {
    /// Slack answered `ok:false` with this code.
    Slack {
        code: String,
        retry_after: Option<Duration>,
    },
    Delivery(DeliveryError),
}

impl From<CallError> for DeliveryError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Slack { code, retry_after } => classify_slack_error(&code, retry_after),
            CallError::Delivery(e) => e,
        }
    }
}

fn http_url(url: &Url) -> bool {
    matches!(url.scheme(), "http" | "https") && url.has_host()
}

/// Which setting a problem is about, so the config loader can point at its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlackKey {
    /// No one key: the receiver as a whole.
    Receiver,
    WebhookUrl,
    BotToken,
    Channel,
    ApiUrl,
    DashboardUrl,
}

/// What is wrong with a Slack setting, each with the key it is about.
type Problems = Vec<(SlackKey, &'static str)>;

/// Every rule a Slack setting must follow, in one place: `rabbitwatch check` reports each problem
/// at its key (`RawSlackConfig::validate`), `SlackReceiver::new` refuses a config built in code that
/// breaks one.
fn check(cfg: &SlackConfig) -> Result<(Target, Option<Url>), Problems> {
    let mut problems = Vec::new();
    let target = match (&cfg.webhook_url, &cfg.bot_token) {
        (Some(_), Some(_)) => {
            problems.push((
                SlackKey::WebhookUrl,
                "set either webhook_url or bot_token_file, not both",
            ));
            None
        }
        (None, None) => {
            problems.push((
                SlackKey::Receiver,
                "needs webhook_url (or webhook_url_file), or bot_token_file with channel",
            ));
            None
        }
        (Some(url), None) => {
            if !http_url(url) {
                problems.push((SlackKey::WebhookUrl, "webhook_url must be an http(s) URL"));
            }
            if cfg.channel.is_some() {
                problems.push((
                    SlackKey::Channel,
                    "channel applies only with bot_token_file; a webhook posts to its own channel",
                ));
            }
            Some(Target::Webhook(url.clone()))
        }
        (None, Some(token)) => {
            if token.expose().trim().is_empty() {
                problems.push((SlackKey::BotToken, "bot_token_file is empty"));
            }
            let channel = match &cfg.channel {
                Some(c) if !c.trim().is_empty() => c.trim().to_owned(),
                Some(_) => {
                    problems.push((SlackKey::Channel, "channel is empty"));
                    String::new()
                }
                None => {
                    problems.push((SlackKey::BotToken, "bot_token_file needs a channel"));
                    String::new()
                }
            };
            if !http_url(&cfg.api_url) {
                problems.push((SlackKey::ApiUrl, "api_url must be an http(s) URL"));
            }
            Some(Target::Bot {
                token: token.clone(),
                channel,
                api_url: cfg.api_url.as_str().trim_end_matches('/').to_owned(),
            })
        }
    };
    let dashboard_url = match &cfg.dashboard_url {
        None => None,
        Some(text) => match Url::parse(text) {
            Ok(url) if http_url(&url) => Some(url),
            _ => {
                problems.push((
                    SlackKey::DashboardUrl,
                    "dashboard_url must be an http(s) URL",
                ));
                None
            }
        },
    };
    match target {
        Some(target) if problems.is_empty() => Ok((target, dashboard_url)),
        _ => Err(problems),
    }
}

/// `slack:` as written in the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlackConfig {
    webhook_url: Option<S>,
    webhook_url_file: Option<S>,
    bot_token_file: Option<S>,
    channel: Option<S>,
    api_url: Option<S>,
    dashboard_url: Option<S>,
}

impl RawSlackConfig {
    /// Reads the settings (secrets from their files) and checks them, each problem reported at its
    /// key; `receiver` is where the receiver's name is, for problems of no one key.
    pub fn validate(&self, v: &mut Values<'_>, receiver: &S) -> Option<SlackConfig> {
        let before = v.diags.len();
        let webhook_url = match (&self.webhook_url, &self.webhook_url_file) {
            (Some(u), None) => v.url(u, "slack.webhook_url"),
            (None, Some(f)) => v
                .secret_file(f, "slack.webhook_url_file")
                .and_then(|secret| {
                    let url = Url::parse(secret.expose().trim()).ok().filter(http_url);
                    if url.is_none() {
                        v.error_at(f, "slack.webhook_url_file does not hold an http(s) URL");
                    }
                    url
                }),
            (Some(u), Some(_)) => {
                v.error_at(
                    u,
                    "set either slack.webhook_url or slack.webhook_url_file, not both",
                );
                None
            }
            (None, None) => None,
        };
        let bot_token = self
            .bot_token_file
            .as_ref()
            .and_then(|f| v.secret_file(f, "slack.bot_token_file"));
        let api_url = match &self.api_url {
            Some(u) => v.url(u, "slack.api_url"),
            None => Some(SlackConfig::default_api_url()),
        };
        let cfg = SlackConfig {
            webhook_url,
            bot_token,
            channel: self.channel.as_ref().map(|c| v.string(c)),
            api_url: api_url?,
            dashboard_url: self.dashboard_url.as_ref().map(|d| v.string(d)),
            external_url: None,
        };
        if v.diags.len() > before {
            // A value that could not be read is reported already; the rules below would only
            // repeat it in other words.
            return None;
        }
        let problems = check(&cfg).err().unwrap_or_default();
        let at = |key| {
            match key {
                SlackKey::Receiver => None,
                SlackKey::WebhookUrl => {
                    self.webhook_url.as_ref().or(self.webhook_url_file.as_ref())
                }
                SlackKey::BotToken => self.bot_token_file.as_ref(),
                SlackKey::Channel => self.channel.as_ref(),
                SlackKey::ApiUrl => self.api_url.as_ref(),
                SlackKey::DashboardUrl => self.dashboard_url.as_ref(),
            }
            .unwrap_or(receiver)
        };
        v.report("slack", problems, at).then_some(cfg)
    }
}

impl SlackReceiver {
    /// Builds the receiver from a config that follows the rules of `check` (as every config loaded
    /// from a file does); one built in code that does not is refused with its first problem.
    pub fn new(
        name: impl Into<String>,
        cfg: SlackConfig,
        http: reqwest::Client,
    ) -> Result<Self, InvalidReceiver> {
        let name = name.into();
        let (target, dashboard_url) = check(&cfg)
            .map_err(|problems| InvalidReceiver::new(&name, format!("slack: {}", problems[0].1)))?;
        Ok(SlackReceiver {
            name,
            target,
            dashboard_url,
            external_url: cfg.external_url,
            http,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Messages with the same key share Slack's per-channel rate limit. A webhook's URL is a secret,
    /// so its key is a digest of it.
    pub fn pacing_key(&self) -> String {
        match &self.target {
            Target::Bot { channel, .. } => format!("slack:{channel}"),
            Target::Webhook(url) => {
                let digest = Sha256::digest(url.as_str().as_bytes());
                format!("slack:webhook:{}", &hex::encode(digest)[..16])
            }
        }
    }

    /// Start-up check with a bot token: `auth.test` proves the API is reachable and the token valid,
    /// without posting anything. A webhook cannot be checked without posting (config refuses it).
    pub async fn verify(&self) -> Result<(), DeliveryError> {
        match &self.target {
            Target::Webhook(_) => Ok(()),
            Target::Bot { token, api_url, .. } => self
                .call(
                    api_url,
                    token,
                    "auth.test",
                    &Value::Object(Default::default()),
                    None,
                )
                .await
                .map(drop)
                .map_err(DeliveryError::from),
        }
    }

    /// Posts the notification. With a bot token, a notification that amends the group's incident
    /// (more queues, fewer, or the resolve) edits the message that announced it (`n.previous` =
    /// `channel:ts`), so a storm stays one message; the handle returned is `channel:ts`.
    pub async fn deliver(&self, n: &Notification) -> Result<Delivered, DeliveryError> {
        let message = render_message(n, self.dashboard_url.as_ref(), self.external_url.as_ref());
        let (token, channel, api_url) = match &self.target {
            Target::Webhook(url) => {
                self.post_webhook(url, &message, n).await?;
                return Ok(Delivered::default());
            }
            Target::Bot {
                token,
                channel,
                api_url,
            } => (token, channel, api_url),
        };
        // A resolve always amends; the check on `status` keeps entries queued before `amends`
        // existed editing as they did.
        if (n.amends || n.status == GroupStatus::Resolved)
            && let Some((channel_id, ts)) = n.previous.as_deref().and_then(parse_handle)
        {
            let mut update = message.clone();
            update["channel"] = channel_id.into();
            update["ts"] = ts.into();
            let key = Some(n.idempotency_key.as_str());
            match self.call(api_url, token, "chat.update", &update, key).await {
                Ok(_) => {
                    return Ok(Delivered {
                        handle: Some(format!("{channel_id}:{ts}")),
                    });
                }
                Err(CallError::Slack { code, .. }) if original_is_gone(&code) => {
                    tracing::warn!(
                        receiver = %self.name,
                        idempotency_key = %n.idempotency_key,
                        slack_error = %code,
                        "the group's message cannot be updated; posting a new one"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut post = message;
        post["channel"] = channel.as_str().into();
        let answer = self
            .call(
                api_url,
                token,
                "chat.postMessage",
                &post,
                Some(&n.idempotency_key),
            )
            .await?;
        match (answer.channel, answer.ts) {
            (Some(channel_id), Some(ts)) => Ok(Delivered {
                handle: Some(format!("{channel_id}:{ts}")),
            }),
            // Posted, but the resolve will not be able to edit it: still a delivery, since
            // retrying would post a duplicate.
            _ => {
                tracing::warn!(
                    receiver = %self.name,
                    idempotency_key = %n.idempotency_key,
                    "chat.postMessage answered ok without channel and ts"
                );
                Ok(Delivered::default())
            }
        }
    }

    async fn call(
        &self,
        api_url: &str,
        token: &Secret,
        method: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<ApiAnswer, CallError> {
        let mut request = self
            .http
            .post(format!("{api_url}/{method}"))
            .timeout(REQUEST_TIMEOUT)
            .bearer_auth(token.expose());
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", header_safe(key));
        }
        let response = request
            .header(CONTENT_TYPE, JSON_UTF8)
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| CallError::Delivery(classify_http_transport(e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response
            .text()
            .await
            .map_err(|e| CallError::Delivery(classify_http_transport(e)))?;
        if !status.is_success() {
            return Err(CallError::Delivery(classify_http_status(
                status, &headers, &text,
            )));
        }
        let answer: ApiAnswer = serde_json::from_str(&text).map_err(|e| {
            CallError::Delivery(DeliveryError::Transient {
                reason: Reason::InvalidResponse,
                message: format!("{method}: not a Slack answer ({e}): {}", snippet(&text)),
                retry_after: None,
            })
        })?;
        if answer.ok {
            Ok(answer)
        } else {
            Err(CallError::Slack {
                code: answer.error.unwrap_or_default(),
                retry_after: retry_after(&headers),
            })
        }
    }

    async fn post_webhook(
        &self,
        url: &Url,
        message: &Value,
        n: &Notification,
    ) -> Result<(), DeliveryError> {
        let response = self
            .http
            .post(url.clone())
            .timeout(REQUEST_TIMEOUT)
            .header("Idempotency-Key", header_safe(&n.idempotency_key))
            .header(CONTENT_TYPE, JSON_UTF8)
            .body(message.to_string())
            .send()
            .await
            .map_err(classify_http_transport)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let headers = response.headers().clone();
        // Slack's webhook errors are plain words (`invalid_payload`, `no_service`, …).
        let text = response.text().await.unwrap_or_default();
        Err(classify_http_status(status, &headers, &text))
    }
}

/// `C123:1700000000.000100` → (`C123`, `1700000000.000100`).
fn parse_handle(handle: &str) -> Option<(&str, &str)> {
    let (channel, ts) = handle.split_once(':')?;
    (!channel.is_empty() && !ts.is_empty()).then_some((channel, ts))
}

// ---------------------------------------------------------------------------------------------------
// The message

/// The Block Kit message for a notification (without `channel`/`ts`, which the API calls add).
/// A colour-barred attachment per message carries the alerts; the header stays on top.
///
/// A group of many alerts (a storm: 500 queues losing their consumers at once) is one message that
/// a reader takes in at a glance: how many queues, the worst few in full (ranked by `worst_first`:
/// the biggest backlog first), the next ones a line each as far as one section's 3000 characters
/// go, "… and N more", and where the full list is. At most 5 × 4 + 6 blocks, inside Slack's 50.
pub fn render_message(
    n: &Notification,
    dashboard_url: Option<&Url>,
    external_url: Option<&Url>,
) -> Value {
    let head = format!("{} {}", emoji(n), headline(n));
    let ranked = worst_first(&n.alerts);
    let mut blocks = Vec::new();
    if n.alerts.len() > 1 {
        let a = affected(n);
        let order = if n.status == GroupStatus::Firing && n.alerts.len() > MAX_ALERTS_SHOWN {
            ", worst first"
        } else {
            ""
        };
        blocks.push(json!({
            "type": "section",
            "text": plain(&format!("{}{order}", capitalised(&a.summary(n.status))), TEXT_MAX),
        }));
    }
    let shown = &ranked[..ranked.len().min(MAX_ALERTS_SHOWN)];
    for (i, alert) in shown.iter().enumerate() {
        if i > 0 || n.alerts.len() > 1 {
            blocks.push(json!({"type": "divider"}));
        }
        blocks.extend(alert_blocks(alert, n.status, dashboard_url));
    }
    let rest = &ranked[shown.len()..];
    let (listed, text) = compact_list(rest, &n.common_labels);
    if listed > 0 {
        blocks.push(json!({"type": "divider"}));
        blocks.push(json!({"type": "section", "text": {"type": "plain_text", "text": text, "emoji": false}}));
    }
    let hidden = rest.len() - listed;
    if hidden > 0 {
        blocks.push(json!({
            "type": "section",
            "text": plain(&format!("… and {hidden} more"), TEXT_MAX),
        }));
    }
    if n.alerts.len() > shown.len() {
        let target = alerts_link(n, external_url);
        let all = format!("All {} alerts", n.alerts.len());
        let element = match external_url.and_then(|_| link(&target, &all)) {
            Some(mrkdwn) => json!({"type": "mrkdwn", "text": mrkdwn}),
            // No address to link to: the path, as text, for whoever can reach the daemon.
            None => plain(&format!("{all}: GET {target} on rabbitwatch"), FIELD_MAX),
        };
        blocks.push(json!({"type": "context", "elements": [element]}));
    }
    let ids = correlation_ids(shown.iter().copied()).join(", ");
    blocks.push(json!({
        "type": "context",
        "elements": [plain(
            &format!("correlation_id: {ids} · idempotency_key: {}", n.idempotency_key),
            FIELD_MAX,
        )],
    }));
    let fallback = mrkdwn_literal(&head);
    json!({
        "text": fallback,
        "blocks": [{"type": "header", "text": plain(&head, HEADER_MAX)}],
        "attachments": [{"color": color(n), "fallback": fallback, "blocks": blocks}],
        "unfurl_links": false,
        "unfurl_media": false,
    })
}

/// As many of `alerts` as fit one `plain_text` section, a line each (escaped, as Slack counts),
/// and how many that was.
fn compact_list(alerts: &[&AlertSummary], common: &BTreeMap<String, String>) -> (usize, String) {
    let mut text = String::new();
    let mut len = 0;
    let mut listed = 0;
    for alert in alerts.iter().take(MAX_ALERTS_LISTED) {
        let line = format!(
            "• {}",
            compact_line(alert, common).render(|name| fit(name, NAME_MAX), escape)
        );
        let n = line.chars().count() + 1;
        // Room kept for nothing else: the "… and N more" line is a block of its own.
        if len + n > TEXT_MAX {
            break;
        }
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&line);
        len += n;
        listed += 1;
    }
    (listed, text)
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn alert_blocks(alert: &AlertSummary, group: GroupStatus, dashboard: Option<&Url>) -> Vec<Value> {
    let name = alert
        .labels
        .get("alertname")
        .map_or("alert", String::as_str);
    let entity = describe_entity(&alert.labels);
    let mut title = match alert.annotations.get("summary") {
        Some(summary) if !summary.trim().is_empty() => summary.clone(),
        _ if entity.is_empty() => name.to_owned(),
        _ => format!("{name}: {entity}"),
    };
    // A group that is still firing may carry alerts that already resolved, and vice versa.
    let differs = match (group, alert.status) {
        (GroupStatus::Firing, AlertStatus::Resolved) => Some("Resolved"),
        (GroupStatus::Resolved, AlertStatus::Firing) => Some("Firing"),
        _ => None,
    };
    if let Some(status) = differs {
        title = format!("{status}: {title}");
    }

    let label = |key: &str| alert.labels.get(key);
    let mut fields = Vec::new();
    if let Some(cluster) = label("cluster") {
        fields.push(format!("Cluster: {cluster}"));
    }
    match (label("queue"), label("node")) {
        (Some(queue), _) => {
            let vhost = label("vhost").map_or(String::new(), |v| format!(" (vhost {v})"));
            fields.push(format!("Queue: {queue}{vhost}"));
        }
        (None, Some(node)) => fields.push(format!("Node: {node}")),
        (None, None) => {}
    }
    if let Some(severity) = label("severity") {
        fields.push(format!("Severity: {severity}"));
    }
    fields.extend(value_lines(&alert.values));

    let mut section = json!({"type": "section", "text": plain(&title, TEXT_MAX)});
    if !fields.is_empty() {
        let fields: Vec<Value> = fields
            .iter()
            .take(10) // Slack's limit per section
            .map(|f| plain(f, FIELD_MAX))
            .collect();
        section["fields"] = fields.into();
    }
    let mut blocks = vec![section];
    if let Some(description) = alert.annotations.get("description")
        && !description.trim().is_empty()
    {
        blocks.push(json!({"type": "section", "text": plain(description, TEXT_MAX)}));
    }
    let links: Vec<String> = [
        alert
            .annotations
            .get("runbook_url")
            .and_then(|u| link(u, "Runbook")),
        dashboard.and_then(|u| link(u.as_str(), "Dashboard")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !links.is_empty() {
        blocks.push(json!({
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": links.join(" · ")}],
        }));
    }
    blocks
}

fn severity_rank(severity: Option<&String>) -> u8 {
    match severity.map(String::as_str) {
        Some("critical") => 3,
        Some("warning") => 2,
        Some(_) => 1,
        None => 0,
    }
}

/// The most severe severity among the firing alerts (or all, if none fires).
fn group_severity(n: &Notification) -> u8 {
    let firing = n.alerts.iter().filter(|a| a.status == AlertStatus::Firing);
    let rank = |a: &AlertSummary| severity_rank(a.labels.get("severity"));
    firing
        .map(rank)
        .max()
        .or_else(|| n.alerts.iter().map(rank).max())
        .unwrap_or(0)
        .max(severity_rank(n.common_labels.get("severity")))
}

fn color(n: &Notification) -> &'static str {
    if n.status == GroupStatus::Resolved {
        return COLOR_RESOLVED;
    }
    match group_severity(n) {
        3 => COLOR_CRITICAL,
        2 => COLOR_WARNING,
        _ => COLOR_OTHER,
    }
}

fn emoji(n: &Notification) -> &'static str {
    if n.flapping {
        return "🔁";
    }
    if n.status == GroupStatus::Resolved {
        return "✅";
    }
    match group_severity(n) {
        3 => "🚨",
        2 => "⚠️",
        _ => "🔔",
    }
}

// ---------------------------------------------------------------------------------------------------
// Escaping

/// Escapes Slack's control characters (`&`, `<`, `>`), which would otherwise form mentions
/// (`<!channel>`) and links (`<http://…|…>`).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        c => out.push(c),
    }
}

/// Escaped and cut to `limit` characters (counted after escaping, as Slack counts), never inside
/// an entity, ending in `…` when cut.
fn fit(text: &str, limit: usize) -> String {
    let mut out = String::new();
    let mut len = 0;
    let mut piece = String::new();
    let total: usize = text.chars().map(escaped_len).sum();
    if total <= limit {
        return escape(text);
    }
    for c in text.chars() {
        piece.clear();
        push_escaped(&mut piece, c);
        let n = piece.chars().count();
        if len + n > limit.saturating_sub(1) {
            break;
        }
        out.push_str(&piece);
        len += n;
    }
    out.push('…');
    out
}

fn escaped_len(c: char) -> usize {
    match c {
        '&' => 5,
        '<' | '>' => 4,
        _ => 1,
    }
}

/// A `plain_text` object: never parsed for formatting, mentions or links, and with `emoji: false`
/// so a `:skull:` in a queue name stays text.
fn plain(text: &str, limit: usize) -> Value {
    json!({"type": "plain_text", "text": fit(text, limit), "emoji": false})
}

/// For the one place mrkdwn must carry untrusted text (the notification fallback `text`): escaped,
/// and every formatting character fenced with zero-width spaces so it cannot open or close bold,
/// italics, strike or code; `:` too, so neither `:emoji:` codes nor bare `http://` links form.
fn mrkdwn_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in fit(text, TEXT_MAX).chars() {
        if matches!(c, '*' | '_' | '~' | '`' | ':') {
            out.push('\u{200B}');
            out.push(c);
            out.push('\u{200B}');
        } else {
            out.push(c);
        }
    }
    out
}

/// A mrkdwn link to an http(s) URL with a fixed label; anything else (other schemes, unparsable
/// text) is left out. The URL is normalised by the parser, and the characters that would end the
/// link or start a new one are percent-encoded.
fn link(url: &str, label: &str) -> Option<String> {
    let url = Url::parse(url.trim()).ok().filter(http_url)?;
    let mut safe = String::new();
    for c in url.as_str().chars() {
        match c {
            '|' => safe.push_str("%7C"),
            '<' => safe.push_str("%3C"),
            '>' => safe.push_str("%3E"),
            ' ' => safe.push_str("%20"),
            // Slack does not format inside a link's URL; encoded anyway so no mrkdwn text ever
            // carries an untrusted `*x*` or `~x~` (`_` stays: it is common and harmless here).
            '*' => safe.push_str("%2A"),
            '~' => safe.push_str("%7E"),
            '`' => safe.push_str("%60"),
            '&' => safe.push_str("&amp;"),
            c => safe.push(c),
        }
    }
    Some(format!("<{safe}|{label}>"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const HOSTILE: &str = "<!channel> *x* <http://evil|click>";

    fn alert(queue: &str, severity: &str, status: AlertStatus) -> AlertSummary {
        let labels: BTreeMap<String, String> = [
            ("alertname", "QueueBacklogGrowing"),
            ("cluster", "local"),
            ("vhost", "/"),
            ("queue", queue),
            ("severity", severity),
            ("scope", "queue"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        AlertSummary {
            status,
            labels,
            annotations: [
                ("summary".to_owned(), format!("Backlog growing on {queue}")),
                ("description".to_owned(), "120/s in, 80/s out".to_owned()),
                (
                    "runbook_url".to_owned(),
                    format!("https://wiki.example.com/runbooks/backlog?q={queue}"),
                ),
            ]
            .into_iter()
            .collect(),
            starts_at: 1_700_000_000_000,
            ends_at: None,
            correlation_id: "0190a5b2-0000-7000-8000-000000000001".to_owned(),
            fingerprint: "abc".to_owned(),
            values: [
                ("publish_rate", 120.0),
                ("consume_rate", 80.5),
                ("messages", 1234.0),
                ("consumers", 2.0),
                ("drain_eta", f64::INFINITY),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        }
    }

    fn notification(alerts: Vec<AlertSummary>, status: GroupStatus) -> Notification {
        let common_labels = alerts.first().map(|a| a.labels.clone()).unwrap_or_default();
        Notification {
            receiver: "ops-slack".to_owned(),
            group_key: "{}:{alertname=\"QueueBacklogGrowing\"}".to_owned(),
            status,
            group_labels: BTreeMap::new(),
            common_labels,
            common_annotations: BTreeMap::new(),
            alerts,
            idempotency_key: "0190a5b2-0000-7000-8000-000000000001:firing:1".to_owned(),
            flapping: false,
            previous: None,
            amends: false,
            created_at: 1_700_000_000_000,
            scaling: None,
        }
    }

    /// Every text Slack parses as mrkdwn: the top-level `text`, the fallback, and `mrkdwn` objects.
    fn mrkdwn_texts(v: &Value) -> Vec<String> {
        fn walk(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(map) => {
                    if map.get("type").and_then(Value::as_str) == Some("mrkdwn")
                        && let Some(text) = map.get("text").and_then(Value::as_str)
                    {
                        out.push(text.to_owned());
                    }
                    for (key, value) in map {
                        if matches!(key.as_str(), "fallback")
                            && let Some(text) = value.as_str()
                        {
                            out.push(text.to_owned());
                        }
                        walk(value, out);
                    }
                }
                Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        if let Some(text) = v.get("text").and_then(Value::as_str) {
            out.push(text.to_owned());
        }
        walk(v, &mut out);
        out
    }

    #[test]
    fn a_hostile_queue_name_cannot_mention_link_or_format() {
        let n = notification(
            vec![alert(HOSTILE, "critical", AlertStatus::Firing)],
            GroupStatus::Firing,
        );
        let message = render_message(&n, None, None);
        let body = message.to_string();
        assert!(!body.contains("<!channel>"), "{body}");
        assert!(!body.contains("<http://evil"), "{body}");
        assert!(body.contains("&lt;!channel&gt; *x* &lt;http://evil|click&gt;"));
        for text in mrkdwn_texts(&message) {
            assert!(
                !text.contains("*x*"),
                "formatting survives in mrkdwn: {text:?}"
            );
            assert!(!text.contains("<!"), "mention in mrkdwn: {text:?}");
        }
    }

    #[test]
    fn links_are_http_only_and_cannot_be_broken_out_of() {
        assert_eq!(link("javascript:alert(1)", "Runbook"), None);
        assert_eq!(link("not a url", "Runbook"), None);
        let l = link("https://wiki/r?q=<!channel>|x&y=1", "Runbook").unwrap();
        assert!(!l[1..l.len() - 1].contains('<') && !l[1..l.len() - 1].contains('>'));
        assert_eq!(l.matches('|').count(), 1, "{l}");
        assert!(l.contains("&amp;y=1"), "{l}");
        assert!(l.ends_with("|Runbook>"));
    }

    #[test]
    fn the_message_shows_what_an_operator_needs() {
        let mut n = notification(
            vec![alert("orders", "warning", AlertStatus::Firing)],
            GroupStatus::Firing,
        );
        n.alerts[0].values.insert("drain_eta".to_owned(), 330.0);
        let dashboard = Url::parse("https://grafana.example.com/d/rabbit").unwrap();
        let message = render_message(&n, Some(&dashboard), None);
        let body = message.to_string();
        assert_eq!(
            message["blocks"][0]["text"]["text"],
            "⚠️ [FIRING:1] QueueBacklogGrowing orders (/) on local"
        );
        assert_eq!(message["attachments"][0]["color"], COLOR_WARNING);
        for expected in [
            "Cluster: local",
            "Queue: orders (vhost /)",
            "Severity: warning",
            "Rates: 120/s in, 80.5/s out",
            "Backlog: 1234 messages",
            "Consumers: 2",
            "Drain ETA: 5m 30s",
            "Backlog growing on orders",
            "120/s in, 80/s out",
            "<https://wiki.example.com/runbooks/backlog?q=orders|Runbook>",
            "<https://grafana.example.com/d/rabbit|Dashboard>",
            "correlation_id: 0190a5b2-0000-7000-8000-000000000001",
            "idempotency_key: 0190a5b2-0000-7000-8000-000000000001:firing:1",
        ] {
            assert!(body.contains(expected), "missing {expected:?} in {body}");
        }
    }

    #[test]
    fn colour_follows_severity_and_resolution() {
        let critical = notification(
            vec![alert("q", "critical", AlertStatus::Firing)],
            GroupStatus::Firing,
        );
        assert_eq!(
            render_message(&critical, None, None)["attachments"][0]["color"],
            COLOR_CRITICAL
        );
        let resolved = notification(
            vec![alert("q", "critical", AlertStatus::Resolved)],
            GroupStatus::Resolved,
        );
        let message = render_message(&resolved, None, None);
        assert_eq!(message["attachments"][0]["color"], COLOR_RESOLVED);
        assert!(message["text"].as_str().unwrap().contains("RESOLVED"));
    }

    /// A storm: `count` queues of `alert`, the i-th with `i` messages ready, names made long and
    /// hostile so escaping and cutting are exercised too.
    fn storm(count: usize, status: AlertStatus) -> Notification {
        let alerts = (0..count)
            .map(|i| {
                let mut a = alert(
                    &format!("{HOSTILE} {} q{i:03}", "&".repeat(10)),
                    "critical",
                    status,
                );
                a.labels
                    .insert("alertname".into(), "QueueNoConsumers".into());
                a.values.insert("messages_ready".into(), i as f64);
                a.values.insert("consumers".into(), 0.0);
                a.fingerprint = format!("f{i}");
                a
            })
            .collect();
        let group = if status == AlertStatus::Firing {
            GroupStatus::Firing
        } else {
            GroupStatus::Resolved
        };
        let mut n = notification(alerts, group);
        n.common_labels = [
            ("alertname", "QueueNoConsumers"),
            ("cluster", "local"),
            ("vhost", "/"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        n
    }

    /// Every `text` of every block, wherever it is.
    fn block_texts(v: &Value) -> Vec<String> {
        let mut out = Vec::new();
        for block in v["blocks"]
            .as_array()
            .into_iter()
            .chain(v["attachments"][0]["blocks"].as_array())
            .flatten()
        {
            if let Some(text) = block["text"]["text"].as_str() {
                out.push(text.to_owned());
            }
            for element in block["elements"].as_array().into_iter().flatten() {
                out.push(element["text"].as_str().unwrap_or_default().to_owned());
            }
        }
        out
    }

    #[test]
    fn a_storm_is_one_message_with_the_count_the_worst_first_and_the_rest_counted() {
        let n = storm(500, AlertStatus::Firing);
        let external_url = Url::parse("https://rw.example.com").unwrap();
        let message = render_message(&n, None, Some(&external_url));
        let body = message.to_string();
        let head = message["blocks"][0]["text"]["text"].as_str().unwrap();
        assert_eq!(
            head,
            "🚨 [FIRING:500] QueueNoConsumers: 500 queues in vhost / on local"
        );
        let blocks = message["attachments"][0]["blocks"].as_array().unwrap();
        let header_and_attachment = 1 + blocks.len();
        assert!(
            header_and_attachment <= 50,
            "{header_and_attachment} blocks"
        );
        let texts = block_texts(&message);
        for text in &texts {
            assert!(
                text.chars().count() <= 3000,
                "{} chars",
                text.chars().count()
            );
        }
        assert_eq!(texts[1], "500 queues affected, worst first");
        // The five biggest backlogs in full, in order, then a line each for the next ones.
        let position = |q: &str| body.find(&format!(" q{q}")).unwrap_or(usize::MAX);
        assert!(position("499") < position("498") && position("498") < position("495"));
        assert!(position("495") < position("494") && position("494") < position("490"));
        assert_eq!(
            position("000"),
            usize::MAX,
            "the smallest backlog is counted, not shown"
        );
        let more = texts
            .iter()
            .find_map(|t| {
                t.strip_prefix("… and ")
                    .and_then(|t| t.strip_suffix(" more"))
            })
            .expect("an … and N more line");
        let listed = texts.iter().find(|t| t.starts_with("• ")).expect("a list");
        let lines = listed.lines().count();
        assert!(lines >= 5, "{listed}");
        assert!(listed.contains("490 ready, 0 consumers"), "{listed}");
        assert_eq!(more.parse::<usize>().unwrap(), 500 - 5 - lines);
        assert!(
            body.contains("<https://rw.example.com/api/v1/alerts?alertname=QueueNoConsumers&amp;cluster=local&amp;vhost=%2F|All 500 alerts>"),
            "{body}"
        );
        assert!(!body.contains("<!channel>"), "escaped everywhere");
        for text in mrkdwn_texts(&message) {
            assert!(!text.contains("<!"), "mention in mrkdwn: {text:?}");
        }
    }

    #[test]
    fn without_an_external_url_the_full_list_is_named_as_text() {
        let message = render_message(&storm(20, AlertStatus::Firing), None, None);
        let texts = block_texts(&message);
        assert!(
            texts.contains(&"All 20 alerts: GET /api/v1/alerts?alertname=QueueNoConsumers&amp;cluster=local&amp;vhost=%2F on rabbitwatch".to_owned()),
            "{texts:#?}"
        );
        assert!(
            !texts.iter().any(|t| t.starts_with("… and")),
            "15 listed, none left"
        );
    }

    #[test]
    fn a_storm_resolves_as_one_message_saying_all_recovered() {
        let message = render_message(&storm(500, AlertStatus::Resolved), None, None);
        let texts = block_texts(&message);
        assert_eq!(
            texts[0],
            "✅ [RESOLVED:500] QueueNoConsumers: 500 queues in vhost / on local"
        );
        assert_eq!(texts[1], "All 500 queues recovered");
        assert_eq!(message["attachments"][0]["color"], COLOR_RESOLVED);
    }

    #[test]
    fn long_text_is_cut_without_splitting_an_entity() {
        let text = "<".repeat(100);
        let cut = fit(&text, 150);
        assert!(cut.chars().count() <= 150);
        assert!(cut.ends_with("&lt;…"), "{cut}");
        assert_eq!(fit("short & sweet", 150), "short &amp; sweet");
    }

    #[test]
    fn slack_errors_are_classified() {
        for code in [
            "invalid_payload",
            "channel_not_found",
            "invalid_auth",
            "not_in_channel",
        ] {
            let e = classify_slack_error(code, None);
            assert!(!e.is_retriable(), "{code}");
            assert_eq!(e.to_string(), format!("slack_api: {code}"));
        }
        let limited = classify_slack_error("ratelimited", Some(Duration::from_secs(3)));
        assert_eq!(limited.reason(), Reason::RateLimited);
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(3)));
        assert!(classify_slack_error("internal_error", None).is_retriable());
    }

    #[test]
    fn configuration_mistakes_are_refused_at_start() {
        // reqwest is built without a crypto provider; the daemon installs ring first thing.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let webhook = Url::parse("https://hooks.slack.com/services/T/B/X").unwrap();
        let both = SlackConfig {
            webhook_url: Some(webhook.clone()),
            bot_token: Some(Secret::new("xoxb-1".to_owned())),
            channel: Some("#ops".to_owned()),
            ..SlackConfig::default()
        };
        assert!(SlackReceiver::new("s", both, http.clone()).is_err());
        let no_channel = SlackConfig {
            bot_token: Some(Secret::new("xoxb-1".to_owned())),
            ..SlackConfig::default()
        };
        assert!(SlackReceiver::new("s", no_channel, http.clone()).is_err());
        let ok = SlackConfig {
            webhook_url: Some(webhook),
            ..SlackConfig::default()
        };
        let receiver = SlackReceiver::new("s", ok, http).unwrap();
        assert!(!format!("{receiver:?}").contains("services/T/B/X"));
        assert!(!receiver.pacing_key().contains("services"));
    }

    #[test]
    fn handles_split_into_channel_and_ts() {
        assert_eq!(
            parse_handle("C1:1700000000.000100"),
            Some(("C1", "1700000000.000100"))
        );
        assert_eq!(parse_handle("C1"), None);
        assert_eq!(parse_handle(":1"), None);
    }
}
