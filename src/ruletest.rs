//! `rabbitwatch test rules FILE…`: rule unit tests over synthetic series, like `promtool test rules`.
//!
//! A test file names rule files, gives each entity (a queue, node, cluster or canary probe) a series per
//! field in a compact notation (`0+10x30` is 0, 10, …, 300; `5x3` is 5 5 5 5; `_x2` is two unknowns),
//! and lists the alerts expected to be firing at given times. Rules are evaluated every `interval`
//! through the same state machine the daemon uses, so `for`, `keep_firing_for` and `clear` behave as in
//! production. A mistake in a test file is reported at its `file:line:col`, like one in a rule file.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::alerts::{AlertTable, FlapPolicy, State};
use crate::domain::{Diagnostic, Timestamp};
use crate::rules::eval::{Evaluation, evaluate_entity};
use crate::rules::export::{self, Export};
use crate::rules::expr::{Env, FieldId, Scope, Type, Value, suggest};
use crate::rules::load::identity_labels;
use crate::rules::{RuleSet, load_files};
use crate::yaml::Diagnostics;

/// A string of the test file with where it is.
type S = Spanned<String>;

/// The names of one entity (`{ cluster: prod, vhost: /, queue: orders }`), each key with where it is.
type Names = Spanned<HashMap<S, String>>;

/// Rules are evaluated this often unless the file or the test says otherwise.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    rule_files: Vec<S>,
    #[serde(default)]
    evaluation_interval: Option<S>,
    tests: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    #[serde(default)]
    name: String,
    interval: Option<S>,
    input_series: Vec<Spanned<InputSeries>>,
    alert_rule_test: Vec<AlertTest>,
}

/// One entity's series: exactly one of `queue`, `node`, `cluster`, `probe`, `stream_consumer`
/// names it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSeries {
    queue: Option<Names>,
    node: Option<Names>,
    cluster: Option<Names>,
    probe: Option<Names>,
    stream_consumer: Option<Names>,
    /// Field name → its series; both with where they are.
    values: HashMap<S, S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertTest {
    eval_time: S,
    alertname: S,
    #[serde(default)]
    exp_alerts: Vec<ExpAlert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpAlert {
    #[serde(default)]
    exp_labels: BTreeMap<String, String>,
    #[serde(default)]
    exp_annotations: BTreeMap<String, String>,
}

/// A field's values over time; strings are constant.
#[derive(Debug, Clone)]
enum Series {
    Num(Vec<Option<f64>>),
    Str(String),
}

struct Entity {
    scope: Scope,
    /// `cluster` and the scope's names, in `identity_labels` order.
    identity: Vec<(String, String)>,
    fields: HashMap<FieldId, Series>,
}

impl Entity {
    fn cluster(&self) -> &str {
        self.identity
            .iter()
            .find(|(k, _)| k == "cluster")
            .map_or("", |(_, v)| v.as_str())
    }
}

/// A test case found free of mistakes, ready to run.
struct Case<'a> {
    name: String,
    interval: Duration,
    entities: Vec<Entity>,
    /// The expectations, in time order.
    checks: Vec<(Duration, &'a AlertTest)>,
}

struct StepEnv<'a> {
    entity: &'a Entity,
    step: usize,
}

impl Env for StepEnv<'_> {
    fn get(&self, f: FieldId) -> Option<Value<'_>> {
        match self.entity.fields.get(&f) {
            Some(Series::Num(v)) => {
                let x = (*v.get(self.step)?)?;
                Some(if f.ty() == Type::Bool {
                    Value::Bool(x != 0.0)
                } else {
                    Value::Num(x)
                })
            }
            Some(Series::Str(s)) => Some(Value::Str(Cow::Borrowed(s))),
            None => {
                // Identity fields come from the entity's labels.
                let name = f.name();
                self.entity
                    .identity
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| Value::Str(Cow::Borrowed(v.as_str())))
            }
        }
    }
}

/// Expands promtool-style series notation.
pub fn expand_series(text: &str) -> Result<Vec<Option<f64>>, String> {
    let mut out = Vec::new();
    for token in text.split_whitespace() {
        let (head, times) =
            match token.split_once('x') {
                Some((h, n)) => (
                    h,
                    Some(n.parse::<usize>().map_err(|_| {
                        format!("{token:?}: the count after x must be a whole number")
                    })?),
                ),
                None => (token, None),
            };
        if head == "_" {
            out.extend(std::iter::repeat_n(None, times.unwrap_or(1)));
            continue;
        }
        let num = |s: &str| -> Result<f64, String> {
            match s {
                "inf" | "+inf" | "Inf" | "+Inf" => Ok(f64::INFINITY),
                "-inf" | "-Inf" => Ok(f64::NEG_INFINITY),
                _ => s
                    .parse::<f64>()
                    .map_err(|_| format!("{token:?}: {s:?} is not a number")),
            }
        };
        // `a+b` / `a-b`: find the operator after the first character (which may be a sign).
        let split = head
            .char_indices()
            .skip(1)
            .find(|(_, c)| *c == '+' || *c == '-')
            .map(|(i, _)| i);
        let (start, step) = match split {
            Some(i) if !head[..i].ends_with(['e', 'E']) => (num(&head[..i])?, num(&head[i..])?),
            _ => (num(head)?, 0.0),
        };
        match times {
            None => out.push(Some(start)),
            Some(n) => out.extend((0..=n).map(|k| Some(start + step * k as f64))),
        }
    }
    Ok(out)
}

/// Outcome of one test file: failures as readable text.
pub struct FileReport {
    pub file: PathBuf,
    pub passed: usize,
    pub failures: Vec<String>,
}

/// Runs every test of the file at `path`. A mistake in the file (or in a rule file it names) is not a
/// test result: every one is reported at its `file:line:col` and no test runs.
pub fn run_file(path: &Path) -> Result<FileReport, Vec<Diagnostic>> {
    with_cases(path, |prepared| {
        let mut report = FileReport {
            file: path.to_path_buf(),
            passed: 0,
            failures: Vec::new(),
        };
        for case in prepared.cases {
            let (fails, _) = run_case(prepared.rules, case);
            if fails.is_empty() {
                report.passed += 1;
            } else {
                let name = &case.name;
                report
                    .failures
                    .extend(fails.into_iter().map(|f| format!("{name}: {f}")));
            }
        }
        report
    })
}

/// A test file checked and ready to run.
struct Prepared<'a> {
    rules: &'a RuleSet,
    /// The rule files as the test file names them.
    rule_files: Vec<String>,
    default_interval: Duration,
    cases: &'a [Case<'a>],
}

/// Reads, parses and checks the test file at `path` and the rule files it names, then hands them
/// to `f`; every mistake is reported at its `file:line:col` instead.
fn with_cases<R>(path: &Path, f: impl FnOnce(&Prepared<'_>) -> R) -> Result<R, Vec<Diagnostic>> {
    let text = crate::yaml::read_text_limited(path, crate::yaml::MAX_YAML_BYTES).map_err(|e| {
        vec![Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            message: format!("cannot read: {e}"),
        }]
    })?;
    let file: TestFile = crate::yaml::parse(path, &text)?;
    let mut diags = Diagnostics::new(path);
    let base = path.parent().unwrap_or(Path::new("."));
    let patterns: Vec<(String, Option<Diagnostic>)> = file
        .rule_files
        .iter()
        .map(|p| {
            let (line, col) = crate::yaml::position(&p.referenced);
            let at = Diagnostic {
                file: path.to_path_buf(),
                line,
                col,
                message: String::new(),
            };
            (p.value.clone(), Some(at))
        })
        .collect();
    // Without the rules, alert names cannot be checked; the rule files' mistakes are reported instead.
    let rules = match load_files(&patterns, base) {
        Ok(rules) => Some(rules),
        Err(found) => {
            diags.extend(found);
            None
        }
    };
    let alertnames: Option<BTreeSet<&str>> = rules
        .as_ref()
        .map(|r| r.rules.iter().map(|rule| rule.alert.as_str()).collect());
    let default_interval = match &file.evaluation_interval {
        Some(s) => interval(&mut diags, s, "evaluation_interval").unwrap_or(DEFAULT_INTERVAL),
        None => DEFAULT_INTERVAL,
    };
    let cases: Vec<Case> = file
        .tests
        .iter()
        .enumerate()
        .filter_map(|(i, case)| {
            check_case(&mut diags, alertnames.as_ref(), case, i, default_interval)
        })
        .collect();
    let cases = diags.finish(cases)?;
    let rules = rules.unwrap_or_default();
    Ok(f(&Prepared {
        rules: &rules,
        rule_files: patterns.into_iter().map(|(p, _)| p).collect(),
        default_interval,
        cases: &cases,
    }))
}

/// A rabbitwatch rule-test file as `promtool test rules` input: the rules it names exported
/// (`rules export --format prometheus`) and the same scenarios over the exported metrics.
pub struct Promtool {
    /// The exported rule file, to be written as `rules_file`.
    pub rules_yaml: String,
    /// The promtool test file naming it.
    pub tests_yaml: String,
    /// What the export could not carry over (see `rules::export`).
    pub export: Export,
    /// Each check left out of the promtool tests, and why.
    pub left_out: Vec<String>,
}

/// Converts the rule-test file at `path`. Every scenario is run through rabbitwatch's own state
/// machine first, and the alerts it found firing at each check become promtool's expected alerts,
/// with their full labels and rendered annotations (promtool compares both exactly): promtool
/// passing means Prometheus, evaluating the exported rules, agrees with rabbitwatch. A check is left
/// out (and said) when its rule was not exported or reads a field without a metric, or when it
/// expects an alert with an annotation Prometheus renders differently. Each field's series becomes its metric's series at the
/// same interval; an unknown value (`_`, or past the series' end) becomes a stale marker, so
/// Prometheus does not look back to the previous sample. `rules_file` is the name the exported rule
/// file will have next to the test file.
pub fn to_promtool(path: &Path, rules_file: &str) -> Result<Promtool, Vec<Diagnostic>> {
    with_cases(path, |p| {
        let export = export::to_prometheus(p.rules, &p.rule_files);
        let mut left_out = Vec::new();
        let mut y = String::new();
        let _ = writeln!(
            y,
            "# Generated by `rabbitwatch rules export-tests` from {}",
            path.display()
        );
        let _ = writeln!(y, "rule_files: [{}]", export::quote(rules_file));
        let _ = writeln!(
            y,
            "evaluation_interval: {}",
            export::prom_duration(p.default_interval)
        );
        let _ = writeln!(y, "tests:");
        let mut any = false;
        for case in p.cases {
            let (_, seen) = run_case(p.rules, case);
            let mut checks = String::new();
            for ((at, test), firing) in case.checks.iter().zip(&seen) {
                let name = &test.alertname.value;
                // Promtool compares annotations exactly, so a check expecting an alert needs them
                // exact; one expecting none checks the condition alone.
                let why = if !export.condition_exported(name) {
                    Some("its condition was not exported whole")
                } else if !firing.is_empty() && !export.annotations_exact(name) {
                    Some("Prometheus renders an annotation differently")
                } else {
                    None
                };
                if let Some(why) = why {
                    left_out.push(format!(
                        "{}: test {:?} at {}: {name} left out: {why} (see the notes on rule {name})",
                        path.display(),
                        case.name,
                        export::prom_duration(*at),
                    ));
                    continue;
                }
                let _ = writeln!(checks, "      - eval_time: {}", export::prom_duration(*at));
                let _ = writeln!(checks, "        alertname: {}", export::quote(name));
                if firing.is_empty() {
                    let _ = writeln!(checks, "        exp_alerts: []");
                    continue;
                }
                let _ = writeln!(checks, "        exp_alerts:");
                for (labels, annotations) in firing {
                    let _ = writeln!(checks, "          - exp_labels:");
                    for (k, v) in labels.iter().filter(|(k, _)| *k != "alertname") {
                        let _ = writeln!(checks, "              {k}: {}", export::quote(v));
                    }
                    if !annotations.is_empty() {
                        let _ = writeln!(checks, "            exp_annotations:");
                        for (k, v) in annotations {
                            let _ = writeln!(checks, "              {k}: {}", export::quote(v));
                        }
                    }
                }
            }
            if checks.is_empty() {
                continue;
            }
            any = true;
            let _ = writeln!(y, "  - name: {}", export::quote(&case.name));
            let _ = writeln!(y, "    interval: {}", export::prom_duration(case.interval));
            let steps = case.checks.last().map_or(0, |(t, _)| {
                (t.as_millis() / case.interval.as_millis()) as usize
            });
            let _ = writeln!(y, "    input_series:");
            for e in &case.entities {
                let mut series = promtool_series(e, steps, case.interval);
                series.sort();
                for (name, values) in series {
                    let _ = writeln!(y, "      - series: {}", export::quote(&name));
                    let _ = writeln!(y, "        values: {}", export::quote(&values));
                }
            }
            let _ = writeln!(y, "    alert_rule_test:");
            y.push_str(&checks);
        }
        if !any {
            y = y.replace("tests:\n", "tests: []\n");
        }
        Promtool {
            rules_yaml: export.yaml.clone(),
            tests_yaml: y,
            export,
            left_out,
        }
    })
}

/// An entity's fields as promtool input series (`metric{labels}`, values for steps 0..=steps, one
/// every `interval`).
fn promtool_series(e: &Entity, steps: usize, interval: Duration) -> Vec<(String, String)> {
    let labels = |extra: &[(&str, String)]| -> String {
        let parts: Vec<String> = e
            .identity
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .chain(extra.iter().map(|(k, v)| (*k, v.clone())))
            .map(|(k, v)| format!("{k}={}", export::quote(&v)))
            .collect();
        parts.join(",")
    };
    let mut out = Vec::new();
    for (f, series) in &e.fields {
        let text = match series {
            Series::Str(s) => Some(s.as_str()),
            Series::Num(_) => None,
        };
        let Some((metric, extra)) = export::series_of(*f, text) else {
            continue;
        };
        let values: Vec<Option<f64>> = match series {
            // An age is exported as the time it counts from; never (+Inf) as no series.
            Series::Num(v) if export::is_age(*f) => v
                .iter()
                .enumerate()
                .map(|(i, age)| {
                    let now = (i as u128 * interval.as_millis()) as f64 / 1000.0;
                    age.filter(|a| a.is_finite()).map(|a| now - a)
                })
                .collect(),
            Series::Num(v) => v.clone(),
            Series::Str(_) => vec![Some(1.0); steps + 1],
        };
        let mut text = Vec::new();
        let mut previous_known = false;
        for i in 0..=steps.max(values.len().saturating_sub(1)) {
            match values.get(i).copied().flatten() {
                Some(x) => {
                    text.push(if x.is_infinite() {
                        if x > 0.0 { "Inf" } else { "-Inf" }.to_string()
                    } else {
                        format!("{x}")
                    });
                    previous_known = true;
                }
                None if previous_known => {
                    text.push("stale".to_string());
                    previous_known = false;
                }
                None => text.push("_".to_string()),
            }
        }
        out.push((format!("{metric}{{{}}}", labels(&extra)), text.join(" ")));
    }
    // A reader's universe is its `online` gauge, there whether the test gives it or not.
    if e.scope == Scope::StreamConsumer
        && !e
            .fields
            .contains_key(&crate::rules::expr::field::stream_consumer::ONLINE)
    {
        out.push((
            format!("rabbitwatch_stream_consumer_online{{{}}}", labels(&[])),
            format!("1x{steps}"),
        ));
    }
    // The canary's universe (every probe has its failure counters from the start) is no field.
    if e.scope == Scope::Probe {
        out.push((
            format!(
                "rabbitwatch_probe_failures_total{{{}}}",
                labels(&[("error", "timeout".to_string())])
            ),
            format!("0x{steps}"),
        ));
    }
    out
}

fn duration(diags: &mut Diagnostics, s: &S, what: &str) -> Option<Duration> {
    match humantime::parse_duration(s.value.trim()) {
        Ok(d) => Some(d),
        Err(e) => {
            diags.error_at(s, format!("{what}: invalid duration {:?} ({e})", s.value));
            None
        }
    }
}

/// An evaluation interval: a duration of at least a millisecond (the steps are counted in those).
fn interval(diags: &mut Diagnostics, s: &S, what: &str) -> Option<Duration> {
    let d = duration(diags, s, what)?;
    if d < Duration::from_millis(1) {
        diags.error_at(s, format!("{what} must be at least 1ms, not {:?}", s.value));
        return None;
    }
    Some(d)
}

/// Checks one test case, reporting each mistake at its place; `None` when there was one.
fn check_case<'a>(
    diags: &mut Diagnostics,
    alertnames: Option<&BTreeSet<&str>>,
    case: &'a TestCase,
    index: usize,
    default_interval: Duration,
) -> Option<Case<'a>> {
    let before = diags.len();
    let name = if case.name.is_empty() {
        format!("test #{}", index + 1)
    } else {
        case.name.clone()
    };
    let every = match &case.interval {
        Some(s) => interval(diags, s, "interval"),
        None => Some(default_interval),
    };
    let entities: Vec<Entity> = case
        .input_series
        .iter()
        .filter_map(|s| entity(diags, s))
        .collect();
    let mut checks = Vec::new();
    for test in &case.alert_rule_test {
        let at = duration(diags, &test.eval_time, "eval_time");
        let wanted = test.alertname.value.as_str();
        if let Some(known) = alertnames.filter(|known| !known.contains(wanted)) {
            let hint = suggest(wanted, known.iter().copied())
                .map(|s| format!("; did you mean {s}?"))
                .unwrap_or_default();
            diags.error_at(
                &test.alertname,
                format!("no rule of the rule files is named {wanted:?}{hint}"),
            );
        }
        if let Some(at) = at {
            checks.push((at, test));
        }
    }
    checks.sort_by_key(|(t, _)| *t);
    (diags.len() == before).then(|| Case {
        name,
        interval: every.unwrap_or(default_interval),
        entities,
        checks,
    })
}

/// One input series as an entity: named by exactly one of `queue:`, `node:`, `cluster:`, `probe:`,
/// `stream_consumer:` with the scope's identity labels, and only fields of that scope in `values`.
fn entity(diags: &mut Diagnostics, series: &Spanned<InputSeries>) -> Option<Entity> {
    let s = &series.value;
    let named: Vec<(Scope, &Names)> = [
        (Scope::Queue, &s.queue),
        (Scope::Node, &s.node),
        (Scope::Cluster, &s.cluster),
        (Scope::Probe, &s.probe),
        (Scope::StreamConsumer, &s.stream_consumer),
    ]
    .into_iter()
    .filter_map(|(scope, names)| Some((scope, names.as_ref()?)))
    .collect();
    let [(scope, names)] = named[..] else {
        diags.error_at(
            series,
            "each input series names exactly one of queue, node, cluster, probe, stream_consumer",
        );
        return None;
    };
    let before = diags.len();
    // The alert's identity labels without alertname and scope: cluster and the scope's names.
    let required: Vec<&str> = identity_labels(scope)
        .iter()
        .copied()
        .filter(|k| !matches!(*k, "alertname" | "scope"))
        .collect();
    let mut identity = Vec::new();
    for key in &required {
        match names.value.iter().find(|(k, _)| k.value == *key) {
            Some((_, v)) => identity.push((key.to_string(), v.clone())),
            None => diags.error_at(
                names,
                format!("a {scope} series needs `{key}` ({})", required.join(", ")),
            ),
        }
    }
    for key in names.value.keys() {
        if !required.contains(&key.value.as_str()) {
            diags.error_at(
                key,
                format!(
                    "unknown key `{}` naming a {scope} series; expected {}",
                    key.value,
                    required.join(", ")
                ),
            );
        }
    }
    let mut fields = HashMap::new();
    for (name, text) in &s.values {
        if let Some((f, series)) = field_series(diags, scope, &required, name, text) {
            fields.insert(f, series);
        }
    }
    // The daemon always knows a queue's type; a series that does not say is a classic queue, the
    // type RabbitMQ declares by default (so `type != "stream"` holds for it, as it would live).
    if scope == Scope::Queue {
        fields
            .entry(crate::rules::expr::field::queue::TYPE)
            .or_insert_with(|| Series::Str("classic".to_string()));
    }
    (diags.len() == before).then_some(Entity {
        scope,
        identity,
        fields,
    })
}

/// The series of field `key` of `scope`: numbers and booleans in series notation (booleans `0`/`1`),
/// strings as given. A wrong name is reported at the key, a wrong series at the value.
fn field_series(
    diags: &mut Diagnostics,
    scope: Scope,
    identity: &[&str],
    key: &S,
    text: &S,
) -> Option<(FieldId, Series)> {
    let name = key.value.as_str();
    let valid = || {
        scope
            .fields()
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| !identity.contains(n))
    };
    if identity.contains(&name) {
        diags.error_at(
            key,
            format!("`{name}` names the series: give it under `{scope}:`, not in `values`"),
        );
        return None;
    }
    let Some(f) = scope.field(name) else {
        let hint = suggest(name, valid())
            .map(|s| format!("did you mean {s}? "))
            .unwrap_or_default();
        diags.error_at(
            key,
            format!(
                "unknown {scope} field {name:?}; {hint}valid: {}",
                valid().collect::<Vec<_>>().join(", ")
            ),
        );
        return None;
    };
    if f.ty() == Type::String {
        return Some((f, Series::Str(text.value.clone())));
    }
    let values = match expand_series(&text.value) {
        Ok(values) => values,
        Err(e) => {
            diags.error_at(text, format!("{name}: {e}"));
            return None;
        }
    };
    if f.ty() == Type::Bool
        && let Some(x) = values.iter().flatten().find(|x| **x != 0.0 && **x != 1.0)
    {
        diags.error_at(
            text,
            format!("{name} is a boolean: its values are 0 or 1 (or _ for unknown), not {x}"),
        );
        return None;
    }
    Some((f, Series::Num(values)))
}

/// An alert firing at a check: its labels and annotations.
type Firing = (BTreeMap<String, String>, BTreeMap<String, String>);

/// Runs a case: the failures, and at each check (in `case.checks` order) the alerts of its name
/// that were firing.
fn run_case(rules: &RuleSet, case: &Case) -> (Vec<String>, Vec<Vec<Firing>>) {
    let interval = case.interval;
    let entities = &case.entities;
    let checks = &case.checks;
    let end = checks.last().map_or(Duration::ZERO, |(t, _)| *t);
    let clusters: BTreeSet<&str> = entities.iter().map(Entity::cluster).collect();
    let mut table = AlertTable::default();
    let mut ids = 0u64;
    let mut new_id = || {
        ids += 1;
        format!("test-{ids}")
    };
    let mut failures = Vec::new();
    let mut seen = Vec::new();
    let mut next_check = 0;
    let steps = (end.as_millis() / interval.as_millis()) as usize;
    for step in 0..=steps {
        let now = Timestamp((step as u128 * interval.as_millis()) as i64);
        for cluster in &clusters {
            let mut eval = Evaluation {
                cluster: cluster.to_string(),
                outcomes: Vec::new(),
                judged: Scope::ALL.to_vec(),
            };
            for e in entities.iter().filter(|e| e.cluster() == *cluster) {
                let env = StepEnv { entity: e, step };
                let identity: Vec<(&str, &str)> = e
                    .identity
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                for (i, rule) in rules.rules.iter().enumerate() {
                    if rule.scope != e.scope {
                        continue;
                    }
                    if let Some(o) = evaluate_entity(rules, i, &identity, &env, BTreeMap::new()) {
                        eval.outcomes.push(o);
                    }
                }
            }
            table.step(rules, &eval, now, FlapPolicy::default(), &mut new_id);
        }
        while next_check < checks.len() && checks[next_check].0.as_millis() <= now.0 as u128 {
            let (at, test) = checks[next_check];
            failures.extend(compare(&table, test, at));
            seen.push(
                table
                    .alerts
                    .values()
                    .filter(|a| a.alertname == test.alertname.value && a.state == State::Firing)
                    .map(|a| (a.labels.clone(), a.annotations.clone()))
                    .collect(),
            );
            next_check += 1;
        }
    }
    (failures, seen)
}

fn compare(table: &AlertTable, test: &AlertTest, at: Duration) -> Vec<String> {
    let firing: Vec<_> = table
        .alerts
        .values()
        .filter(|a| a.alertname == test.alertname.value && a.state == State::Firing)
        .collect();
    let show = |labels: &BTreeMap<String, String>| {
        let parts: Vec<String> = labels
            .iter()
            .filter(|(k, _)| *k != "alertname" && *k != "scope")
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        format!("{{{}}}", parts.join(", "))
    };
    let mut failures = Vec::new();
    let mut unmatched: Vec<_> = firing.clone();
    for exp in &test.exp_alerts {
        let pos = unmatched.iter().position(|a| {
            exp.exp_labels
                .iter()
                .all(|(k, v)| a.labels.get(k) == Some(v))
        });
        match pos {
            Some(p) => {
                let a = unmatched.remove(p);
                for (k, want) in &exp.exp_annotations {
                    let got = a.annotations.get(k).map_or("<none>", String::as_str);
                    if got != want {
                        failures.push(format!(
                            "at {} alert {} {}: annotation {k}\n    expected: {want:?}\n         got: {got:?}",
                            humantime::format_duration(at),
                            test.alertname.value,
                            show(&a.labels)
                        ));
                    }
                }
            }
            None => failures.push(format!(
                "at {} expected {} firing with labels {}\n    firing: [{}]",
                humantime::format_duration(at),
                test.alertname.value,
                show(&exp.exp_labels),
                firing
                    .iter()
                    .map(|a| show(&a.labels))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    for a in unmatched {
        failures.push(format!(
            "at {} unexpected {} firing with labels {}",
            humantime::format_duration(at),
            test.alertname.value,
            show(&a.labels)
        ));
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_notation_expands_like_promtool() {
        assert_eq!(
            expand_series("0+10x3").unwrap(),
            vec![Some(0.0), Some(10.0), Some(20.0), Some(30.0)]
        );
        assert_eq!(
            expand_series("5x2 _x2 1").unwrap(),
            vec![Some(5.0), Some(5.0), Some(5.0), None, None, Some(1.0)]
        );
        assert_eq!(
            expand_series("100-25x2").unwrap(),
            vec![Some(100.0), Some(75.0), Some(50.0)]
        );
        assert_eq!(
            expand_series("-1 inf").unwrap(),
            vec![Some(-1.0), Some(f64::INFINITY)]
        );
        assert_eq!(expand_series("1e3").unwrap(), vec![Some(1000.0)]);
        assert!(expand_series("3xmany").is_err());
        assert!(expand_series("abc").is_err());
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const RULES: &str = "groups:\n  - name: g\n    rules:\n      - alert: Backlog\n        scope: queue\n        expr: messages > 100\n        for: 30s\n        annotations:\n          summary: \"{{ queue }} has {{ messages }}\"\n";

    #[test]
    fn a_passing_and_a_failing_expectation() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "rules.yaml", RULES);
        let test = write(
            dir.path(),
            "t.yaml",
            r#"rule_files: [rules.yaml]
tests:
  - name: fires after for
    interval: 10s
    input_series:
      - queue: { cluster: c, vhost: /, queue: orders }
        values: { messages: "50 150x10" }
    alert_rule_test:
      - { eval_time: 20s, alertname: Backlog, exp_alerts: [] }
      - eval_time: 60s
        alertname: Backlog
        exp_alerts:
          - exp_labels: { queue: orders, severity: warning }
            exp_annotations: { summary: "orders has 150" }
  - name: deliberately wrong
    input_series:
      - queue: { cluster: c, vhost: /, queue: orders }
        values: { messages: "150x10" }
    alert_rule_test:
      - eval_time: 60s
        alertname: Backlog
        exp_alerts:
          - exp_labels: { queue: orders }
            exp_annotations: { summary: "orders has 999" }
"#,
        );
        let r = run_file(&test).unwrap();
        assert_eq!(r.passed, 1, "{:?}", r.failures);
        assert_eq!(r.failures.len(), 1);
        assert!(
            r.failures[0].contains("expected: \"orders has 999\"")
                && r.failures[0].contains("got: \"orders has 150\""),
            "{}",
            r.failures[0]
        );
    }

    const PROBE_RULES: &str = "groups:\n  - name: g\n    rules:\n      - alert: Canary\n        scope: probe\n        expr: not probe_ok\n        for: 30s\n        labels: { severity: critical }\n        annotations:\n          summary: \"{{ probe }} in {{ vhost }}: {{ probe_error }} x{{ probe_failures }}\"\n";

    #[test]
    fn a_probe_series_fires_a_probe_rule_after_for() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "rules.yaml", PROBE_RULES);
        let test = write(
            dir.path(),
            "t.yaml",
            r#"rule_files: [rules.yaml]
evaluation_interval: 10s
tests:
  - name: fails for 30s
    input_series:
      - probe: { cluster: c, vhost: /, probe: canary }
        values: { probe_ok: "1 0x4 1", probe_failures: "0 1+1x4 0", probe_latency: "0.004 _x4 0.003", probe_error: timeout }
      - probe: { cluster: c, vhost: shop, probe: healthy }
        values: { probe_ok: "1x7", probe_latency: "0.002x7" }
    alert_rule_test:
      - { eval_time: 30s, alertname: Canary, exp_alerts: [] }
      - eval_time: 40s
        alertname: Canary
        exp_alerts:
          - exp_labels: { cluster: c, vhost: /, probe: canary, severity: critical }
            exp_annotations: { summary: "canary in /: timeout x4" }
      - { eval_time: 60s, alertname: Canary, exp_alerts: [] }
"#,
        );
        let r = run_file(&test).unwrap();
        assert_eq!((r.passed, r.failures.len()), (1, 0), "{:?}", r.failures);

        // The same series without `for` elapsing: the expectation fails, naming the probe.
        let early = write(
            dir.path(),
            "early.yaml",
            r#"rule_files: [rules.yaml]
tests:
  - input_series:
      - probe: { cluster: c, vhost: /, probe: canary }
        values: { probe_ok: "1 0x5" }
    alert_rule_test:
      - eval_time: 20s
        alertname: Canary
        exp_alerts: [ { exp_labels: { probe: canary } } ]
"#,
        );
        let r = run_file(&early).unwrap();
        assert_eq!(r.passed, 0);
        assert!(
            r.failures.len() == 1
                && r.failures[0]
                    .contains("at 20s expected Canary firing with labels {probe=\"canary\"}"),
            "{:?}",
            r.failures
        );
    }

    #[test]
    fn mistakes_in_a_probe_series_are_reported_where_they_are() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "rules.yaml", PROBE_RULES);
        let test = write(
            dir.path(),
            "t.yaml",
            r#"rule_files: [rules.yaml]
tests:
  - input_series:
      - probe: { cluster: c, vhost: /, name: canary }
        values: { probe_latncy: "1x3", probe_ok: "2", probe: p }
      - queue: { cluster: c, vhost: /, queue: q }
        probe: { cluster: c, vhost: /, probe: p }
        values: {}
    alert_rule_test:
      - { eval_time: 10s, alertname: Canry, exp_alerts: [] }
"#,
        );
        let Err(diags) = run_file(&test) else {
            panic!("a file with mistakes ran");
        };
        let found: Vec<String> = diags
            .iter()
            .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
            .collect();
        let expected = [
            "4:16: a probe series needs `probe` (cluster, vhost, probe)",
            "4:40: unknown key `name` naming a probe series; expected cluster, vhost, probe",
            "5:19: unknown probe field \"probe_latncy\"; did you mean probe_latency? \
             valid: probe_ok, probe_latency, probe_failures, probe_error",
            "5:50: probe_ok is a boolean: its values are 0 or 1 (or _ for unknown), not 2",
            "5:55: `probe` names the series: give it under `probe:`, not in `values`",
            "6:9: each input series names exactly one of queue, node, cluster, probe, stream_consumer",
            "10:38: no rule of the rule files is named \"Canry\"; did you mean Canary?",
        ];
        assert_eq!(found, expected);
        assert!(diags.iter().all(|d| d.file == test));
    }
}
