//! `rabbitwatch test rules FILE…`: rule unit tests over synthetic series, like `promtool test rules`.
//!
//! A test file names rule files, gives each entity (a queue, node or cluster) a series per field in a
//! compact notation (`0+10x30` is 0, 10, …, 300; `5x3` is 5 5 5 5; `_x2` is two unknowns), and lists
//! the alerts expected to be firing at given times. Rules are evaluated every `interval` through the
//! same state machine the daemon uses, so `for`, `keep_firing_for` and `clear` behave as in production.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::alerts::{AlertTable, FlapPolicy, State};
use crate::domain::{Diagnostic, Timestamp};
use crate::rules::eval::{Evaluation, evaluate_entity};
use crate::rules::expr::{Env, FieldId, Scope, Type, Value};
use crate::rules::{RuleSet, load_files};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    rule_files: Vec<String>,
    #[serde(default)]
    evaluation_interval: Option<String>,
    tests: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    #[serde(default)]
    name: String,
    interval: Option<String>,
    input_series: Vec<InputSeries>,
    alert_rule_test: Vec<AlertTest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSeries {
    queue: Option<BTreeMap<String, String>>,
    node: Option<BTreeMap<String, String>>,
    cluster: Option<BTreeMap<String, String>>,
    values: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertTest {
    eval_time: String,
    alertname: String,
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
    identity: Vec<(String, String)>,
    fields: std::collections::HashMap<FieldId, Series>,
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

fn duration(s: &str, what: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{what}: invalid duration {s:?} ({e})"))
}

/// Outcome of one test file: failures as readable text.
pub struct FileReport {
    pub file: PathBuf,
    pub passed: usize,
    pub failures: Vec<String>,
}

pub fn run_file(path: &Path) -> Result<FileReport, Vec<Diagnostic>> {
    let diag = |message: String| {
        vec![Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            message,
        }]
    };
    let text = crate::yaml::read_text_limited(path, crate::yaml::MAX_YAML_BYTES)
        .map_err(|e| diag(format!("cannot read: {e}")))?;
    let file: TestFile = crate::yaml::parse(path, &text)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let patterns: Vec<(String, Option<Diagnostic>)> =
        file.rule_files.iter().map(|p| (p.clone(), None)).collect();
    let rules = load_files(&patterns, base)?;
    let default_interval = duration(
        file.evaluation_interval.as_deref().unwrap_or("10s"),
        "evaluation_interval",
    )
    .map_err(diag)?;
    let mut report = FileReport {
        file: path.to_path_buf(),
        passed: 0,
        failures: Vec::new(),
    };
    for (i, case) in file.tests.iter().enumerate() {
        let name = if case.name.is_empty() {
            format!("test #{}", i + 1)
        } else {
            case.name.clone()
        };
        match run_case(&rules, case, default_interval) {
            Ok(fails) if fails.is_empty() => report.passed += 1,
            Ok(fails) => report
                .failures
                .extend(fails.into_iter().map(|f| format!("{name}: {f}"))),
            Err(e) => report.failures.push(format!("{name}: {e}")),
        }
    }
    Ok(report)
}

fn entities(case: &TestCase) -> Result<Vec<Entity>, String> {
    let mut out = Vec::new();
    for s in &case.input_series {
        let (scope, ids, required): (Scope, &BTreeMap<String, String>, &[&str]) =
            match (&s.queue, &s.node, &s.cluster) {
                (Some(q), None, None) => (Scope::Queue, q, &["cluster", "vhost", "queue"]),
                (None, Some(n), None) => (Scope::Node, n, &["cluster", "node"]),
                (None, None, Some(c)) => (Scope::Cluster, c, &["cluster"]),
                _ => {
                    return Err(
                        "each input series names exactly one of queue, node, cluster".into(),
                    );
                }
            };
        let mut identity = Vec::new();
        for key in required {
            let v = ids
                .get(*key)
                .ok_or_else(|| format!("a {} series needs `{key}`", scope.as_str()))?;
            identity.push((key.to_string(), v.clone()));
        }
        let mut fields = std::collections::HashMap::new();
        for (name, text) in &s.values {
            let f = scope.field(name).ok_or_else(|| {
                format!(
                    "unknown {} field {name:?}; valid: {}",
                    scope.as_str(),
                    scope
                        .fields()
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            let series = if f.ty() == Type::String {
                Series::Str(text.clone())
            } else {
                Series::Num(expand_series(text).map_err(|e| format!("{name}: {e}"))?)
            };
            fields.insert(f, series);
        }
        out.push(Entity {
            scope,
            identity,
            fields,
        });
    }
    Ok(out)
}

fn run_case(
    rules: &RuleSet,
    case: &TestCase,
    default_interval: Duration,
) -> Result<Vec<String>, String> {
    let interval = match &case.interval {
        Some(s) => duration(s, "interval")?,
        None => default_interval,
    };
    if interval.is_zero() {
        return Err("interval must be positive".into());
    }
    let entities = entities(case)?;
    let mut checks: Vec<(Duration, &AlertTest)> = case
        .alert_rule_test
        .iter()
        .map(|t| Ok((duration(&t.eval_time, "eval_time")?, t)))
        .collect::<Result<_, String>>()?;
    checks.sort_by_key(|(t, _)| *t);
    let end = checks.last().map_or(Duration::ZERO, |(t, _)| *t);
    let clusters: Vec<String> = {
        let mut c: Vec<String> = entities.iter().map(|e| e.identity[0].1.clone()).collect();
        c.sort();
        c.dedup();
        c
    };
    let mut table = AlertTable::default();
    let mut ids = 0u64;
    let mut new_id = || {
        ids += 1;
        format!("test-{ids}")
    };
    let mut failures = Vec::new();
    let mut next_check = 0;
    let steps = (end.as_millis() / interval.as_millis()) as usize;
    for step in 0..=steps {
        let now = Timestamp((step as u128 * interval.as_millis()) as i64);
        for cluster in &clusters {
            let mut eval = Evaluation {
                cluster: cluster.clone(),
                outcomes: Vec::new(),
                judged: vec![Scope::Queue, Scope::Node, Scope::Cluster],
            };
            for e in entities.iter().filter(|e| &e.identity[0].1 == cluster) {
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
            next_check += 1;
        }
    }
    Ok(failures)
}

fn compare(table: &AlertTable, test: &AlertTest, at: Duration) -> Vec<String> {
    let firing: Vec<_> = table
        .alerts
        .values()
        .filter(|a| a.alertname == test.alertname && a.state == State::Firing)
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
                            test.alertname,
                            show(&a.labels)
                        ));
                    }
                }
            }
            None => failures.push(format!(
                "at {} expected {} firing with labels {}\n    firing: [{}]",
                humantime::format_duration(at),
                test.alertname,
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
            test.alertname,
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
}
