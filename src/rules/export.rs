//! `rabbitwatch rules export --format prometheus`: the same rules as a Prometheus rule file over
//! rabbitwatch's own metrics (docs/metrics.md), so a Prometheus, Thanos or Mimir ruler can evaluate them.
//!
//! Owns the mapping from fields to metric expressions and the translation of the expression and
//! template languages. Nothing is dropped silently: whatever cannot be carried over, or only
//! approximately, becomes a [`Note`] on the rule it concerns. Pure: rules in, text and notes out.
//!
//! How a condition is translated: rabbitwatch's logic is three-valued (a field nobody measured is
//! *unknown*, and a rule never fires on unknown). Each condition `E` therefore becomes two PromQL
//! vectors over the scope's identity labels: where `E` is known true, and where it is known false.
//! `not E` swaps them, `a and b` is true where both are and false where either is, and so on
//! (Kleene's tables), so `not running` fires for a node that reports `running = 0`, never for one
//! whose metric is missing. Every metric is read as `max by (<identity labels>) (…)`: that drops
//! `job`/`instance` (two replicas scraped by one Prometheus are one alert, as in Alertmanager) and
//! leaves exactly the labels rabbitwatch puts on its alerts, so `and`/`or` match one to one.
//! A field without a metric is *unknown* for every entity, which is what rabbitwatch itself does
//! when it cannot measure it; a rule that can then never fire is skipped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::expr::{Arith, Bool, Cmp, Extreme, FieldId, Node, Num, Scope, Str, Type, field};
use super::load::identity_labels;
use super::template::{Filter, Name, Part};
use super::{Mode, Rule, RuleSet};

/// How much of a rule a note says was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Loss {
    /// Nothing lost; said so the reader is not surprised (a rule with `mode: off` is not exported).
    Info,
    /// Carried over with a difference in edge cases (a fraction of a second, one evaluation late).
    Approximated,
    /// Carried over, but always printed differently (four significant digits instead of three).
    Reformatted,
    /// A part of the rule is gone; the rule is exported without it, or skipped.
    Dropped,
}

impl Loss {
    pub fn as_str(self) -> &'static str {
        match self {
            Loss::Info => "note",
            Loss::Approximated => "approximated",
            Loss::Reformatted => "reformatted",
            Loss::Dropped => "dropped",
        }
    }
}

/// Which part of a rule a note is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// The whole rule: it is not in the output.
    Rule,
    Expr,
    Clear,
    Annotation(String),
}

/// One thing the translation could not carry over exactly.
#[derive(Clone, Debug)]
pub struct Note {
    pub file: PathBuf,
    pub line: u64,
    pub alert: String,
    pub loss: Loss,
    pub piece: Piece,
    pub message: String,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match &self.piece {
            Piece::Rule => "rule".to_string(),
            Piece::Expr => "expr".to_string(),
            Piece::Clear => "clear".to_string(),
            Piece::Annotation(k) => format!("annotations.{k}"),
        };
        write!(
            f,
            "{}:{}: rule {}: {} {what}: {}",
            self.file.display(),
            self.line,
            self.alert,
            self.loss.as_str(),
            self.message
        )
    }
}

/// The exported rule file and what it could not carry over.
#[derive(Debug, Default)]
pub struct Export {
    pub yaml: String,
    pub notes: Vec<Note>,
    /// The names of the exported alerting rules.
    pub exported: Vec<String>,
}

impl Export {
    /// Whether some part of some rule is missing from the output (the exit status says so).
    pub fn dropped_anything(&self) -> bool {
        self.notes.iter().any(|n| n.loss == Loss::Dropped)
    }

    /// Whether rule `alert` was exported with its condition intact (possibly approximated): whether
    /// Prometheus fires it when rabbitwatch does.
    pub fn condition_exported(&self, alert: &str) -> bool {
        self.exported.iter().any(|a| a == alert)
            && !self.notes.iter().any(|n| {
                n.alert == alert
                    && matches!(n.piece, Piece::Expr | Piece::Clear)
                    && n.loss == Loss::Dropped
            })
    }

    /// Whether every annotation of rule `alert` renders as rabbitwatch renders it (up to edge cases).
    pub fn annotations_exact(&self, alert: &str) -> bool {
        !self.notes.iter().any(|n| {
            n.alert == alert
                && matches!(n.piece, Piece::Annotation(_))
                && matches!(n.loss, Loss::Dropped | Loss::Reformatted)
        })
    }
}

// ---------------------------------------------------------------- fields → metrics

/// How a field is read from rabbitwatch's metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A gauge; booleans are 0/1.
    Gauge(&'static str),
    /// A one-hot family: the series whose `label` names the value is 1 (`rabbitwatch_queue_status`).
    OneHot(&'static str, &'static str),
    /// An identity label of the entity.
    Label(&'static str),
    /// `time() - <gauge of a Unix time>`, `+Inf` when the gauge is absent but the entity exists.
    Age(&'static str),
    /// `sum` or `count` of a node gauge per cluster.
    NodeSum(&'static str),
    NodeCount(&'static str),
    /// No metric carries it.
    None(&'static str),
}

/// Where field `f` comes from.
pub fn source(f: FieldId) -> Source {
    use field::{cluster as c, node as n, probe as p, queue as q, stream_consumer as s};
    match f {
        q::MESSAGES => Source::Gauge("rabbitwatch_queue_messages"),
        q::MESSAGES_READY => Source::Gauge("rabbitwatch_queue_messages_ready"),
        q::MESSAGES_UNACKED => Source::Gauge("rabbitwatch_queue_messages_unacked"),
        q::CONSUMERS => Source::Gauge("rabbitwatch_queue_consumers"),
        q::PUBLISH_RATE => Source::Gauge("rabbitwatch_queue_publish_rate"),
        q::DELIVER_RATE => Source::Gauge("rabbitwatch_queue_deliver_rate"),
        q::CONSUME_RATE => Source::Gauge("rabbitwatch_queue_consume_rate"),
        q::REDELIVER_RATE => Source::Gauge("rabbitwatch_queue_redeliver_rate"),
        q::BACKLOG_GROWTH => Source::Gauge("rabbitwatch_queue_backlog_growth_rate"),
        q::DRAIN_ETA => Source::Gauge("rabbitwatch_queue_drain_eta_seconds"),
        q::OLDEST_MESSAGE_AGE => Source::Gauge("rabbitwatch_queue_oldest_message_age_seconds"),
        q::GROWING_FOR => Source::Gauge("rabbitwatch_queue_growing_seconds"),
        q::STATUS => Source::OneHot("rabbitwatch_queue_status", "status"),
        q::CLUSTER | n::CLUSTER | c::CLUSTER | p::CLUSTER => Source::Label("cluster"),
        q::VHOST | p::VHOST => Source::Label("vhost"),
        q::QUEUE => Source::Label("queue"),
        n::NODE => Source::Label("node"),
        p::PROBE => Source::Label("probe"),
        s::CLUSTER => Source::Label("cluster"),
        s::VHOST => Source::Label("vhost"),
        s::STREAM => Source::Label("stream"),
        s::CONSUMER => Source::Label("consumer"),
        s::OFFSET_LAG => Source::Gauge("rabbitwatch_stream_consumer_offset_lag"),
        s::LAG_GROWTH => Source::Gauge("rabbitwatch_stream_consumer_lag_growth_rate"),
        s::OFFSET_RATE => Source::Gauge("rabbitwatch_stream_consumer_offset_rate"),
        s::TRUNCATION_ETA => Source::Gauge("rabbitwatch_stream_consumer_truncation_eta_seconds"),
        s::ONLINE => Source::Gauge("rabbitwatch_stream_consumer_online"),
        s::STATUS => Source::OneHot("rabbitwatch_stream_consumer_status", "status"),
        s::SUPER_STREAM => Source::None("no metric says whether a reader reads a super stream"),
        q::ACK_RATE => Source::None("no metric carries the ack rate (only consume_rate)"),
        q::CONSUMER_UTILISATION => Source::None("no metric carries consumer utilisation"),
        q::MAX_LENGTH => Source::None("no metric carries a queue's max-length"),
        q::MAX_LENGTH_BYTES => Source::None("no metric carries a queue's max-length-bytes"),
        q::MESSAGE_BYTES => Source::None("no metric carries a queue's bytes"),
        q::DELIVERY_LIMIT => Source::None("no metric carries a queue's delivery limit"),
        q::DISCARD_RATE => Source::None(
            "no metric carries the discard rate (it is publish_rate - consume_rate - backlog_growth)",
        ),
        q::FILL_RATIO => {
            Source::None("no metric carries a queue's max-length, so neither its fill ratio")
        }
        q::IDLE_FOR => Source::None("no metric carries how long a queue has been idle"),
        q::TYPE => Source::OneHot("rabbitwatch_queue_status", "type"),
        q::DURABLE => Source::None("no metric carries durability"),
        q::IS_DEAD_LETTER_TARGET => Source::None(
            "no metric says which queues are dead-letter targets (the topology stays inside rabbitwatch)",
        ),
        q::IS_RETRY_QUEUE => Source::None(
            "no metric says which queues are retry queues (the topology stays inside rabbitwatch)",
        ),
        n::RUNNING => Source::Gauge("rabbitwatch_node_running"),
        n::MEM_ALARM => Source::Gauge("rabbitwatch_node_mem_alarm"),
        n::DISK_ALARM => Source::Gauge("rabbitwatch_node_disk_alarm"),
        n::MEM_USED => Source::Gauge("rabbitwatch_node_mem_used_bytes"),
        n::MEM_LIMIT => Source::Gauge("rabbitwatch_node_mem_limit_bytes"),
        n::DISK_FREE => Source::Gauge("rabbitwatch_node_disk_free_bytes"),
        n::DISK_FREE_LIMIT => Source::Gauge("rabbitwatch_node_disk_free_limit_bytes"),
        n::FD_USED => Source::Gauge("rabbitwatch_node_fd_used"),
        n::FD_TOTAL => Source::Gauge("rabbitwatch_node_fd_limit"),
        n::PARTITIONS => Source::Gauge("rabbitwatch_node_partitions"),
        c::REACHABLE => Source::Gauge("rabbitwatch_up"),
        c::NODES_RUNNING => Source::NodeSum("rabbitwatch_node_running"),
        c::NODES_TOTAL => Source::NodeCount("rabbitwatch_node_running"),
        c::SCRAPE_AGE => Source::Age("rabbitwatch_last_scrape_timestamp_seconds"),
        c::STATS_MODE => Source::OneHot("rabbitwatch_cluster_stats_mode", "mode"),
        c::DEPRECATED_FEATURES_USED => Source::None(
            "the count has no gauge (rabbitwatch_cluster_deprecated_feature_used has one series per feature in use)",
        ),
        p::PROBE_OK => Source::Gauge("rabbitwatch_probe_up"),
        p::PROBE_LATENCY => Source::None(
            "the last round trip's latency has no gauge (only the histogram rabbitwatch_probe_latency_seconds)",
        ),
        p::PROBE_FAILURES => Source::None(
            "consecutive failures have no metric (rabbitwatch_probe_failures_total counts all of them)",
        ),
        p::PROBE_ERROR => Source::None("the last round trip's error has no metric"),
        _ => Source::None("no metric carries this field"),
    }
}

/// The identity labels of an entity of `scope` (its alert's labels without alertname and scope).
fn ids(scope: Scope) -> Vec<&'static str> {
    identity_labels(scope)
        .iter()
        .copied()
        .filter(|l| !matches!(*l, "alertname" | "scope"))
        .collect()
}

/// A metric every entity of the scope has while rabbitwatch knows it: what `not` and literal
/// conditions range over.
fn universe_metric(scope: Scope) -> &'static str {
    match scope {
        Scope::Queue => "rabbitwatch_queue_messages",
        Scope::Node => "rabbitwatch_node_running",
        Scope::Cluster => "rabbitwatch_up",
        // All six series exist from the canary's start.
        Scope::Probe => "rabbitwatch_probe_failures_total",
        Scope::StreamConsumer => "rabbitwatch_stream_consumer_online",
    }
}

/// A PromQL (and Go) double-quoted string literal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A number as PromQL reads it back exactly.
fn number(x: f64) -> String {
    if x.is_nan() {
        "NaN".to_string()
    } else if x.is_infinite() {
        if x > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{x}")
    }
}

/// A duration in Prometheus' notation (`1h30m`, `15s`, `500ms`).
pub fn prom_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            let _ = write!(out, "{}{unit}", ms / size);
            ms %= size;
        }
    }
    out
}

/// The regex of a `select:` entry as the user wrote it (rabbitwatch anchors it as PromQL does).
fn select_regex(re: &regex::Regex) -> &str {
    let s = re.as_str();
    s.strip_prefix("^(?:")
        .and_then(|s| s.strip_suffix(")$"))
        .unwrap_or(s)
}

// ---------------------------------------------------------------- conditions

/// A numeric expression: a constant, or a vector over the identity labels (with the field it is
/// exactly, for `$value`), or unknown for every entity.
#[derive(Clone, Debug)]
enum N {
    Scalar(f64),
    Vector(String, Option<FieldId>),
    Unknown,
}

/// A condition: where it is known true and known false (`None`: nowhere), and which field the
/// true vector's values are.
#[derive(Clone, Debug)]
struct B {
    t: Option<String>,
    f: Option<String>,
    value: Option<FieldId>,
}

impl B {
    fn never() -> B {
        B {
            t: None,
            f: None,
            value: None,
        }
    }
}

fn and(a: Option<String>, b: Option<String>) -> Option<String> {
    Some(format!("({}) and ({})", a?, b?))
}

fn or(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("({a}) or ({b})")),
        (a, b) => a.or(b),
    }
}

struct Translator<'r> {
    rule: &'r Rule,
    /// Matchers every selector carries: the rule's `select:`.
    select: Vec<String>,
    /// Why a field read as unknown, once per field.
    unknown: Vec<(FieldId, &'static str)>,
    /// Other things the condition could not express.
    problems: Vec<String>,
}

impl<'r> Translator<'r> {
    fn new(rule: &'r Rule) -> Translator<'r> {
        let select = rule
            .select
            .iter()
            .map(|(on, re)| format!("{}=~{}", on.as_str(), quote(select_regex(re))))
            .collect();
        Translator {
            rule,
            select,
            unknown: Vec::new(),
            problems: Vec::new(),
        }
    }

    fn by(&self) -> String {
        ids(self.rule.scope).join(", ")
    }

    /// `max by (<ids>) (metric{select, extra})`.
    fn read(&self, metric: &str, extra: &[String]) -> String {
        let matchers: Vec<&str> = self
            .select
            .iter()
            .map(String::as_str)
            .chain(extra.iter().map(String::as_str))
            .collect();
        let braces = if matchers.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", matchers.join(", "))
        };
        format!("max by ({}) ({metric}{braces})", self.by())
    }

    fn universe(&self, extra: &[String]) -> String {
        self.read(universe_metric(self.rule.scope), extra)
    }

    fn unknown_field(&mut self, f: FieldId, why: &'static str) {
        if !self.unknown.iter().any(|(g, _)| *g == f) {
            self.unknown.push((f, why));
        }
    }

    fn num(&mut self, n: &Num) -> N {
        match n {
            Num::Lit(x, _) => N::Scalar(*x),
            Num::Field(f) => match source(*f) {
                Source::Gauge(m) => N::Vector(self.read(m, &[]), Some(*f)),
                Source::Age(m) => N::Vector(
                    format!(
                        "(time() - {}) or ({} * 0 + Inf)",
                        self.read(m, &[]),
                        self.universe(&[])
                    ),
                    Some(*f),
                ),
                Source::NodeSum(m) | Source::NodeCount(m) => {
                    let agg = if matches!(source(*f), Source::NodeSum(_)) {
                        "sum"
                    } else {
                        "count"
                    };
                    let sel = if self.select.is_empty() {
                        String::new()
                    } else {
                        format!("{{{}}}", self.select.join(", "))
                    };
                    N::Vector(
                        format!("{agg} by (cluster) (max by (cluster, node) ({m}{sel}))"),
                        Some(*f),
                    )
                }
                Source::None(why) => {
                    self.unknown_field(*f, why);
                    N::Unknown
                }
                Source::OneHot(..) | Source::Label(_) => {
                    self.problems.push(format!("{} is not a number", f.name()));
                    N::Unknown
                }
            },
            Num::Neg(x) => match self.num(x) {
                N::Scalar(x) => N::Scalar(-x),
                N::Vector(v, _) => N::Vector(format!("-({v})"), None),
                N::Unknown => N::Unknown,
            },
            Num::Abs(x) => match self.num(x) {
                N::Scalar(x) => N::Scalar(x.abs()),
                N::Vector(v, _) => N::Vector(format!("abs({v})"), None),
                N::Unknown => N::Unknown,
            },
            Num::Arith(op, l, r) => {
                let (l, r) = (self.num(l), self.num(r));
                let sym = op.symbol();
                match (l, r) {
                    (N::Unknown, _) | (_, N::Unknown) => N::Unknown,
                    (N::Scalar(a), N::Scalar(b)) => N::Scalar(match op {
                        Arith::Add => a + b,
                        Arith::Sub => a - b,
                        Arith::Mul => a * b,
                        Arith::Div => a / b,
                    }),
                    (N::Vector(a, _), N::Scalar(b)) => {
                        N::Vector(format!("({a}) {sym} {}", number(b)), None)
                    }
                    (N::Scalar(a), N::Vector(b, _)) => {
                        N::Vector(format!("{} {sym} ({b})", number(a)), None)
                    }
                    (N::Vector(a, _), N::Vector(b, _)) => {
                        N::Vector(format!("({a}) {sym} ({b})"), None)
                    }
                }
            }
            Num::Extreme(which, args) => {
                let mut acc: Option<N> = None;
                for arg in args {
                    let x = self.num(arg);
                    acc = Some(match acc {
                        None => x,
                        Some(a) => extreme(*which, a, x),
                    });
                }
                acc.unwrap_or(N::Unknown)
            }
        }
    }

    fn cond(&mut self, b: &Bool) -> B {
        match b {
            Bool::Lit(true) => B {
                t: Some(self.universe(&[])),
                f: None,
                value: None,
            },
            Bool::Lit(false) => B {
                t: None,
                f: Some(self.universe(&[])),
                value: None,
            },
            Bool::Field(f) => match source(*f) {
                Source::Gauge(m) => {
                    let v = self.read(m, &[]);
                    B {
                        t: Some(format!("{v} == 1")),
                        f: Some(format!("{v} == 0")),
                        value: None,
                    }
                }
                Source::None(why) => {
                    self.unknown_field(*f, why);
                    B::never()
                }
                _ => {
                    self.problems
                        .push(format!("{} has no 0/1 metric", f.name()));
                    B::never()
                }
            },
            Bool::Not(x) => {
                let x = self.cond(x);
                B {
                    t: x.f,
                    f: x.t,
                    value: None,
                }
            }
            Bool::And(l, r) => {
                let (l, r) = (self.cond(l), self.cond(r));
                B {
                    value: if l.t.is_some() { l.value } else { None },
                    t: and(l.t, r.t),
                    f: or(l.f, r.f),
                }
            }
            Bool::Or(l, r) => {
                let (l, r) = (self.cond(l), self.cond(r));
                let value = match (&l.t, &r.t) {
                    (Some(_), None) => l.value,
                    (None, Some(_)) => r.value,
                    _ if l.value == r.value => l.value,
                    _ => None,
                };
                B {
                    t: or(l.t, r.t),
                    f: and(l.f, r.f),
                    value,
                }
            }
            Bool::NumCmp(op, l, r) => {
                let (l, r) = (self.num(l), self.num(r));
                self.compare(*op, l, r)
            }
            Bool::FlagEq(op, l, r) => {
                let (l, r) = (self.cond(l), self.cond(r));
                let same = or(and(l.t.clone(), r.t.clone()), and(l.f.clone(), r.f.clone()));
                let differ = or(and(l.t, r.f), and(l.f, r.t));
                let (t, f) = if *op == Cmp::Eq {
                    (same, differ)
                } else {
                    (differ, same)
                };
                B { t, f, value: None }
            }
            Bool::StrEq(op, l, r) => {
                let b = match (&**l, &**r) {
                    (Str::Lit(a), Str::Lit(b)) => self.constant(a == b),
                    (Str::Field(f), Str::Lit(s)) | (Str::Lit(s), Str::Field(f)) => {
                        self.string_test(*f, "=", "!=", s)
                    }
                    (Str::Field(a), Str::Field(b)) => {
                        self.problems.push(format!(
                            "comparing two fields' text ({} with {}) has no PromQL form",
                            a.name(),
                            b.name()
                        ));
                        B::never()
                    }
                };
                if *op == Cmp::Eq {
                    b
                } else {
                    B {
                        t: b.f,
                        f: b.t,
                        value: None,
                    }
                }
            }
            Bool::Matches(s, re) => match &**s {
                Str::Lit(text) => self.constant(re.is_match(text)),
                // rabbitwatch's `matches` finds the regex anywhere in the text; PromQL anchors label
                // regexes at both ends, so the pattern is wrapped to match anywhere again.
                Str::Field(f) => {
                    self.string_test(*f, "=~", "!~", &format!(".*(?:{}).*", re.as_str()))
                }
            },
            Bool::Known(x) => {
                let present: Option<String> = match &**x {
                    Node::Num(n) => match self.num(n) {
                        N::Scalar(_) => Some(self.universe(&[])),
                        N::Vector(v, _) => Some(v),
                        N::Unknown => None,
                    },
                    Node::Bool(b) => {
                        let b = self.cond(b);
                        or(b.t, b.f)
                    }
                    Node::Str(Str::Lit(_)) => Some(self.universe(&[])),
                    Node::Str(Str::Field(f)) => match source(*f) {
                        Source::Label(_) => Some(self.universe(&[])),
                        Source::OneHot(m, l) => Some(self.read(m, &[format!("{l}=~\".+\"")])),
                        Source::None(why) => {
                            self.unknown_field(*f, why);
                            None
                        }
                        _ => None,
                    },
                };
                let universe = self.universe(&[]);
                B {
                    f: Some(match &present {
                        Some(p) => format!("{universe} unless ({p})"),
                        None => universe.clone(),
                    }),
                    t: present.map(|p| format!("{universe} and ({p})")),
                    value: None,
                }
            }
        }
    }

    fn constant(&self, holds: bool) -> B {
        let u = Some(self.universe(&[]));
        if holds {
            B {
                t: u,
                f: None,
                value: None,
            }
        } else {
            B {
                t: None,
                f: u,
                value: None,
            }
        }
    }

    /// `field <yes> "text"` as a label matcher: on an identity label, or on a one-hot family.
    fn string_test(&mut self, f: FieldId, yes: &str, no: &str, text: &str) -> B {
        match source(f) {
            Source::Label(l) => B {
                t: Some(self.universe(&[format!("{l}{yes}{}", quote(text))])),
                f: Some(self.universe(&[format!("{l}{no}{}", quote(text))])),
                value: None,
            },
            Source::OneHot(m, l) => B {
                t: Some(format!(
                    "{} == 1",
                    self.read(m, &[format!("{l}{yes}{}", quote(text))])
                )),
                f: Some(format!(
                    "{} == 1",
                    self.read(m, &[format!("{l}{no}{}", quote(text))])
                )),
                value: None,
            },
            Source::None(why) => {
                self.unknown_field(f, why);
                B::never()
            }
            _ => {
                self.problems.push(format!("{} is not text", f.name()));
                B::never()
            }
        }
    }

    fn compare(&self, op: Cmp, l: N, r: N) -> B {
        let sym = op.symbol();
        match (l, r) {
            (N::Unknown, _) | (_, N::Unknown) => B::never(),
            (N::Scalar(a), N::Scalar(b)) => self.constant(match op {
                Cmp::Eq => a == b,
                Cmp::Ne => a != b,
                Cmp::Lt => a < b,
                Cmp::Le => a <= b,
                Cmp::Gt => a > b,
                Cmp::Ge => a >= b,
            }),
            // A filtering comparison keeps the vector side's values; `bool` gives 0 where the
            // comparison is false, NaN included (NaN > 1 is false in both languages).
            (N::Vector(a, fa), N::Scalar(b)) => B {
                t: Some(format!("({a}) {sym} {}", number(b))),
                f: Some(format!("(({a}) {sym} bool {}) == 0", number(b))),
                value: fa,
            },
            (N::Scalar(a), N::Vector(b, fb)) => B {
                t: Some(format!("{} {sym} ({b})", number(a))),
                f: Some(format!("({} {sym} bool ({b})) == 0", number(a))),
                value: fb,
            },
            (N::Vector(a, fa), N::Vector(b, _)) => B {
                t: Some(format!("({a}) {sym} ({b})")),
                f: Some(format!("(({a}) {sym} bool ({b})) == 0")),
                value: fa,
            },
        }
    }
}

/// Element-wise `min`/`max`: PromQL's `min`/`max` aggregate, so two vectors are compared and each
/// side kept where it wins (absent where either is, like rabbitwatch's unknown); against a constant
/// it is `clamp_max`/`clamp_min`.
fn extreme(which: Extreme, a: N, b: N) -> N {
    let (keep, clamp) = match which {
        Extreme::Min => ("<=", "clamp_max"),
        Extreme::Max => (">=", "clamp_min"),
    };
    let other = match which {
        Extreme::Min => "<",
        Extreme::Max => ">",
    };
    match (a, b) {
        (N::Unknown, _) | (_, N::Unknown) => N::Unknown,
        (N::Scalar(x), N::Scalar(y)) => N::Scalar(match which {
            _ if x.is_nan() || y.is_nan() => f64::NAN,
            Extreme::Min => x.min(y),
            Extreme::Max => x.max(y),
        }),
        (N::Vector(v, _), N::Scalar(s)) | (N::Scalar(s), N::Vector(v, _)) => {
            N::Vector(format!("{clamp}({v}, {})", number(s)), None)
        }
        (N::Vector(x, _), N::Vector(y, _)) => N::Vector(
            format!("(({x}) {keep} ({y})) or (({y}) {other} ({x}))"),
            None,
        ),
    }
}

// ---------------------------------------------------------------- templates

/// Prometheus' `humanizeDuration` reshaped to rabbitwatch's `duration` (two largest units, a zero
/// minor unit left out, `+Inf` as `never`).
const DURATION_PIPE: &str = r#"humanizeDuration | reReplaceAll "^(\\d+d \\d+h) .*$" "$1" | reReplaceAll "^(\\d+h \\d+m) .*$" "$1" | reReplaceAll "^(\\d+)\\.\\d+s$" "${1}s" | reReplaceAll " 0[hms]$" "" | reReplaceAll "^\\+Inf$" "never""#;

/// Prometheus' `humanize1024` with rabbitwatch's unit names (`1.5 KiB`, `512 B`).
const BYTES_PIPE: &str = r#"humanize1024 | reReplaceAll "^([-0-9.e+]+)$" "$1 B" | reReplaceAll "ki$" " KiB" | reReplaceAll "([MGTPEZY])i$" " ${1}iB""#;

struct TemplateOut {
    text: String,
    /// (loss, message) per piece that could not be rendered as rabbitwatch renders it.
    notes: Vec<(Loss, String)>,
}

fn template(rule: &Rule, parts: &[Part], value: Option<FieldId>) -> TemplateOut {
    let mut out = TemplateOut {
        text: String::new(),
        notes: Vec::new(),
    };
    let ids = ids(rule.scope);
    for part in parts {
        match part {
            Part::Text(t) => out.text.push_str(t),
            Part::Subst(s) => {
                let (head, ty) = match &s.name {
                    Name::Label(l) if ids.contains(&&**l) => {
                        (Head::Direct(format!("$labels.{l}")), Type::String)
                    }
                    Name::Label(l) => {
                        let v = match &**l {
                            "alertname" => rule.alert.clone(),
                            "scope" => rule.scope.as_str().to_string(),
                            other => rule.labels.get(other).cloned().unwrap_or_default(),
                        };
                        (Head::Direct(quote(&v)), Type::String)
                    }
                    Name::Field(f) => match source(*f) {
                        Source::Label(l) => (Head::Direct(format!("$labels.{l}")), Type::String),
                        _ if Some(*f) == value => (Head::Direct("$value".to_string()), f.ty()),
                        Source::None(why) => {
                            out.notes.push((
                                Loss::Dropped,
                                format!("{{{{ {} }}}} renders as - ({why})", f.name()),
                            ));
                            out.text.push('-');
                            continue;
                        }
                        src => (Head::Query(query(rule.scope, src)), f.ty()),
                    },
                };
                let mut pipe = String::new();
                let mut ty = ty;
                for filter in &s.filters {
                    let step = match filter {
                        Filter::Round(d) => format!("printf \"%.{d}f\""),
                        Filter::Duration => {
                            out.notes.push((
                                Loss::Approximated,
                                "`duration` is humanizeDuration reshaped: fractions of a second truncate instead of rounding".to_string(),
                            ));
                            DURATION_PIPE.to_string()
                        }
                        Filter::Bytes => {
                            out.notes.push((
                                Loss::Reformatted,
                                "`bytes` is humanize1024: four significant digits instead of three (8.382 GiB for 8.38 GiB)".to_string(),
                            ));
                            BYTES_PIPE.to_string()
                        }
                        Filter::Humanize => {
                            out.notes.push((
                                Loss::Reformatted,
                                "`humanize` is Prometheus' humanize: four significant digits instead of three".to_string(),
                            ));
                            "humanize".to_string()
                        }
                        Filter::Upper => {
                            if ty != Type::String {
                                pipe.push_str(&plain(ty));
                            }
                            "toUpper".to_string()
                        }
                        Filter::Lower => {
                            if ty != Type::String {
                                pipe.push_str(&plain(ty));
                            }
                            "toLower".to_string()
                        }
                    };
                    let _ = write!(pipe, " | {step}");
                    ty = Type::String;
                }
                if ty != Type::String {
                    pipe.push_str(&plain(ty));
                }
                match head {
                    Head::Direct(h) => {
                        let _ = write!(out.text, "{{{{ {h}{pipe} }}}}");
                    }
                    Head::Query((q, args, Some(label))) => {
                        let _ = write!(
                            out.text,
                            "{{{{ with query (printf {}{args}) }}}}{{{{ . | first | label {}{pipe} }}}}{{{{ else }}}}-{{{{ end }}}}",
                            quote(&q),
                            quote(label)
                        );
                    }
                    Head::Query((q, args, None)) => {
                        let _ = write!(
                            out.text,
                            "{{{{ with query (printf {}{args}) }}}}{{{{ . | first | value{pipe} }}}}{{{{ else }}}}-{{{{ end }}}}",
                            quote(&q)
                        );
                    }
                }
            }
        }
    }
    out
}

enum Head {
    /// A template value: `$labels.queue`, `$value`, a string literal.
    Direct(String),
    /// A query for the entity's field (its PromQL with `%q` per identity label, the `$labels`
    /// arguments, and for a one-hot family the label naming the value).
    Query((String, String, Option<&'static str>)),
}

/// How a value prints without a filter: numbers as rabbitwatch prints them (`4700`, `0.25`), 0/1
/// as `false`/`true`.
fn plain(ty: Type) -> String {
    match ty {
        Type::Bool => {
            " | printf \"%.0f\" | reReplaceAll \"^1$\" \"true\" | reReplaceAll \"^0$\" \"false\""
                .to_string()
        }
        _ => " | printf \"%.15g\"".to_string(),
    }
}

fn query(scope: Scope, src: Source) -> (String, String, Option<&'static str>) {
    let ids = ids(scope);
    let matchers: Vec<String> = ids.iter().map(|l| format!("{l}=%q")).collect();
    let args: String = ids.iter().map(|l| format!(" $labels.{l}")).collect();
    let by = ids.join(", ");
    let sel = matchers.join(",");
    let q = match src {
        Source::Gauge(m) => format!("max by ({by}) ({m}{{{sel}}})"),
        Source::Age(m) => format!("time() - max by ({by}) ({m}{{{sel}}})"),
        Source::NodeSum(m) => format!("sum by (cluster) (max by (cluster, node) ({m}{{{sel}}}))"),
        Source::NodeCount(m) => {
            format!("count by (cluster) (max by (cluster, node) ({m}{{{sel}}}))")
        }
        Source::OneHot(m, l) => {
            return (
                format!("max by ({by}, {l}) ({m}{{{sel}}}) == 1"),
                args,
                Some(l),
            );
        }
        Source::Label(_) | Source::None(_) => String::new(),
    };
    (q, args, None)
}

// ---------------------------------------------------------------- rules → file

struct Translated {
    expr: String,
    labels: BTreeMap<String, String>,
    annotations: Vec<(String, String)>,
}

fn translate(rule: &Rule, notes: &mut Vec<Note>) -> Option<Translated> {
    let note = |notes: &mut Vec<Note>, loss, piece, message: String| {
        notes.push(Note {
            file: rule.file.clone(),
            line: rule.line,
            alert: rule.alert.clone(),
            loss,
            piece,
            message,
        });
    };
    match rule.mode {
        Mode::Active => {}
        Mode::Shadow => {
            note(notes, Loss::Dropped, Piece::Rule, "skipped: mode: shadow (evaluate, never notify) has no Prometheus form; route its alerts to a receiver that drops them in Alertmanager instead".to_string());
            return None;
        }
        Mode::Off => {
            note(
                notes,
                Loss::Info,
                Piece::Rule,
                "skipped: mode: off (rabbitwatch does not evaluate it either)".to_string(),
            );
            return None;
        }
    }
    let Node::Bool(root) = rule.expr.root() else {
        note(
            notes,
            Loss::Dropped,
            Piece::Rule,
            "skipped: expr is not a condition".to_string(),
        );
        return None;
    };
    let mut tr = Translator::new(rule);
    let cond = tr.cond(root);
    for (f, why) in std::mem::take(&mut tr.unknown) {
        note(
            notes,
            Loss::Dropped,
            Piece::Expr,
            format!("{} is treated as unknown for every entity: {why}", f.name()),
        );
    }
    for p in std::mem::take(&mut tr.problems) {
        note(notes, Loss::Dropped, Piece::Expr, p);
    }
    let Some(mut expr) = cond.t else {
        note(
            notes,
            Loss::Dropped,
            Piece::Rule,
            "skipped: without the fields above its expr can never hold".to_string(),
        );
        return None;
    };
    let mut value = cond.value;
    if let Some(clear) = &rule.clear {
        let Node::Bool(c) = clear.root() else {
            unreachable!("clear is compiled as a condition")
        };
        let c = tr.cond(c);
        for (f, why) in std::mem::take(&mut tr.unknown) {
            note(
                notes,
                Loss::Dropped,
                Piece::Clear,
                format!("{} is treated as unknown for every entity: {why}", f.name()),
            );
        }
        for p in std::mem::take(&mut tr.problems) {
            note(notes, Loss::Dropped, Piece::Clear, p);
        }
        // Hysteresis through the rule's own ALERTS series: once firing, it stays active until
        // `clear` holds. Prometheus reads ALERTS as written one evaluation earlier.
        let firing = format!(
            "max by ({}) (ALERTS{{alertname={}, alertstate=\"firing\"}})",
            tr.by(),
            quote(&rule.alert)
        );
        let held = match c.t {
            Some(t) => format!("({firing}) unless ({t})"),
            None => firing,
        };
        expr = format!("({expr}) or ({held})");
        value = None;
        note(notes, Loss::Approximated, Piece::Clear, "hysteresis through the rule's own ALERTS{alertstate=\"firing\"} series: the alert stays active until clear holds, as seen one evaluation late".to_string());
    }
    let mut labels = rule.labels.clone();
    labels.insert("scope".to_string(), rule.scope.as_str().to_string());
    let mut annotations = Vec::new();
    for (key, t) in &rule.annotations {
        let out = template(rule, t.parts(), value);
        let mut seen = Vec::new();
        for (loss, message) in out.notes {
            if !seen.contains(&message) {
                note(notes, loss, Piece::Annotation(key.clone()), message.clone());
                seen.push(message);
            }
        }
        annotations.push((key.clone(), out.text));
    }
    Some(Translated {
        expr,
        labels,
        annotations,
    })
}

/// Translates every rule of `set` (in file order, grouped by their group's name) into one
/// Prometheus rule file. `sources` names the rule files for the header comment.
pub fn to_prometheus(set: &RuleSet, sources: &[String]) -> Export {
    let mut export = Export::default();
    let mut groups: Vec<(String, Vec<(&Rule, Translated)>)> = Vec::new();
    for rule in &set.rules {
        let Some(t) = translate(rule, &mut export.notes) else {
            continue;
        };
        export.exported.push(rule.alert.clone());
        match groups.iter_mut().find(|(g, _)| *g == rule.group) {
            Some((_, rules)) => rules.push((rule, t)),
            None => groups.push((rule.group.clone(), vec![(rule, t)])),
        }
    }
    let y = &mut export.yaml;
    let _ = writeln!(
        y,
        "# Generated by `rabbitwatch rules export --format prometheus` from:"
    );
    for s in sources {
        let _ = writeln!(y, "#   {s}");
    }
    let _ = writeln!(
        y,
        "# Over rabbitwatch's own metrics (docs/metrics.md); what could not be translated was said on stderr."
    );
    if groups.is_empty() {
        let _ = writeln!(y, "groups: []");
        return export;
    }
    let _ = writeln!(y, "groups:");
    for (name, rules) in &groups {
        let _ = writeln!(y, "  - name: {}", quote(name));
        let _ = writeln!(y, "    rules:");
        for (rule, t) in rules {
            let _ = writeln!(y, "      # {}:{}", rule.file.display(), rule.line);
            let _ = writeln!(y, "      - alert: {}", quote(&rule.alert));
            let _ = writeln!(y, "        expr: {}", quote(&t.expr));
            if !rule.for_.is_zero() {
                let _ = writeln!(y, "        for: {}", prom_duration(rule.for_));
            }
            if !rule.keep_firing_for.is_zero() {
                let _ = writeln!(
                    y,
                    "        keep_firing_for: {}",
                    prom_duration(rule.keep_firing_for)
                );
            }
            let _ = writeln!(y, "        labels:");
            for (k, v) in &t.labels {
                let _ = writeln!(y, "          {k}: {}", quote(v));
            }
            if !t.annotations.is_empty() {
                let _ = writeln!(y, "        annotations:");
                for (k, v) in &t.annotations {
                    let _ = writeln!(y, "          {k}: {}", quote(v));
                }
            }
        }
    }
    export
}

/// The Prometheus series (metric name and extra labels) holding field `f` of an entity: what a rule
/// test's input becomes. A one-hot family's series is 1; an age's series is the Unix time it counts
/// from (see [`is_age`]). `None` for fields read from labels, aggregated, or without a metric.
pub fn series_of(
    f: FieldId,
    text: Option<&str>,
) -> Option<(&'static str, Vec<(&'static str, String)>)> {
    match source(f) {
        Source::Gauge(m) => Some((m, Vec::new())),
        Source::OneHot(m, l) => Some((m, vec![(l, text.unwrap_or_default().to_string())])),
        Source::Age(m) => Some((m, Vec::new())),
        _ => None,
    }
}

/// Whether field `f`'s series holds the Unix time its value counts from (`scrape_age`).
pub fn is_age(f: FieldId) -> bool {
    matches!(source(f), Source::Age(_))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn export(yaml_rules: &str) -> Export {
        let text = format!("groups:\n  - name: g\n    rules:\n{yaml_rules}");
        let file = super::super::parse_file(Path::new("r.yaml"), &text)
            .unwrap_or_else(|e| panic!("{e:?}"));
        to_prometheus(&RuleSet { rules: file.rules }, &["r.yaml".to_string()])
    }

    fn expr_of(scope: &str, expr: &str) -> (String, Vec<String>) {
        let e = export(&format!(
            "      - alert: A\n        scope: {scope}\n        expr: {}\n",
            quote(expr)
        ));
        let line = e
            .yaml
            .lines()
            .find_map(|l| l.trim().strip_prefix("expr: "))
            .map(|q| serde_json::from_str::<String>(q).unwrap())
            .unwrap_or_default();
        (line, e.notes.iter().map(|n| n.to_string()).collect())
    }

    const Q: &str = "max by (cluster, vhost, queue)";

    #[test]
    fn conditions_translate_to_promql() {
        let cases: &[(&str, &str, String)] = &[
            (
                "queue",
                "messages_ready > 100",
                format!("({Q} (rabbitwatch_queue_messages_ready)) > 100"),
            ),
            (
                "queue",
                "publish_rate > consume_rate * 1.1",
                format!(
                    "({Q} (rabbitwatch_queue_publish_rate)) > (({Q} (rabbitwatch_queue_consume_rate)) * 1.1)"
                ),
            ),
            (
                "queue",
                "consumers == 0 and messages_ready > 0",
                format!(
                    "(({Q} (rabbitwatch_queue_consumers)) == 0) and (({Q} (rabbitwatch_queue_messages_ready)) > 0)"
                ),
            ),
            (
                "queue",
                "status == \"stalled\"",
                format!("{Q} (rabbitwatch_queue_status{{status=\"stalled\"}}) == 1"),
            ),
            (
                "queue",
                "matches(queue, \"^orders\\\\.\")",
                format!("{Q} (rabbitwatch_queue_messages{{queue=~\".*(?:^orders\\\\.).*\"}})"),
            ),
            (
                "node",
                "not running",
                "max by (cluster, node) (rabbitwatch_node_running) == 0".to_string(),
            ),
            (
                "node",
                "mem_alarm",
                "max by (cluster, node) (rabbitwatch_node_mem_alarm) == 1".to_string(),
            ),
            (
                "cluster",
                "not reachable",
                "max by (cluster) (rabbitwatch_up) == 0".to_string(),
            ),
            (
                "cluster",
                "scrape_age > 1m",
                "((time() - max by (cluster) (rabbitwatch_last_scrape_timestamp_seconds)) or (max by (cluster) (rabbitwatch_up) * 0 + Inf)) > 60".to_string(),
            ),
            (
                "node",
                "min(disk_free, 1000) < 10",
                "(clamp_max(max by (cluster, node) (rabbitwatch_node_disk_free_bytes), 1000)) < 10".to_string(),
            ),
            (
                "queue",
                "abs(backlog_growth) > 1",
                format!("(abs({Q} (rabbitwatch_queue_backlog_growth_rate))) > 1"),
            ),
            (
                "probe",
                "not probe_ok",
                "max by (cluster, vhost, probe) (rabbitwatch_probe_up) == 0".to_string(),
            ),
        ];
        for (scope, expr, want) in cases {
            let (got, notes) = expr_of(scope, expr);
            assert_eq!(&got, want, "{expr}");
            assert!(notes.is_empty(), "{expr}: {notes:?}");
        }
    }

    #[test]
    fn not_of_a_comparison_is_known_false_never_unknown() {
        // rabbitwatch's `not` of an unknown is unknown: the rule must not fire where the metric is
        // missing (rates in depth-only mode), so `not` is the comparison's known-false side.
        let (got, _) = expr_of("queue", "not (publish_rate > 1)");
        assert_eq!(
            got,
            format!("(({Q} (rabbitwatch_queue_publish_rate)) > bool 1) == 0")
        );
        let (got, _) = expr_of("queue", "not (publish_rate > 1 or consumers > 0)");
        assert_eq!(
            got,
            format!(
                "((({Q} (rabbitwatch_queue_publish_rate)) > bool 1) == 0) and ((({Q} (rabbitwatch_queue_consumers)) > bool 0) == 0)"
            )
        );
    }

    #[test]
    fn a_field_without_a_metric_is_unknown_and_said() {
        // The default pack's QueueNoConsumers: without the topology nobody is exempt, as in
        // rabbitwatch when the topology cannot be read.
        let (got, notes) = expr_of(
            "queue",
            "consumers == 0 and not (known(is_dead_letter_target) and is_dead_letter_target)",
        );
        assert!(got.contains("rabbitwatch_queue_consumers"), "{got}");
        assert!(
            got.contains("unless") || got.contains("rabbitwatch_queue_messages"),
            "{got}"
        );
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with("r.yaml:4: rule A: dropped expr: is_dead_letter_target"),
            "{notes:?}"
        );
        // A rule that can then never hold is skipped, and says so.
        let (got, notes) = expr_of("probe", "probe_ok and probe_latency > 1");
        assert_eq!(got, "");
        assert!(notes.iter().any(|n| n.contains("skipped")), "{notes:?}");
    }

    #[test]
    fn select_becomes_matchers_on_every_selector() {
        let e = export(
            "      - alert: A\n        scope: queue\n        select: { vhost: \"^/$\", queue: \"orders\\\\..*\" }\n        expr: consumers == 0\n",
        );
        assert!(
            e.yaml.contains(
                r#"rabbitwatch_queue_consumers{queue=~\"orders\\\\..*\", vhost=~\"^/$\"}"#
            ),
            "{}",
            e.yaml
        );
    }

    #[test]
    fn labels_for_and_annotations_carry_over() {
        let e = export(
            r#"      - alert: Backlog
        scope: queue
        expr: messages_ready > 100 and publish_rate > 0
        for: 2m
        keep_firing_for: 1m30s
        labels: { severity: critical, team: shop }
        annotations:
          summary: "{{ messages_ready }} on {{ queue }} ({{ vhost | upper }}) {{ severity }}"
          description: "{{ publish_rate | round(1) }}/s, drains in {{ drain_eta | duration }}"
"#,
        );
        let y = &e.yaml;
        assert!(y.contains("        for: 2m\n"), "{y}");
        assert!(y.contains("        keep_firing_for: 1m30s\n"), "{y}");
        assert!(y.contains("          scope: \"queue\"\n"), "{y}");
        assert!(y.contains("          severity: \"critical\"\n"), "{y}");
        assert!(y.contains("          team: \"shop\"\n"), "{y}");
        // The expr's own value is $value; the rest is queried for the alert's entity.
        assert!(
            y.contains(r#"{{ $value | printf \"%.15g\" }} on {{ $labels.queue }} ({{ $labels.vhost | toUpper }}) {{ \"critical\" }}"#),
            "{y}"
        );
        assert!(
            y.contains(r#"{{ with query (printf \"max by (cluster, vhost, queue) (rabbitwatch_queue_publish_rate{cluster=%q,vhost=%q,queue=%q})\" $labels.cluster $labels.vhost $labels.queue) }}{{ . | first | value | printf \"%.1f\" }}{{ else }}-{{ end }}/s"#),
            "{y}"
        );
        let notes: Vec<String> = e.notes.iter().map(|n| n.to_string()).collect();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].contains("approximated annotations.description: `duration`"),
            "{notes:?}"
        );
        assert!(!e.dropped_anything());
        assert!(e.condition_exported("Backlog") && e.annotations_exact("Backlog"));
    }

    #[test]
    fn clear_shadow_and_off_are_said() {
        let e = export(
            r#"      - alert: Growing
        scope: queue
        expr: backlog_growth > 0
        clear: backlog_growth <= 0
      - alert: Shadow
        scope: queue
        mode: shadow
        expr: consumers == 0
      - alert: Off
        scope: queue
        mode: off
        expr: consumers == 0
"#,
        );
        assert!(
            e.yaml
                .contains(r#"ALERTS{alertname=\"Growing\", alertstate=\"firing\"}"#),
            "{}",
            e.yaml
        );
        assert_eq!(e.exported, ["Growing"]);
        let notes: Vec<String> = e.notes.iter().map(|n| n.to_string()).collect();
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(e.dropped_anything());
        assert!(e.condition_exported("Growing"));
        assert!(!e.condition_exported("Shadow"));
    }

    #[test]
    fn durations_print_as_prometheus_reads_them() {
        for (secs_ms, want) in [
            (0, "0s"),
            (15_000, "15s"),
            (90_000, "1m30s"),
            (3_600_000, "1h"),
            (500, "500ms"),
            (86_400_000 + 1000, "1d1s"),
        ] {
            assert_eq!(prom_duration(Duration::from_millis(secs_ms)), want);
        }
    }
}
