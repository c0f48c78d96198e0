//! Email over SMTP: a plain-text message per notification, with the correlation and idempotency
//! keys as headers and a `Message-ID` derived from the idempotency key (a redelivered duplicate
//! has the same id, so mail clients can fold it).
//!
//! Owns the SMTP connection settings (`smtp://`, `smtp://…?tls=required` for STARTTLS, `smtps://`
//! for implicit TLS), the message format, and the classification of SMTP errors (5xx permanent,
//! 4xx and connection trouble transient). Untrusted text (queue names, annotations) never reaches a
//! header with a line break or control character in it: it could otherwise add headers (`Bcc:`).

use std::fmt::{self, Write as _};
use std::time::Duration;

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use reqwest::Url;
use serde::Deserialize;

use super::{
    AlertStatus, AlertSummary, Delivered, DeliveryError, GroupStatus, InvalidReceiver,
    Notification, Reason, affected, alerts_link, compact_line, correlation_ids, describe_entity,
    format_number, headline, rfc3339_millis, value_lines, worst_first,
};
use crate::domain::Secret;
use crate::yaml::{S, Values};

/// Connecting, each command, and the whole DATA exchange are bounded by this.
const SMTP_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest one send can take: connect, greeting, EHLO, STARTTLS + EHLO, AUTH, MAIL, RCPT,
/// DATA, the message, QUIT — each bounded by `SMTP_TIMEOUT`.
pub(crate) const SEND_BUDGET: Duration = Duration::from_secs(SMTP_TIMEOUT.as_secs() * 10);
/// Subjects longer than this are cut: mail clients show less anyway.
const SUBJECT_MAX: usize = 200;

#[derive(Clone, Debug)]
pub struct EmailConfig {
    /// `smtp://host:port` (plain), `smtp://host:port?tls=required` (STARTTLS, or
    /// `tls=opportunistic`), `smtps://host:port` (implicit TLS).
    pub smtp_url: String,
    pub from: String,
    pub to: Vec<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub subject_prefix: Option<String>,
    /// The daemon's address as readers reach it (`server.external_url`): a grouped message links
    /// its full list under it (`/api/v1/alerts?alertname=…`).
    pub external_url: Option<reqwest::Url>,
}

#[derive(Clone)]
pub struct EmailReceiver {
    name: String,
    from: Mailbox,
    to: Vec<Mailbox>,
    subject_prefix: Option<String>,
    external_url: Option<reqwest::Url>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// Where the SMTP server is, without credentials: for logs and errors.
    server: String,
}

impl fmt::Debug for EmailReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailReceiver")
            .field("name", &self.name)
            .field("server", &self.server)
            .field("from", &self.from.to_string())
            .field("to", &self.to.len())
            .finish_non_exhaustive()
    }
}

/// Which setting a problem is about, so the config loader can point at its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmailKey {
    SmtpUrl,
    From,
    /// The recipient at this index, or the list when it is empty.
    To(Option<usize>),
    Username,
    Password,
}

/// How to reach the SMTP server, and who writes to whom, once every rule holds.
struct Prepared {
    host: String,
    port: u16,
    /// `None` for plain SMTP.
    tls: Option<fn(TlsParameters) -> Tls>,
    credentials: Option<Credentials>,
    from: Mailbox,
    to: Vec<Mailbox>,
    server: String,
}

/// Every rule an email setting must follow, in one place: `rabbitwatch check` reports each problem
/// at its key (`RawEmailConfig::validate`), `EmailReceiver::new` refuses a config built in code that
/// breaks one. The URL may hold a password: problems describe it, never quote it.
fn check(cfg: &EmailConfig) -> Result<Prepared, Vec<(EmailKey, String)>> {
    let mut problems = Vec::new();
    let mut server = None;
    match Url::parse(&cfg.smtp_url) {
        Err(e) => problems.push((EmailKey::SmtpUrl, format!("smtp_url is not a URL ({e})"))),
        Ok(url) => match smtp_server(&url) {
            Ok(found) => server = Some((url, found)),
            Err(message) => problems.push((EmailKey::SmtpUrl, message)),
        },
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (url_user, url_password) = match &server {
        Some((url, _)) => (
            (!url.username().is_empty()).then(|| decode(url.username())),
            url.password().map(decode),
        ),
        None => (None, None),
    };
    let username = cfg.username.clone().or(url_user);
    let password = cfg
        .password
        .as_ref()
        .map(|p| p.expose().to_owned())
        .or(url_password);
    let credentials = match (username, password) {
        (Some(user), Some(password)) => Some(Credentials::new(user, password)),
        (None, None) => None,
        (Some(_), None) => {
            problems.push((EmailKey::Username, "username without a password".to_owned()));
            None
        }
        (None, Some(_)) => {
            problems.push((EmailKey::Password, "password without a username".to_owned()));
            None
        }
    };
    let from = match cfg.from.parse::<Mailbox>() {
        Ok(m) => Some(m),
        Err(e) => {
            problems.push((
                EmailKey::From,
                format!("from {:?} is not an address ({e})", cfg.from),
            ));
            None
        }
    };
    if cfg.to.is_empty() {
        problems.push((EmailKey::To(None), "to lists no recipient".to_owned()));
    }
    let mut to = Vec::new();
    for (i, t) in cfg.to.iter().enumerate() {
        match t.parse::<Mailbox>() {
            Ok(m) => to.push(m),
            Err(e) => problems.push((
                EmailKey::To(Some(i)),
                format!("to {t:?} is not an address ({e})"),
            )),
        }
    }
    match (server, from) {
        (Some((url, (host, port, tls))), Some(from)) if problems.is_empty() => Ok(Prepared {
            server: format!("{}://{host}:{port}", url.scheme()),
            host,
            port,
            tls,
            credentials,
            from,
            to,
        }),
        _ => Err(problems),
    }
}

/// Host, port and TLS mode of an `smtp://`/`smtps://` URL.
#[allow(clippy::type_complexity)]
fn smtp_server(url: &Url) -> Result<(String, u16, Option<fn(TlsParameters) -> Tls>), String> {
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| "smtp_url has no host".to_owned())?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let mut tls_mode = None;
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "tls" if tls_mode.is_none() => tls_mode = Some(value.into_owned()),
            other => {
                return Err(format!(
                    "smtp_url: unknown or repeated parameter {other:?} (only tls=required|opportunistic)"
                ));
            }
        }
    }
    let (tls, default_port): (Option<fn(TlsParameters) -> Tls>, u16) = match (
        url.scheme(),
        tls_mode.as_deref(),
    ) {
        ("smtp", None) => (None, 25),
        ("smtp", Some("required")) => (Some(Tls::Required), 587),
        ("smtp", Some("opportunistic")) => (Some(Tls::Opportunistic), 587),
        ("smtps", None) => (Some(Tls::Wrapper), 465),
        (scheme, tls) => {
            return Err(format!(
                "smtp_url: unsupported scheme {scheme:?} with tls={tls:?}; use smtp://, smtp://…?tls=required or smtps://"
            ));
        }
    };
    if tls.is_some() {
        TlsParameters::new(host.clone())
            .map_err(|e| format!("smtp_url: cannot set up TLS for {host}: {e}"))?;
    }
    Ok((host, url.port().unwrap_or(default_port), tls))
}

/// `email:` as written in the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmailConfig {
    smtp_url: S,
    from: S,
    to: Vec<S>,
    username: Option<S>,
    password: Option<S>,
    password_file: Option<S>,
    subject_prefix: Option<S>,
}

impl RawEmailConfig {
    /// Reads the settings (the password from its file) and checks them, each problem reported at
    /// its key.
    pub fn validate(&self, v: &mut Values<'_>) -> Option<EmailConfig> {
        let before = v.diags.len();
        let password = match (&self.password, &self.password_file) {
            (Some(p), None) => Some(Secret::new(v.string(p))),
            (None, Some(f)) => v.secret_file(f, "email.password_file"),
            (Some(p), Some(_)) => {
                v.error_at(
                    p,
                    "set either email.password or email.password_file, not both",
                );
                None
            }
            (None, None) => None,
        };
        let cfg = EmailConfig {
            smtp_url: v.string(&self.smtp_url),
            from: v.string(&self.from),
            to: self.to.iter().map(|t| v.string(t)).collect(),
            username: self.username.as_ref().map(|u| v.string(u)),
            password,
            subject_prefix: self.subject_prefix.as_ref().map(|p| v.string(p)),
            external_url: None,
        };
        if v.diags.len() > before {
            return None;
        }
        let problems = check(&cfg).err().unwrap_or_default();
        let at = |key| match key {
            EmailKey::SmtpUrl => &self.smtp_url,
            EmailKey::From => &self.from,
            EmailKey::To(Some(i)) => &self.to[i],
            EmailKey::To(None) => &self.from,
            EmailKey::Username => self.username.as_ref().unwrap_or(&self.smtp_url),
            EmailKey::Password => self
                .password
                .as_ref()
                .or(self.password_file.as_ref())
                .unwrap_or(&self.smtp_url),
        };
        v.report("email", problems, at).then_some(cfg)
    }
}

impl EmailReceiver {
    /// Prepares the transport from a config that follows the rules of `check` (as every config
    /// loaded from a file does; one built in code that does not is refused with its first problem).
    /// Connects only on `verify` and `deliver`.
    pub fn new(name: impl Into<String>, cfg: EmailConfig) -> Result<Self, InvalidReceiver> {
        let name = name.into();
        let p = check(&cfg)
            .map_err(|problems| InvalidReceiver::new(&name, format!("email: {}", problems[0].1)))?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(p.host.clone())
            .port(p.port)
            .timeout(Some(SMTP_TIMEOUT));
        if let Some(mode) = p.tls {
            let params = TlsParameters::new(p.host.clone()).map_err(|e| {
                InvalidReceiver::new(
                    &name,
                    format!("email: cannot set up TLS for {}: {e}", p.host),
                )
            })?;
            builder = builder.tls(mode(params));
        }
        if let Some(credentials) = p.credentials {
            builder = builder.credentials(credentials);
        }
        Ok(EmailReceiver {
            server: p.server,
            name,
            from: p.from,
            to: p.to,
            subject_prefix: cfg.subject_prefix,
            external_url: cfg.external_url,
            transport: builder.build(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Start-up check: connects, greets and closes, so a wrong host or port fails at start.
    pub async fn verify(&self) -> Result<(), DeliveryError> {
        match self.transport.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(DeliveryError::Transient {
                reason: Reason::Connect,
                message: format!("{}: the server did not answer NOOP", self.server),
                retry_after: None,
            }),
            Err(e) => Err(classify_smtp(&self.server, &e)),
        }
    }

    /// Sends the message; the handle is its `Message-ID`, so the resolve can thread under it.
    pub async fn deliver(&self, n: &Notification) -> Result<Delivered, DeliveryError> {
        let (message, message_id) = self.build_message(n)?;
        self.transport
            .send(message)
            .await
            .map_err(|e| classify_smtp(&self.server, &e))?;
        Ok(Delivered {
            handle: Some(message_id),
        })
    }

    /// The message for `n` and its `Message-ID`.
    pub fn build_message(&self, n: &Notification) -> Result<(Message, String), DeliveryError> {
        let mut subject = headline(n);
        if let Some(prefix) = &self.subject_prefix {
            subject = format!("{prefix} {subject}");
        }
        let message_id = format!(
            "<{}@{}>",
            msg_id_part(&n.idempotency_key),
            msg_id_part(self.from.email.domain())
        );
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(header_text(&subject, SUBJECT_MAX))
            .message_id(Some(message_id.clone()))
            .raw_header(custom_header(
                "X-Correlation-Id",
                &correlation_ids(&n.alerts).join(", "),
            ))
            .raw_header(custom_header(
                "X-Rabbitwatch-Idempotency-Key",
                &n.idempotency_key,
            ))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        if let Some(previous) = n.previous.as_deref().filter(|p| is_message_id(p)) {
            builder = builder
                .in_reply_to(previous.to_owned())
                .references(previous.to_owned());
        }
        let message = builder
            .body(render_body(n, self.external_url.as_ref()))
            .map_err(|e| DeliveryError::Permanent {
                reason: Reason::InvalidMessage,
                message: e.to_string(),
            })?;
        Ok((message, message_id))
    }
}

fn custom_header(name: &'static str, value: &str) -> HeaderValue {
    HeaderValue::new(
        HeaderName::new_from_ascii_str(name),
        header_text(value, 998),
    )
}

/// Text fit for a header: control characters (CR and LF above all) become spaces, runs of spaces
/// collapse, and the result is cut to `max` characters.
pub fn header_text(value: &str, max: usize) -> String {
    let mut out = String::with_capacity(value.len().min(max));
    let mut len = 0;
    for c in value.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        if len >= max {
            break;
        }
        out.push(c);
        len += 1;
    }
    out.trim_end().to_owned()
}

/// RFC 5322 `dot-atom-text` for either side of a Message-ID; anything else becomes `-`.
fn msg_id_part(text: &str) -> String {
    let part: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    // No leading, trailing or doubled dots in a dot-atom.
    let part = part.trim_matches('.').replace("..", ".");
    if part.is_empty() {
        "rabbitwatch".to_owned()
    } else {
        part
    }
}

/// Whether `text` is a Message-ID we could have made (`<left@right>`, nothing that could break a
/// header): only those are echoed into `In-Reply-To`.
fn is_message_id(text: &str) -> bool {
    text.len() <= 250
        && text
            .strip_prefix('<')
            .and_then(|t| t.strip_suffix('>'))
            .and_then(|t| t.split_once('@'))
            .is_some_and(|(left, right)| {
                !left.is_empty()
                    && !right.is_empty()
                    && msg_id_part(left) == left
                    && msg_id_part(right) == right
            })
}

/// One line of untrusted text in the body: control characters become spaces.
fn line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Multi-line untrusted text, each line indented under the first.
fn block(text: &str, indent: &str) -> String {
    text.lines()
        .map(line)
        .collect::<Vec<_>>()
        .join(&format!("\n{indent}"))
}

/// Alerts in an email shown in full; the next ones get a line each, up to `MAX_ALERTS_LISTED`.
const MAX_ALERTS_SHOWN: usize = 10;
const MAX_ALERTS_LISTED: usize = 100;

/// The plain-text body: the headline, how many queues, then the alerts worst first (`worst_first`)
/// — the first ten in full with labels, annotations, values and correlation id, the next hundred a
/// line each, the rest counted — and where the full list is.
pub fn render_body(n: &Notification, external_url: Option<&reqwest::Url>) -> String {
    let mut out = String::new();
    // `write!` into a String cannot fail.
    let _ = writeln!(out, "{}", line(&headline(n)));
    let ranked = worst_first(&n.alerts);
    let total = ranked.len();
    if total > 1 {
        let order = if total > MAX_ALERTS_SHOWN {
            ", worst first"
        } else {
            ""
        };
        let _ = writeln!(out, "{}{order}.", affected(n).summary(n.status));
    }
    let shown = total.min(MAX_ALERTS_SHOWN);
    for (i, alert) in ranked[..shown].iter().enumerate() {
        let _ = writeln!(out);
        render_alert(&mut out, i + 1, total, alert, n.status);
    }
    let listed = &ranked[shown..total.min(MAX_ALERTS_SHOWN + MAX_ALERTS_LISTED)];
    if !listed.is_empty() {
        let _ = writeln!(out);
        for alert in listed {
            let text = compact_line(alert, &n.common_labels).render(line, line);
            let _ = writeln!(out, "- {text}");
        }
    }
    let hidden = total - shown - listed.len();
    if hidden > 0 {
        let _ = writeln!(out, "… and {hidden} more");
    }
    if total > shown {
        let _ = writeln!(
            out,
            "All {total} alerts: {}",
            line(&alerts_link(n, external_url))
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "--");
    let _ = writeln!(out, "Group: {}", line(&n.group_key));
    let _ = writeln!(out, "Idempotency key: {}", line(&n.idempotency_key));
    if n.flapping {
        let _ = writeln!(
            out,
            "This alert is flapping; further changes are held back until it settles."
        );
    }
    let _ = writeln!(
        out,
        "Sent by rabbitwatch at {}",
        rfc3339_millis(n.created_at)
    );
    out
}

fn render_alert(
    out: &mut String,
    index: usize,
    total: usize,
    alert: &AlertSummary,
    group: GroupStatus,
) {
    let name = alert
        .labels
        .get("alertname")
        .map_or("alert", String::as_str);
    let status = match alert.status {
        AlertStatus::Firing => "firing",
        AlertStatus::Resolved => "resolved",
    };
    let _ = writeln!(
        out,
        "Alert {index} of {total}: {} {} ({status})",
        line(name),
        line(&describe_entity(&alert.labels))
    );
    let _ = writeln!(out, "  Started: {}", rfc3339_millis(alert.starts_at));
    if let Some(ends) = alert.ends_at
        && (alert.status == AlertStatus::Resolved || group == GroupStatus::Resolved)
    {
        let _ = writeln!(out, "  Ended: {}", rfc3339_millis(ends));
    }
    for key in ["summary", "description", "runbook_url"] {
        if let Some(text) = alert.annotations.get(key) {
            let _ = writeln!(out, "  {key}: {}", block(text, "    "));
        }
    }
    for summary in value_lines(&alert.values) {
        let _ = writeln!(out, "  {summary}");
    }
    let _ = writeln!(out, "  Labels:");
    for (key, value) in &alert.labels {
        let _ = writeln!(out, "    {} = {}", line(key), line(value));
    }
    let others: Vec<_> = alert
        .annotations
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "summary" | "description" | "runbook_url"))
        .collect();
    if !others.is_empty() {
        let _ = writeln!(out, "  Annotations:");
        for (key, value) in others {
            let _ = writeln!(out, "    {} = {}", line(key), block(value, "      "));
        }
    }
    if !alert.values.is_empty() {
        let _ = writeln!(out, "  Values:");
        for (key, value) in &alert.values {
            let _ = writeln!(out, "    {} = {}", line(key), format_number(*value));
        }
    }
    let _ = writeln!(out, "  Correlation id: {}", line(&alert.correlation_id));
    let _ = writeln!(out, "  Fingerprint: {}", line(&alert.fingerprint));
}

/// SMTP errors: a 5xx reply is final (fail early), a 4xx reply and any trouble reaching the server
/// are worth retrying.
fn classify_smtp(server: &str, e: &lettre::transport::smtp::Error) -> DeliveryError {
    let message = format!("{server}: {e}");
    let transient = |reason| DeliveryError::Transient {
        reason,
        message: message.clone(),
        retry_after: None,
    };
    if e.is_permanent() {
        DeliveryError::Permanent {
            reason: Reason::Smtp5xx,
            message,
        }
    } else if e.is_transient() {
        transient(Reason::Smtp4xx)
    } else if e.is_timeout() {
        transient(Reason::Timeout)
    } else if e.is_tls() {
        transient(Reason::Tls)
    } else if e.is_client() {
        // Our side cannot talk to this server (no common auth mechanism, …): a configuration matter.
        DeliveryError::Permanent {
            reason: Reason::SmtpClient,
            message,
        }
    } else if e.is_response() {
        transient(Reason::SmtpResponse)
    } else {
        transient(Reason::Connect)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn config(smtp_url: &str) -> EmailConfig {
        EmailConfig {
            smtp_url: smtp_url.to_owned(),
            from: "rabbitwatch@example.com".to_owned(),
            to: vec!["oncall@example.com".to_owned()],
            username: None,
            password: None,
            subject_prefix: None,
            external_url: None,
        }
    }

    fn notification(queue: &str) -> Notification {
        let labels: BTreeMap<String, String> = [
            ("alertname", "QueueBacklogGrowing"),
            ("cluster", "local"),
            ("vhost", "/"),
            ("queue", queue),
            ("severity", "warning"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Notification {
            receiver: "oncall-email".to_owned(),
            group_key: "g".to_owned(),
            status: GroupStatus::Firing,
            group_labels: BTreeMap::new(),
            common_labels: labels.clone(),
            common_annotations: BTreeMap::new(),
            alerts: vec![AlertSummary {
                status: AlertStatus::Firing,
                labels,
                annotations: [("summary".to_owned(), format!("Backlog growing on {queue}"))]
                    .into_iter()
                    .collect(),
                starts_at: 1_700_000_000_000,
                ends_at: None,
                correlation_id: "0190a5b2-corr".to_owned(),
                fingerprint: "fp".to_owned(),
                values: [("messages".to_owned(), 1234.0)].into_iter().collect(),
            }],
            idempotency_key: "0190a5b2-corr:firing:1".to_owned(),
            flapping: false,
            previous: None,
            amends: false,
            created_at: 1_700_000_000_000,
            scaling: None,
        }
    }

    fn install_ring() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }

    #[test]
    fn the_three_connection_styles_are_accepted_and_others_refused() {
        install_ring();
        for url in [
            "smtp://127.0.0.1:2525",
            "smtp://mail.example.com?tls=required",
            "smtp://mail.example.com:587?tls=opportunistic",
            "smtps://mail.example.com",
        ] {
            EmailReceiver::new("e", config(url)).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        for url in [
            "http://mail.example.com",
            "smtps://mail.example.com?tls=required",
            "smtp://mail.example.com?tls=sometimes",
            "smtp://mail.example.com?verify=no",
            "smtp://",
            "not a url",
        ] {
            assert!(EmailReceiver::new("e", config(url)).is_err(), "{url}");
        }
        let mut no_recipient = config("smtp://127.0.0.1:25");
        no_recipient.to.clear();
        assert!(EmailReceiver::new("e", no_recipient).is_err());
        let mut bad_from = config("smtp://127.0.0.1:25");
        bad_from.from = "not an address".to_owned();
        assert!(EmailReceiver::new("e", bad_from).is_err());
    }

    #[test]
    fn a_password_in_the_url_is_not_repeated_in_errors_or_debug() {
        let mut cfg = config("smtp://user:hunter2@127.0.0.1:2525");
        let receiver = EmailReceiver::new("e", cfg.clone()).unwrap();
        assert!(!format!("{receiver:?}").contains("hunter2"));
        cfg.smtp_url = "smtp://user:hunter2@127.0.0.1:2525?bogus=1".to_owned();
        let e = EmailReceiver::new("e", cfg).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn a_line_break_in_a_queue_name_cannot_add_a_header() {
        let receiver = EmailReceiver::new("e", config("smtp://127.0.0.1:2525")).unwrap();
        let n = notification("x\r\nBcc: victim@example.com");
        let (message, _) = receiver.build_message(&n).unwrap();
        let raw = String::from_utf8(message.formatted()).unwrap();
        // Unfolded: a long subject is folded onto continuation lines, which start with a space.
        let headers = raw.split("\r\n\r\n").next().unwrap().replace("\r\n ", " ");
        assert!(
            !headers
                .lines()
                .any(|l| l.to_ascii_lowercase().starts_with("bcc:")),
            "{headers}"
        );
        assert_eq!(message.envelope().to().len(), 1);
        assert!(
            headers.contains("x Bcc: victim@example.com (/) on local"),
            "{headers}"
        );
    }

    #[test]
    fn the_subject_and_headers_carry_the_keys() {
        let mut cfg = config("smtp://127.0.0.1:2525");
        cfg.subject_prefix = Some("[prod]".to_owned());
        let receiver = EmailReceiver::new("e", cfg).unwrap();
        let (message, id) = receiver.build_message(&notification("orders")).unwrap();
        assert_eq!(id, "<0190a5b2-corr-firing-1@example.com>");
        let raw = String::from_utf8(message.formatted())
            .unwrap()
            .replace("\r\n ", " ");
        for expected in [
            "Subject: [prod] [FIRING:1] QueueBacklogGrowing orders (/) on local\r\n",
            "X-Correlation-Id: 0190a5b2-corr\r\n",
            "X-Rabbitwatch-Idempotency-Key: 0190a5b2-corr:firing:1\r\n",
            "Message-ID: <0190a5b2-corr-firing-1@example.com>\r\n",
            "Backlog: 1234 messages",
            "queue = orders",
        ] {
            assert!(raw.contains(expected), "missing {expected:?} in\n{raw}");
        }
    }

    #[test]
    fn a_resolve_threads_under_the_firing_message() {
        let receiver = EmailReceiver::new("e", config("smtp://127.0.0.1:2525")).unwrap();
        let mut n = notification("orders");
        n.status = GroupStatus::Resolved;
        n.previous = Some("<0190a5b2-corr-firing-1@example.com>".to_owned());
        let raw = String::from_utf8(receiver.build_message(&n).unwrap().0.formatted()).unwrap();
        assert!(
            raw.contains("In-Reply-To: <0190a5b2-corr-firing-1@example.com>"),
            "{raw}"
        );
        n.previous = Some("<a@b>\r\nBcc: x@y".to_owned());
        let raw = String::from_utf8(receiver.build_message(&n).unwrap().0.formatted()).unwrap();
        assert!(!raw.contains("In-Reply-To"), "{raw}");
    }

    #[test]
    fn a_storm_is_one_mail_with_the_count_the_worst_first_and_the_rest_counted() {
        let mut n = notification("q");
        let template = n.alerts[0].clone();
        n.alerts = (0..500)
            .map(|i| {
                let mut a = template.clone();
                a.labels
                    .insert("queue".into(), format!("q{i:03}\r\nBcc: x@evil"));
                a.values = [("messages_ready".to_owned(), i as f64)]
                    .into_iter()
                    .collect();
                a.fingerprint = format!("f{i}");
                a
            })
            .collect();
        n.common_labels.remove("queue");
        let url = reqwest::Url::parse("https://rw.example.com").unwrap();
        let body = render_body(&n, Some(&url));
        assert!(
            body.starts_with(
                "[FIRING:500] QueueBacklogGrowing: 500 queues in vhost / on local\n500 queues affected, worst first.\n"
            ),
            "{body}"
        );
        assert!(
            body.contains("Alert 1 of 500: QueueBacklogGrowing q499  Bcc: x@evil (/) on local"),
            "{body}"
        );
        assert!(body.contains("- q489  Bcc: x@evil — 489 ready\n"), "{body}");
        assert!(!body.contains("q389"), "only 110 shown");
        assert!(body.contains("… and 390 more\n"), "{body}");
        assert!(body.contains("All 500 alerts: https://rw.example.com/api/v1/alerts?alertname=QueueBacklogGrowing&cluster=local&vhost=%2F\n"), "{body}");
        assert!(!body.contains("\r"), "no line break from a queue name");
    }

    #[test]
    fn header_text_removes_every_control_character() {
        assert_eq!(header_text("a\r\nb\tc\u{0}d  e", 100), "a b c d e");
        assert_eq!(header_text("abcdef", 3), "abc");
    }
}
