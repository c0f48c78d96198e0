//! What the outbox hands a receiver: one group of alerts as one message, and the alerts in it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Whether a group of alerts is (still) firing or has resolved, as Alertmanager's `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupStatus {
    Firing,
    Resolved,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

/// One alert inside a notification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertSummary {
    pub status: AlertStatus,
    /// Includes `alertname`, `cluster`, `severity`, `scope` and the entity (`vhost`, `queue` or `node`).
    pub labels: BTreeMap<String, String>,
    /// Rendered templates: `summary`, `description`, `runbook_url`, …; untrusted text (queue names).
    pub annotations: BTreeMap<String, String>,
    /// Milliseconds since the epoch.
    pub starts_at: i64,
    pub ends_at: Option<i64>,
    /// UUIDv7 of the incident; the same in the firing and the resolved notification.
    pub correlation_id: String,
    /// Hex of the hash of the sorted labels: equal across replicas.
    pub fingerprint: String,
    /// The numbers behind the alert (e.g. `publish_rate`, `consume_rate`, `messages`, `consumers`,
    /// `drain_eta`), for receivers that show or act on them.
    #[serde(with = "super::float_map")]
    pub values: BTreeMap<String, f64>,
}

/// What the outbox hands a receiver: one group of alerts, one message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub receiver: String,
    /// Stable key of the alert group (route + `group_by` labels).
    pub group_key: String,
    pub status: GroupStatus,
    pub group_labels: BTreeMap<String, String>,
    pub common_labels: BTreeMap<String, String>,
    pub common_annotations: BTreeMap<String, String>,
    pub alerts: Vec<AlertSummary>,
    /// `correlation_id:state:sequence`; sent as the `Idempotency-Key` header so a receiver can drop
    /// the duplicate that at-least-once delivery may produce.
    pub idempotency_key: String,
    /// True for the single notification that replaces the noise of a flapping alert.
    pub flapping: bool,
    /// What an earlier delivery of this group to this receiver returned (e.g. a Slack message `ts`),
    /// so a resolve can update the original message instead of posting a new one.
    pub previous: Option<String>,
    /// True when this notification amends the message that announced the group's incident (alerts
    /// joined, recovered or all resolved since): a receiver that can edit what it sent (Slack with a
    /// bot token) edits that message instead of posting another. False for a group's first message
    /// and for `repeat_interval` reminders, which must be seen anew.
    #[serde(default)]
    pub amends: bool,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Set for a scaling recommendation (no alerts): what the webhook receiver sends instead of the
    /// alert group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingRequest>,
}

/// A scaling recommendation as an autoscaler's webhook receives it (docs/scaling.md): POSTed as
/// JSON, signed like every webhook, `idempotency_key` also in the `Idempotency-Key` header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalingRequest {
    /// The payload's version: 1.
    pub version: u32,
    pub scaler: String,
    pub cluster: String,
    pub vhost: String,
    pub queue: String,
    pub current: u32,
    pub desired: u32,
    pub min: u32,
    pub max: u32,
    /// `up` or `down`.
    pub direction: String,
    /// What drove it, with the numbers.
    pub reason: String,
    pub metrics: ScalingMetrics,
    /// Increases with every recommendation of this scaler, across restarts: an autoscaler applies a
    /// recommendation only if its sequence is above the last one it applied.
    pub sequence: u64,
    pub idempotency_key: String,
    /// RFC 3339, when the recommendation was made.
    pub timestamp: String,
}

/// The figures behind a scaling recommendation; a rate rabbitwatch does not know is `null`, not 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalingMetrics {
    pub publish_rate: Option<f64>,
    pub consume_rate: Option<f64>,
    pub messages_ready: u64,
    /// The per-consumer rate used: configured, or learned as consume_rate / consumers.
    pub per_consumer_rate: f64,
    /// `configured` or `learned`.
    pub per_consumer_rate_source: String,
}

impl GroupStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupStatus::Firing => "firing",
            GroupStatus::Resolved => "resolved",
        }
    }
}

impl Notification {
    /// The one way to build a notification: the common labels and annotations are derived from the
    /// alerts, and the idempotency key (`correlation_id:status:sequence`, the first alert's incident)
    /// is formed here so every producer and receiver agrees on it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        receiver: &str,
        group_key: &str,
        status: GroupStatus,
        group_labels: BTreeMap<String, String>,
        alerts: Vec<AlertSummary>,
        sequence: u64,
        flapping: bool,
        now: i64,
    ) -> Notification {
        let common = |pick: fn(&AlertSummary) -> &BTreeMap<String, String>| {
            let Some(first) = alerts.first() else {
                return BTreeMap::new();
            };
            pick(first)
                .iter()
                .filter(|(k, v)| alerts.iter().all(|s| pick(s).get(*k) == Some(*v)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let first_id = alerts.first().map_or("none", |s| s.correlation_id.as_str());
        Notification {
            receiver: receiver.to_string(),
            group_key: group_key.to_string(),
            status,
            group_labels,
            common_labels: common(|s| &s.labels),
            common_annotations: common(|s| &s.annotations),
            idempotency_key: format!("{first_id}:{}:{sequence}", status.as_str()),
            alerts,
            flapping,
            previous: None,
            amends: false,
            created_at: now,
            scaling: None,
        }
    }

    /// A scaling recommendation for `receiver` (a webhook). Its group is the scaler, so a
    /// scaler's recommendations are delivered one after another, in order.
    pub fn scaling(receiver: &str, request: ScalingRequest, now: i64) -> Notification {
        let labels = BTreeMap::from([
            ("scaler".to_string(), request.scaler.clone()),
            ("cluster".to_string(), request.cluster.clone()),
            ("vhost".to_string(), request.vhost.clone()),
            ("queue".to_string(), request.queue.clone()),
        ]);
        Notification {
            receiver: receiver.to_string(),
            group_key: format!("scaler:{}", request.scaler),
            status: GroupStatus::Firing,
            group_labels: labels.clone(),
            common_labels: labels,
            common_annotations: BTreeMap::new(),
            alerts: Vec::new(),
            idempotency_key: request.idempotency_key.clone(),
            flapping: false,
            previous: None,
            amends: false,
            created_at: now,
            scaling: Some(request),
        }
    }
}

/// Hex of a hash of the sorted labels: the same alert has the same fingerprint in every replica and
/// across restarts (FNV-1a; the labels are a `BTreeMap`, so already sorted).
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xfe]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(id: &str, labels: &[(&str, &str)]) -> AlertSummary {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AlertSummary {
            status: AlertStatus::Firing,
            fingerprint: fingerprint(&labels),
            labels,
            annotations: BTreeMap::new(),
            starts_at: 0,
            ends_at: None,
            correlation_id: id.to_string(),
            values: BTreeMap::new(),
        }
    }

    #[test]
    fn a_notification_keys_on_its_first_incident_status_and_sequence() {
        let n = Notification::new(
            "slack",
            "g",
            GroupStatus::Resolved,
            BTreeMap::new(),
            vec![
                summary("id-1", &[("queue", "a"), ("severity", "warning")]),
                summary("id-2", &[("queue", "b"), ("severity", "warning")]),
            ],
            3,
            false,
            7,
        );
        assert_eq!(n.idempotency_key, "id-1:resolved:3");
        assert_eq!(
            n.common_labels,
            BTreeMap::from([("severity".to_string(), "warning".to_string())])
        );
    }

    #[test]
    fn fingerprints_depend_on_labels_only() {
        let a = BTreeMap::from([("a".to_string(), "1".to_string())]);
        let b = BTreeMap::from([("a".to_string(), "2".to_string())]);
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }
}
