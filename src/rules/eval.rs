//! Evaluation of rules over one cluster's latest view. Pure: `now` is passed in.
//!
//! An `Outcome` is produced for each entity where a rule's `expr` holds, and — for rules with a `clear`
//! expression — where `clear` does not hold yet (so a firing alert knows to stay firing). Entities with
//! neither produce nothing, which keeps 100k healthy queues cheap.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::expr::{Env, FieldId, Scope, Value, field};
use super::{Mode, RuleSet, SelectOn};
use crate::domain::Timestamp;
use crate::snapshot::{NodeSample, ProbeSample};
use crate::view::{ClusterView, QueueView, StreamConsumerView};

/// One rule's verdict on one entity.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Index into `RuleSet::rules`.
    pub rule: usize,
    pub labels: BTreeMap<String, String>,
    /// `expr` holds now. When false, the rule has a `clear` that does not hold yet.
    pub holds: bool,
    pub annotations: BTreeMap<String, String>,
    pub values: BTreeMap<String, f64>,
}

/// What one evaluation of a cluster produced, and which scopes it could judge: when the scrape
/// failed there is no queue or node data, and alerts of those scopes must stay as they are rather
/// than resolve.
#[derive(Debug, Default)]
pub struct Evaluation {
    pub cluster: String,
    pub outcomes: Vec<Outcome>,
    pub judged: Vec<Scope>,
}

struct QueueEnv<'a> {
    cluster: &'a str,
    q: &'a QueueView,
}

impl Env for QueueEnv<'_> {
    fn get(&self, f: FieldId) -> Option<Value<'_>> {
        use field::queue as q;
        let s = &self.q.sample;
        let h = &self.q.health;
        let num = |v: u64| Some(Value::Num(v as f64));
        match f {
            q::MESSAGES => num(s.messages),
            q::MESSAGES_READY => num(s.messages_ready),
            q::MESSAGES_UNACKED => num(s.messages_unacked),
            q::CONSUMERS => num(s.consumers),
            q::PUBLISH_RATE => h.publish_rate().map(Value::Num),
            q::DELIVER_RATE => h.deliver_rate().map(Value::Num),
            q::ACK_RATE => h.ack_rate().map(Value::Num),
            q::CONSUME_RATE => h.consume_rate().map(Value::Num),
            q::REDELIVER_RATE => h.redeliver_rate().map(Value::Num),
            q::BACKLOG_GROWTH => h.backlog_growth().map(Value::Num),
            q::DRAIN_ETA => h.drain_eta().map(Value::Num),
            q::OLDEST_MESSAGE_AGE => h.oldest_message_age().map(Value::Num),
            q::CONSUMER_UTILISATION => s.consumer_utilisation.map(Value::Num),
            q::MAX_LENGTH => s.max_length().map(|m| Value::Num(m as f64)),
            q::MAX_LENGTH_BYTES => s.max_length_bytes().map(|m| Value::Num(m as f64)),
            q::MESSAGE_BYTES => s.message_bytes().map(|b| Value::Num(b as f64)),
            q::DELIVERY_LIMIT => s.delivery_limit().map(|l| Value::Num(l as f64)),
            q::DISCARD_RATE => discard_rate(h).map(Value::Num),
            q::FILL_RATIO => s.fill_ratio().map(Value::Num),
            q::STATUS => Some(Value::Str(Cow::Borrowed(h.status.as_str()))),
            q::TYPE => Some(Value::Str(Cow::Borrowed(&s.kind))),
            q::CLUSTER => Some(Value::Str(Cow::Borrowed(self.cluster))),
            q::VHOST => Some(Value::Str(Cow::Borrowed(&s.key.vhost))),
            q::QUEUE => Some(Value::Str(Cow::Borrowed(&s.key.name))),
            q::DURABLE => Some(Value::Bool(s.durable)),
            q::IDLE_FOR => h.idle_for().map(Value::Num),
            q::GROWING_FOR => h.growing_for().map(Value::Num),
            q::IS_DEAD_LETTER_TARGET => self.q.dead_letter_target.map(Value::Bool),
            q::IS_RETRY_QUEUE => self.q.retry_queue.map(Value::Bool),
            _ => None,
        }
    }
}

/// Messages leaving the queue other than by being consumed, msg/s over the window: published −
/// consumed − growth. What leaves that way is dropped or dead-lettered: at a quorum queue's
/// delivery limit, by a TTL, or by overflow past a max-length. Dead-lettered messages arriving do
/// not count as publishes, so a queue fed by dead-lettering reads low, never high. Unknown without
/// rates.
pub fn discard_rate(h: &crate::analysis::PackedHealth) -> Option<f64> {
    let (p, c, g) = (h.publish_rate()?, h.consume_rate()?, h.backlog_growth()?);
    Some((p - c - g).max(0.0))
}

struct NodeEnv<'a> {
    cluster: &'a str,
    n: &'a NodeSample,
}

impl Env for NodeEnv<'_> {
    fn get(&self, f: FieldId) -> Option<Value<'_>> {
        use field::node as n;
        let s = self.n;
        // A figure the broker did not list is unknown (None), never zero.
        let num = |v: Option<u64>| v.map(|v| Value::Num(v as f64));
        match f {
            n::RUNNING => Some(Value::Bool(s.running)),
            n::MEM_ALARM => s.mem_alarm.map(Value::Bool),
            n::DISK_ALARM => s.disk_alarm.map(Value::Bool),
            n::MEM_USED => num(s.mem_used),
            n::MEM_LIMIT => num(s.mem_limit),
            n::DISK_FREE => num(s.disk_free),
            n::DISK_FREE_LIMIT => num(s.disk_free_limit),
            n::FD_USED => num(s.fd_used),
            n::FD_TOTAL => num(s.fd_total),
            n::PARTITIONS => num(s.partitions),
            n::CLUSTER => Some(Value::Str(Cow::Borrowed(self.cluster))),
            n::NODE => Some(Value::Str(Cow::Borrowed(&s.name))),
            _ => None,
        }
    }
}

struct ClusterEnv<'a> {
    v: &'a ClusterView,
    now: Timestamp,
}

impl Env for ClusterEnv<'_> {
    fn get(&self, f: FieldId) -> Option<Value<'_>> {
        use field::cluster as c;
        let v = self.v;
        match f {
            c::REACHABLE => Some(Value::Bool(v.up)),
            c::NODES_RUNNING if v.up => Some(Value::Num(
                v.nodes.iter().filter(|n| n.running).count() as f64,
            )),
            c::NODES_TOTAL if v.up => Some(Value::Num(v.nodes.len() as f64)),
            c::SCRAPE_AGE => Some(Value::Num(
                v.last_success
                    .map_or(f64::INFINITY, |t| self.now.secs_since(t)),
            )),
            c::STATS_MODE if v.last_success.is_some() => {
                Some(Value::Str(Cow::Borrowed(v.stats_mode.as_str())))
            }
            c::DEPRECATED_FEATURES_USED if v.up => v
                .deprecated_features
                .as_ref()
                .map(|d| Value::Num(d.len() as f64)),
            c::CLUSTER => Some(Value::Str(Cow::Borrowed(&v.name))),
            _ => None,
        }
    }
}

struct ProbeEnv<'a> {
    cluster: &'a str,
    p: &'a ProbeSample,
}

impl Env for ProbeEnv<'_> {
    fn get(&self, f: FieldId) -> Option<Value<'_>> {
        use field::probe as p;
        let s = self.p;
        // Before its first round trip a canary knows nothing: every field but its names is unknown.
        let done = s.ok.is_some();
        match f {
            p::PROBE_OK => s.ok.map(Value::Bool),
            p::PROBE_LATENCY => s.latency.map(Value::Num),
            p::PROBE_FAILURES if done => Some(Value::Num(s.failures as f64)),
            p::PROBE_ERROR if done => Some(Value::Str(Cow::Borrowed(
                s.error.map_or("", |e| e.as_str()),
            ))),
            p::CLUSTER => Some(Value::Str(Cow::Borrowed(self.cluster))),
            p::VHOST => Some(Value::Str(Cow::Borrowed(&s.vhost))),
            p::PROBE => Some(Value::Str(Cow::Borrowed(&s.name))),
            _ => None,
        }
    }
}

struct StreamConsumerEnv<'a> {
    cluster: &'a str,
    c: &'a StreamConsumerView,
}

impl Env for StreamConsumerEnv<'_> {
    fn get(&self, f: FieldId) -> Option<Value<'_>> {
        use field::stream_consumer as s;
        let c = self.c;
        let h = &c.health;
        match f {
            s::OFFSET_LAG => h.offset_lag.map(Value::Num),
            s::LAG_GROWTH => h.lag_growth.map(Value::Num),
            s::OFFSET_RATE => h.offset_rate.map(Value::Num),
            s::STATUS => Some(Value::Str(Cow::Borrowed(h.status.as_str()))),
            s::TRUNCATION_ETA => h.truncation_eta.map(Value::Num),
            s::ONLINE => Some(Value::Bool(c.online)),
            s::SUPER_STREAM => Some(Value::Bool(c.super_stream)),
            s::CLUSTER => Some(Value::Str(Cow::Borrowed(self.cluster))),
            s::VHOST => Some(Value::Str(Cow::Borrowed(&c.vhost))),
            s::STREAM => Some(Value::Str(Cow::Borrowed(&c.stream))),
            s::CONSUMER => Some(Value::Str(Cow::Borrowed(&c.consumer))),
            _ => None,
        }
    }
}

/// Evaluates every active or shadow rule against one cluster.
pub fn evaluate(rules: &RuleSet, view: &ClusterView, now: Timestamp) -> Evaluation {
    let mut eval = Evaluation {
        cluster: view.name.clone(),
        outcomes: Vec::new(),
        // A canary's verdict stands on its own round trips, scrape or no scrape.
        judged: vec![Scope::Cluster, Scope::Probe],
    };
    let fresh = view.up && view.is_fresh(now);
    if fresh {
        eval.judged
            .extend([Scope::Queue, Scope::Node, Scope::StreamConsumer]);
    }
    for (i, rule) in rules.rules.iter().enumerate() {
        if rule.mode == Mode::Off {
            continue;
        }
        let selected = |on: SelectOn, value: &str| {
            rule.select
                .iter()
                .filter(|(o, _)| *o == on)
                .all(|(_, re)| re.is_match(value))
        };
        if !selected(SelectOn::Cluster, &view.name) {
            continue;
        }
        match rule.scope {
            Scope::Queue if fresh => {
                for q in view.queues.iter() {
                    if !selected(SelectOn::Vhost, &q.sample.key.vhost)
                        || !selected(SelectOn::Queue, &q.sample.key.name)
                    {
                        continue;
                    }
                    let env = QueueEnv {
                        cluster: &view.name,
                        q,
                    };
                    if let Some(holds) = verdict(rules, i, &env) {
                        let labels = labels(
                            rules,
                            i,
                            &[
                                ("cluster", &view.name),
                                ("vhost", &q.sample.key.vhost),
                                ("queue", &q.sample.key.name),
                            ],
                        );
                        eval.outcomes
                            .push(outcome(rules, i, &env, labels, holds, queue_values(q)));
                    }
                }
            }
            Scope::Node if fresh => {
                for n in view.nodes.iter() {
                    if !selected(SelectOn::Node, &n.name) {
                        continue;
                    }
                    let env = NodeEnv {
                        cluster: &view.name,
                        n,
                    };
                    if let Some(holds) = verdict(rules, i, &env) {
                        let labels =
                            labels(rules, i, &[("cluster", &view.name), ("node", &n.name)]);
                        let values: BTreeMap<String, f64> = [
                            ("mem_used", n.mem_used),
                            ("mem_limit", n.mem_limit),
                            ("disk_free", n.disk_free),
                            ("disk_free_limit", n.disk_free_limit),
                            ("partitions", n.partitions),
                        ]
                        .into_iter()
                        .filter_map(|(k, v)| Some((k.to_string(), v? as f64)))
                        .collect();
                        eval.outcomes
                            .push(outcome(rules, i, &env, labels, holds, values));
                    }
                }
            }
            Scope::Cluster => {
                let env = ClusterEnv { v: view, now };
                if let Some(holds) = verdict(rules, i, &env) {
                    let labels = labels(rules, i, &[("cluster", &view.name)]);
                    let mut values = BTreeMap::new();
                    if let Some(t) = view.last_success {
                        values.insert("scrape_age".to_string(), now.secs_since(t));
                    }
                    eval.outcomes
                        .push(outcome(rules, i, &env, labels, holds, values));
                }
            }
            Scope::Probe => {
                for p in view.probes.iter() {
                    if !selected(SelectOn::Vhost, &p.vhost) || !selected(SelectOn::Probe, &p.name) {
                        continue;
                    }
                    let env = ProbeEnv {
                        cluster: &view.name,
                        p,
                    };
                    if let Some(holds) = verdict(rules, i, &env) {
                        let labels = labels(
                            rules,
                            i,
                            &[
                                ("cluster", &view.name),
                                ("vhost", &p.vhost),
                                ("probe", &p.name),
                            ],
                        );
                        let mut values =
                            BTreeMap::from([("probe_failures".to_string(), p.failures as f64)]);
                        if let Some(l) = p.latency {
                            values.insert("probe_latency".to_string(), l);
                        }
                        eval.outcomes
                            .push(outcome(rules, i, &env, labels, holds, values));
                    }
                }
            }
            Scope::StreamConsumer if fresh => {
                for c in view.stream_consumers.iter() {
                    if !selected(SelectOn::Vhost, &c.vhost)
                        || !selected(SelectOn::Stream, &c.stream)
                        || !selected(SelectOn::Consumer, &c.consumer)
                    {
                        continue;
                    }
                    let env = StreamConsumerEnv {
                        cluster: &view.name,
                        c,
                    };
                    if let Some(holds) = verdict(rules, i, &env) {
                        let labels = labels(
                            rules,
                            i,
                            &[
                                ("cluster", &view.name),
                                ("vhost", &c.vhost),
                                ("stream", &c.stream),
                                ("consumer", &c.consumer),
                            ],
                        );
                        let values: BTreeMap<String, f64> = [
                            ("offset_lag", c.health.offset_lag),
                            ("lag_growth", c.health.lag_growth),
                            ("truncation_eta", c.health.truncation_eta),
                        ]
                        .into_iter()
                        .filter_map(|(k, v)| Some((k.to_string(), v?)))
                        .collect();
                        eval.outcomes
                            .push(outcome(rules, i, &env, labels, holds, values));
                    }
                }
            }
            // Queue, node and stream reader rules wait for fresh data.
            Scope::Queue | Scope::Node | Scope::StreamConsumer => {}
        }
    }
    eval
}

/// Judges one entity against rule `i` (its `select` filters included), for callers that bring their
/// own field values (`rabbitwatch test rules`). `identity` holds `cluster` and the scope's names.
pub fn evaluate_entity(
    rules: &RuleSet,
    i: usize,
    identity: &[(&str, &str)],
    env: &dyn Env,
    values: BTreeMap<String, f64>,
) -> Option<Outcome> {
    let rule = &rules.rules[i];
    if rule.mode == Mode::Off {
        return None;
    }
    let selected = rule.select.iter().all(|(on, re)| {
        identity
            .iter()
            .find(|(k, _)| *k == on.as_str())
            .is_some_and(|(_, v)| re.is_match(v))
    });
    if !selected {
        return None;
    }
    let holds = verdict(rules, i, env)?;
    Some(outcome(
        rules,
        i,
        env,
        labels(rules, i, identity),
        holds,
        values,
    ))
}

/// `Some(true)`: expr holds. `Some(false)`: it does not, but the rule's `clear` does not hold either.
/// Unknown counts as not holding: a rule never fires on a value nobody measured.
fn verdict(rules: &RuleSet, i: usize, env: &dyn Env) -> Option<bool> {
    let rule = &rules.rules[i];
    if rule.expr.eval_bool(env) == Some(true) {
        return Some(true);
    }
    match &rule.clear {
        Some(clear) if clear.eval_bool(env) != Some(true) => Some(false),
        _ => None,
    }
}

fn labels(rules: &RuleSet, i: usize, identity: &[(&str, &str)]) -> BTreeMap<String, String> {
    let rule = &rules.rules[i];
    let mut labels = rule.labels.clone();
    labels.insert("alertname".to_string(), rule.alert.clone());
    labels.insert("scope".to_string(), rule.scope.as_str().to_string());
    for (k, v) in identity {
        labels.insert((*k).to_string(), (*v).to_string());
    }
    labels
}

fn outcome(
    rules: &RuleSet,
    i: usize,
    env: &dyn Env,
    labels: BTreeMap<String, String>,
    holds: bool,
    values: BTreeMap<String, f64>,
) -> Outcome {
    let annotations = rules.rules[i]
        .annotations
        .iter()
        .map(|(k, t)| (k.clone(), t.render(env, &labels)))
        .collect();
    Outcome {
        rule: i,
        labels,
        holds,
        annotations,
        values,
    }
}

fn queue_values(q: &QueueView) -> BTreeMap<String, f64> {
    let s = &q.sample;
    let h = q.health.unpack();
    let mut v = BTreeMap::from([
        ("messages".to_string(), s.messages as f64),
        ("messages_ready".to_string(), s.messages_ready as f64),
        ("messages_unacked".to_string(), s.messages_unacked as f64),
        ("consumers".to_string(), s.consumers as f64),
    ]);
    for (k, x) in [
        ("publish_rate", h.publish_rate),
        ("consume_rate", h.consume_rate),
        ("redeliver_rate", h.redeliver_rate),
        ("backlog_growth", h.backlog_growth),
        ("drain_eta", h.drain_eta),
        ("oldest_message_age", h.oldest_message_age),
    ] {
        if let Some(x) = x {
            v.insert(k.to_string(), x);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::analysis::Params;
    use crate::domain::{QueueKey, StatsMode};
    use crate::rules::load::parse_file;
    use crate::snapshot::ProbeError;
    use crate::snapshot::{
        Binding, Counters, DeadLettering, Destination, Exchange, ExchangeKind, QueueSample,
        Snapshot,
    };
    use crate::view::Tracker;

    fn rules(expr: &str, select: &str) -> RuleSet {
        let text = format!(
            "groups:\n  - name: t\n    rules:\n      - alert: Canary\n        scope: probe\n{select}        expr: {expr}\n        annotations: {{ summary: \"{{{{ probe }}}} {{{{ probe_error }}}}\" }}\n"
        );
        RuleSet {
            rules: parse_file(Path::new("r.yaml"), &text)
                .expect("compiles")
                .rules,
        }
    }

    fn view(probes: Vec<ProbeSample>) -> ClusterView {
        let mut v = ClusterView::new("main", Duration::from_secs(10));
        v.probes = Arc::new(probes);
        v
    }

    fn failed(name: &str, times: u64, error: ProbeError) -> ProbeSample {
        let mut s = ProbeSample::new(name, "/");
        for i in 0..times {
            s = s.after(Timestamp(i as i64), Err((error, "why".into())));
        }
        s
    }

    #[test]
    fn probe_rules_judge_each_canary_even_when_the_scrape_failed() {
        let r = rules("not probe_ok and probe_failures >= 2", "");
        // `view` never scraped: down, and still every probe is judged.
        let v = view(vec![
            failed("orders", 2, ProbeError::Unroutable),
            failed("billing", 1, ProbeError::Timeout),
            ProbeSample::new("fresh", "/").after(Timestamp(0), Ok(0.002)),
        ]);
        let eval = evaluate(&r, &v, Timestamp(10_000));
        assert!(eval.judged.contains(&Scope::Probe));
        assert_eq!(eval.outcomes.len(), 1, "{:?}", eval.outcomes);
        let o = &eval.outcomes[0];
        assert_eq!(o.labels["probe"], "orders");
        assert_eq!(o.labels["vhost"], "/");
        assert_eq!(o.labels["scope"], "probe");
        assert_eq!(o.annotations["summary"], "orders unroutable");
        assert_eq!(o.values["probe_failures"], 2.0);
    }

    #[test]
    fn a_canary_before_its_first_round_trip_knows_nothing() {
        let v = view(vec![ProbeSample::new("new", "/")]);
        for expr in [
            "not probe_ok",
            "probe_failures == 0",
            "probe_error == \"\"",
            "probe_latency < 1",
        ] {
            let eval = evaluate(&rules(expr, ""), &v, Timestamp(0));
            assert!(eval.outcomes.is_empty(), "{expr} held on nothing measured");
        }
        let named = evaluate(&rules("probe == \"new\"", ""), &v, Timestamp(0));
        assert_eq!(named.outcomes.len(), 1, "names are known from the start");
    }

    #[test]
    fn probe_rules_select_by_vhost_and_probe_name() {
        let v = view(vec![
            failed("orders", 1, ProbeError::Connect),
            failed("billing", 1, ProbeError::Connect),
        ]);
        let eval = evaluate(
            &rules("not probe_ok", "        select: { probe: \"bill.*\" }\n"),
            &v,
            Timestamp(0),
        );
        let names: Vec<&str> = eval
            .outcomes
            .iter()
            .map(|o| o.labels["probe"].as_str())
            .collect();
        assert_eq!(names, ["billing"]);
    }

    /// A queue with every fact the broker can report, through three scrapes of the real tracker, on
    /// a cluster where another queue dead-letters into it.
    fn full_view() -> ClusterView {
        let key = |name: &str| QueueKey {
            vhost: Arc::from("/"),
            name: name.into(),
        };
        let sample = |i: u64| QueueSample {
            key: key("orders.failed"),
            kind: Arc::from("classic"),
            durable: true,
            messages: 10 + i,
            messages_ready: 8 + i,
            messages_unacked: 2,
            consumers: 1,
            consumer_utilisation: Some(0.5),
            counters: Some(Counters {
                publish: 100 + 10 * i,
                delivered: 90 + 9 * i,
                ack: 90 + 9 * i,
                no_ack: 0,
                redeliver: i,
            }),
            head_message_timestamp: Some(1.0),
            limits: crate::snapshot::Limits::new(Some(1000), Some(1_000_000), Some(4096), Some(20)),
            stats_pending: false,
        };
        let exchanges = HashMap::from([(
            (Arc::from("/"), Box::from("orders.dlx")),
            Exchange {
                kind: Some(ExchangeKind::Fanout),
                bindings: vec![Binding {
                    destination: Destination::Queue("orders.failed".into()),
                    routing_key: "".into(),
                }],
            },
        )]);
        let mut tracker = Tracker::new("c", Params { window_ms: 30_000 });
        let mut view = ClusterView::new("c", Duration::from_secs(10));
        for i in 0..4u64 {
            let at = Timestamp(10_000 * i as i64);
            let snap = Snapshot {
                taken_at: at,
                stats_mode: StatsMode::Full,
                source: Default::default(),
                source_reason: None,
                queues: vec![sample(i)],
                dead_letterings: vec![DeadLettering {
                    queue: key("orders"),
                    exchange: "orders.dlx".into(),
                    routing_key: None,
                    expires: false,
                }],
                exchanges: Some(Arc::new(exchanges.clone())),
                nodes: vec![crate::snapshot::NodeSample {
                    name: "rabbit@a".into(),
                    running: true,
                    mem_used: Some(1),
                    mem_limit: Some(2),
                    mem_alarm: Some(false),
                    disk_free: Some(3),
                    disk_free_limit: Some(4),
                    disk_alarm: Some(false),
                    fd_used: Some(5),
                    fd_total: Some(6),
                    partitions: Some(0),
                }],
                ..Snapshot::default()
            };
            view = tracker
                .next_view(&view, Ok(snap), Duration::from_millis(5), at)
                .0;
        }
        let probe = ProbeSample::new("canary", "/").after(Timestamp(30_000), Ok(0.004));
        view.probes = Arc::new(vec![probe]);
        view.deprecated_features = Some(Arc::new(vec!["transient_nonexcl_queues".into()]));
        view
    }

    #[test]
    fn fill_ratio_is_by_the_nearer_limit() {
        let q = |max_length, max_length_bytes, message_bytes| crate::snapshot::QueueSample {
            limits: crate::snapshot::Limits::new(max_length, max_length_bytes, message_bytes, None),
            messages: 50,
            ..full_view().queues[0].sample.clone()
        };
        assert_eq!(q(Some(100), None, None).fill_ratio(), Some(0.5));
        assert_eq!(q(Some(100), Some(1000), Some(900)).fill_ratio(), Some(0.9));
        assert_eq!(q(None, Some(1000), Some(100)).fill_ratio(), Some(0.1));
        assert_eq!(
            q(None, Some(1000), None).fill_ratio(),
            None,
            "bytes unknown"
        );
        assert_eq!(q(None, None, Some(100)).fill_ratio(), None, "no limit");
    }

    /// Every field of every scope has a value from a fully-populated entity, of its declared type:
    /// a field the evaluator does not wire would be unknown for ever, and a rule using it would
    /// never fire, silently.
    #[test]
    fn every_field_of_every_scope_is_wired() {
        let view = full_view();
        let now = Timestamp(30_000);
        let queue = QueueEnv {
            cluster: &view.name,
            q: &view.queues[0],
        };
        let node = NodeEnv {
            cluster: &view.name,
            n: &view.nodes[0],
        };
        let cluster = ClusterEnv { v: &view, now };
        let probe = ProbeEnv {
            cluster: &view.name,
            p: &view.probes[0],
        };
        let reader = crate::view::StreamConsumerView {
            vhost: "/".into(),
            stream: "events".into(),
            consumer: "billing".into(),
            named: true,
            super_stream: false,
            subscriptions: 1,
            online: true,
            health: crate::analysis::stream::StreamConsumerHealth {
                offset_lag: Some(5.0),
                lag_growth: Some(0.5),
                offset_rate: Some(20.0),
                status: crate::analysis::stream::StreamStatus::Lagging,
                truncation_eta: Some(f64::INFINITY),
            },
            prom_labels: "".into(),
        };
        let stream_consumer = StreamConsumerEnv {
            cluster: &view.name,
            c: &reader,
        };
        let mut missing = Vec::new();
        for scope in Scope::ALL {
            let env: &dyn Env = match scope {
                Scope::Queue => &queue,
                Scope::Node => &node,
                Scope::Cluster => &cluster,
                Scope::Probe => &probe,
                Scope::StreamConsumer => &stream_consumer,
            };
            for (name, ty) in scope.fields() {
                let id = scope.field(name).expect("a field of its own table");
                match env.get(id) {
                    Some(v) if v.ty() == *ty => {}
                    Some(v) => missing.push(format!("{scope}.{name}: a {} for a {ty:?}", v.ty())),
                    None => missing.push(format!("{scope}.{name}: unknown")),
                }
            }
        }
        assert!(missing.is_empty(), "fields not wired: {missing:?}");
    }
}
