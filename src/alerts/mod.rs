//! The alert state machine: pending → firing → resolved, with `for`, `keep_firing_for`, `clear`
//! hysteresis, flapping detection and one correlation id per incident.
//!
//! Pure: `step` takes a cluster's `Evaluation`, the rules and `now`, mutates the table and returns the
//! transitions to notify. The table is plain data (serde) so the store can persist it whole and a
//! restart resumes pending timers and `keep_firing_for` where they were.

pub mod dispatch;
pub mod mute;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::{Timestamp, fingerprint};
use crate::rules::eval::Evaluation;
use crate::rules::{Mode, RuleSet, Scope};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Firing,
    Resolved,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Firing => "firing",
            State::Resolved => "resolved",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub fingerprint: String,
    pub alertname: String,
    pub cluster: String,
    #[serde(with = "scope_name")]
    pub scope: Scope,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(with = "crate::domain::float_map")]
    pub values: BTreeMap<String, f64>,
    pub state: State,
    pub mode: Mode,
    pub correlation_id: String,
    /// When the current incident became pending (ms since the epoch).
    pub active_since: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    /// Last evaluation at which the alert still held (or had not cleared).
    pub last_held: i64,
    /// Times of recent firing/resolved flips, for flapping detection.
    pub flips: VecDeque<i64>,
    pub flapping: bool,
    /// Notifications sent for this incident so far; part of the idempotency key.
    pub sequence: u32,
    /// The last evaluation of its cluster did not hold it: a firing alert kept by `keep_firing_for`
    /// (its `last_held` no longer moves, and must reach the store, so a restart keeps the window).
    #[serde(default)]
    pub unheld: bool,
}

mod scope_name {
    use crate::rules::Scope;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(scope: &Scope, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(scope.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Scope, D::Error> {
        let name = String::deserialize(d)?;
        Scope::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown scope {name:?}")))
    }
}

/// What happened to an alert in one step, worth telling someone about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    Fired(String),
    Resolved(String),
    /// The alert flipped too often; one notification replaces the storm.
    StartedFlapping(String),
    /// Stable again; notify its current state.
    StoppedFlapping(String),
}

impl Transition {
    pub fn fingerprint(&self) -> &str {
        match self {
            Transition::Fired(f)
            | Transition::Resolved(f)
            | Transition::StartedFlapping(f)
            | Transition::StoppedFlapping(f) => f,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct FlapPolicy {
    /// More than this many flips within `window` is flapping.
    pub max_flips: usize,
    pub window: Duration,
}

impl Default for FlapPolicy {
    fn default() -> Self {
        FlapPolicy {
            max_flips: 4,
            window: Duration::from_secs(600),
        }
    }
}

/// Resolved alerts are kept this long (for the API, flap history and a new incident's detection).
const RESOLVED_RETENTION_MS: i64 = 3_600_000;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AlertTable {
    pub alerts: BTreeMap<String, Alert>,
}

impl AlertTable {
    /// Folds one cluster's evaluation into the table. `new_id` mints correlation ids (UUIDv7 in
    /// production, predictable in tests).
    pub fn step(
        &mut self,
        rules: &RuleSet,
        eval: &Evaluation,
        now: Timestamp,
        flap: FlapPolicy,
        new_id: &mut dyn FnMut() -> String,
    ) -> Vec<Transition> {
        let now = now.0;
        let mut out = Vec::new();
        let mut seen: HashSet<String> = HashSet::with_capacity(eval.outcomes.len());
        for o in &eval.outcomes {
            let rule = &rules.rules[o.rule];
            let fp = fingerprint(&o.labels);
            seen.insert(fp.clone());
            let existing = self.alerts.get(&fp).map(|a| a.state);
            match (existing, o.holds) {
                (None | Some(State::Resolved), false) => {}
                (Some(State::Pending), false) => {
                    self.alerts.remove(&fp);
                }
                (None | Some(State::Resolved), true) => {
                    let previous = self.alerts.remove(&fp);
                    let (flips, flapping, correlation_id) = match previous {
                        // A flapping alert keeps its incident: one id for the whole storm.
                        Some(p) if p.flapping => (p.flips, true, p.correlation_id),
                        Some(p) => (p.flips, false, new_id()),
                        None => (VecDeque::new(), false, new_id()),
                    };
                    let alert = Alert {
                        fingerprint: fp.clone(),
                        alertname: rule.alert.clone(),
                        cluster: eval.cluster.clone(),
                        scope: rule.scope,
                        labels: o.labels.clone(),
                        annotations: o.annotations.clone(),
                        values: o.values.clone(),
                        state: State::Pending,
                        mode: rule.mode,
                        correlation_id,
                        active_since: now,
                        fired_at: None,
                        resolved_at: None,
                        last_held: now,
                        flips,
                        flapping,
                        sequence: 0,
                        unheld: false,
                    };
                    self.alerts.insert(fp.clone(), alert);
                    if rule.for_.is_zero() {
                        self.fire(&fp, now, flap, &mut out);
                    }
                }
                (Some(State::Pending), true) => {
                    let a = self.alerts.get_mut(&fp).expect("present");
                    a.last_held = now;
                    a.annotations.clone_from(&o.annotations);
                    a.values.clone_from(&o.values);
                    a.mode = rule.mode;
                    if now - a.active_since >= rule.for_.as_millis() as i64 {
                        self.fire(&fp, now, flap, &mut out);
                    }
                }
                (Some(State::Firing), _) => {
                    // Held, or has a `clear` that does not hold yet: still firing.
                    let a = self.alerts.get_mut(&fp).expect("present");
                    a.last_held = now;
                    a.unheld = false;
                    a.annotations.clone_from(&o.annotations);
                    a.values.clone_from(&o.values);
                    a.mode = rule.mode;
                }
            }
        }

        // Alerts of this cluster that nothing held this time, in scopes this evaluation could judge.
        let stale: Vec<String> = self
            .alerts
            .values()
            .filter(|a| {
                a.cluster == eval.cluster
                    && a.state != State::Resolved
                    && !seen.contains(&a.fingerprint)
            })
            .filter(|a| eval.judged.contains(&a.scope))
            .map(|a| a.fingerprint.clone())
            .collect();
        for fp in stale {
            let a = &self.alerts[&fp];
            let keep = rules
                .rules
                .iter()
                .find(|r| r.alert == a.alertname && r.scope == a.scope && r.mode != Mode::Off)
                .map(|r| r.keep_firing_for);
            match (a.state, keep) {
                (State::Pending, _) => {
                    self.alerts.remove(&fp);
                }
                (State::Firing, Some(keep)) if now - a.last_held < keep.as_millis() as i64 => {
                    self.alerts.get_mut(&fp).expect("present").unheld = true;
                }
                (State::Firing, _) => self.resolve(&fp, now, flap, &mut out),
                (State::Resolved, _) => {}
            }
        }

        // Flapping ends after a quiet window; notify the state it settled in.
        for a in self
            .alerts
            .values_mut()
            .filter(|a| a.flapping && a.cluster == eval.cluster)
        {
            prune(&mut a.flips, now, flap);
            if a.flips.is_empty() {
                a.flapping = false;
                out.push(Transition::StoppedFlapping(a.fingerprint.clone()));
            }
        }
        self.alerts.retain(|_, a| {
            !(a.state == State::Resolved
                && !a.flapping
                && a.resolved_at
                    .is_some_and(|t| now - t > RESOLVED_RETENTION_MS))
        });
        out
    }

    /// Resolves every unresolved alert of a rule that is gone or switched off (after a reload).
    pub fn retire_missing_rules(
        &mut self,
        rules: &RuleSet,
        now: Timestamp,
        flap: FlapPolicy,
    ) -> Vec<Transition> {
        let gone: Vec<String> =
            self.alerts
                .values()
                .filter(|a| a.state != State::Resolved)
                .filter(|a| {
                    !rules.rules.iter().any(|r| {
                        r.alert == a.alertname && r.scope == a.scope && r.mode != Mode::Off
                    })
                })
                .map(|a| a.fingerprint.clone())
                .collect();
        let mut out = Vec::new();
        for fp in gone {
            if self.alerts[&fp].state == State::Pending {
                self.alerts.remove(&fp);
            } else {
                self.resolve(&fp, now.0, flap, &mut out);
            }
        }
        out
    }

    /// Resolves every unresolved alert of a cluster this daemon no longer watches (removed from the
    /// config, or moved to another shard): nothing would ever judge it again. Each resolve carries
    /// the reason as the annotation `resolved_reason`; pending ones are dropped.
    pub fn retire_clusters(
        &mut self,
        watched: &[String],
        now: Timestamp,
        flap: FlapPolicy,
    ) -> Vec<Transition> {
        let gone: Vec<String> = self
            .alerts
            .values()
            .filter(|a| a.state != State::Resolved && !watched.contains(&a.cluster))
            .map(|a| a.fingerprint.clone())
            .collect();
        let mut out = Vec::new();
        for fp in gone {
            let a = self.alerts.get_mut(&fp).expect("present");
            if a.state == State::Pending {
                self.alerts.remove(&fp);
                continue;
            }
            let reason = format!(
                "cluster {:?} is no longer watched by this daemon (removed from the config, or moved to another shard)",
                a.cluster
            );
            a.annotations.insert("resolved_reason".to_string(), reason);
            self.resolve(&fp, now.0, flap, &mut out);
        }
        out
    }

    fn fire(&mut self, fp: &str, now: i64, flap: FlapPolicy, out: &mut Vec<Transition>) {
        let a = self.alerts.get_mut(fp).expect("present");
        a.state = State::Firing;
        a.fired_at = Some(now);
        flip(a, now, flap, Transition::Fired(fp.to_string()), out);
    }

    fn resolve(&mut self, fp: &str, now: i64, flap: FlapPolicy, out: &mut Vec<Transition>) {
        let a = self.alerts.get_mut(fp).expect("present");
        a.state = State::Resolved;
        a.resolved_at = Some(now);
        flip(a, now, flap, Transition::Resolved(fp.to_string()), out);
    }

    pub fn get(&self, fingerprint: &str) -> Option<&Alert> {
        self.alerts.get(fingerprint)
    }

    pub fn get_mut(&mut self, fingerprint: &str) -> Option<&mut Alert> {
        self.alerts.get_mut(fingerprint)
    }
}

fn prune(flips: &mut VecDeque<i64>, now: i64, flap: FlapPolicy) {
    let horizon = now - flap.window.as_millis() as i64;
    while flips.front().is_some_and(|t| *t < horizon) {
        flips.pop_front();
    }
}

/// Records a flip; while flapping, individual flips are not notified.
fn flip(a: &mut Alert, now: i64, flap: FlapPolicy, t: Transition, out: &mut Vec<Transition>) {
    a.flips.push_back(now);
    prune(&mut a.flips, now, flap);
    if a.flapping {
        return;
    }
    if a.flips.len() > flap.max_flips {
        a.flapping = true;
        out.push(Transition::StartedFlapping(a.fingerprint.clone()));
    } else {
        out.push(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::eval::Outcome;
    use crate::rules::parse_file;
    use std::path::Path;

    fn rules(extra: &str) -> RuleSet {
        let text = format!(
            "groups:\n  - name: g\n    rules:\n      - alert: Backlog\n        scope: queue\n        expr: messages > 100\n{extra}"
        );
        RuleSet {
            rules: parse_file(Path::new("r.yaml"), &text).unwrap().rules,
        }
    }

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("alertname".into(), "Backlog".into()),
            ("scope".into(), "queue".into()),
            ("cluster".into(), "c".into()),
            ("vhost".into(), "/".into()),
            ("queue".into(), "q".into()),
            ("severity".into(), "warning".into()),
        ])
    }

    /// An evaluation of cluster `c` where the rule holds (`Some(true)`), has not cleared
    /// (`Some(false)`), or produced nothing (`None`).
    fn eval(verdict: Option<bool>, judged: &[Scope]) -> Evaluation {
        Evaluation {
            cluster: "c".into(),
            outcomes: verdict
                .map(|holds| Outcome {
                    rule: 0,
                    labels: labels(),
                    holds,
                    annotations: BTreeMap::new(),
                    values: BTreeMap::new(),
                })
                .into_iter()
                .collect(),
            judged: judged.to_vec(),
        }
    }

    struct Run {
        table: AlertTable,
        rules: RuleSet,
        ids: u32,
    }

    impl Run {
        fn new(extra: &str) -> Run {
            Run {
                table: AlertTable::default(),
                rules: rules(extra),
                ids: 0,
            }
        }

        fn at(&mut self, secs: i64, verdict: Option<bool>) -> Vec<Transition> {
            self.at_judged(secs, verdict, &[Scope::Cluster, Scope::Queue, Scope::Node])
        }

        fn at_judged(
            &mut self,
            secs: i64,
            verdict: Option<bool>,
            judged: &[Scope],
        ) -> Vec<Transition> {
            let ids = &mut self.ids;
            let mut new_id = || {
                *ids += 1;
                format!("id-{ids}")
            };
            self.table.step(
                &self.rules,
                &eval(verdict, judged),
                Timestamp(secs * 1000),
                FlapPolicy::default(),
                &mut new_id,
            )
        }

        fn state(&self) -> Option<State> {
            self.table.alerts.values().next().map(|a| a.state)
        }

        fn alert(&self) -> &Alert {
            self.table.alerts.values().next().unwrap()
        }
    }

    #[test]
    fn alerts_of_a_cluster_no_longer_watched_resolve_once_with_the_reason() {
        let mut r = Run::new("");
        r.at(0, Some(true));
        assert_eq!(r.state(), Some(State::Firing));
        let kept = r
            .table
            .retire_clusters(&["c".into()], Timestamp(5_000), FlapPolicy::default());
        assert!(kept.is_empty(), "a watched cluster keeps its alerts");
        let t = r
            .table
            .retire_clusters(&["other".into()], Timestamp(5_000), FlapPolicy::default());
        assert!(matches!(t.as_slice(), [Transition::Resolved(_)]), "{t:?}");
        assert_eq!(r.state(), Some(State::Resolved));
        assert!(
            r.alert().annotations["resolved_reason"].contains("cluster \"c\" is no longer watched")
        );
        let again =
            r.table
                .retire_clusters(&["other".into()], Timestamp(6_000), FlapPolicy::default());
        assert!(again.is_empty(), "once");
    }

    #[test]
    fn an_alert_kept_by_keep_firing_for_is_marked_unheld_until_it_holds_again() {
        let mut r = Run::new("        keep_firing_for: 60s\n");
        r.at(0, Some(true));
        assert!(!r.alert().unheld);
        r.at(10, None);
        assert_eq!(r.state(), Some(State::Firing));
        assert!(r.alert().unheld, "kept firing, not held");
        assert_eq!(r.alert().last_held, 0);
        r.at(20, Some(true));
        assert!(!r.alert().unheld);
    }

    #[test]
    fn pending_until_for_has_elapsed_then_firing() {
        let mut r = Run::new("        for: 30s\n");
        assert!(r.at(0, Some(true)).is_empty());
        assert_eq!(r.state(), Some(State::Pending));
        assert!(r.at(20, Some(true)).is_empty());
        let t = r.at(30, Some(true));
        assert!(matches!(t.as_slice(), [Transition::Fired(_)]));
        assert_eq!(r.state(), Some(State::Firing));
    }

    #[test]
    fn a_pending_alert_that_stops_holding_is_dropped_silently() {
        let mut r = Run::new("        for: 30s\n");
        r.at(0, Some(true));
        assert!(r.at(10, None).is_empty());
        assert_eq!(r.state(), None);
    }

    #[test]
    fn without_for_it_fires_at_once_and_resolves_when_it_stops_holding() {
        let mut r = Run::new("");
        assert!(matches!(
            r.at(0, Some(true)).as_slice(),
            [Transition::Fired(_)]
        ));
        assert!(matches!(
            r.at(10, None).as_slice(),
            [Transition::Resolved(_)]
        ));
        assert_eq!(r.alert().resolved_at, Some(10_000));
    }

    #[test]
    fn keep_firing_for_delays_the_resolve() {
        let mut r = Run::new("        keep_firing_for: 30s\n");
        r.at(0, Some(true));
        assert!(r.at(10, None).is_empty());
        assert!(r.at(29, None).is_empty());
        assert_eq!(r.state(), Some(State::Firing));
        assert!(matches!(
            r.at(31, None).as_slice(),
            [Transition::Resolved(_)]
        ));
    }

    #[test]
    fn clear_keeps_it_firing_until_clear_holds() {
        let mut r = Run::new("        clear: messages < 10\n");
        r.at(0, Some(true));
        // expr no longer holds but clear does not either: still firing.
        assert!(r.at(10, Some(false)).is_empty());
        assert_eq!(r.state(), Some(State::Firing));
        assert!(matches!(
            r.at(20, None).as_slice(),
            [Transition::Resolved(_)]
        ));
    }

    #[test]
    fn one_correlation_id_per_incident() {
        let mut r = Run::new("");
        r.at(0, Some(true));
        let first = r.alert().correlation_id.clone();
        r.at(10, Some(true));
        r.at(20, None);
        assert_eq!(
            r.alert().correlation_id,
            first,
            "the resolve carries the incident's id"
        );
        r.at(30, Some(true));
        assert_ne!(
            r.alert().correlation_id,
            first,
            "a new incident gets a new id"
        );
    }

    #[test]
    fn unjudged_scopes_freeze_instead_of_resolving() {
        let mut r = Run::new("");
        r.at(0, Some(true));
        // The scrape failed: only cluster-scope rules were judged. The queue alert must not resolve.
        assert!(r.at_judged(10, None, &[Scope::Cluster]).is_empty());
        assert_eq!(r.state(), Some(State::Firing));
    }

    #[test]
    fn flapping_becomes_one_notification_then_settles() {
        let mut r = Run::new("");
        let mut notified = Vec::new();
        for i in 0..10 {
            notified.extend(r.at(i * 10, (i % 2 == 0).then_some(true)));
        }
        let flapping = notified
            .iter()
            .filter(|t| matches!(t, Transition::StartedFlapping(_)))
            .count();
        assert_eq!(flapping, 1, "{notified:?}");
        assert_eq!(
            notified.len(),
            5,
            "4 flips, then one flapping notification: {notified:?}"
        );
        // Quiet for the flap window: one notification of the settled state.
        let settled = r.at(100 + 601, None);
        assert!(
            matches!(settled.as_slice(), [Transition::StoppedFlapping(_)]),
            "{settled:?}"
        );
    }

    #[test]
    fn fingerprints_are_stable_and_label_order_free() {
        let a = labels();
        let mut b = BTreeMap::new();
        for (k, v) in a.iter().rev() {
            b.insert(k.clone(), v.clone());
        }
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&a).len(), 16);
        let mut c = a.clone();
        c.insert("queue".into(), "other".into());
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }

    #[test]
    fn removed_rules_resolve_their_alerts() {
        let mut r = Run::new("");
        r.at(0, Some(true));
        let t = r.table.retire_missing_rules(
            &RuleSet::default(),
            Timestamp(5_000),
            FlapPolicy::default(),
        );
        assert!(matches!(t.as_slice(), [Transition::Resolved(_)]));
    }
}
