//! Alertmanager: alerts forwarded one by one to Alertmanager's v2 API (`POST /api/v2/alerts`), to every
//! configured URL, as Prometheus does (docs/ha.md). Alertmanager does the grouping, repeating,
//! silencing and — between the peers of a cluster — the dedupe; two rabbitwatch replicas sending the
//! same alert (same labels: no per-process identity) page once.
//!
//! The route tree decides which alerts reach this receiver, but its `group_*`/`repeat_interval` do not
//! apply: the dispatcher gives each alert its own group, sends a change at once and re-sends a firing
//! alert every `resend_interval` (`alerts::dispatch::Dispatch::per_alert`). A firing alert is sent with
//! `endsAt` four resend intervals ahead (Alertmanager resolves it by itself should rabbitwatch go
//! away), a resolved one with its end time.
//!
//! A delivery succeeds when at least one URL accepted it: the peers gossip, and the next re-send
//! reaches a peer that was down. When every URL fails, the first failure decides (4xx other than 408
//! and 429 are permanent, as everywhere). Never retries by itself (the outbox does).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use reqwest::Url;
use serde::{Deserialize, Serialize};

use super::{Delivered, DeliveryError, Notification, rfc3339_millis, send_classified};
use crate::domain::{AlertStatus, Secret, Timestamp};
use crate::yaml::{MAX_SECRET_BYTES, S, Values};

/// A firing alert's `endsAt` is this many resend intervals after the send.
const VALID_FOR_RESENDS: u32 = 4;

#[derive(Clone, Debug)]
pub struct AlertmanagerConfig {
    pub urls: Vec<Url>,
    pub resend_interval: Duration,
    pub timeout: Duration,
    /// Where `generatorURL` points: the daemon's alert list.
    pub generator_url: String,
    pub auth: Auth,
    pub ca_pem: Option<Vec<u8>>,
    pub insecure_skip_verify: bool,
}

#[derive(Clone, Debug, Default)]
pub enum Auth {
    #[default]
    None,
    Basic {
        username: String,
        password: Secret,
    },
    Bearer(Secret),
}

/// `alertmanager:` as written in the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlertmanagerConfig {
    urls: Vec<S>,
    resend_interval: Option<S>,
    timeout: Option<S>,
    generator_url: Option<S>,
    basic_auth: Option<RawBasicAuth>,
    bearer_token_file: Option<S>,
    tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasicAuth {
    username: S,
    password_file: S,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: Option<S>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

impl RawAlertmanagerConfig {
    /// Reads the settings, each problem at its key. `default_generator` is the daemon's own
    /// `/api/v1/alerts` (from `server.listen`), used unless `generator_url` is set.
    pub fn validate(
        &self,
        v: &mut Values<'_>,
        default_generator: &str,
    ) -> Option<AlertmanagerConfig> {
        // Every value is read (and each mistake reported) before giving up on the receiver.
        let urls: Vec<Url> = self
            .urls
            .iter()
            .filter_map(|u| v.url(u, "alertmanager.urls"))
            .collect();
        let urls_ok = urls.len() == self.urls.len() && !urls.is_empty();
        let resend_interval = v.duration(
            self.resend_interval.as_ref(),
            Duration::from_secs(60),
            Duration::from_secs(1),
            "alertmanager.resend_interval",
        );
        let timeout = v.duration(
            self.timeout.as_ref(),
            Duration::from_secs(10),
            Duration::from_millis(100),
            "alertmanager.timeout",
        );
        let generator_url = match &self.generator_url {
            Some(g) => v
                .url(g, "alertmanager.generator_url")
                .map(|u| u.to_string()),
            None => Some(default_generator.to_string()),
        };
        let auth = match (&self.basic_auth, &self.bearer_token_file) {
            (Some(_), Some(t)) => {
                v.error_at(t, "set either alertmanager.basic_auth or alertmanager.bearer_token_file, not both");
                return None;
            }
            (Some(b), None) => Auth::Basic {
                username: v.string(&b.username),
                password: v
                    .secret_file(&b.password_file, "alertmanager.basic_auth.password_file")?,
            },
            (None, Some(t)) => Auth::Bearer(v.secret_file(t, "alertmanager.bearer_token_file")?),
            (None, None) => Auth::None,
        };
        let (ca_pem, insecure_skip_verify) = match &self.tls {
            Some(t) => (
                match &t.ca_file {
                    Some(f) => {
                        Some(v.read_file(f, "alertmanager.tls.ca_file", MAX_SECRET_BYTES)?)
                    }
                    None => None,
                },
                t.insecure_skip_verify,
            ),
            None => (None, false),
        };
        if !urls_ok {
            return None;
        }
        Some(AlertmanagerConfig {
            generator_url: generator_url?,
            urls,
            resend_interval,
            timeout,
            auth,
            ca_pem,
            insecure_skip_verify,
        })
    }

    /// Where an empty `urls:` list is (the caller reports it at the receiver).
    pub fn has_no_urls(&self) -> bool {
        self.urls.is_empty()
    }
}

pub struct AlertmanagerReceiver {
    name: String,
    cfg: AlertmanagerConfig,
    http: reqwest::Client,
}

impl fmt::Debug for AlertmanagerReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertmanagerReceiver")
            .field("name", &self.name)
            .field("urls", &self.cfg.urls.len())
            .finish_non_exhaustive()
    }
}

/// One alert as Alertmanager's v2 API takes it (`postableAlert`).
#[derive(Debug, Serialize)]
struct PostableAlert<'a> {
    labels: &'a BTreeMap<String, String>,
    annotations: BTreeMap<&'a str, &'a str>,
    #[serde(rename = "startsAt")]
    starts_at: String,
    #[serde(rename = "endsAt")]
    ends_at: String,
    #[serde(rename = "generatorURL")]
    generator_url: &'a str,
}

/// The body for `n`, sent at `now`: each alert with rabbitwatch's annotations plus its
/// `correlation_id`. Labels are the alert's own, so every replica sends the same identity.
pub fn render_payload(n: &Notification, cfg: &AlertmanagerConfig, now: Timestamp) -> Vec<u8> {
    let valid_until = now.0 + (cfg.resend_interval * VALID_FOR_RESENDS).as_millis() as i64;
    let alerts: Vec<PostableAlert<'_>> = n
        .alerts
        .iter()
        .map(|a| {
            let mut annotations: BTreeMap<&str, &str> = a
                .annotations
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            annotations.insert("correlation_id", &a.correlation_id);
            PostableAlert {
                labels: &a.labels,
                annotations,
                starts_at: rfc3339_millis(a.starts_at),
                ends_at: match a.status {
                    AlertStatus::Resolved => rfc3339_millis(a.ends_at.unwrap_or(now.0)),
                    AlertStatus::Firing => rfc3339_millis(valid_until),
                },
                generator_url: &cfg.generator_url,
            }
        })
        .collect();
    serde_json::to_vec(&alerts).unwrap_or_default()
}

impl AlertmanagerReceiver {
    pub fn new(name: impl Into<String>, cfg: AlertmanagerConfig) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .user_agent(concat!("rabbitwatch/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(cfg.insecure_skip_verify);
        if let Some(pem) = &cfg.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("tls.ca_file is not a PEM certificate bundle: {e}"))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| e.to_string())?;
        Ok(AlertmanagerReceiver {
            name: name.into(),
            cfg,
            http,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every URL is tried in turn, each within `timeout`.
    pub fn attempt_budget(&self) -> Duration {
        self.cfg.timeout * self.cfg.urls.len() as u32 + Duration::from_secs(1)
    }

    /// Start-up check: some peer answers `GET /-/ready` with 200.
    pub async fn verify(&self) -> Result<(), DeliveryError> {
        let mut first_error = None;
        for base in &self.cfg.urls {
            let url = format!("{}/-/ready", base.as_str().trim_end_matches('/'));
            match send_classified(self.http.get(url)).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.expect("at least one URL"))
    }

    pub async fn deliver(&self, n: &Notification) -> Result<Delivered, DeliveryError> {
        let body = render_payload(n, &self.cfg, Timestamp::now());
        let mut first_error = None;
        let mut accepted = 0;
        for url in &self.cfg.urls {
            match self.post(url, body.clone()).await {
                Ok(()) => accepted += 1,
                Err(e) => {
                    tracing::warn!(receiver = %self.name, alertmanager = %url, error = %e, "alertmanager did not take the alerts");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if accepted == 0 => Err(e),
            _ => Ok(Delivered::default()),
        }
    }

    async fn post(&self, base: &Url, body: Vec<u8>) -> Result<(), DeliveryError> {
        let url = format!("{}/api/v2/alerts", base.as_str().trim_end_matches('/'));
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        request = match &self.cfg.auth {
            Auth::None => request,
            Auth::Basic { username, password } => {
                request.basic_auth(username, Some(password.expose()))
            }
            Auth::Bearer(token) => request.bearer_auth(token.expose()),
        };
        send_classified(request.body(body)).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AlertSummary, GroupStatus};

    fn cfg() -> AlertmanagerConfig {
        AlertmanagerConfig {
            urls: vec![Url::parse("http://am:9093").unwrap()],
            resend_interval: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            generator_url: "http://rw:9488/api/v1/alerts".into(),
            auth: Auth::None,
            ca_pem: None,
            insecure_skip_verify: false,
        }
    }

    fn notification(status: AlertStatus) -> Notification {
        let labels: BTreeMap<String, String> =
            [("alertname", "QueueBacklogGrowing"), ("queue", "orders")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        let alert = AlertSummary {
            status,
            labels: labels.clone(),
            annotations: [("summary".to_owned(), "growing".to_owned())]
                .into_iter()
                .collect(),
            starts_at: 1_700_000_000_000,
            ends_at: (status == AlertStatus::Resolved).then_some(1_700_000_030_000),
            correlation_id: "corr-1".into(),
            fingerprint: "f1".into(),
            values: BTreeMap::new(),
        };
        Notification::new(
            "am",
            "0:f1",
            if status == AlertStatus::Firing {
                GroupStatus::Firing
            } else {
                GroupStatus::Resolved
            },
            labels,
            vec![alert],
            1,
            false,
            1_700_000_000_000,
        )
    }

    #[test]
    fn a_firing_alert_ends_four_resends_ahead_and_carries_its_correlation_id() {
        let body = render_payload(
            &notification(AlertStatus::Firing),
            &cfg(),
            Timestamp(1_700_000_060_000),
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let a = &v[0];
        assert_eq!(a["labels"]["alertname"], "QueueBacklogGrowing");
        assert_eq!(a["startsAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(a["endsAt"], "2023-11-14T22:18:20.000Z", "60 s + 4 × 1m");
        assert_eq!(a["annotations"]["correlation_id"], "corr-1");
        assert_eq!(a["annotations"]["summary"], "growing");
        assert_eq!(a["generatorURL"], "http://rw:9488/api/v1/alerts");
        assert!(
            a.get("status").is_none(),
            "v2 derives the status from endsAt"
        );
    }

    #[test]
    fn a_resolved_alert_ends_when_it_resolved() {
        let body = render_payload(
            &notification(AlertStatus::Resolved),
            &cfg(),
            Timestamp(1_700_000_090_000),
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v[0]["endsAt"], "2023-11-14T22:13:50.000Z");
    }
}
