//! Rule files → `Rule`s. Shaped like Prometheus rule files; every mistake in every file is reported
//! with `file:line:col`, including those inside expressions and templates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::expr::{CompileError, Expr, Scope};
use super::template::Template;
use super::{Mode, Rule, RuleSet, SelectOn};
use crate::domain::Diagnostic;
use crate::yaml::Diagnostics;

type S = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    groups: Vec<RawGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: S,
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    alert: S,
    scope: S,
    #[serde(default)]
    select: BTreeMap<String, S>,
    expr: S,
    clear: Option<S>,
    #[serde(rename = "for")]
    for_: Option<S>,
    keep_firing_for: Option<S>,
    mode: Option<S>,
    #[serde(default)]
    labels: BTreeMap<String, S>,
    #[serde(default)]
    annotations: BTreeMap<String, S>,
}

/// The rules of one file.
#[derive(Debug, Default)]
pub struct RuleFile {
    pub rules: Vec<Rule>,
}

/// Expands the `rules:` patterns (a `*` wildcard in the file name, relative to `base`) and loads every
/// file, collecting every mistake. A pattern matching nothing is an error: a typo must not silently
/// disable all alerting.
pub fn load_files(
    patterns: &[(String, Option<Diagnostic>)],
    base: &Path,
) -> Result<RuleSet, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let mut set = RuleSet::default();
    for (pattern, at) in patterns {
        let files = match expand(pattern, base) {
            Ok(files) if !files.is_empty() => files,
            Ok(_) => {
                errors.push(located(
                    at,
                    format!("rules pattern {pattern:?} matches no file"),
                ));
                continue;
            }
            Err(e) => {
                errors.push(located(at, format!("rules pattern {pattern:?}: {e}")));
                continue;
            }
        };
        for file in files {
            match crate::yaml::read_text_limited(&file, crate::yaml::MAX_YAML_BYTES) {
                Ok(text) => match parse_file(&file, &text) {
                    Ok(f) => set.rules.extend(f.rules),
                    Err(mut d) => errors.append(&mut d),
                },
                Err(e) => errors.push(Diagnostic {
                    file: file.clone(),
                    line: 1,
                    col: 1,
                    message: format!("cannot read rule file: {e}"),
                }),
            }
        }
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors)
    }
}

fn located(at: &Option<Diagnostic>, message: String) -> Diagnostic {
    match at {
        Some(d) => Diagnostic {
            message,
            ..d.clone()
        },
        None => Diagnostic {
            file: PathBuf::from("<rules>"),
            line: 1,
            col: 1,
            message,
        },
    }
}

/// `dir/*.yaml` style: the wildcard may appear in the last path component only.
fn expand(pattern: &str, base: &Path) -> std::io::Result<Vec<PathBuf>> {
    let path = base.join(pattern);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains('*') {
        return Ok(if path.exists() { vec![path] } else { vec![] });
    }
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| base.to_path_buf());
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .is_some_and(|n| wildcard(&name, &n.to_string_lossy()))
        })
        .collect();
    out.sort();
    Ok(out)
}

fn wildcard(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            name.starts_with(head)
                && (0..=name.len() - head.len())
                    .filter(|i| name.is_char_boundary(head.len() + i))
                    .any(|i| wildcard(tail, &name[head.len() + i..]))
        }
    }
}

pub fn parse_file(file: &Path, text: &str) -> Result<RuleFile, Vec<Diagnostic>> {
    let raw: RawFile = crate::yaml::parse(file, text)?;
    let mut c = Compiler {
        diags: Diagnostics::new(file),
        lines: yaml_lines(text),
    };
    let mut rules = Vec::new();
    for g in &raw.groups {
        for r in &g.rules {
            if let Some(rule) = c.rule(&g.name.value, r) {
                rules.push(rule);
            }
        }
    }
    c.diags.finish(RuleFile { rules })
}

/// Lines as YAML numbers them: `\n`, `\r\n` and a lone `\r` each end one (`str::lines` ignores a lone
/// `\r`, so a file saved with old Mac line endings would be one line).
fn yaml_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(['\n', '\r']) {
        lines.push(&rest[..i]);
        let end = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[i + end..];
    }
    lines.push(rest);
    lines
}

struct Compiler<'t> {
    diags: Diagnostics,
    lines: Vec<&'t str>,
}

impl Compiler<'_> {
    fn error_at(&mut self, at: &S, message: impl Into<String>) {
        self.diags.error_at(at, message);
    }

    /// Maps an error inside an expression or template back to the file. A quoted scalar's text
    /// starts one column after its quote; a block scalar (`|`, `>`) on the lines below its key.
    fn inner_errors(&mut self, at: &S, what: &str, errs: Vec<CompileError>) {
        // 1-based; an unknown location (0) reads as the start of the file rather than underflowing.
        let (line, col) = crate::yaml::position(&at.referenced);
        let first = usize::try_from(line - 1)
            .ok()
            .and_then(|i| self.lines.get(i))
            .and_then(|l| l.chars().nth(usize::try_from(col - 1).ok()?))
            .unwrap_or(' ');
        for e in errs {
            let (l, c) = match first {
                '"' | '\'' if e.line == 1 => (line, col + e.col),
                '|' | '>' => (line + e.line, e.col),
                _ if e.line == 1 => (line, col + e.col - 1),
                _ => (line + e.line - 1, e.col),
            };
            // An empty block scalar at the end of the file has no line of its own: point at its `|`/`>`.
            let (l, c) = if l > self.lines.len() as u64 {
                (line, col)
            } else {
                (l, c)
            };
            self.diags.error(l, c, format!("{what}: {}", e.message));
        }
    }

    fn duration(&mut self, s: Option<&S>, key: &str) -> Duration {
        let Some(s) = s else { return Duration::ZERO };
        match humantime::parse_duration(s.value.trim()) {
            Ok(d) => d,
            Err(e) => {
                self.error_at(
                    s,
                    format!(
                        "{key}: invalid duration {:?} ({e}); expected e.g. \"30s\", \"2m\"",
                        s.value
                    ),
                );
                Duration::ZERO
            }
        }
    }

    fn rule(&mut self, group: &str, r: &RawRule) -> Option<Rule> {
        let before = self.diags.len();
        let alert = r.alert.value.clone();
        if alert.is_empty() || !alert.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            self.error_at(
                &r.alert,
                format!("alert name {alert:?} must be non-empty and use only A-Z a-z 0-9 _"),
            );
        }
        let scope = match Scope::parse(r.scope.value.trim()) {
            Some(s) => s,
            None => {
                self.error_at(
                    &r.scope,
                    format!(
                        "unknown scope {:?}; expected queue, node, cluster, probe or stream_consumer",
                        r.scope.value
                    ),
                );
                return None;
            }
        };
        let mut select = Vec::new();
        for (key, re) in &r.select {
            let on = match (key.as_str(), scope) {
                ("cluster", _) => SelectOn::Cluster,
                ("vhost", Scope::Queue | Scope::Probe | Scope::StreamConsumer) => SelectOn::Vhost,
                ("stream", Scope::StreamConsumer) => SelectOn::Stream,
                ("consumer", Scope::StreamConsumer) => SelectOn::Consumer,
                ("queue", Scope::Queue) => SelectOn::Queue,
                ("node", Scope::Node) => SelectOn::Node,
                ("probe", Scope::Probe) => SelectOn::Probe,
                _ => {
                    self.error_at(
                        re,
                        format!(
                            "select: {key:?} is not an identity of scope {}; expected cluster{}",
                            scope.as_str(),
                            match scope {
                                Scope::Queue => ", vhost, queue",
                                Scope::Node => ", node",
                                Scope::Probe => ", vhost, probe",
                                Scope::StreamConsumer => ", vhost, stream, consumer",
                                Scope::Cluster => "",
                            }
                        ),
                    );
                    continue;
                }
            };
            match Regex::new(&format!("^(?:{})$", re.value)) {
                Ok(compiled) => select.push((on, compiled)),
                Err(e) => {
                    let detail = crate::yaml::regex_problem(&e);
                    self.error_at(
                        re,
                        format!("select.{key}: invalid regex {:?}: {detail}", re.value),
                    );
                }
            }
        }
        let expr = match Expr::compile_bool(&r.expr.value, scope) {
            Ok(e) => Some(e),
            Err(errs) => {
                self.inner_errors(&r.expr, "expr", errs);
                None
            }
        };
        let clear = match &r.clear {
            Some(c) => match Expr::compile_bool(&c.value, scope) {
                Ok(e) => Some(e),
                Err(errs) => {
                    self.inner_errors(c, "clear", errs);
                    None
                }
            },
            None => None,
        };
        let for_ = self.duration(r.for_.as_ref(), "for");
        let keep_firing_for = self.duration(r.keep_firing_for.as_ref(), "keep_firing_for");
        let mode = match r.mode.as_ref().map(|m| (m, m.value.trim())) {
            None | Some((_, "active")) => Mode::Active,
            Some((_, "shadow")) => Mode::Shadow,
            Some((_, "off")) => Mode::Off,
            Some((m, other)) => {
                self.error_at(
                    m,
                    format!("unknown mode {other:?}; expected active, shadow or off"),
                );
                Mode::Active
            }
        };
        let mut labels = BTreeMap::new();
        for (k, v) in &r.labels {
            if matches!(
                k.as_str(),
                "alertname" | "cluster" | "vhost" | "queue" | "node" | "scope"
            ) {
                self.error_at(
                    v,
                    format!("label {k:?} is set by rabbitwatch and cannot be overridden"),
                );
            } else if !is_label_name(k) {
                self.error_at(
                    v,
                    format!("label name {k:?} must match [a-zA-Z_][a-zA-Z0-9_]*"),
                );
            }
            labels.insert(k.clone(), v.value.clone());
        }
        match labels.get("severity").map(String::as_str) {
            None => {
                labels.insert("severity".to_string(), "warning".to_string());
            }
            Some("info" | "warning" | "critical") => {}
            Some(other) => {
                let at = &r.labels["severity"];
                self.error_at(
                    at,
                    format!("severity {other:?} must be info, warning or critical"),
                );
            }
        }
        let label_names: Vec<String> = identity_labels(scope)
            .iter()
            .map(|s| s.to_string())
            .chain(labels.keys().cloned())
            .collect();
        let mut annotations = Vec::new();
        for (k, v) in &r.annotations {
            match Template::compile(&v.value, scope, &label_names) {
                Ok(t) => annotations.push((k.clone(), t)),
                Err(errs) => self.inner_errors(v, &format!("annotations.{k}"), errs),
            }
        }
        if self.diags.len() > before {
            return None;
        }
        Some(Rule {
            alert,
            group: group.to_string(),
            scope,
            select,
            expr: expr?,
            clear,
            for_,
            keep_firing_for,
            mode,
            labels,
            annotations,
            file: self.diags.file.clone(),
            line: crate::yaml::position(&r.alert.referenced).0,
        })
    }
}

/// Labels rabbitwatch puts on every alert of a scope.
pub fn identity_labels(scope: Scope) -> &'static [&'static str] {
    match scope {
        Scope::Queue => &["alertname", "scope", "cluster", "vhost", "queue"],
        Scope::Node => &["alertname", "scope", "cluster", "node"],
        Scope::Cluster => &["alertname", "scope", "cluster"],
        Scope::Probe => &["alertname", "scope", "cluster", "vhost", "probe"],
        Scope::StreamConsumer => &[
            "alertname",
            "scope",
            "cluster",
            "vhost",
            "stream",
            "consumer",
        ],
    }
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"groups:
  - name: queue-health
    rules:
      - alert: QueueBacklogGrowing
        scope: queue
        select: { vhost: "/", queue: "orders\\..*" }
        expr: publish_rate > consume_rate * 1.1 and backlog_growth > 0 and messages_ready > 100
        clear: backlog_growth <= 0
        for: 2m
        keep_firing_for: 1m
        labels: { severity: critical, team: payments }
        annotations:
          summary: "Backlog growing on {{ queue }} ({{ vhost }})"
"#;

    #[test]
    fn a_rule_file_compiles() {
        let f = parse_file(Path::new("r.yaml"), GOOD).unwrap();
        let r = &f.rules[0];
        assert_eq!(r.alert, "QueueBacklogGrowing");
        assert_eq!(r.for_, Duration::from_secs(120));
        assert_eq!(r.keep_firing_for, Duration::from_secs(60));
        assert_eq!(r.labels["severity"], "critical");
        assert!(r.clear.is_some());
        assert_eq!(r.select.len(), 2);
        assert_eq!(r.line, 4);
    }

    #[test]
    fn errors_inside_expressions_point_into_the_file() {
        let text = GOOD.replace("publish_rate > consume_rate", "publsh_rate > consume_rate");
        let errs = parse_file(Path::new("r.yaml"), &text).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        // `expr: ` starts at column 9 of line 7; the field is its first token.
        assert_eq!((errs[0].line, errs[0].col), (7, 15), "{}", errs[0]);
        assert!(errs[0].message.contains("publish_rate"), "{}", errs[0]);
    }

    #[test]
    fn errors_in_quoted_templates_count_the_quote() {
        let text = GOOD.replace("{{ vhost }}", "{{ vhots }}");
        let errs = parse_file(Path::new("r.yaml"), &text).unwrap_err();
        assert_eq!(errs[0].line, 13, "{}", errs[0]);
        let col = errs[0].col as usize;
        let line = text.lines().nth(12).unwrap();
        assert!(
            line[col - 1..].starts_with("vhots") || line[..col].contains("{{"),
            "col {col} in {line:?}"
        );
    }

    #[test]
    fn every_mistake_in_a_file_is_reported() {
        let text = GOOD
            .replace("for: 2m", "for: 2 fortnights")
            .replace("severity: critical", "severity: dire")
            .replace("\"orders\\\\..*\"", "\"([\"");
        let errs = parse_file(Path::new("r.yaml"), &text).unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:#?}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let text = GOOD.replace("keep_firing_for: 1m", "keep_firing: 1m");
        let errs = parse_file(Path::new("r.yaml"), &text).unwrap_err();
        assert!(errs[0].message.contains("keep_firing"), "{}", errs[0]);
    }

    #[test]
    fn an_unknown_location_maps_to_the_start_of_the_file_without_underflow() {
        // serde-saphyr reports line 0, column 0 for a value it cannot place.
        let at = S::new(
            "publsh_rate > 0".to_string(),
            serde_saphyr::Location::UNKNOWN,
            serde_saphyr::Location::UNKNOWN,
        );
        let mut c = Compiler {
            diags: Diagnostics::new(Path::new("r.yaml")),
            lines: vec!["groups: []"],
        };
        let errs = Expr::compile_bool(&at.value, Scope::Queue).unwrap_err();
        c.inner_errors(&at, "expr", errs);
        c.error_at(&at, "somewhere");
        let found = c.diags.finish(()).unwrap_err();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().all(|d| d.line >= 1 && d.col >= 1), "{found:?}");
    }

    #[test]
    fn errors_in_files_with_carriage_return_line_endings_count_the_quote() {
        // Found by fuzzing: serde-saphyr counts a lone `\r` as a line break, `str::lines` did not, so
        // the opening quote was looked for on the wrong line and the column was off by one.
        let text = "groups:\r  - name: g\r    rules:\r      - alert: A\r        scope: queue\r        expr: \"publsh_rate > 0\"\r";
        let errs = parse_file(Path::new("r.yaml"), text).unwrap_err();
        assert_eq!((errs[0].line, errs[0].col), (6, 16), "{}", errs[0]);
        let crlf = text.replace('\r', "\r\n");
        let errs = parse_file(Path::new("r.yaml"), &crlf).unwrap_err();
        assert_eq!((errs[0].line, errs[0].col), (6, 16), "{}", errs[0]);
        assert_eq!(yaml_lines("a\rb\r\nc\nd"), vec!["a", "b", "c", "d"]);
        assert_eq!(yaml_lines("a\n"), vec!["a", ""]);
    }

    #[test]
    fn an_empty_block_scalar_at_the_end_of_the_file_is_reported_at_its_indicator() {
        // Found by fuzzing: the error pointed at the line after the last one.
        let text = "groups:\n  - name: g\n    rules:\n      - alert: A\n        scope: queue\n        expr: >";
        let errs = parse_file(Path::new("r.yaml"), text).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!((errs[0].line, errs[0].col), (6, 15), "{}", errs[0]);
        assert!(errs[0].message.contains("empty expression"), "{}", errs[0]);
    }

    #[test]
    fn wildcards_match_file_names() {
        assert!(wildcard("*.yaml", "queue.yaml"));
        assert!(wildcard("q*.yaml", "queue.yaml"));
        assert!(!wildcard("*.yaml", "queue.yml"));
        assert!(wildcard("*", "x"));
    }
}
