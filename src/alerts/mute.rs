//! Silences and inhibition: alerts that exist but must not notify right now.
//!
//! Pure: given the alert table, the active silences and the inhibit rules, `muted` returns the
//! fingerprints to keep quiet. Muted alerts stay visible in the API; the dispatcher skips them, so
//! when a silence expires while an alert still fires, the next plan sends it (nobody heard it yet).

use std::collections::{BTreeMap, HashSet};

use super::{AlertTable, State};
use crate::domain::{Matcher, Silence};

/// `inhibit:` — while a firing alert matches `source`, alerts matching `target` with the same values
/// of the `equal` labels are muted (e.g. ClusterUnreachable mutes that cluster's queue alerts).
#[derive(Clone, Debug)]
pub struct InhibitRule {
    pub source: Vec<Matcher>,
    pub target: Vec<Matcher>,
    pub equal: Vec<String>,
}

fn all(ms: &[Matcher], labels: &BTreeMap<String, String>) -> bool {
    ms.iter().all(|m| m.matches(labels))
}

/// Fingerprints of alerts that are silenced or inhibited at `now`.
pub fn muted(
    table: &AlertTable,
    silences: &[Silence],
    inhibit: &[InhibitRule],
    now: i64,
) -> HashSet<String> {
    let active: Vec<Vec<Matcher>> = silences
        .iter()
        .filter(|s| s.is_active(now))
        .filter_map(|s| s.compile().ok())
        .collect();
    let mut out = HashSet::new();
    for a in table.alerts.values() {
        if active.iter().any(|ms| all(ms, &a.labels)) {
            out.insert(a.fingerprint.clone());
        }
    }
    for rule in inhibit {
        let sources: Vec<&BTreeMap<String, String>> = table
            .alerts
            .values()
            .filter(|a| a.state == State::Firing && all(&rule.source, &a.labels))
            .map(|a| &a.labels)
            .collect();
        if sources.is_empty() {
            continue;
        }
        for a in table.alerts.values() {
            if !all(&rule.target, &a.labels) {
                continue;
            }
            let inhibited = sources.iter().any(|src| {
                *src != &a.labels && rule.equal.iter().all(|k| src.get(k) == a.labels.get(k))
            });
            if inhibited {
                out.insert(a.fingerprint.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{Alert, fingerprint};
    use crate::rules::{Mode, Scope};
    use std::collections::VecDeque;

    fn alert(pairs: &[(&str, &str)], state: State) -> Alert {
        let labels: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Alert {
            fingerprint: fingerprint(&labels),
            alertname: labels["alertname"].clone(),
            cluster: labels["cluster"].clone(),
            scope: Scope::Queue,
            labels,
            annotations: BTreeMap::new(),
            values: BTreeMap::new(),
            state,
            mode: Mode::Active,
            correlation_id: "c".into(),
            active_since: 0,
            fired_at: Some(0),
            resolved_at: None,
            last_held: 0,
            flips: VecDeque::new(),
            flapping: false,
            sequence: 0,
            unheld: false,
        }
    }

    fn table(alerts: Vec<Alert>) -> AlertTable {
        AlertTable {
            alerts: alerts
                .into_iter()
                .map(|a| (a.fingerprint.clone(), a))
                .collect(),
        }
    }

    #[test]
    fn active_silences_mute_matching_alerts_only() {
        let a = alert(
            &[
                ("alertname", "Backlog"),
                ("cluster", "c"),
                ("queue", "orders"),
            ],
            State::Firing,
        );
        let b = alert(
            &[
                ("alertname", "Backlog"),
                ("cluster", "c"),
                ("queue", "invoices"),
            ],
            State::Firing,
        );
        let t = table(vec![a.clone(), b]);
        let s = Silence {
            id: "s1".into(),
            matchers: vec!["queue=orders".into()],
            starts_at: 0,
            ends_at: 100,
            created_by: String::new(),
            comment: String::new(),
        };
        assert_eq!(
            muted(&t, std::slice::from_ref(&s), &[], 50),
            HashSet::from([a.fingerprint.clone()])
        );
        assert!(muted(&t, &[s], &[], 100).is_empty(), "expired at ends_at");
    }

    #[test]
    fn an_unreachable_cluster_inhibits_its_own_queue_alerts() {
        let down = alert(
            &[
                ("alertname", "ClusterUnreachable"),
                ("cluster", "c"),
                ("scope", "cluster"),
            ],
            State::Firing,
        );
        let q = alert(
            &[
                ("alertname", "Backlog"),
                ("cluster", "c"),
                ("scope", "queue"),
            ],
            State::Firing,
        );
        let other = alert(
            &[
                ("alertname", "Backlog"),
                ("cluster", "d"),
                ("scope", "queue"),
            ],
            State::Firing,
        );
        let rule = InhibitRule {
            source: vec![Matcher::parse("alertname=ClusterUnreachable").unwrap()],
            target: vec![Matcher::parse("scope=queue").unwrap()],
            equal: vec!["cluster".into()],
        };
        let t = table(vec![down.clone(), q.clone(), other]);
        assert_eq!(
            muted(&t, &[], std::slice::from_ref(&rule), 0),
            HashSet::from([q.fingerprint.clone()])
        );
        let mut resolved = down;
        resolved.state = State::Resolved;
        let t = table(vec![resolved, q]);
        assert!(
            muted(&t, &[], &[rule], 0).is_empty(),
            "a resolved source inhibits nothing"
        );
    }
}
