//! Webhook: the notification as JSON compatible with Alertmanager's webhook payload (version "4"),
//! so existing consumers of Alertmanager webhooks read it unchanged, plus rabbitwatch's own fields
//! (`correlation_id`, `values`, `idempotency_key`).
//!
//! With an `hmac_secret`, the exact body bytes are signed (`X-Rabbitwatch-Signature: sha256=<hex>`),
//! so a receiver can reject anything it did not get from us. Never retries (the outbox does).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::Url;
use reqwest::header::CONTENT_TYPE;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{
    AlertStatus, Delivered, DeliveryError, GroupStatus, Notification, affected, alerts_link,
    header_safe, rfc3339_millis, send_classified, worst_first,
};
use crate::domain::Secret;
use crate::yaml::{S, Values};

pub const SIGNATURE_HEADER: &str = "X-Rabbitwatch-Signature";
/// What Alertmanager sends as `endsAt` of an alert that has not ended.
const NOT_ENDED: &str = "0001-01-01T00:00:00Z";

#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub url: Url,
    pub hmac_secret: Option<Secret>,
    pub timeout: Duration,
    /// Alerts in one payload at most, worst first; the rest are counted in `truncatedAlerts`
    /// (Alertmanager's `max_alerts`). 0: all.
    pub max_alerts: usize,
    /// The daemon's address as readers reach it (`server.external_url`): the payload's
    /// `externalURL`, and each alert's `generatorURL` is the group's list under it.
    pub external_url: Option<Url>,
}

/// `webhook:` as written in the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhookConfig {
    url: S,
    hmac_secret_file: Option<S>,
    timeout: Option<S>,
    max_alerts: Option<usize>,
}

impl RawWebhookConfig {
    /// Reads the settings (the HMAC key from its file), each problem reported at its key.
    pub fn validate(&self, v: &mut Values<'_>) -> Option<WebhookConfig> {
        let url = v.url(&self.url, "webhook.url");
        let hmac_secret = match &self.hmac_secret_file {
            Some(f) => {
                let secret = v.secret_file(f, "webhook.hmac_secret_file")?;
                if secret.expose().is_empty() {
                    // An empty key signs every body the same way anyone could.
                    v.error_at(f, "webhook.hmac_secret_file is empty");
                    return None;
                }
                Some(secret)
            }
            None => None,
        };
        let timeout = v.duration(
            self.timeout.as_ref(),
            Duration::from_secs(10),
            Duration::from_millis(100),
            "webhook.timeout",
        );
        Some(WebhookConfig {
            url: url?,
            hmac_secret,
            timeout,
            max_alerts: self.max_alerts.unwrap_or(0),
            external_url: None,
        })
    }
}

#[derive(Clone)]
pub struct WebhookReceiver {
    name: String,
    cfg: WebhookConfig,
    http: reqwest::Client,
}

impl fmt::Debug for WebhookReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a token in its query; the host says enough.
        f.debug_struct("WebhookReceiver")
            .field("name", &self.name)
            .field("host", &self.cfg.url.host_str())
            .field("signed", &self.cfg.hmac_secret.is_some())
            .finish_non_exhaustive()
    }
}

/// Alertmanager's webhook payload, version 4, with rabbitwatch's additions.
#[derive(Debug, Serialize)]
struct Payload<'a> {
    version: &'static str,
    #[serde(rename = "groupKey")]
    group_key: &'a str,
    #[serde(rename = "truncatedAlerts")]
    truncated_alerts: usize,
    status: GroupStatus,
    receiver: &'a str,
    #[serde(rename = "groupLabels")]
    group_labels: &'a BTreeMap<String, String>,
    #[serde(rename = "commonLabels")]
    common_labels: &'a BTreeMap<String, String>,
    #[serde(rename = "commonAnnotations")]
    common_annotations: &'a BTreeMap<String, String>,
    #[serde(rename = "externalURL")]
    external_url: &'a str,
    alerts: Vec<AlertPayload<'a>>,
    /// How many distinct queues (or nodes) the group holds, firing and recovered, whatever
    /// `max_alerts` cut.
    affected: AffectedPayload,
    /// The first alert's correlation id (each alert also carries its own).
    correlation_id: &'a str,
    idempotency_key: &'a str,
    flapping: bool,
}

#[derive(Debug, Serialize)]
struct AffectedPayload {
    /// `queue`, `node` or `alert`.
    kind: &'static str,
    firing: usize,
    resolved: usize,
}

#[derive(Debug, Serialize)]
struct AlertPayload<'a> {
    status: AlertStatus,
    labels: &'a BTreeMap<String, String>,
    annotations: &'a BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    starts_at: String,
    #[serde(rename = "endsAt")]
    ends_at: String,
    #[serde(rename = "generatorURL")]
    generator_url: &'a str,
    fingerprint: &'a str,
    correlation_id: &'a str,
    values: &'a BTreeMap<String, f64>,
}

/// The body a webhook receives for `n`, as bytes (the bytes that are signed): the alerts worst
/// first (`worst_first`: firing, most severe, biggest backlog), at most `max_alerts` of them (0:
/// all) with the rest counted in `truncatedAlerts`, and `affected`, how many queues the group holds.
pub fn render_payload(n: &Notification, max_alerts: usize, external_url: Option<&Url>) -> Vec<u8> {
    let ranked = worst_first(&n.alerts);
    let keep = if max_alerts == 0 {
        ranked.len()
    } else {
        max_alerts.min(ranked.len())
    };
    let base = external_url.map(|u| u.as_str().trim_end_matches('/').to_owned());
    let generator_url = external_url.map(|_| alerts_link(n, external_url));
    let a = affected(n);
    let payload = Payload {
        version: "4",
        group_key: &n.group_key,
        truncated_alerts: ranked.len() - keep,
        status: n.status,
        receiver: &n.receiver,
        group_labels: &n.group_labels,
        common_labels: &n.common_labels,
        common_annotations: &n.common_annotations,
        external_url: base.as_deref().unwrap_or(""),
        alerts: ranked[..keep]
            .iter()
            .map(|a| AlertPayload {
                status: a.status,
                labels: &a.labels,
                annotations: &a.annotations,
                starts_at: rfc3339_millis(a.starts_at),
                ends_at: a
                    .ends_at
                    .map_or_else(|| NOT_ENDED.to_owned(), rfc3339_millis),
                generator_url: generator_url.as_deref().unwrap_or(""),
                fingerprint: &a.fingerprint,
                correlation_id: &a.correlation_id,
                values: &a.values,
            })
            .collect(),
        affected: AffectedPayload {
            kind: a.kind,
            firing: a.firing,
            resolved: a.resolved,
        },
        correlation_id: n.alerts.first().map_or("", |a| a.correlation_id.as_str()),
        idempotency_key: &n.idempotency_key,
        flapping: n.flapping,
    };
    // Non-finite values (an infinite drain ETA) become `null`, as JSON has no Infinity: serde_json
    // does that itself for f64, so this cannot fail for these types.
    serde_json::to_vec(&payload).unwrap_or_default()
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length, so `new_from_slice` cannot fail here.
    let mut mac =
        <Hmac<Sha256>>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl WebhookReceiver {
    pub fn new(name: impl Into<String>, cfg: WebhookConfig, http: reqwest::Client) -> Self {
        WebhookReceiver {
            name: name.into(),
            cfg,
            http,
        }
    }

    /// The per-request timeout (`webhook.timeout`).
    pub fn timeout(&self) -> std::time::Duration {
        self.cfg.timeout
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn deliver(&self, n: &Notification) -> Result<Delivered, DeliveryError> {
        // A scaling recommendation is its own payload (docs/scaling.md); an alert group is
        // Alertmanager-shaped. Both are signed and carry the Idempotency-Key.
        let body = match &n.scaling {
            Some(request) => serde_json::to_vec(request).unwrap_or_default(),
            None => render_payload(n, self.cfg.max_alerts, self.cfg.external_url.as_ref()),
        };
        let mut request = self
            .http
            .post(self.cfg.url.clone())
            .timeout(self.cfg.timeout)
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", header_safe(&n.idempotency_key));
        if let Some(secret) = &self.cfg.hmac_secret {
            request = request.header(SIGNATURE_HEADER, signature(secret.expose(), &body));
        }
        send_classified(request.body(body)).await?;
        Ok(Delivered::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AlertSummary;

    fn notification() -> Notification {
        let labels: BTreeMap<String, String> =
            [("alertname", "QueueBacklogGrowing"), ("queue", "orders")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        Notification {
            receiver: "autoscaler".to_owned(),
            group_key: "{}:{queue=\"orders\"}".to_owned(),
            status: GroupStatus::Resolved,
            group_labels: labels.clone(),
            common_labels: labels.clone(),
            common_annotations: BTreeMap::new(),
            alerts: vec![AlertSummary {
                status: AlertStatus::Resolved,
                labels,
                annotations: BTreeMap::new(),
                starts_at: 1_700_000_000_000,
                ends_at: Some(1_700_000_060_000),
                correlation_id: "corr-1".to_owned(),
                fingerprint: "f1".to_owned(),
                values: [
                    ("drain_eta".to_owned(), f64::INFINITY),
                    ("messages".to_owned(), 5.0),
                ]
                .into_iter()
                .collect(),
            }],
            idempotency_key: "corr-1:resolved:2".to_owned(),
            flapping: false,
            previous: None,
            amends: false,
            created_at: 1_700_000_060_000,
            scaling: None,
        }
    }

    #[test]
    fn the_payload_reads_like_alertmanagers_version_4() {
        let body: serde_json::Value =
            serde_json::from_slice(&render_payload(&notification(), 0, None)).unwrap();
        assert_eq!(body["version"], "4");
        assert_eq!(body["status"], "resolved");
        assert_eq!(body["groupKey"], "{}:{queue=\"orders\"}");
        assert_eq!(body["truncatedAlerts"], 0);
        assert_eq!(body["receiver"], "autoscaler");
        assert_eq!(body["commonLabels"]["queue"], "orders");
        assert_eq!(body["externalURL"], "");
        let alert = &body["alerts"][0];
        assert_eq!(alert["status"], "resolved");
        assert_eq!(alert["startsAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(alert["endsAt"], "2023-11-14T22:14:20.000Z");
        assert_eq!(alert["fingerprint"], "f1");
        assert_eq!(alert["generatorURL"], "");
        assert_eq!(alert["correlation_id"], "corr-1");
        assert_eq!(alert["values"]["messages"], 5.0);
        assert!(
            alert["values"]["drain_eta"].is_null(),
            "JSON has no Infinity"
        );
        assert_eq!(body["correlation_id"], "corr-1");
        assert_eq!(body["idempotency_key"], "corr-1:resolved:2");
    }

    #[test]
    fn an_alert_still_firing_ends_at_alertmanagers_zero_time() {
        let mut n = notification();
        n.alerts[0].ends_at = None;
        let body: serde_json::Value = serde_json::from_slice(&render_payload(&n, 0, None)).unwrap();
        assert_eq!(body["alerts"][0]["endsAt"], NOT_ENDED);
    }

    #[test]
    fn a_storm_payload_is_worst_first_cut_at_max_alerts_and_counts_them_all() {
        let mut n = notification();
        let template = n.alerts[0].clone();
        n.alerts = (0..500)
            .map(|i| {
                let mut a = template.clone();
                a.labels.insert("queue".into(), format!("q{i:03}"));
                a.values = [("messages_ready".to_owned(), i as f64)]
                    .into_iter()
                    .collect();
                a
            })
            .collect();
        n.common_labels.remove("queue");
        let url = Url::parse("https://rw.example.com/").unwrap();
        let body: serde_json::Value =
            serde_json::from_slice(&render_payload(&n, 20, Some(&url))).unwrap();
        let alerts = body["alerts"].as_array().unwrap();
        assert_eq!(alerts.len(), 20);
        assert_eq!(alerts[0]["labels"]["queue"], "q499");
        assert_eq!(alerts[19]["labels"]["queue"], "q480");
        assert_eq!(body["truncatedAlerts"], 480);
        assert_eq!(
            body["affected"],
            serde_json::json!({"kind": "queue", "firing": 0, "resolved": 500})
        );
        assert_eq!(body["externalURL"], "https://rw.example.com");
        assert_eq!(
            alerts[0]["generatorURL"],
            "https://rw.example.com/api/v1/alerts?alertname=QueueBacklogGrowing"
        );
        let all: serde_json::Value = serde_json::from_slice(&render_payload(&n, 0, None)).unwrap();
        assert_eq!(all["alerts"].as_array().unwrap().len(), 500);
        assert_eq!(all["truncatedAlerts"], 0);
    }

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
