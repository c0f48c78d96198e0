//! Routing and grouping: which receivers hear about an alert, batched how, and when.
//!
//! Follows Alertmanager's routing tree (`matchers`, `continue`, inherited `group_by` and timings) and
//! its notification log: for every (receiver, group) the store remembers which state of each alert was
//! last sent (`GroupState::notified`). `plan` compares that with the alert table, so what is due is
//! derived, never queued in memory: after a crash the next `plan` finds the same work. Pure: `now` is
//! passed in; the caller writes the returned group states and notifications in one transaction.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Alert, AlertTable, State};
use crate::domain::{AlertStatus, AlertSummary, GroupStatus, Matcher, Notification};
use crate::rules::Mode;

/// The notification log of one (receiver, group): what was last sent, so `plan` knows what changed.
/// Persisted by the caller with the alert transitions that caused it (one transaction).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupState {
    /// Fingerprint → what the alert was last notified as.
    pub notified: BTreeMap<String, NotifiedAs>,
    pub last_sent_at: Option<i64>,
    pub sequence: u64,
}

/// What an alert was (or should be) notified as: `flapping` is the one notification that stands for
/// a whole storm of flips.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifiedAs {
    Firing,
    Resolved,
    Flapping,
}

/// The key a (receiver, group) pair is stored under; the outbox finds the group's receiver handle
/// (a Slack message `ts`) by it.
pub fn group_id(receiver: &str, group_key: &str) -> String {
    format!("{receiver}\u{0}{group_key}")
}

/// A node of the routing tree, with inherited settings already filled in.
#[derive(Clone, Debug)]
pub struct Route {
    pub receiver: String,
    pub matchers: Vec<Matcher>,
    pub group_by: Vec<String>,
    pub group_wait: Duration,
    pub group_interval: Duration,
    pub repeat_interval: Duration,
    pub continue_: bool,
    pub routes: Vec<Route>,
}

impl Route {
    /// The routes an alert with `labels` goes to, each with its stable path ("0", "0.1", …).
    pub fn select<'r>(&'r self, labels: &BTreeMap<String, String>) -> Vec<(String, &'r Route)> {
        let mut out = Vec::new();
        self.walk("0".to_string(), labels, &mut out);
        out
    }

    fn walk<'r>(
        &'r self,
        path: String,
        labels: &BTreeMap<String, String>,
        out: &mut Vec<(String, &'r Route)>,
    ) -> bool {
        if !self.matchers.iter().all(|m| m.matches(labels)) {
            return false;
        }
        let mut matched_child = false;
        for (i, child) in self.routes.iter().enumerate() {
            if child.walk(format!("{path}.{i}"), labels, out) {
                matched_child = true;
                if !child.continue_ {
                    break;
                }
            }
        }
        if !matched_child {
            out.push((path, self));
        }
        true
    }
}

/// Routes plus per-receiver `send_resolved`.
#[derive(Clone, Debug)]
pub struct Dispatch {
    pub root: Route,
    pub send_resolved: BTreeMap<String, bool>,
    /// Receivers that take alerts one by one (Alertmanager, which groups by itself), with their
    /// resend interval: each alert is its own group, a change is sent at once and a firing alert
    /// is re-sent every interval, whatever the route's `group_*` and `repeat_interval` say.
    pub per_alert: BTreeMap<String, Duration>,
}

/// A group's timings: the route's, or for a per-alert receiver none but the resend interval.
struct Timings {
    group_wait: Duration,
    group_interval: Duration,
    repeat_interval: Duration,
}

/// A group state to store and, unless the receiver wants nothing (a resolve with
/// `send_resolved: false`), the notification to enqueue with it.
#[derive(Debug)]
pub struct Flush {
    pub group_id: String,
    pub state: GroupState,
    pub notification: Option<Notification>,
}

struct Group<'a> {
    receiver: &'a str,
    key: String,
    timings: Timings,
    labels: BTreeMap<String, String>,
    alerts: Vec<&'a Alert>,
}

/// What an alert should have been notified as; `None` while pending.
fn desired(a: &Alert) -> Option<NotifiedAs> {
    match (a.flapping, a.state) {
        (true, _) => Some(NotifiedAs::Flapping),
        (false, State::Firing) => Some(NotifiedAs::Firing),
        (false, State::Resolved) => Some(NotifiedAs::Resolved),
        (false, State::Pending) => None,
    }
}

/// Decides which groups are due and builds their notifications.
/// `muted`: fingerprints silenced or inhibited right now (see `mute`); they are left out as if absent.
pub fn plan(
    d: &Dispatch,
    alerts: &AlertTable,
    groups: &BTreeMap<String, GroupState>,
    muted: &std::collections::HashSet<String>,
    now: i64,
) -> Vec<Flush> {
    let mut by_key: BTreeMap<String, Group<'_>> = BTreeMap::new();
    for a in alerts.alerts.values() {
        // Shadow rules are recorded and shown, never sent.
        if a.mode != Mode::Active || desired(a).is_none() || muted.contains(&a.fingerprint) {
            continue;
        }
        for (path, route) in d.root.select(&a.labels) {
            let resend = d.per_alert.get(&route.receiver).copied();
            let labels: BTreeMap<String, String> = match resend {
                Some(_) => a.labels.clone(),
                None => route
                    .group_by
                    .iter()
                    .filter_map(|k| a.labels.get(k).map(|v| (k.clone(), v.clone())))
                    .collect(),
            };
            let key = match resend {
                Some(_) => format!("{path}:{}", a.fingerprint),
                None => format!("{path}:{}", render_labels(&labels)),
            };
            let timings = match resend {
                Some(every) => Timings {
                    group_wait: Duration::ZERO,
                    group_interval: Duration::ZERO,
                    repeat_interval: every,
                },
                None => Timings {
                    group_wait: route.group_wait,
                    group_interval: route.group_interval,
                    repeat_interval: route.repeat_interval,
                },
            };
            let id = group_id(&route.receiver, &key);
            by_key
                .entry(id)
                .or_insert_with(|| Group {
                    receiver: &route.receiver,
                    key,
                    timings,
                    labels,
                    alerts: Vec::new(),
                })
                .alerts
                .push(a);
        }
    }

    let mut out = Vec::new();
    for (id, g) in by_key {
        let prev = groups.get(&id).cloned().unwrap_or_default();
        let send_resolved = d.send_resolved.get(g.receiver).copied().unwrap_or(true);
        let mut include: Vec<&Alert> = Vec::new();
        let mut changed_at: Option<i64> = None;
        let mut any_firing = false;
        for a in &g.alerts {
            let want = desired(a).expect("filtered above");
            let had = prev.notified.get(&a.fingerprint).copied();
            let resolved = want == NotifiedAs::Resolved;
            // A resolve matters only to those who heard it fire. One already sent stays in the
            // group's messages (as recovered) until the whole group resolves, so the resolve of a
            // storm counts every queue it had, however many polls the recovery took.
            if resolved && had.is_none() {
                continue;
            }
            if !resolved {
                any_firing = true;
            }
            if had != Some(want) {
                let at =
                    if resolved { a.resolved_at } else { a.fired_at }.unwrap_or(a.active_since);
                changed_at = Some(changed_at.map_or(at, |c| c.min(at)));
            }
            if !resolved || send_resolved {
                include.push(a);
            }
        }
        let due = match (changed_at, prev.last_sent_at) {
            (Some(at), None) => now - at >= g.timings.group_wait.as_millis() as i64,
            (Some(_), Some(last)) => now - last >= g.timings.group_interval.as_millis() as i64,
            (None, Some(last)) => {
                any_firing && now - last >= g.timings.repeat_interval.as_millis() as i64
            }
            (None, None) => false,
        };
        if !due {
            continue;
        }
        let mut state = GroupState {
            notified: BTreeMap::new(),
            last_sent_at: Some(now),
            sequence: prev.sequence + 1,
        };
        for a in &g.alerts {
            let want = desired(a).expect("filtered above");
            // Keep what firing alerts were sent as, and the recovered ones of an incident still
            // going; the group's resolve ends every entry.
            let heard = prev.notified.contains_key(&a.fingerprint);
            if want != NotifiedAs::Resolved || (any_firing && heard) {
                state.notified.insert(a.fingerprint.clone(), want);
            }
        }
        // The group's incident was announced and this is a change to it (not a reminder): a
        // receiver that can edit its message edits it, so a growing storm is one message.
        let announced = prev.notified.values().any(|n| *n != NotifiedAs::Resolved);
        let amends = announced && changed_at.is_some();
        // Only resolves, and this receiver does not want them: remember, send nothing.
        let notification = (!include.is_empty()).then(|| {
            let mut n = notification(&g, &include, any_firing, &state, now);
            n.amends = amends;
            n
        });
        out.push(Flush {
            group_id: id,
            state,
            notification,
        });
    }
    out
}

/// How long the notification log of a group whose incident is over is kept: its last send time
/// (for `group_interval`) and the receiver's handle (the Slack message a dead-letter replay edits).
/// Alertmanager keeps its log 120 h; a day is plenty here, since nothing waits longer than
/// `group_interval` on an ended group, and it bounds what churning queue names leave behind.
pub const GROUP_RETENTION_MS: i64 = 24 * 3_600_000;

/// Groups to forget: nothing was sent to them for `GROUP_RETENTION_MS`, and no alert they were
/// told about is still held (their incident resolved, or its alerts are gone: a route or rule
/// removed). Without this, per-queue grouping (`group_by: [..., queue]`) over queues that come and go
/// would keep a record, and a Slack handle, for every queue that ever alerted. A group forgotten
/// and alerted again starts over as a new one (`group_wait`, a new message), as in Alertmanager.
pub fn ended_groups<'g>(
    groups: &'g BTreeMap<String, GroupState>,
    alerts: &AlertTable,
    now: i64,
) -> Vec<&'g str> {
    groups
        .iter()
        .filter(|(_, g)| {
            g.last_sent_at
                .is_none_or(|at| now - at > GROUP_RETENTION_MS)
                && g.notified.keys().all(|fp| {
                    alerts
                        .alerts
                        .get(fp)
                        .is_none_or(|a| a.state == State::Resolved && !a.flapping)
                })
        })
        .map(|(id, _)| id.as_str())
        .collect()
}

fn render_labels(labels: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", parts.join(","))
}

fn notification(
    g: &Group<'_>,
    alerts: &[&Alert],
    any_firing: bool,
    state: &GroupState,
    now: i64,
) -> Notification {
    let summaries: Vec<AlertSummary> = alerts
        .iter()
        .map(|a| AlertSummary {
            status: if a.state == State::Resolved && !a.flapping {
                AlertStatus::Resolved
            } else {
                AlertStatus::Firing
            },
            labels: a.labels.clone(),
            annotations: a.annotations.clone(),
            starts_at: a.fired_at.unwrap_or(a.active_since),
            ends_at: a.resolved_at.filter(|_| a.state == State::Resolved),
            correlation_id: a.correlation_id.clone(),
            fingerprint: a.fingerprint.clone(),
            values: a.values.clone(),
        })
        .collect();
    let status = if any_firing {
        GroupStatus::Firing
    } else {
        GroupStatus::Resolved
    };
    Notification::new(
        g.receiver,
        &g.key,
        status,
        g.labels.clone(),
        summaries,
        state.sequence,
        alerts.iter().any(|a| a.flapping),
        now,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Scope;
    use std::collections::{HashSet, VecDeque};

    fn route(group_wait: u64) -> Route {
        Route {
            receiver: "slack".into(),
            matchers: vec![],
            group_by: vec!["alertname".into(), "queue".into()],
            group_wait: Duration::from_secs(group_wait),
            group_interval: Duration::from_secs(60),
            repeat_interval: Duration::from_secs(3600),
            continue_: false,
            routes: vec![Route {
                receiver: "email".into(),
                matchers: vec![Matcher::parse("severity=critical").unwrap()],
                group_by: vec!["alertname".into(), "queue".into()],
                group_wait: Duration::from_secs(group_wait),
                group_interval: Duration::from_secs(60),
                repeat_interval: Duration::from_secs(3600),
                continue_: true,
                routes: vec![],
            }],
        }
    }

    fn alert(queue: &str, severity: &str, state: State, at: i64) -> Alert {
        let labels = BTreeMap::from([
            ("alertname".to_string(), "Backlog".to_string()),
            ("queue".to_string(), queue.to_string()),
            ("severity".to_string(), severity.to_string()),
        ]);
        Alert {
            fingerprint: super::super::fingerprint(&labels),
            alertname: "Backlog".into(),
            cluster: "c".into(),
            scope: Scope::Queue,
            labels,
            annotations: BTreeMap::new(),
            values: BTreeMap::new(),
            state,
            mode: Mode::Active,
            correlation_id: format!("corr-{queue}"),
            active_since: at,
            fired_at: (state != State::Pending).then_some(at),
            resolved_at: (state == State::Resolved).then_some(at),
            last_held: at,
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

    fn dispatch(group_wait: u64) -> Dispatch {
        Dispatch {
            root: route(group_wait),
            send_resolved: BTreeMap::new(),
            per_alert: BTreeMap::new(),
        }
    }

    #[test]
    fn a_per_alert_receiver_gets_each_alert_at_once_re_sent_every_interval_and_resolved_once() {
        // The route groups by alertname with a 10 s group_wait; Alertmanager's receiver ignores both.
        let mut d = dispatch(10);
        d.root.group_by = vec!["alertname".into()];
        d.per_alert.insert("slack".into(), Duration::from_secs(60));
        let mut groups = BTreeMap::new();
        let none = HashSet::new();
        let t = table(vec![
            alert("q1", "warning", State::Firing, 0),
            alert("q2", "warning", State::Firing, 0),
        ]);
        let f = plan(&d, &t, &groups, &none, 1);
        assert_eq!(f.len(), 2, "one notification per alert, without group_wait");
        for flush in &f {
            let n = flush.notification.as_ref().expect("sent");
            assert_eq!(n.alerts.len(), 1);
            assert_eq!(n.group_labels, n.alerts[0].labels, "the alert's own labels");
        }
        apply(&mut groups, &f);
        assert!(
            plan(&d, &t, &groups, &none, 59_000).is_empty(),
            "nothing changed"
        );
        let again = plan(&d, &t, &groups, &none, 60_001);
        assert_eq!(
            again.len(),
            2,
            "firing alerts are re-sent every resend_interval"
        );
        apply(&mut groups, &again);
        let t = table(vec![
            alert("q1", "warning", State::Resolved, 70_000),
            alert("q2", "warning", State::Firing, 0),
        ]);
        let resolved = plan(&d, &t, &groups, &none, 70_000);
        assert_eq!(resolved.len(), 1, "the resolve goes at once: {resolved:?}");
        let n = resolved[0].notification.as_ref().expect("sent");
        assert_eq!(n.status, GroupStatus::Resolved);
        apply(&mut groups, &resolved);
        assert!(plan(&d, &t, &groups, &none, 75_000).is_empty(), "and once");
    }

    #[test]
    fn groups_whose_incident_ended_a_day_ago_are_forgotten_and_the_others_kept() {
        // Per-queue grouping over queues that come and go: each queue that alerted has a group.
        let d = dispatch(0);
        let day = GROUP_RETENTION_MS;
        let mut groups = BTreeMap::new();
        // q1 fired and resolved; both sent.
        let mut t = table(vec![alert("q1", "warning", State::Firing, 0)]);
        let f = plan(&d, &t, &groups, &HashSet::new(), 0);
        apply(&mut groups, &f);
        t.alerts.values_mut().for_each(|a| {
            a.state = State::Resolved;
            a.resolved_at = Some(1_000);
        });
        let f = plan(&d, &t, &groups, &HashSet::new(), 61_000);
        apply(&mut groups, &f);
        // q2 still firing, reminded every repeat_interval; q3 fired and its alert is gone without
        // a resolve sent (its rule was removed).
        let q2 = alert("q2", "warning", State::Firing, 61_000);
        let q3 = alert("q3", "warning", State::Firing, 61_000);
        let both = table(vec![q2.clone(), q3]);
        let f = plan(&d, &both, &groups, &HashSet::new(), 61_000);
        apply(&mut groups, &f);
        assert_eq!(groups.len(), 3);
        t.alerts.insert(q2.fingerprint.clone(), q2);

        assert!(
            ended_groups(&groups, &t, 61_000 + day).is_empty(),
            "nothing is forgotten within a day of its last send"
        );
        let ended = ended_groups(&groups, &t, 61_001 + day);
        let ended: Vec<&str> = ended
            .iter()
            .map(|id| &id[id.find('{').unwrap()..])
            .collect();
        assert_eq!(
            ended,
            [
                r#"{alertname="Backlog",queue="q1"}"#,
                r#"{alertname="Backlog",queue="q3"}"#
            ],
            "the ended incident and the one whose alerts are gone; q2 is still firing"
        );
        // Forgotten and firing again: a new group, announced after group_wait as a new message.
        let ids: Vec<String> = ended_groups(&groups, &t, 61_001 + day)
            .into_iter()
            .map(String::from)
            .collect();
        ids.iter().for_each(|id| {
            groups.remove(id);
        });
        let again = table(vec![alert("q1", "warning", State::Firing, 2 * day)]);
        let f = plan(&d, &again, &groups, &HashSet::new(), 2 * day);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].state.sequence, 1);
        assert!(!f[0].notification.as_ref().unwrap().amends);
    }

    fn apply(groups: &mut BTreeMap<String, GroupState>, flushes: &[Flush]) {
        for f in flushes {
            groups.insert(f.group_id.clone(), f.state.clone());
        }
    }

    #[test]
    fn continue_routes_to_the_child_and_the_parent_receiver_otherwise() {
        let r = route(0);
        let crit = alert("q", "critical", State::Firing, 0);
        let recv: Vec<&str> = r
            .select(&crit.labels)
            .iter()
            .map(|(_, r)| r.receiver.as_str())
            .collect();
        assert_eq!(
            recv,
            vec!["email"],
            "the matching child takes it; no sibling matched after it"
        );
        let warn = alert("q", "warning", State::Firing, 0);
        let recv: Vec<&str> = r
            .select(&warn.labels)
            .iter()
            .map(|(_, r)| r.receiver.as_str())
            .collect();
        assert_eq!(recv, vec!["slack"]);
    }

    #[test]
    fn group_wait_then_one_firing_then_one_resolved_with_the_same_correlation_id() {
        let d = dispatch(10);
        let mut groups = BTreeMap::new();
        let t = table(vec![alert("q1", "warning", State::Firing, 0)]);
        assert!(
            plan(&d, &t, &groups, &HashSet::new(), 5_000).is_empty(),
            "group_wait not over"
        );
        let f = plan(&d, &t, &groups, &HashSet::new(), 10_000);
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].notification.as_ref().unwrap().status,
            GroupStatus::Firing
        );
        assert_eq!(
            f[0].notification.as_ref().unwrap().idempotency_key,
            "corr-q1:firing:1"
        );
        apply(&mut groups, &f);
        assert!(
            plan(&d, &t, &groups, &HashSet::new(), 20_000).is_empty(),
            "nothing new: nothing sent"
        );

        let t = table(vec![alert("q1", "warning", State::Resolved, 30_000)]);
        assert!(
            plan(&d, &t, &groups, &HashSet::new(), 40_000).is_empty(),
            "group_interval not over since the firing message"
        );
        let f = plan(&d, &t, &groups, &HashSet::new(), 70_000);
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].notification.as_ref().unwrap().status,
            GroupStatus::Resolved
        );
        assert_eq!(
            f[0].notification.as_ref().unwrap().alerts[0].correlation_id,
            "corr-q1"
        );
        apply(&mut groups, &f);
        assert!(
            plan(&d, &t, &groups, &HashSet::new(), 200_000).is_empty(),
            "a resolve is sent once"
        );
    }

    #[test]
    fn a_resolve_nobody_heard_fire_is_not_sent() {
        let d = dispatch(0);
        let t = table(vec![alert("q1", "warning", State::Resolved, 0)]);
        assert!(plan(&d, &t, &BTreeMap::new(), &HashSet::new(), 1_000).is_empty());
    }

    #[test]
    fn alerts_group_by_the_group_by_labels() {
        let mut d = dispatch(0);
        d.root.group_by = vec!["alertname".into()];
        let t = table(
            (0..100)
                .map(|i| alert(&format!("q{i}"), "warning", State::Firing, 0))
                .collect(),
        );
        let f = plan(&d, &t, &BTreeMap::new(), &HashSet::new(), 0);
        assert_eq!(f.len(), 1, "one group for one alertname");
        assert_eq!(f[0].notification.as_ref().unwrap().alerts.len(), 100);
    }

    #[test]
    fn shadow_alerts_are_never_sent() {
        let mut a = alert("q1", "warning", State::Firing, 0);
        a.mode = Mode::Shadow;
        assert!(
            plan(
                &dispatch(0),
                &table(vec![a]),
                &BTreeMap::new(),
                &HashSet::new(),
                1_000
            )
            .is_empty()
        );
    }

    #[test]
    fn a_muted_alert_is_sent_once_its_silence_ends_while_it_still_fires() {
        let d = dispatch(0);
        let mut groups = BTreeMap::new();
        let a = alert("q1", "warning", State::Firing, 0);
        let muted = HashSet::from([a.fingerprint.clone()]);
        let t = table(vec![a]);
        let f = plan(&d, &t, &groups, &muted, 1_000);
        assert!(f.is_empty(), "silenced: nothing sent");
        apply(&mut groups, &f);
        let f = plan(&d, &t, &groups, &HashSet::new(), 2_000);
        assert_eq!(
            f.len(),
            1,
            "the silence ended, the alert still fires: it goes out"
        );
    }

    #[test]
    fn changes_to_an_announced_group_amend_its_message_and_reminders_and_new_incidents_do_not() {
        let mut d = dispatch(0);
        d.root.group_by = vec!["alertname".into()];
        let mut groups = BTreeMap::new();
        let amends = |f: &[Flush]| {
            assert_eq!(f.len(), 1, "one group");
            f[0].notification.as_ref().expect("a notification").amends
        };
        // (step, alerts, now, expected `amends`)
        let q1 = || alert("q1", "warning", State::Firing, 0);
        let steps: Vec<(&str, Vec<Alert>, i64, bool)> = vec![
            ("1. the first message announces", vec![q1()], 0, false),
            (
                "2. a queue joins: amend",
                vec![q1(), alert("q2", "warning", State::Firing, 10_000)],
                70_000,
                true,
            ),
            (
                "3. unchanged after repeat_interval: a reminder, posted anew",
                vec![q1(), alert("q2", "warning", State::Firing, 10_000)],
                3_700_000,
                false,
            ),
            (
                "4. all resolve: the resolve amends",
                vec![
                    alert("q1", "warning", State::Resolved, 3_710_000),
                    alert("q2", "warning", State::Resolved, 3_710_000),
                ],
                3_770_000,
                true,
            ),
            (
                "5. the group fires again: a new incident, announced anew",
                vec![alert("q1", "warning", State::Firing, 3_800_000)],
                3_840_000,
                false,
            ),
        ];
        for (step, alerts, now, want) in steps {
            let f = plan(&d, &table(alerts), &groups, &HashSet::new(), now);
            assert_eq!(amends(&f), want, "{step}");
            apply(&mut groups, &f);
        }
    }

    #[test]
    fn queues_that_recover_early_are_counted_again_in_the_groups_resolve() {
        let mut d = dispatch(0);
        d.root.group_by = vec!["alertname".into()];
        let mut groups = BTreeMap::new();
        let queues = ["q1", "q2", "q3"];
        let f = plan(
            &d,
            &table(
                queues
                    .iter()
                    .map(|q| alert(q, "warning", State::Firing, 0))
                    .collect(),
            ),
            &groups,
            &HashSet::new(),
            0,
        );
        apply(&mut groups, &f);
        // q1 recovers a poll before the others: the group still fires, q1 shown as resolved.
        let q1_resolved = || alert("q1", "warning", State::Resolved, 60_000);
        let t = table(vec![
            q1_resolved(),
            alert("q2", "warning", State::Firing, 0),
            alert("q3", "warning", State::Firing, 0),
        ]);
        let f = plan(&d, &t, &groups, &HashSet::new(), 60_000);
        let n = f[0].notification.as_ref().expect("a message");
        assert_eq!(n.status, GroupStatus::Firing);
        assert_eq!(n.alerts.len(), 3);
        apply(&mut groups, &f);
        assert!(
            plan(&d, &t, &groups, &HashSet::new(), 200_000).is_empty(),
            "an early recovery sent once is no change"
        );
        // The rest recover: one resolve with all three.
        let t = table(
            queues
                .iter()
                .map(|q| alert(q, "warning", State::Resolved, 210_000))
                .collect(),
        );
        let f = plan(&d, &t, &groups, &HashSet::new(), 270_000);
        let n = f[0].notification.as_ref().expect("the resolve");
        assert_eq!(n.status, GroupStatus::Resolved);
        assert_eq!(n.alerts.len(), 3, "every queue of the incident");
        apply(&mut groups, &f);
        assert!(
            groups.values().all(|g| g.notified.is_empty()),
            "the resolve ends the incident"
        );
        assert!(plan(&d, &t, &groups, &HashSet::new(), 400_000).is_empty());
    }

    #[test]
    fn firing_groups_repeat_after_repeat_interval() {
        let d = dispatch(0);
        let mut groups = BTreeMap::new();
        let t = table(vec![alert("q1", "warning", State::Firing, 0)]);
        let first = plan(&d, &t, &groups, &HashSet::new(), 0);
        apply(&mut groups, &first);
        assert!(plan(&d, &t, &groups, &HashSet::new(), 3_599_000).is_empty());
        let f = plan(&d, &t, &groups, &HashSet::new(), 3_600_000);
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].notification.as_ref().unwrap().idempotency_key,
            "corr-q1:firing:2"
        );
    }
}
