//! Annotation templates: `Backlog growing on {{ queue }}; drains in {{ drain_eta | duration }}`.
//!
//! Owns parsing `{{ name }}` / `{{ name | filter(arg) | … }}` against the fields of a [`Scope`] and the
//! rule's label names, rendering with the same [`Env`] the expression evaluator reads, and the human
//! number formats behind the filters (public, so receivers can format fields the same way).
//!
//! Names and filters are resolved when the rule is loaded; a mistake is a [`CompileError`] with its
//! line and column in the template. Rendering never fails: an unknown value renders as `-`. Nothing here
//! escapes output — each receiver escapes for its own medium — and nothing here does I/O.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::expr::{CompileError, Env, FieldId, Scope, Type, Value, suggest};

/// What an unknown value (a field the broker does not report, a label the alert lacks) renders as.
pub const UNKNOWN: &str = "-";

/// The most decimals `round(n)` accepts; more would only print f64 noise.
const MAX_DECIMALS: u8 = 15;

const FILTERS: [&str; 6] = ["round", "duration", "bytes", "humanize", "upper", "lower"];

/// A compiled template.
#[derive(Clone, Debug)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug)]
pub(super) enum Part {
    Text(Box<str>),
    Subst(Subst),
}

#[derive(Clone, Debug)]
pub(super) struct Subst {
    pub(super) name: Name,
    pub(super) filters: Vec<Filter>,
}

/// Fields take precedence over labels of the same name: the field is the typed, current value.
#[derive(Clone, Debug)]
pub(super) enum Name {
    Field(FieldId),
    Label(Box<str>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Filter {
    Round(u8),
    Duration,
    Bytes,
    Humanize,
    Upper,
    Lower,
}

impl Filter {
    fn name(self) -> &'static str {
        match self {
            Filter::Round(_) => "round",
            Filter::Duration => "duration",
            Filter::Bytes => "bytes",
            Filter::Humanize => "humanize",
            Filter::Upper => "upper",
            Filter::Lower => "lower",
        }
    }

    fn needs_number(self) -> bool {
        !matches!(self, Filter::Upper | Filter::Lower)
    }

    /// `None` when the value does not have the type the filter was checked against (a bug in the
    /// caller's `Env`), which renders as unknown.
    fn apply(self, value: &Value<'_>) -> Option<String> {
        let number = match value {
            Value::Num(x) => Some(*x),
            _ => None,
        };
        Some(match self {
            Filter::Round(decimals) => format_round(number?, decimals),
            Filter::Duration => format_duration(number?),
            Filter::Bytes => format_bytes(number?),
            Filter::Humanize => humanize(number?),
            Filter::Upper => display(value).to_uppercase(),
            Filter::Lower => display(value).to_lowercase(),
        })
    }
}

impl Template {
    /// Compiles `src` for `scope`; `{{ name }}` may name a field of the scope or one of `label_names`.
    /// Every mistake is reported, each with its line and column in `src`.
    pub fn compile<I, S>(
        src: &str,
        scope: Scope,
        label_names: I,
    ) -> Result<Template, Vec<CompileError>>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let labels: Vec<S> = label_names.into_iter().collect();
        let labels: Vec<&str> = labels.iter().map(AsRef::as_ref).collect();
        let mut parser = Parser {
            src,
            scope,
            labels: &labels,
            errors: Vec::new(),
        };
        let mut parts = Vec::new();
        let mut text_start = 0;
        while let Some(found) = src[text_start..].find("{{") {
            let open = text_start + found;
            if open > text_start {
                parts.push(Part::Text(src[text_start..open].into()));
            }
            let inner = open + 2;
            let Some(len) = src[inner..].find("}}") else {
                parser.error(open, "unclosed `{{`: missing `}}`");
                text_start = src.len();
                break;
            };
            if let Some(subst) = parser.substitution(inner, inner + len) {
                parts.push(Part::Subst(subst));
            }
            text_start = inner + len + 2;
        }
        if text_start < src.len() {
            parts.push(Part::Text(src[text_start..].into()));
        }
        if parser.errors.is_empty() {
            Ok(Template { parts })
        } else {
            Err(parser.errors)
        }
    }

    /// Renders with the current field values and the alert's labels. Unknown values render as `-`.
    pub fn render<E: Env + ?Sized>(&self, env: &E, labels: &BTreeMap<String, String>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Subst(subst) => out.push_str(&subst.render(env, labels)),
            }
        }
        out
    }

    /// The pieces, for translations of the template language (`rules::export`).
    pub(super) fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The fields the template reads, each once, in order of first appearance.
    pub fn referenced_fields(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for part in &self.parts {
            if let Part::Subst(Subst {
                name: Name::Field(id),
                ..
            }) = part
                && !names.contains(&id.name())
            {
                names.push(id.name());
            }
        }
        names
    }
}

impl Subst {
    fn render<'a, E: Env + ?Sized>(
        &self,
        env: &'a E,
        labels: &'a BTreeMap<String, String>,
    ) -> Cow<'a, str> {
        let value = match &self.name {
            Name::Field(id) => env.get(*id),
            Name::Label(name) => labels
                .get(&**name)
                .map(|v| Value::Str(Cow::Borrowed(v.as_str()))),
        };
        let Some(mut value) = value else {
            return Cow::Borrowed(UNKNOWN);
        };
        for filter in &self.filters {
            match filter.apply(&value) {
                Some(text) => value = Value::Str(Cow::Owned(text)),
                None => return Cow::Borrowed(UNKNOWN),
            }
        }
        match value {
            Value::Str(s) => s,
            other => Cow::Owned(display(&other).into_owned()),
        }
    }
}

fn display<'v>(value: &'v Value<'_>) -> Cow<'v, str> {
    match value {
        Value::Num(x) => Cow::Owned(format_number(*x)),
        Value::Str(s) => Cow::Borrowed(s),
        Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
    }
}

// ---------------------------------------------------------------- parser

struct Parser<'s, 'l> {
    src: &'s str,
    scope: Scope,
    labels: &'l [&'l str],
    errors: Vec<CompileError>,
}

impl<'s> Parser<'s, '_> {
    fn error(&mut self, offset: usize, message: impl Into<String>) {
        self.errors
            .push(CompileError::at(self.src, offset, message));
    }

    fn skip_space(&self, mut i: usize, end: usize) -> usize {
        while i < end && self.src.as_bytes()[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    }

    fn ident(&self, i: usize, end: usize) -> Option<(usize, &'s str)> {
        let src: &'s str = self.src;
        let bytes = src.as_bytes();
        if i >= end || !(bytes[i].is_ascii_alphabetic() || bytes[i] == b'_') {
            return None;
        }
        let mut j = i;
        while j < end && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
            j += 1;
        }
        Some((j, &src[i..j]))
    }

    fn found(&self, i: usize, end: usize) -> String {
        match self.src[i..end].chars().next() {
            Some(c) => format!("`{c}`"),
            None => "`}}`".to_string(),
        }
    }

    /// `name ( | filter [ (arg) ] )*` between `from` and `end` (the `}}`). `None` after an error.
    fn substitution(&mut self, from: usize, end: usize) -> Option<Subst> {
        let errors_before = self.errors.len();
        let start = self.skip_space(from, end);
        let Some((mut i, name)) = self.ident(start, end) else {
            let message = if start == end {
                "empty `{{ }}`: expected a field or label name".to_string()
            } else {
                format!(
                    "expected a field or label name, found {}",
                    self.found(start, end)
                )
            };
            self.error(start, message);
            return None;
        };
        let (name, mut ty) = match self.resolve(name) {
            Some((name, ty)) => (Some(name), Some(ty)),
            None => {
                let message = self.unknown_name_message(name);
                self.error(start, message);
                (None, None)
            }
        };
        let mut previous: Option<Filter> = None;
        let mut filters = Vec::new();
        loop {
            i = self.skip_space(i, end);
            if i == end {
                break;
            }
            if self.src.as_bytes()[i] != b'|' {
                let message = format!("expected `|` or `}}}}`, found {}", self.found(i, end));
                self.error(i, message);
                return None;
            }
            let filter_start = self.skip_space(i + 1, end);
            let Some((after_name, filter_name)) = self.ident(filter_start, end) else {
                let message = format!(
                    "expected a filter name after `|`, found {}",
                    self.found(filter_start, end)
                );
                self.error(filter_start, message);
                return None;
            };
            i = self.skip_space(after_name, end);
            let mut argument = None;
            if i < end && self.src.as_bytes()[i] == b'(' {
                let arg_start = self.skip_space(i + 1, end);
                let digits = self.src.as_bytes()[arg_start..end]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                let arg_end = self.skip_space(arg_start + digits, end);
                if digits == 0 || arg_end >= end || self.src.as_bytes()[arg_end] != b')' {
                    self.error(
                        arg_start,
                        format!("`{filter_name}(…)` takes one whole number, like round(1)"),
                    );
                    return None;
                }
                let src: &'s str = self.src;
                argument = Some((arg_start, &src[arg_start..arg_start + digits]));
                i = arg_end + 1;
            }
            let Some(filter) = self.filter(filter_start, filter_name, argument) else {
                continue;
            };
            if filter.needs_number()
                && let Some(actual) = ty
                && actual != Type::Number
            {
                let what = match previous {
                    Some(p) => format!("`{}` has already turned the value into text", p.name()),
                    None => format!(
                        "`{}` is a {actual}",
                        &self.src[start..start + name_len(self.src, start)]
                    ),
                };
                self.error(
                    filter_start,
                    format!("filter `{}` needs a number, but {what}", filter.name()),
                );
            }
            ty = ty.map(|_| Type::String);
            previous = Some(filter);
            filters.push(filter);
        }
        if self.errors.len() > errors_before {
            return None;
        }
        Some(Subst {
            name: name?,
            filters,
        })
    }

    fn resolve(&self, name: &str) -> Option<(Name, Type)> {
        if let Some(id) = self.scope.field(name) {
            return Some((Name::Field(id), id.ty()));
        }
        self.labels
            .contains(&name)
            .then(|| (Name::Label(name.into()), Type::String))
    }

    fn unknown_name_message(&self, name: &str) -> String {
        let fields = self.scope.fields().iter().map(|(n, _)| *n);
        let hint = suggest(name, fields.clone().chain(self.labels.iter().copied()))
            .map(|s| format!("did you mean {s}? "))
            .unwrap_or_default();
        let fields: Vec<&str> = fields.collect();
        let labels = if self.labels.is_empty() {
            "none".to_string()
        } else {
            self.labels.join(", ")
        };
        format!(
            "unknown name \"{name}\": not a field of scope {} nor a label of the rule; {hint}fields: {}; labels: {labels}",
            self.scope,
            fields.join(", ")
        )
    }

    fn filter(&mut self, at: usize, name: &str, argument: Option<(usize, &str)>) -> Option<Filter> {
        let filter = match name {
            "round" => {
                let decimals = match argument {
                    None => 0,
                    Some((arg_at, digits)) => match digits.parse::<u8>() {
                        Ok(n) if n <= MAX_DECIMALS => n,
                        _ => {
                            self.error(
                                arg_at,
                                format!("round() takes 0 to {MAX_DECIMALS} decimals, got {digits}"),
                            );
                            return None;
                        }
                    },
                };
                return Some(Filter::Round(decimals));
            }
            "duration" => Filter::Duration,
            "bytes" => Filter::Bytes,
            "humanize" => Filter::Humanize,
            "upper" => Filter::Upper,
            "lower" => Filter::Lower,
            _ => {
                let hint = suggest(name, FILTERS)
                    .map(|s| format!("did you mean {s}? "))
                    .unwrap_or_default();
                self.error(
                    at,
                    format!(
                        "unknown filter `{name}`; {hint}filters are {}",
                        FILTERS.join(", ")
                    ),
                );
                return None;
            }
        };
        if argument.is_some() {
            self.error(at, format!("filter `{name}` takes no argument"));
            return None;
        }
        Some(filter)
    }
}

fn name_len(src: &str, start: usize) -> usize {
    src.as_bytes()[start..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
        .count()
}

// ---------------------------------------------------------------- formats

/// A number as written without a filter: integers without a fraction, others in the shortest form that
/// reads back exactly, infinities as `+Inf`/`-Inf` (Prometheus' spelling).
pub fn format_number(x: f64) -> String {
    if x.is_nan() {
        "NaN".to_string()
    } else if x.is_infinite() {
        if x > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if x == 0.0 {
        "0".to_string()
    } else {
        x.to_string()
    }
}

/// `round(n)`: exactly `decimals` decimals; never prints `-0`.
pub fn format_round(x: f64, decimals: u8) -> String {
    if !x.is_finite() {
        return format_number(x);
    }
    let text = format!("{x:.*}", usize::from(decimals));
    match text.strip_prefix('-') {
        Some(digits) if digits.bytes().all(|b| b == b'0' || b == b'.') => digits.to_string(),
        _ => text,
    }
}

/// `duration`: seconds as the two largest units, truncated (`45s`, `3m 20s`, `2h 5m`, `3d 4h`);
/// under a second in `ms`; `+Inf` (a queue that never drains) as `never`.
pub fn format_duration(secs: f64) -> String {
    if secs.is_nan() {
        return "NaN".to_string();
    }
    if secs == f64::INFINITY {
        return "never".to_string();
    }
    if secs == f64::NEG_INFINITY {
        return "-Inf".to_string();
    }
    let sign = if secs < 0.0 { "-" } else { "" };
    let abs = secs.abs();
    if abs < 0.9995 {
        let millis = (abs * 1000.0).round();
        return if millis == 0.0 {
            "0s".to_string()
        } else {
            format!("{sign}{millis}ms")
        };
    }
    // Saturates for absurd values, which is fine for a human-readable hint.
    let total = abs.round() as u64;
    let (days, hours, minutes, seconds) = (
        total / 86_400,
        total % 86_400 / 3600,
        total % 3600 / 60,
        total % 60,
    );
    let (major, major_unit, minor, minor_unit) = if days > 0 {
        (days, "d", hours, "h")
    } else if hours > 0 {
        (hours, "h", minutes, "m")
    } else if minutes > 0 {
        (minutes, "m", seconds, "s")
    } else {
        return format!("{sign}{seconds}s");
    };
    if minor > 0 {
        format!("{sign}{major}{major_unit} {minor}{minor_unit}")
    } else {
        format!("{sign}{major}{major_unit}")
    }
}

/// `bytes`: binary units with three significant digits (`512 B`, `1.5 KiB`, `1.23 GiB`).
pub fn format_bytes(bytes: f64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if !bytes.is_finite() {
        return format_number(bytes);
    }
    let (sign, digits, unit) = scaled(bytes, 1024.0, UNITS.len());
    format!("{sign}{digits} {}", UNITS[unit])
}

/// `humanize`: SI prefixes with three significant digits (`1.23M`, `45.6k`, `999`, `0.5`).
pub fn humanize(x: f64) -> String {
    const PREFIXES: [&str; 7] = ["", "k", "M", "G", "T", "P", "E"];
    if !x.is_finite() {
        return format_number(x);
    }
    let (sign, digits, prefix) = scaled(x, 1000.0, PREFIXES.len());
    format!("{sign}{digits}{}", PREFIXES[prefix])
}

/// Divides by `base` until the value prints below `base` with three significant digits; returns the
/// sign, the digits and how many times it divided.
fn scaled(x: f64, base: f64, steps: usize) -> (&'static str, String, usize) {
    let mut value = x.abs();
    let mut step = 0;
    // 999.5 would print as "1000", so it moves up a unit too.
    while value >= base - 0.5 && step + 1 < steps {
        value /= base;
        step += 1;
    }
    let digits = three_significant(value);
    let sign = if x < 0.0 && digits != "0" { "-" } else { "" };
    (sign, digits, step)
}

fn three_significant(value: f64) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    let magnitude = value.log10().floor() as i32;
    let decimals = (2 - magnitude).clamp(0, 20) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

// ---------------------------------------------------------------- tests

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::expr::TestEnv;

    fn env() -> TestEnv {
        TestEnv::default()
            .with("queue", "orders.eu")
            .with("vhost", "/")
            .with("status", "Growing")
            .with("publish_rate", 12.3456)
            .with("consume_rate", 10.0)
            .with("messages_ready", 1234567.0)
            .with("drain_eta", f64::INFINITY)
            .with("oldest_message_age", 200.0)
            .with("fill_ratio", 0.5)
            .with("durable", true)
            .with("max_length", 1536.0)
    }

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("severity".to_string(), "warning".to_string()),
            ("team".to_string(), "Payments".to_string()),
        ])
    }

    fn render(src: &str) -> String {
        let labels = labels();
        match Template::compile(src, Scope::Queue, labels.keys()) {
            Ok(t) => t.render(&env(), &labels),
            Err(errors) => panic!("{src}: {errors:?}"),
        }
    }

    #[test]
    fn renders_fields_labels_and_each_filter() {
        let cases = [
            ("plain text, no braces }} {", "plain text, no braces }} {"),
            (
                "Backlog growing on {{ queue }} ({{ vhost }})",
                "Backlog growing on orders.eu (/)",
            ),
            ("{{queue}}|{{  queue  }}", "orders.eu|orders.eu"),
            ("{{ publish_rate }}", "12.3456"),
            ("{{ consume_rate }}", "10"),
            ("{{ drain_eta }}", "+Inf"),
            ("{{ durable }}", "true"),
            ("{{ publish_rate | round(1) }}/s", "12.3/s"),
            ("{{ publish_rate | round }}", "12"),
            ("{{ publish_rate | round( 3 ) }}", "12.346"),
            ("{{ drain_eta | duration }}", "never"),
            ("{{ oldest_message_age | duration }}", "3m 20s"),
            ("{{ max_length | bytes }}", "1.5 KiB"),
            ("{{ messages_ready | humanize }}", "1.23M"),
            ("{{ fill_ratio | humanize }}", "0.5"),
            ("{{ status | upper }}", "GROWING"),
            ("{{ status | lower }}", "growing"),
            ("{{ team | upper }} {{ severity }}", "PAYMENTS warning"),
            ("{{ publish_rate | round(1) | upper }}", "12.3"),
            ("{{ drain_eta | duration | upper }}", "NEVER"),
            ("{{ durable | upper }}", "TRUE"),
            ("line 1\n{{ queue }}\n", "line 1\norders.eu\n"),
            ("→ {{ queue }} ←", "→ orders.eu ←"),
        ];
        for (i, (src, want)) in cases.into_iter().enumerate() {
            assert_eq!(render(src), want, "case {i}: {src}");
        }
    }

    #[test]
    fn unknown_values_render_as_a_dash() {
        // consumers and deliver_rate are not in the env; the label "team" is declared but missing.
        let template = Template::compile(
            "{{ consumers }} / {{ deliver_rate | round(1) }} / {{ ack_rate | duration | upper }} / {{ team }}",
            Scope::Queue,
            ["team"],
        )
        .expect("valid");
        assert_eq!(template.render(&env(), &BTreeMap::new()), "- / - / - / -");
    }

    #[test]
    fn fields_win_over_labels_of_the_same_name() {
        let template = Template::compile(
            "{{ queue }} {{ severity }}",
            Scope::Queue,
            ["queue", "severity"],
        )
        .expect("valid");
        let labels = BTreeMap::from([
            ("queue".to_string(), "from-label".to_string()),
            ("severity".to_string(), "critical".to_string()),
        ]);
        assert_eq!(template.render(&env(), &labels), "orders.eu critical");
        assert_eq!(template.referenced_fields(), ["queue"]);
    }

    #[test]
    fn errors_carry_their_position() {
        // (source, line, col, part of the message)
        let cases = [
            ("Backlog on {{ queue ", 1, 12, "unclosed `{{`"),
            (
                "{{ queu }}",
                1,
                4,
                "unknown name \"queu\": not a field of scope queue nor a label of the rule; did you mean queue?",
            ),
            ("{{ sevrity }}", 1, 4, "did you mean severity?"),
            (
                "{{ nothing_like_it }}",
                1,
                4,
                "fields: messages, messages_ready,",
            ),
            ("{{ nothing_like_it }}", 1, 4, "labels: severity, team"),
            (
                "a\n  {{ queue | upperr }}",
                2,
                14,
                "unknown filter `upperr`; did you mean upper?",
            ),
            (
                "{{ queue | frobnicate }}",
                1,
                12,
                "filters are round, duration, bytes, humanize, upper, lower",
            ),
            ("{{ }}", 1, 4, "empty `{{ }}`"),
            ("{{ 5 }}", 1, 4, "expected a field or label name, found `5`"),
            (
                "{{ queue vhost }}",
                1,
                10,
                "expected `|` or `}}`, found `v`",
            ),
            ("{{ queue | }}", 1, 12, "expected a filter name after `|`"),
            (
                "{{ publish_rate | round(x) }}",
                1,
                25,
                "takes one whole number",
            ),
            (
                "{{ publish_rate | round(1 }}",
                1,
                25,
                "takes one whole number",
            ),
            (
                "{{ publish_rate | round(16) }}",
                1,
                25,
                "round() takes 0 to 15 decimals, got 16",
            ),
            (
                "{{ publish_rate | duration(2) }}",
                1,
                19,
                "filter `duration` takes no argument",
            ),
            (
                "{{ status | duration }}",
                1,
                13,
                "filter `duration` needs a number, but `status` is a string",
            ),
            ("{{ team | bytes }}", 1, 11, "`team` is a string"),
            ("{{ durable | round(1) }}", 1, 14, "`durable` is a boolean"),
            (
                "{{ publish_rate | round(1) | humanize }}",
                1,
                30,
                "`round` has already turned the value into text",
            ),
            (
                "{{ queue {{ vhost }}",
                1,
                10,
                "expected `|` or `}}`, found `{`",
            ),
        ];
        for (i, (src, line, col, message)) in cases.into_iter().enumerate() {
            let errs = Template::compile(src, Scope::Queue, ["severity", "team"]).expect_err(src);
            let first = &errs[0];
            assert_eq!(
                (first.line, first.col),
                (line, col),
                "case {i}: {src}: {first}"
            );
            assert!(first.message.contains(message), "case {i}: {src}: {first}");
        }
    }

    #[test]
    fn every_error_is_reported_not_just_the_first() {
        let errs = Template::compile(
            "{{ queu }} ok {{ status | bytes }} {{ publish_rate | rond(1) }} {{",
            Scope::Queue,
            Vec::<String>::new(),
        )
        .expect_err("four mistakes");
        let cols: Vec<u64> = errs.iter().map(|e| e.col).collect();
        assert_eq!(cols, [4, 27, 54, 65], "{errs:?}");
    }

    #[test]
    fn number_formats() {
        let durations = [
            (0.0, "0s"),
            (0.25, "250ms"),
            (45.0, "45s"),
            (59.6, "1m"),
            (200.0, "3m 20s"),
            (3600.0, "1h"),
            (7500.0, "2h 5m"),
            (7559.0, "2h 5m"),
            (86_400.0 * 3.0 + 4.0 * 3600.0, "3d 4h"),
            (-90.0, "-1m 30s"),
            (f64::INFINITY, "never"),
            (f64::NAN, "NaN"),
        ];
        for (i, (secs, want)) in durations.into_iter().enumerate() {
            assert_eq!(format_duration(secs), want, "duration case {i}: {secs}");
        }
        let bytes = [
            (0.0, "0 B"),
            (512.0, "512 B"),
            (1023.0, "1023 B"),
            (1024.0, "1 KiB"),
            (1536.0, "1.5 KiB"),
            (1_048_575.0, "1 MiB"),
            (1.5e9, "1.4 GiB"),
            (1.32e9, "1.23 GiB"),
            (-2048.0, "-2 KiB"),
        ];
        for (i, (x, want)) in bytes.into_iter().enumerate() {
            assert_eq!(format_bytes(x), want, "bytes case {i}: {x}");
        }
        let humanized = [
            (0.0, "0"),
            (0.5, "0.5"),
            (0.001234, "0.00123"),
            (12.3456, "12.3"),
            (999.0, "999"),
            (999.7, "1k"),
            (1234.0, "1.23k"),
            (45_600.0, "45.6k"),
            (1_234_567.0, "1.23M"),
            (-1_234_567.0, "-1.23M"),
            (2.5e12, "2.5T"),
            (f64::INFINITY, "+Inf"),
        ];
        for (i, (x, want)) in humanized.into_iter().enumerate() {
            assert_eq!(humanize(x), want, "humanize case {i}: {x}");
        }
        let rounded = [
            (12.3456, 1, "12.3"),
            (12.35, 0, "12"),
            (-0.04, 1, "0.0"),
            (-1.25, 1, "-1.2"),
            (2.0, 2, "2.00"),
            (f64::NEG_INFINITY, 2, "-Inf"),
        ];
        for (i, (x, decimals, want)) in rounded.into_iter().enumerate() {
            assert_eq!(format_round(x, decimals), want, "round case {i}: {x}");
        }
        let plain = [
            (10.0, "10"),
            (-0.0, "0"),
            (0.1, "0.1"),
            (1e21, "1000000000000000000000"),
        ];
        for (i, (x, want)) in plain.into_iter().enumerate() {
            assert_eq!(format_number(x), want, "plain case {i}: {x}");
        }
    }

    #[test]
    fn other_scopes_resolve_their_own_fields() {
        let template = Template::compile(
            "{{ node }}: {{ mem_used | bytes }} of {{ mem_limit | bytes }}",
            Scope::Node,
            ["severity"],
        )
        .expect("valid");
        let env = TestEnv::default()
            .with("node", "rabbit@a")
            .with("mem_used", 3.0 * 1024.0 * 1024.0 * 1024.0)
            .with("mem_limit", 4.0 * 1024.0 * 1024.0 * 1024.0);
        assert_eq!(
            template.render(&env, &BTreeMap::new()),
            "rabbit@a: 3 GiB of 4 GiB"
        );
        assert!(Template::compile("{{ queue }}", Scope::Node, ["severity"]).is_err());
    }
}
