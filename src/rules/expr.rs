//! The rule expression language: `publish_rate > consume_rate * 1.1 and backlog_growth > 0`.
//!
//! Owns lexing, parsing and type checking an expression against the field table of its [`Scope`],
//! printing it back in canonical form, and evaluating it with three-valued logic: a field the broker does
//! not report (rates when statistics are disabled) is *unknown*, never a made-up zero.
//!
//! Everything that can be decided when a rule is loaded is decided then: field names become [`FieldId`]s,
//! regexes are compiled, types are checked. Evaluation (100k queues × every rule × every poll) therefore
//! does no string lookups and no allocation. Nothing here does I/O, reads a clock, or panics on user
//! input: every mistake in a rule becomes a [`CompileError`] with its line and column in the expression.

use std::borrow::Cow;
use std::fmt;

use regex::Regex;

// ---------------------------------------------------------------- types, scopes, fields

/// The type of a field or an expression, known when the rule is compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    Number,
    String,
    Bool,
}

impl Type {
    pub fn as_str(self) -> &'static str {
        match self {
            Type::Number => "number",
            Type::String => "string",
            Type::Bool => "boolean",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Type::Number => "numbers",
            Type::String => "strings",
            Type::Bool => "booleans",
        }
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one evaluation of a rule looks at: a queue, a node, a cluster or a canary probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Queue,
    Node,
    Cluster,
    Probe,
    StreamConsumer,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::Queue,
        Scope::Node,
        Scope::Cluster,
        Scope::Probe,
        Scope::StreamConsumer,
    ];

    /// Parses a rule's `scope:` (`queue | node | cluster | probe | stream_consumer`).
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Queue => "queue",
            Scope::Node => "node",
            Scope::Cluster => "cluster",
            Scope::Probe => "probe",
            Scope::StreamConsumer => "stream_consumer",
        }
    }

    /// The scope's field table; a [`FieldId`] is an index into it.
    pub fn fields(self) -> &'static [(&'static str, Type)] {
        match self {
            Scope::Queue => field::queue::TABLE,
            Scope::Node => field::node::TABLE,
            Scope::Cluster => field::cluster::TABLE,
            Scope::Probe => field::probe::TABLE,
            Scope::StreamConsumer => field::stream_consumer::TABLE,
        }
    }

    /// Resolves a field name of this scope.
    pub fn field(self, name: &str) -> Option<FieldId> {
        let index = self.fields().iter().position(|(n, _)| *n == name)?;
        Some(FieldId {
            scope: self,
            index: u8::try_from(index).ok()?,
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The field table of `scope` (same as [`Scope::fields`]).
pub fn fields(scope: Scope) -> &'static [(&'static str, Type)] {
    scope.fields()
}

/// A field resolved at compile time: an index into its scope's table. [`Env`] implementations match on
/// the constants in [`field`] (`field::queue::PUBLISH_RATE`), so a typo is a compile error, not a
/// silently missing metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FieldId {
    scope: Scope,
    index: u8,
}

impl FieldId {
    pub const fn scope(self) -> Scope {
        self.scope
    }

    /// Position in [`Scope::fields`], for table-driven environments.
    pub const fn index(self) -> usize {
        self.index as usize
    }

    pub fn name(self) -> &'static str {
        self.scope.fields()[self.index()].0
    }

    pub fn ty(self) -> Type {
        self.scope.fields()[self.index()].1
    }
}

impl fmt::Display for FieldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// One list per scope defines both the table and the constants, so the two cannot drift apart.
macro_rules! field_table {
    ($(#[$doc:meta])* $module:ident, $scope:ident, [$($konst:ident = $name:literal : $ty:ident),+ $(,)?]) => {
        $(#[$doc])*
        pub mod $module {
            use super::super::{FieldId, Scope, Type};

            #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
            #[repr(u8)]
            enum Index {
                $($konst),+
            }

            $(
                #[doc = concat!("`", $name, "` (", stringify!($ty), ")")]
                pub const $konst: FieldId = FieldId { scope: Scope::$scope, index: Index::$konst as u8 };
            )+

            pub(in super::super) const TABLE: &[(&str, Type)] = &[$(($name, Type::$ty)),+];
        }
    };
}

/// Field ids per scope, for [`Env`] implementations to match on.
pub mod field {
    field_table!(
        /// Fields of `scope: queue`.
        queue, Queue, [
        MESSAGES = "messages": Number,
        MESSAGES_READY = "messages_ready": Number,
        MESSAGES_UNACKED = "messages_unacked": Number,
        CONSUMERS = "consumers": Number,
        PUBLISH_RATE = "publish_rate": Number,
        DELIVER_RATE = "deliver_rate": Number,
        ACK_RATE = "ack_rate": Number,
        CONSUME_RATE = "consume_rate": Number,
        REDELIVER_RATE = "redeliver_rate": Number,
        BACKLOG_GROWTH = "backlog_growth": Number,
        DRAIN_ETA = "drain_eta": Number,
        OLDEST_MESSAGE_AGE = "oldest_message_age": Number,
        CONSUMER_UTILISATION = "consumer_utilisation": Number,
        MAX_LENGTH = "max_length": Number,
        MAX_LENGTH_BYTES = "max_length_bytes": Number,
        MESSAGE_BYTES = "message_bytes": Number,
        DELIVERY_LIMIT = "delivery_limit": Number,
        DISCARD_RATE = "discard_rate": Number,
        FILL_RATIO = "fill_ratio": Number,
        IDLE_FOR = "idle_for": Number,
        GROWING_FOR = "growing_for": Number,
        STATUS = "status": String,
        TYPE = "type": String,
        CLUSTER = "cluster": String,
        VHOST = "vhost": String,
        QUEUE = "queue": String,
        DURABLE = "durable": Bool,
        IS_DEAD_LETTER_TARGET = "is_dead_letter_target": Bool,
        IS_RETRY_QUEUE = "is_retry_queue": Bool,
    ]);

    field_table!(
        /// Fields of `scope: node`.
        node, Node, [
        RUNNING = "running": Bool,
        MEM_ALARM = "mem_alarm": Bool,
        DISK_ALARM = "disk_alarm": Bool,
        MEM_USED = "mem_used": Number,
        MEM_LIMIT = "mem_limit": Number,
        DISK_FREE = "disk_free": Number,
        DISK_FREE_LIMIT = "disk_free_limit": Number,
        FD_USED = "fd_used": Number,
        FD_TOTAL = "fd_total": Number,
        PARTITIONS = "partitions": Number,
        CLUSTER = "cluster": String,
        NODE = "node": String,
    ]);

    field_table!(
        /// Fields of `scope: cluster`.
        cluster, Cluster, [
        REACHABLE = "reachable": Bool,
        NODES_RUNNING = "nodes_running": Number,
        NODES_TOTAL = "nodes_total": Number,
        SCRAPE_AGE = "scrape_age": Number,
        STATS_MODE = "stats_mode": String,
        DEPRECATED_FEATURES_USED = "deprecated_features_used": Number,
        CLUSTER = "cluster": String,
    ]);

    field_table!(
        /// Fields of `scope: probe`.
        probe, Probe, [
        PROBE_OK = "probe_ok": Bool,
        PROBE_LATENCY = "probe_latency": Number,
        PROBE_FAILURES = "probe_failures": Number,
        PROBE_ERROR = "probe_error": String,
        CLUSTER = "cluster": String,
        VHOST = "vhost": String,
        PROBE = "probe": String,
    ]);

    field_table!(
        /// Fields of `scope: stream_consumer`: one reader of a stream, or of a super stream summed
        /// over its partitions.
        stream_consumer, StreamConsumer, [
        OFFSET_LAG = "offset_lag": Number,
        LAG_GROWTH = "lag_growth": Number,
        OFFSET_RATE = "offset_rate": Number,
        STATUS = "status": String,
        TRUNCATION_ETA = "truncation_eta": Number,
        ONLINE = "online": Bool,
        SUPER_STREAM = "super_stream": Bool,
        CLUSTER = "cluster": String,
        VHOST = "vhost": String,
        STREAM = "stream": String,
        CONSUMER = "consumer": String,
    ]);
}

// ---------------------------------------------------------------- values and environments

/// A field's value. Strings are borrowed from the caller's data, so evaluation does not allocate.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Num(f64),
    Str(Cow<'a, str>),
    Bool(bool),
}

impl Value<'_> {
    pub fn ty(&self) -> Type {
        match self {
            Value::Num(_) => Type::Number,
            Value::Str(_) => Type::String,
            Value::Bool(_) => Type::Bool,
        }
    }
}

impl From<f64> for Value<'_> {
    fn from(x: f64) -> Self {
        Value::Num(x)
    }
}

impl From<bool> for Value<'_> {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(s: &'a str) -> Self {
        Value::Str(Cow::Borrowed(s))
    }
}

impl From<String> for Value<'_> {
    fn from(s: String) -> Self {
        Value::Str(Cow::Owned(s))
    }
}

/// Supplies field values to an evaluation.
pub trait Env {
    /// The current value of `field`, or `None` when it is unknown (e.g. rates when the broker keeps no
    /// statistics, or a window still filling). The value must have the field's [`FieldId::ty`].
    fn get(&self, field: FieldId) -> Option<Value<'_>>;
}

// ---------------------------------------------------------------- errors

/// One mistake in an expression or template. `line` and `col` are 1-based and relative to the start of
/// the expression source (columns count characters); the caller adds where the source sits in its file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{col}: {message}")]
pub struct CompileError {
    pub line: u64,
    pub col: u64,
    pub message: String,
}

impl CompileError {
    /// An error at byte `offset` of `src`.
    pub(crate) fn at(src: &str, offset: usize, message: impl Into<String>) -> CompileError {
        let before = src.get(..offset).unwrap_or(src);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let col = before[line_start..].chars().count() + 1;
        CompileError {
            line: line as u64,
            col: col as u64,
            message: message.into(),
        }
    }
}

/// The closest candidate to a misspelt `name`, if one is close enough to be a plausible typo.
pub(crate) fn suggest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    let limit = match name.chars().count() {
        0..=3 => 1,
        4..=7 => 2,
        _ => 3,
    };
    candidates
        .into_iter()
        .map(|c| (edit_distance(&name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Optimal-string-alignment distance: Levenshtein plus adjacent transpositions (`mni` → `min` is 1).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0; (a.len() + 1) * width];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * width + j] = if i == 0 || j == 0 {
                i + j
            } else {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut best = (d[(i - 1) * width + j] + 1)
                    .min(d[i * width + j - 1] + 1)
                    .min(d[(i - 1) * width + j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[(i - 2) * width + j - 2] + 1);
                }
                best
            };
        }
    }
    d[a.len() * width + b.len()]
}

// ---------------------------------------------------------------- compiled expressions

/// A compiled, type-checked expression.
#[derive(Clone, Debug)]
pub struct Expr {
    scope: Scope,
    root: Node,
}

// The tree is typed: a number can only appear where a number is expected, so evaluation needs no
// run-time type checks and has no "impossible" branches.
#[derive(Clone, Debug)]
pub(super) enum Node {
    Num(Num),
    Str(Str),
    Bool(Bool),
}

#[derive(Clone, Debug)]
pub(super) enum Num {
    Lit(f64, Literal),
    Field(FieldId),
    Neg(Box<Num>),
    Arith(Arith, Box<Num>, Box<Num>),
    Extreme(Extreme, Vec<Num>),
    Abs(Box<Num>),
}

/// How a number was written, so it prints back the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Literal {
    Plain,
    Duration,
}

#[derive(Clone, Debug)]
pub(super) enum Str {
    Lit(Box<str>),
    Field(FieldId),
}

#[derive(Clone, Debug)]
pub(super) enum Bool {
    Lit(bool),
    Field(FieldId),
    Not(Box<Bool>),
    And(Box<Bool>, Box<Bool>),
    Or(Box<Bool>, Box<Bool>),
    NumCmp(Cmp, Box<Num>, Box<Num>),
    StrEq(Cmp, Box<Str>, Box<Str>),
    FlagEq(Cmp, Box<Bool>, Box<Bool>),
    Matches(Box<Str>, Box<Regex>),
    /// `known(x)`: whether `x` has a value; never unknown itself.
    Known(Box<Node>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Extreme {
    Min,
    Max,
}

impl Arith {
    pub(super) fn symbol(self) -> &'static str {
        match self {
            Arith::Add => "+",
            Arith::Sub => "-",
            Arith::Mul => "*",
            Arith::Div => "/",
        }
    }
}

impl Cmp {
    pub(super) fn symbol(self) -> &'static str {
        match self {
            Cmp::Eq => "==",
            Cmp::Ne => "!=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
        }
    }

    fn is_equality(self) -> bool {
        matches!(self, Cmp::Eq | Cmp::Ne)
    }
}

impl Node {
    fn ty(&self) -> Type {
        match self {
            Node::Num(_) => Type::Number,
            Node::Str(_) => Type::String,
            Node::Bool(_) => Type::Bool,
        }
    }
}

impl Expr {
    /// Compiles an expression of any type for `scope`. All type errors are reported, not just the first;
    /// a syntax error ends the compilation.
    pub fn compile(src: &str, scope: Scope) -> Result<Expr, Vec<CompileError>> {
        let tokens = lex(src).map_err(|e| vec![e])?;
        let mut parser = Parser {
            src,
            tokens,
            pos: 0,
            scope,
            errors: Vec::new(),
            nesting: 0,
        };
        let parsed = parser.parse_complete();
        let mut errors = parser.errors;
        match parsed {
            Ok(Typed {
                node: Some(root), ..
            }) if errors.is_empty() => Ok(Expr { scope, root }),
            Ok(_) => {
                debug_assert!(
                    !errors.is_empty(),
                    "an untyped node always comes with an error"
                );
                sort_errors(&mut errors);
                Err(errors)
            }
            Err(fatal) => {
                errors.push(fatal);
                sort_errors(&mut errors);
                Err(errors)
            }
        }
    }

    /// Compiles a rule's `expr` or `clear`: like [`Expr::compile`], but the expression must be a condition.
    pub fn compile_bool(src: &str, scope: Scope) -> Result<Expr, Vec<CompileError>> {
        let expr = Expr::compile(src, scope)?;
        let ty = expr.ty();
        if ty != Type::Bool {
            let start = src.len() - src.trim_start().len();
            let example = match ty {
                Type::String => format!("{expr} == \"…\""),
                _ => format!("{expr} > 0"),
            };
            return Err(vec![CompileError::at(
                src,
                start,
                format!(
                    "a rule expression must be a condition (true or false), but this one is a {ty}; \
                     compare it with something, e.g. `{example}`"
                ),
            )]);
        }
        Ok(expr)
    }

    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The typed tree, for translations of the language (`rules::export`).
    pub(super) fn root(&self) -> &Node {
        &self.root
    }

    pub fn ty(&self) -> Type {
        self.root.ty()
    }

    /// Evaluates a condition: `Some(true)`, `Some(false)`, or `None` when unknown. An expression that is
    /// not a condition (see [`Expr::compile_bool`]) is always unknown.
    pub fn eval_bool<E: Env + ?Sized>(&self, env: &E) -> Option<bool> {
        match &self.root {
            Node::Bool(b) => b.eval(env),
            _ => None,
        }
    }

    /// Evaluates a numeric expression; `None` when unknown or not a number.
    pub fn eval_number<E: Env + ?Sized>(&self, env: &E) -> Option<f64> {
        match &self.root {
            Node::Num(n) => n.eval(env),
            _ => None,
        }
    }

    /// Evaluates to a value of [`Expr::ty`]; `None` when unknown.
    pub fn eval<'a, E: Env + ?Sized>(&'a self, env: &'a E) -> Option<Value<'a>> {
        match &self.root {
            Node::Num(n) => n.eval(env).map(Value::Num),
            Node::Str(s) => s.eval(env).map(Value::Str),
            Node::Bool(b) => b.eval(env).map(Value::Bool),
        }
    }

    /// The fields the expression reads, each once, in order of first appearance.
    pub fn referenced_fields(&self) -> Vec<&'static str> {
        let mut ids = Vec::new();
        self.root.visit_fields(&mut |id| {
            if !ids.contains(&id) {
                ids.push(id);
            }
        });
        ids.into_iter().map(FieldId::name).collect()
    }
}

fn sort_errors(errors: &mut [CompileError]) {
    errors.sort_by_key(|e| (e.line, e.col));
}

// ---------------------------------------------------------------- evaluation

// An `Env` answering with the wrong type is a bug in the caller, not bad user input: loud in tests,
// unknown in production.
fn mistyped<T>(id: FieldId, got: &Value<'_>) -> Option<T> {
    if cfg!(debug_assertions) {
        panic!(
            "Env returned a {} for {} field {}",
            got.ty(),
            id.ty(),
            id.name()
        );
    }
    None
}

impl Num {
    fn eval<E: Env + ?Sized>(&self, env: &E) -> Option<f64> {
        match self {
            Num::Lit(x, _) => Some(*x),
            Num::Field(id) => match env.get(*id)? {
                Value::Num(x) => Some(x),
                other => mistyped(*id, &other),
            },
            Num::Neg(x) => Some(-x.eval(env)?),
            Num::Arith(op, l, r) => {
                let (a, b) = (l.eval(env)?, r.eval(env)?);
                Some(match op {
                    Arith::Add => a + b,
                    Arith::Sub => a - b,
                    Arith::Mul => a * b,
                    Arith::Div => a / b,
                })
            }
            Num::Extreme(which, args) => {
                let mut acc: Option<f64> = None;
                for arg in args {
                    let x = arg.eval(env)?;
                    acc = Some(match acc {
                        None => x,
                        // NaN propagates (IEEE `minimum`/`maximum`), so `min(0/0, 5) > 1` cannot fire.
                        Some(a) if a.is_nan() || x.is_nan() => f64::NAN,
                        Some(a) => match which {
                            Extreme::Min => a.min(x),
                            Extreme::Max => a.max(x),
                        },
                    });
                }
                acc
            }
            Num::Abs(x) => Some(x.eval(env)?.abs()),
        }
    }
}

impl Str {
    fn eval<'a, E: Env + ?Sized>(&'a self, env: &'a E) -> Option<Cow<'a, str>> {
        match self {
            Str::Lit(s) => Some(Cow::Borrowed(s)),
            Str::Field(id) => match env.get(*id)? {
                Value::Str(s) => Some(s),
                other => mistyped(*id, &other),
            },
        }
    }
}

impl Bool {
    fn eval<E: Env + ?Sized>(&self, env: &E) -> Option<bool> {
        match self {
            Bool::Lit(b) => Some(*b),
            Bool::Field(id) => match env.get(*id)? {
                Value::Bool(b) => Some(b),
                other => mistyped(*id, &other),
            },
            Bool::Not(x) => x.eval(env).map(|b| !b),
            // Kleene logic: a known `false` decides `and`, a known `true` decides `or`, whatever the
            // other side is.
            Bool::And(l, r) => match l.eval(env) {
                Some(false) => Some(false),
                Some(true) => r.eval(env),
                None => match r.eval(env) {
                    Some(false) => Some(false),
                    _ => None,
                },
            },
            Bool::Or(l, r) => match l.eval(env) {
                Some(true) => Some(true),
                Some(false) => r.eval(env),
                None => match r.eval(env) {
                    Some(true) => Some(true),
                    _ => None,
                },
            },
            // IEEE comparisons: anything ordered against NaN is false, `NaN != x` is true.
            Bool::NumCmp(op, l, r) => {
                let (a, b) = (l.eval(env)?, r.eval(env)?);
                Some(match op {
                    Cmp::Eq => a == b,
                    Cmp::Ne => a != b,
                    Cmp::Lt => a < b,
                    Cmp::Le => a <= b,
                    Cmp::Gt => a > b,
                    Cmp::Ge => a >= b,
                })
            }
            Bool::StrEq(op, l, r) => {
                let equal = l.eval(env)? == r.eval(env)?;
                Some(equal == (*op == Cmp::Eq))
            }
            Bool::FlagEq(op, l, r) => {
                let equal = l.eval(env)? == r.eval(env)?;
                Some(equal == (*op == Cmp::Eq))
            }
            Bool::Matches(s, re) => Some(re.is_match(&s.eval(env)?)),
            Bool::Known(x) => Some(match &**x {
                Node::Num(n) => n.eval(env).is_some(),
                Node::Str(s) => s.eval(env).is_some(),
                Node::Bool(b) => b.eval(env).is_some(),
            }),
        }
    }
}

// ---------------------------------------------------------------- walking and printing

impl Node {
    fn visit_fields(&self, f: &mut impl FnMut(FieldId)) {
        match self {
            Node::Num(n) => n.visit_fields(f),
            Node::Str(s) => s.visit_fields(f),
            Node::Bool(b) => b.visit_fields(f),
        }
    }
}

impl Num {
    fn visit_fields(&self, f: &mut impl FnMut(FieldId)) {
        match self {
            Num::Lit(..) => {}
            Num::Field(id) => f(*id),
            Num::Neg(x) | Num::Abs(x) => x.visit_fields(f),
            Num::Arith(_, l, r) => {
                l.visit_fields(f);
                r.visit_fields(f);
            }
            Num::Extreme(_, args) => args.iter().for_each(|a| a.visit_fields(f)),
        }
    }
}

impl Str {
    fn visit_fields(&self, f: &mut impl FnMut(FieldId)) {
        if let Str::Field(id) = self {
            f(*id);
        }
    }
}

impl Bool {
    fn visit_fields(&self, f: &mut impl FnMut(FieldId)) {
        match self {
            Bool::Lit(_) => {}
            Bool::Field(id) => f(*id),
            Bool::Not(x) => x.visit_fields(f),
            Bool::And(l, r) | Bool::Or(l, r) | Bool::FlagEq(_, l, r) => {
                l.visit_fields(f);
                r.visit_fields(f);
            }
            Bool::NumCmp(_, l, r) => {
                l.visit_fields(f);
                r.visit_fields(f);
            }
            Bool::StrEq(_, l, r) => {
                l.visit_fields(f);
                r.visit_fields(f);
            }
            Bool::Matches(s, _) => s.visit_fields(f),
            Bool::Known(x) => x.visit_fields(f),
        }
    }
}

// Binding strength, loosest first; the printer adds parentheses only where the tree needs them.
const PREC_OR: u8 = 1;
const PREC_AND: u8 = 2;
const PREC_NOT: u8 = 3;
const PREC_CMP: u8 = 4;
const PREC_ADD: u8 = 5;
const PREC_MUL: u8 = 6;
const PREC_UNARY: u8 = 7;
const PREC_ATOM: u8 = 8;

fn parenthesise(
    f: &mut fmt::Formatter<'_>,
    prec: u8,
    min: u8,
    body: impl FnOnce(&mut fmt::Formatter<'_>) -> fmt::Result,
) -> fmt::Result {
    if prec < min {
        f.write_str("(")?;
        body(f)?;
        f.write_str(")")
    } else {
        body(f)
    }
}

impl Num {
    fn write(&self, f: &mut fmt::Formatter<'_>, min: u8) -> fmt::Result {
        match self {
            Num::Lit(x, kind) => {
                let prec = if x.is_sign_negative() {
                    PREC_UNARY
                } else {
                    PREC_ATOM
                };
                parenthesise(f, prec, min, |f| {
                    if x.is_sign_negative() {
                        f.write_str("-")?;
                    }
                    match kind {
                        Literal::Plain => write!(f, "{}", x.abs()),
                        Literal::Duration => write_duration(f, x.abs()),
                    }
                })
            }
            Num::Field(id) => f.write_str(id.name()),
            Num::Neg(x) => parenthesise(f, PREC_UNARY, min, |f| {
                f.write_str("-")?;
                x.write(f, PREC_UNARY)
            }),
            Num::Arith(op, l, r) => {
                let prec = match op {
                    Arith::Add | Arith::Sub => PREC_ADD,
                    Arith::Mul | Arith::Div => PREC_MUL,
                };
                parenthesise(f, prec, min, |f| {
                    l.write(f, prec)?;
                    write!(f, " {} ", op.symbol())?;
                    r.write(f, prec + 1)
                })
            }
            Num::Extreme(which, args) => {
                f.write_str(match which {
                    Extreme::Min => "min(",
                    Extreme::Max => "max(",
                })?;
                for (i, arg) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    arg.write(f, PREC_OR)?;
                }
                f.write_str(")")
            }
            Num::Abs(x) => {
                f.write_str("abs(")?;
                x.write(f, PREC_OR)?;
                f.write_str(")")
            }
        }
    }
}

/// Prints seconds as the shortest duration literal that reads back to the same number.
fn write_duration(f: &mut fmt::Formatter<'_>, secs: f64) -> fmt::Result {
    const UNITS: [(&str, u64); 5] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    let millis = secs * 1000.0;
    if secs == 0.0 {
        return f.write_str("0s");
    }
    if millis.fract() != 0.0 || millis > 9.0e15 {
        return write!(f, "{secs}s");
    }
    let mut rest = millis as u64;
    for (unit, size) in UNITS {
        if rest >= size {
            write!(f, "{}{unit}", rest / size)?;
            rest %= size;
        }
    }
    Ok(())
}

fn write_string_literal(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

impl Str {
    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Str::Lit(s) => write_string_literal(f, s),
            Str::Field(id) => f.write_str(id.name()),
        }
    }
}

impl Bool {
    fn write(&self, f: &mut fmt::Formatter<'_>, min: u8) -> fmt::Result {
        match self {
            Bool::Lit(b) => write!(f, "{b}"),
            Bool::Field(id) => f.write_str(id.name()),
            Bool::Not(x) => parenthesise(f, PREC_NOT, min, |f| {
                f.write_str("not ")?;
                x.write(f, PREC_NOT)
            }),
            Bool::And(l, r) => parenthesise(f, PREC_AND, min, |f| {
                l.write(f, PREC_AND)?;
                f.write_str(" and ")?;
                r.write(f, PREC_AND + 1)
            }),
            Bool::Or(l, r) => parenthesise(f, PREC_OR, min, |f| {
                l.write(f, PREC_OR)?;
                f.write_str(" or ")?;
                r.write(f, PREC_OR + 1)
            }),
            // Comparisons do not chain, so both sides must bind tighter.
            Bool::NumCmp(op, l, r) => parenthesise(f, PREC_CMP, min, |f| {
                l.write(f, PREC_CMP + 1)?;
                write!(f, " {} ", op.symbol())?;
                r.write(f, PREC_CMP + 1)
            }),
            Bool::StrEq(op, l, r) => parenthesise(f, PREC_CMP, min, |f| {
                l.write(f)?;
                write!(f, " {} ", op.symbol())?;
                r.write(f)
            }),
            Bool::FlagEq(op, l, r) => parenthesise(f, PREC_CMP, min, |f| {
                l.write(f, PREC_CMP + 1)?;
                write!(f, " {} ", op.symbol())?;
                r.write(f, PREC_CMP + 1)
            }),
            Bool::Matches(s, re) => {
                f.write_str("matches(")?;
                s.write(f)?;
                f.write_str(", ")?;
                write_string_literal(f, re.as_str())?;
                f.write_str(")")
            }
            Bool::Known(x) => {
                f.write_str("known(")?;
                match &**x {
                    Node::Num(n) => n.write(f, PREC_OR)?,
                    Node::Str(s) => s.write(f)?,
                    Node::Bool(b) => b.write(f, PREC_OR)?,
                }
                f.write_str(")")
            }
        }
    }
}

/// Canonical form: single spaces around binary operators, parentheses only where needed, durations
/// as `1h30m`. Compiling the printed form gives the same expression.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.root {
            Node::Num(n) => n.write(f, PREC_OR),
            Node::Str(s) => s.write(f),
            Node::Bool(b) => b.write(f, PREC_OR),
        }
    }
}

// ---------------------------------------------------------------- lexer

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(f64),
    Duration(f64),
    Str(String),
    Ident,
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Cmp(Cmp),
    Eof,
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    start: usize,
    end: usize,
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn lex(src: &str) -> Result<Vec<Token>, CompileError> {
    let bytes = src.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let next = bytes.get(i + 1).copied();
        let (tok, len) = match bytes[i] {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'0'..=b'9' => {
                let (tok, end) = lex_number(src, start)?;
                (tok, end - start)
            }
            b'"' => {
                let (s, end) = lex_string(src, start)?;
                (Tok::Str(s), end - start)
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let len = bytes[start..]
                    .iter()
                    .take_while(|b| is_ident_byte(**b))
                    .count();
                (Tok::Ident, len)
            }
            b'(' => (Tok::LParen, 1),
            b')' => (Tok::RParen, 1),
            b',' => (Tok::Comma, 1),
            b'+' => (Tok::Plus, 1),
            b'-' => (Tok::Minus, 1),
            b'*' => (Tok::Star, 1),
            b'/' => (Tok::Slash, 1),
            b'=' if next == Some(b'=') => (Tok::Cmp(Cmp::Eq), 2),
            b'!' if next == Some(b'=') => (Tok::Cmp(Cmp::Ne), 2),
            b'<' if next == Some(b'=') => (Tok::Cmp(Cmp::Le), 2),
            b'>' if next == Some(b'=') => (Tok::Cmp(Cmp::Ge), 2),
            b'<' => (Tok::Cmp(Cmp::Lt), 1),
            b'>' => (Tok::Cmp(Cmp::Gt), 1),
            b'=' => {
                return Err(CompileError::at(
                    src,
                    start,
                    "unexpected `=`; use `==` to compare",
                ));
            }
            b'!' => {
                return Err(CompileError::at(
                    src,
                    start,
                    "unexpected `!`; use `not` to negate",
                ));
            }
            b'&' => return Err(CompileError::at(src, start, "unexpected `&`; use `and`")),
            b'|' => return Err(CompileError::at(src, start, "unexpected `|`; use `or`")),
            b'\'' => {
                return Err(CompileError::at(
                    src,
                    start,
                    "strings are written in double quotes: \"...\"",
                ));
            }
            _ => {
                let c = src[start..].chars().next().unwrap_or('?');
                return Err(CompileError::at(
                    src,
                    start,
                    format!("unexpected character `{c}`"),
                ));
            }
        };
        i = start + len;
        tokens.push(Token { tok, start, end: i });
    }
    tokens.push(Token {
        tok: Tok::Eof,
        start: src.len(),
        end: src.len(),
    });
    Ok(tokens)
}

fn scan_digits(bytes: &[u8], from: usize) -> usize {
    from + bytes[from..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count()
}

/// `\d+(\.\d+)?` starting at `from`; returns its end.
fn scan_decimal(bytes: &[u8], from: usize) -> usize {
    let end = scan_digits(bytes, from);
    if bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit) {
        scan_digits(bytes, end + 1)
    } else {
        end
    }
}

/// A number (`100`, `1.5`, `1e3`) or a duration in seconds (`30s`, `1h30m`, `250ms`).
fn lex_number(src: &str, start: usize) -> Result<(Tok, usize), CompileError> {
    let bytes = src.as_bytes();
    // The whole word, for messages about it.
    let word_end = start
        + bytes[start..]
            .iter()
            .take_while(|b| is_ident_byte(**b) || **b == b'.')
            .count();
    let word = &src[start..word_end];
    let invalid = |what: &str| CompileError::at(src, start, format!("invalid {what} `{word}`"));

    let mut end = scan_decimal(bytes, start);
    let mut exponent = false;
    if matches!(bytes.get(end), Some(b'e' | b'E')) {
        let mut j = end + 1;
        if matches!(bytes.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if bytes.get(j).is_some_and(u8::is_ascii_digit) {
            end = scan_digits(bytes, j);
            exponent = true;
        }
    }
    if exponent || !bytes.get(end).is_some_and(u8::is_ascii_alphabetic) {
        if bytes.get(end).copied().is_some_and(is_ident_byte) {
            return Err(invalid("number"));
        }
        let value: f64 = src[start..end].parse().map_err(|_| invalid("number"))?;
        if !value.is_finite() {
            return Err(CompileError::at(
                src,
                start,
                format!("number `{word}` is too large"),
            ));
        }
        return Ok((Tok::Num(value), end));
    }

    let mut total = 0.0;
    let mut previous_rank = usize::MAX;
    let mut i = start;
    loop {
        let number_end = scan_decimal(bytes, i);
        let n: f64 = src[i..number_end]
            .parse()
            .map_err(|_| invalid("duration"))?;
        let unit_end = number_end
            + bytes[number_end..]
                .iter()
                .take_while(|b| b.is_ascii_alphabetic())
                .count();
        let (rank, secs) = match &src[number_end..unit_end] {
            "ms" => (0, n / 1000.0),
            "s" => (1, n),
            "m" => (2, n * 60.0),
            "h" => (3, n * 3600.0),
            "d" => (4, n * 86_400.0),
            unit => {
                let hint = if unit.is_empty() {
                    String::new()
                } else {
                    format!(" `{unit}`")
                };
                return Err(CompileError::at(
                    src,
                    start,
                    format!(
                        "invalid duration `{word}`: unknown unit{hint}; units are ms, s, m, h, d"
                    ),
                ));
            }
        };
        if rank >= previous_rank {
            return Err(CompileError::at(
                src,
                start,
                format!(
                    "invalid duration `{word}`: units must go from largest to smallest, each at most once (like 1h30m)"
                ),
            ));
        }
        previous_rank = rank;
        total += secs;
        i = unit_end;
        if !bytes.get(i).is_some_and(u8::is_ascii_digit) {
            break;
        }
    }
    if bytes.get(i).copied().is_some_and(is_ident_byte) || bytes.get(i) == Some(&b'.') {
        return Err(invalid("duration"));
    }
    if !f64::is_finite(total) {
        return Err(CompileError::at(
            src,
            start,
            format!("duration `{word}` is too large"),
        ));
    }
    Ok((Tok::Duration(total), i))
}

/// A double-quoted string with `\"`, `\\`, `\n` and `\t` escapes; returns its value and end.
fn lex_string(src: &str, start: usize) -> Result<(String, usize), CompileError> {
    let mut out = String::new();
    let body = start + 1;
    let mut chars = src[body..].char_indices();
    while let Some((offset, c)) = chars.next() {
        match c {
            '"' => return Ok((out, body + offset + 1)),
            '\\' => match chars.next() {
                Some((_, '"')) => out.push('"'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, other)) => {
                    return Err(CompileError::at(
                        src,
                        body + offset,
                        format!(
                            "unknown escape `\\{other}` in string; write `\\\\` for a backslash (a regex `\\d` is written \"\\\\d\")"
                        ),
                    ));
                }
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(CompileError::at(
        src,
        start,
        "unterminated string: missing closing `\"`",
    ))
}

// ---------------------------------------------------------------- parser and type checker

/// Deeper trees and parentheses are refused, so neither parsing nor evaluation can exhaust the stack.
const MAX_DEPTH: u32 = 100;

const FUNCTIONS: [&str; 5] = ["abs", "known", "matches", "max", "min"];

/// A parsed subexpression. `node` is `None` when it was ill-typed; that error is already recorded, and
/// the enclosing expressions stay quiet about it rather than piling up follow-on errors.
struct Typed {
    node: Option<Node>,
    start: usize,
    depth: u32,
}

struct Parser<'s> {
    src: &'s str,
    tokens: Vec<Token>,
    pos: usize,
    scope: Scope,
    /// Type errors: recorded, and parsing goes on to find more.
    errors: Vec<CompileError>,
    nesting: u32,
}

/// A syntax error: parsing stops.
type Fatal = CompileError;

impl<'s> Parser<'s> {
    fn peek(&self) -> &Tok {
        &self.tokens[self.pos].tok
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        let token = &self.tokens[self.pos];
        token.tok == Tok::Ident && &self.src[token.start..token.end] == keyword
    }

    fn advance(&mut self) -> Token {
        let token = self.tokens[self.pos].clone();
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
        token
    }

    fn error(&mut self, offset: usize, message: impl Into<String>) {
        self.errors
            .push(CompileError::at(self.src, offset, message));
    }

    fn fatal(&self, offset: usize, message: impl Into<String>) -> Fatal {
        CompileError::at(self.src, offset, message)
    }

    fn describe(&self, token: &Token) -> String {
        match token.tok {
            Tok::Eof => "the end of the expression".to_string(),
            _ => format!("`{}`", &self.src[token.start..token.end]),
        }
    }

    fn descend(&mut self, offset: usize) -> Result<(), Fatal> {
        self.nesting += 1;
        if self.nesting > MAX_DEPTH {
            return Err(self.fatal(
                offset,
                format!("expression is nested too deeply (more than {MAX_DEPTH} levels)"),
            ));
        }
        Ok(())
    }

    fn ascend(&mut self) {
        self.nesting -= 1;
    }

    fn make(&self, start: usize, child_depth: u32, node: Option<Node>) -> Result<Typed, Fatal> {
        let depth = child_depth + 1;
        if depth > MAX_DEPTH {
            return Err(self.fatal(
                start,
                format!("expression is nested too deeply (more than {MAX_DEPTH} levels)"),
            ));
        }
        Ok(Typed { node, start, depth })
    }

    fn parse_complete(&mut self) -> Result<Typed, Fatal> {
        if *self.peek() == Tok::Eof {
            return Err(self.fatal(0, "empty expression"));
        }
        let typed = self.parse_or()?;
        let token = self.advance();
        match token.tok {
            Tok::Eof => Ok(typed),
            Tok::RParen => Err(self.fatal(token.start, "unexpected `)` without a matching `(`")),
            _ => Err(self.fatal(
                token.start,
                format!(
                    "unexpected {} after a complete expression; missing `and` or `or`?",
                    self.describe(&token)
                ),
            )),
        }
    }

    fn parse_or(&mut self) -> Result<Typed, Fatal> {
        self.descend(self.tokens[self.pos].start)?;
        let mut left = self.parse_and()?;
        while self.peek_keyword("or") {
            let op = self.advance();
            let right = self.parse_and()?;
            left = self.logical(op.start, "or", left, right, Bool::Or)?;
        }
        self.ascend();
        Ok(left)
    }

    fn parse_and(&mut self) -> Result<Typed, Fatal> {
        let mut left = self.parse_not()?;
        while self.peek_keyword("and") {
            let op = self.advance();
            let right = self.parse_not()?;
            left = self.logical(op.start, "and", left, right, Bool::And)?;
        }
        Ok(left)
    }

    fn logical(
        &mut self,
        at: usize,
        op: &str,
        left: Typed,
        right: Typed,
        build: fn(Box<Bool>, Box<Bool>) -> Bool,
    ) -> Result<Typed, Fatal> {
        let node = match (left.node, right.node) {
            (Some(Node::Bool(a)), Some(Node::Bool(b))) => {
                Some(Node::Bool(build(Box::new(a), Box::new(b))))
            }
            (a, b) => {
                self.operand_error(at, op, Type::Bool, a.as_ref(), b.as_ref());
                None
            }
        };
        self.make(left.start, left.depth.max(right.depth), node)
    }

    fn operand_error(
        &mut self,
        at: usize,
        op: &str,
        want: Type,
        left: Option<&Node>,
        right: Option<&Node>,
    ) {
        let wrong: Vec<String> = [("left", left), ("right", right)]
            .into_iter()
            .filter_map(|(side, node)| {
                let ty = node?.ty();
                (ty != want).then(|| format!("the {side} side is a {ty}"))
            })
            .collect();
        if !wrong.is_empty() {
            self.error(
                at,
                format!(
                    "`{op}` needs {} on both sides, but {}",
                    want.plural(),
                    wrong.join(" and ")
                ),
            );
        }
    }

    fn parse_not(&mut self) -> Result<Typed, Fatal> {
        if !self.peek_keyword("not") {
            return self.parse_comparison();
        }
        let op = self.advance();
        self.descend(op.start)?;
        let operand = self.parse_not()?;
        self.ascend();
        let node = match operand.node {
            Some(Node::Bool(b)) => Some(Node::Bool(Bool::Not(Box::new(b)))),
            Some(other) => {
                self.error(
                    op.start,
                    format!("`not` needs a boolean, but its operand is a {}", other.ty()),
                );
                None
            }
            None => None,
        };
        self.make(op.start, operand.depth, node)
    }

    fn parse_comparison(&mut self) -> Result<Typed, Fatal> {
        let left = self.parse_additive()?;
        let Tok::Cmp(op) = *self.peek() else {
            return Ok(left);
        };
        let op_token = self.advance();
        let right = self.parse_additive()?;
        if let Tok::Cmp(_) = self.peek() {
            let at = self.tokens[self.pos].start;
            return Err(self.fatal(
                at,
                "comparisons cannot be chained; combine them with `and` (e.g. `a < b and b < c`)",
            ));
        }
        let symbol = op.symbol();
        let node = match (left.node, right.node) {
            (Some(Node::Num(a)), Some(Node::Num(b))) => {
                Some(Node::Bool(Bool::NumCmp(op, Box::new(a), Box::new(b))))
            }
            (Some(Node::Str(a)), Some(Node::Str(b))) if op.is_equality() => {
                Some(Node::Bool(Bool::StrEq(op, Box::new(a), Box::new(b))))
            }
            (Some(Node::Bool(a)), Some(Node::Bool(b))) if op.is_equality() => {
                Some(Node::Bool(Bool::FlagEq(op, Box::new(a), Box::new(b))))
            }
            (Some(a), Some(b)) if op.is_equality() => {
                self.error(
                    op_token.start,
                    format!(
                        "cannot compare a {} with a {} using `{symbol}`",
                        a.ty(),
                        b.ty()
                    ),
                );
                None
            }
            (a, b) => {
                self.operand_error(op_token.start, symbol, Type::Number, a.as_ref(), b.as_ref());
                None
            }
        };
        self.make(left.start, left.depth.max(right.depth), node)
    }

    fn parse_additive(&mut self) -> Result<Typed, Fatal> {
        let mut left = self.parse_multiplicative()?;
        loop {
            let op = match self.peek() {
                Tok::Plus => Arith::Add,
                Tok::Minus => Arith::Sub,
                _ => return Ok(left),
            };
            let op_token = self.advance();
            let right = self.parse_multiplicative()?;
            left = self.arith(op_token.start, op, left, right)?;
        }
    }

    fn parse_multiplicative(&mut self) -> Result<Typed, Fatal> {
        let mut left = self.parse_unary()?;
        loop {
            let op = match self.peek() {
                Tok::Star => Arith::Mul,
                Tok::Slash => Arith::Div,
                _ => return Ok(left),
            };
            let op_token = self.advance();
            let right = self.parse_unary()?;
            left = self.arith(op_token.start, op, left, right)?;
        }
    }

    fn arith(&mut self, at: usize, op: Arith, left: Typed, right: Typed) -> Result<Typed, Fatal> {
        let node = match (left.node, right.node) {
            (Some(Node::Num(a)), Some(Node::Num(b))) => {
                Some(Node::Num(Num::Arith(op, Box::new(a), Box::new(b))))
            }
            (a, b) => {
                self.operand_error(at, op.symbol(), Type::Number, a.as_ref(), b.as_ref());
                None
            }
        };
        self.make(left.start, left.depth.max(right.depth), node)
    }

    fn parse_unary(&mut self) -> Result<Typed, Fatal> {
        if *self.peek() != Tok::Minus {
            return self.parse_primary();
        }
        let op = self.advance();
        self.descend(op.start)?;
        let operand = self.parse_unary()?;
        self.ascend();
        let node = match operand.node {
            // Folding keeps `-5m` a literal, which prints back as written.
            Some(Node::Num(Num::Lit(x, kind))) => Some(Node::Num(Num::Lit(-x, kind))),
            Some(Node::Num(n)) => Some(Node::Num(Num::Neg(Box::new(n)))),
            Some(other) => {
                self.error(
                    op.start,
                    format!("`-` needs a number, but its operand is a {}", other.ty()),
                );
                None
            }
            None => None,
        };
        self.make(op.start, operand.depth, node)
    }

    fn parse_primary(&mut self) -> Result<Typed, Fatal> {
        let token = self.advance();
        let leaf = |node: Node| {
            Ok(Typed {
                node: Some(node),
                start: token.start,
                depth: 1,
            })
        };
        match token.tok {
            Tok::Num(x) => leaf(Node::Num(Num::Lit(x, Literal::Plain))),
            Tok::Duration(x) => leaf(Node::Num(Num::Lit(x, Literal::Duration))),
            Tok::Str(ref s) => leaf(Node::Str(Str::Lit(s.as_str().into()))),
            Tok::LParen => {
                self.descend(token.start)?;
                let inner = self.parse_or()?;
                let close = self.advance();
                if close.tok != Tok::RParen {
                    let open = CompileError::at(self.src, token.start, "");
                    return Err(self.fatal(
                        close.start,
                        format!(
                            "expected `)` to close the `(` at {}:{}, found {}",
                            open.line,
                            open.col,
                            self.describe(&close)
                        ),
                    ));
                }
                self.ascend();
                Ok(Typed {
                    start: token.start,
                    ..inner
                })
            }
            Tok::Ident => self.parse_name(&token),
            _ => Err(self.fatal(
                token.start,
                format!("expected a value, found {}", self.describe(&token)),
            )),
        }
    }

    fn parse_name(&mut self, token: &Token) -> Result<Typed, Fatal> {
        let src = self.src;
        let name = &src[token.start..token.end];
        let node = match name {
            "true" => Some(Node::Bool(Bool::Lit(true))),
            "false" => Some(Node::Bool(Bool::Lit(false))),
            "not" => {
                return Err(self.fatal(
                    token.start,
                    "expected a value, found `not`; put `not …` in parentheses here",
                ));
            }
            "and" | "or" => {
                return Err(self.fatal(token.start, format!("expected a value, found `{name}`")));
            }
            _ if *self.peek() == Tok::LParen => return self.parse_call(name, token.start),
            _ => match self.scope.field(name) {
                Some(id) => Some(match id.ty() {
                    Type::Number => Node::Num(Num::Field(id)),
                    Type::String => Node::Str(Str::Field(id)),
                    Type::Bool => Node::Bool(Bool::Field(id)),
                }),
                None => {
                    let message = unknown_field_message(self.scope, name);
                    self.error(token.start, message);
                    None
                }
            },
        };
        Ok(Typed {
            node,
            start: token.start,
            depth: 1,
        })
    }

    fn parse_call(&mut self, name: &str, start: usize) -> Result<Typed, Fatal> {
        let open = self.advance();
        self.descend(open.start)?;
        let mut args = Vec::new();
        if *self.peek() == Tok::RParen {
            self.advance();
        } else {
            loop {
                args.push(self.parse_or()?);
                let token = self.advance();
                match token.tok {
                    Tok::Comma => {}
                    Tok::RParen => break,
                    _ => {
                        return Err(self.fatal(
                            token.start,
                            format!(
                                "expected `,` or `)` in the arguments of {name}(), found {}",
                                self.describe(&token)
                            ),
                        ));
                    }
                }
            }
        }
        self.ascend();
        let depth = args.iter().map(|a| a.depth).max().unwrap_or(0);
        let node = match name {
            "abs" => self.call_abs(start, args),
            "min" => self.call_extreme(start, "min", Extreme::Min, args),
            "max" => self.call_extreme(start, "max", Extreme::Max, args),
            "matches" => self.call_matches(start, args),
            "known" => self.call_known(start, args),
            _ => {
                let message = if self.scope.field(name).is_some() {
                    format!(
                        "`{name}` is a field, not a function; functions are {}",
                        FUNCTIONS.join(", ")
                    )
                } else {
                    let hint = suggest(name, FUNCTIONS)
                        .map(|s| format!("did you mean {s}? "))
                        .unwrap_or_default();
                    format!(
                        "unknown function `{name}`; {hint}functions are {}",
                        FUNCTIONS.join(", ")
                    )
                };
                self.error(start, message);
                None
            }
        };
        self.make(start, depth, node)
    }

    fn number_args(&mut self, function: &str, args: Vec<Typed>) -> Option<Vec<Num>> {
        let mut numbers = Vec::with_capacity(args.len());
        let mut ok = true;
        for (i, arg) in args.into_iter().enumerate() {
            match arg.node {
                Some(Node::Num(n)) => numbers.push(n),
                Some(other) => {
                    self.error(
                        arg.start,
                        format!(
                            "argument {} of {function}() must be a number, but it is a {}",
                            i + 1,
                            other.ty()
                        ),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        ok.then_some(numbers)
    }

    fn call_known(&mut self, start: usize, mut args: Vec<Typed>) -> Option<Node> {
        if args.len() != 1 {
            self.error(
                start,
                format!("known() takes exactly one argument, got {}", args.len()),
            );
            return None;
        }
        let arg = args.pop()?.node?;
        Some(Node::Bool(Bool::Known(Box::new(arg))))
    }

    fn call_abs(&mut self, start: usize, args: Vec<Typed>) -> Option<Node> {
        if args.len() != 1 {
            self.error(
                start,
                format!("abs() takes exactly one argument, got {}", args.len()),
            );
            return None;
        }
        let mut numbers = self.number_args("abs", args)?;
        Some(Node::Num(Num::Abs(Box::new(numbers.pop()?))))
    }

    fn call_extreme(
        &mut self,
        start: usize,
        name: &str,
        which: Extreme,
        args: Vec<Typed>,
    ) -> Option<Node> {
        if args.len() < 2 {
            self.error(
                start,
                format!("{name}() takes at least two arguments, got {}", args.len()),
            );
            return None;
        }
        let numbers = self.number_args(name, args)?;
        Some(Node::Num(Num::Extreme(which, numbers)))
    }

    fn call_matches(&mut self, start: usize, args: Vec<Typed>) -> Option<Node> {
        let [subject, pattern]: [Typed; 2] = match args.try_into() {
            Ok(pair) => pair,
            Err(args) => {
                self.error(
                    start,
                    format!(
                        "matches() takes two arguments, a string and a regex literal, like \
                         matches(queue, \"^orders\\\\.\"); got {}",
                        args.len()
                    ),
                );
                return None;
            }
        };
        let subject = match subject.node {
            Some(Node::Str(s)) => Some(s),
            Some(other) => {
                self.error(
                    subject.start,
                    format!(
                        "the first argument of matches() must be a string, but it is a {}",
                        other.ty()
                    ),
                );
                None
            }
            None => None,
        };
        let regex = match pattern.node {
            Some(Node::Str(Str::Lit(p))) => match Regex::new(&p) {
                Ok(re) => Some(re),
                Err(e) => {
                    self.error(
                        pattern.start,
                        format!(
                            "invalid regex {p:?} in matches(): {}",
                            regex_error_summary(&e)
                        ),
                    );
                    None
                }
            },
            Some(_) => {
                self.error(
                    pattern.start,
                    "the second argument of matches() must be a string literal: the regex is \
                     compiled once, when the rule is loaded",
                );
                None
            }
            None => None,
        };
        Some(Node::Bool(Bool::Matches(
            Box::new(subject?),
            Box::new(regex?),
        )))
    }
}

fn unknown_field_message(scope: Scope, name: &str) -> String {
    if FUNCTIONS.contains(&name) {
        return format!("`{name}` is a function; call it like {name}(…)");
    }
    let mut message = format!("unknown field \"{name}\" for scope {scope}");
    let elsewhere = Scope::ALL
        .into_iter()
        .find(|other| *other != scope && other.field(name).is_some());
    if let Some(other) = elsewhere {
        message.push_str(&format!(" (it is a field of scope {other});"));
    } else if let Some(close) = suggest(name, scope.fields().iter().map(|(n, _)| *n)) {
        message.push_str(&format!("; did you mean {close}?"));
    } else {
        message.push(';');
    }
    let valid: Vec<&str> = scope.fields().iter().map(|(n, _)| *n).collect();
    message.push_str(&format!(" valid fields: {}", valid.join(", ")));
    message
}

/// The regex crate's message is a multi-line diagram; its last line says what is wrong.
fn regex_error_summary(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(&text);
    last.trim().trim_start_matches("error: ").to_string()
}

// ---------------------------------------------------------------- tests

/// Field values by name for unit tests (here and in `template`); a missing name is unknown.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct TestEnv(std::collections::HashMap<&'static str, Value<'static>>);

#[cfg(test)]
impl TestEnv {
    pub(crate) fn with(mut self, name: &'static str, value: impl Into<Value<'static>>) -> Self {
        self.0.insert(name, value.into());
        self
    }
}

#[cfg(test)]
impl Env for TestEnv {
    fn get(&self, field: FieldId) -> Option<Value<'_>> {
        self.0.get(field.name()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_env() -> TestEnv {
        TestEnv::default()
            .with("messages", 150.0)
            .with("messages_ready", 120.0)
            .with("consumers", 0.0)
            .with("publish_rate", 12.0)
            .with("consume_rate", 10.0)
            .with("backlog_growth", 0.5)
            .with("drain_eta", f64::INFINITY)
            .with("status", "growing")
            .with("queue", "orders.eu")
            .with("vhost", "/")
            .with("durable", true)
            .with("is_dead_letter_target", false)
    }

    fn eval(src: &str, env: &TestEnv) -> Option<bool> {
        match Expr::compile_bool(src, Scope::Queue) {
            Ok(expr) => expr.eval_bool(env),
            Err(errors) => panic!("{src}: {errors:?}"),
        }
    }

    fn errors(src: &str) -> Vec<CompileError> {
        match Expr::compile(src, Scope::Queue) {
            Ok(expr) => panic!("{src} compiled to {expr}"),
            Err(errors) => errors,
        }
    }

    fn canonical(src: &str) -> String {
        match Expr::compile(src, Scope::Queue) {
            Ok(expr) => expr.to_string(),
            Err(errors) => panic!("{src}: {errors:?}"),
        }
    }

    #[test]
    fn precedence_and_associativity() {
        let env = queue_env();
        let cases = [
            // multiplicative binds tighter than additive
            ("1 + 2 * 3 == 7", true),
            ("(1 + 2) * 3 == 9", true),
            // left associativity
            ("10 - 4 - 3 == 3", true),
            ("12 / 2 / 3 == 2", true),
            // unary minus binds tightest
            ("-2 * 3 == -6", true),
            ("- -2 == 2", true),
            ("2 - -2 == 4", true),
            // and binds tighter than or
            ("true or false and false", true),
            ("(true or false) and false", false),
            // not binds looser than comparison, tighter than and
            ("not 1 > 2", true),
            ("not false and false", false),
            ("not not true", true),
            // arithmetic on fields, the example of docs/rules.md
            (
                "publish_rate > consume_rate * 1.1 and backlog_growth > 0 and messages_ready > 100",
                true,
            ),
            ("publish_rate > consume_rate * 1.3", false),
            ("messages - messages_ready == 30", true),
            (
                "abs(-3) == 3 and min(3, 1, 2) == 1 and max(3, 1, 2) == 3",
                true,
            ),
            ("min(messages, 100) + max(consumers, 1) == 101", true),
        ];
        for (i, (src, want)) in cases.into_iter().enumerate() {
            assert_eq!(eval(src, &env), Some(want), "case {i}: {src}");
        }
    }

    #[test]
    fn canonical_form_keeps_only_needed_parentheses() {
        let cases = [
            ("messages+1*2", "messages + 1 * 2"),
            ("(messages + 1) * 2", "(messages + 1) * 2"),
            (
                "messages - (messages_ready - 1)",
                "messages - (messages_ready - 1)",
            ),
            (
                "(messages - messages_ready) - 1",
                "messages - messages_ready - 1",
            ),
            ("-(messages + 1) > 0", "-(messages + 1) > 0"),
            ("- - messages > 0", "--messages > 0"),
            ("not (durable and true)", "not (durable and true)"),
            ("(not durable) and true", "not durable and true"),
            ("durable or (true and false)", "durable or true and false"),
            ("(durable or true) and false", "(durable or true) and false"),
            ("(1 > 2) == durable", "(1 > 2) == durable"),
            ("idle_for > 1h30m", "idle_for > 1h30m"),
            ("idle_for > 5400s", "idle_for > 1h30m"),
            ("idle_for > 1.5h", "idle_for > 1h30m"),
            ("idle_for > 250ms", "idle_for > 250ms"),
            ("idle_for > -5m", "idle_for > -5m"),
            ("idle_for>1e3", "idle_for > 1000"),
            (
                "matches(queue, \"^orders\\\\.\")",
                "matches(queue, \"^orders\\\\.\")",
            ),
            (
                "status == \"say \\\"hi\\\"\"",
                "status == \"say \\\"hi\\\"\"",
            ),
        ];
        for (i, (src, want)) in cases.into_iter().enumerate() {
            let printed = canonical(src);
            assert_eq!(printed, want, "case {i}: {src}");
            assert_eq!(
                canonical(&printed),
                printed,
                "case {i}: reprint of {printed}"
            );
        }
    }

    #[test]
    fn three_valued_logic() {
        // durable and is_dead_letter_target; "U" leaves the field unknown.
        let value = |v: &str| match v {
            "T" => Some(true),
            "F" => Some(false),
            _ => None,
        };
        let table = [
            // a, b, a and b, a or b
            ("T", "T", Some(true), Some(true)),
            ("T", "F", Some(false), Some(true)),
            ("T", "U", None, Some(true)),
            ("F", "T", Some(false), Some(true)),
            ("F", "F", Some(false), Some(false)),
            ("F", "U", Some(false), None),
            ("U", "T", None, Some(true)),
            ("U", "F", Some(false), None),
            ("U", "U", None, None),
        ];
        for (i, (a, b, and, or)) in table.into_iter().enumerate() {
            let mut env = TestEnv::default();
            if let Some(a) = value(a) {
                env = env.with("durable", a);
            }
            if let Some(b) = value(b) {
                env = env.with("is_dead_letter_target", b);
            }
            assert_eq!(
                eval("durable and is_dead_letter_target", &env),
                and,
                "case {i}: and"
            );
            assert_eq!(
                eval("durable or is_dead_letter_target", &env),
                or,
                "case {i}: or"
            );
            assert_eq!(
                eval("not durable", &env),
                value(a).map(|a| !a),
                "case {i}: not"
            );
        }
    }

    #[test]
    fn unknown_operands_make_comparisons_and_functions_unknown() {
        let env = TestEnv::default()
            .with("messages", 10.0)
            .with("status", "ok");
        let cases = [
            ("publish_rate > 0", None),
            ("publish_rate + 1 > 0", None),
            ("-publish_rate < 0", None),
            ("min(messages, publish_rate) > 0", None),
            ("max(publish_rate, messages) > 0", None),
            ("abs(publish_rate) >= 0", None),
            ("queue == \"x\"", None),
            ("matches(queue, \"x\")", None),
            ("durable == true", None),
            ("publish_rate > 0 and messages > 100", Some(false)),
            ("publish_rate > 0 or messages > 5", Some(true)),
            ("not (publish_rate > 0)", None),
            ("messages > 5 and status == \"ok\"", Some(true)),
        ];
        for (i, (src, want)) in cases.into_iter().enumerate() {
            assert_eq!(eval(src, &env), want, "case {i}: {src}");
        }
    }

    #[test]
    fn known_says_whether_a_value_exists_and_is_never_unknown_itself() {
        let env = TestEnv::default()
            .with("messages", 10.0)
            .with("status", "ok")
            .with("durable", true);
        let cases = [
            ("known(messages)", Some(true)),
            ("known(publish_rate)", Some(false)),
            ("known(publish_rate * 2 + messages)", Some(false)),
            ("known(status)", Some(true)),
            ("known(queue)", Some(false)),
            ("known(durable)", Some(true)),
            ("known(is_dead_letter_target)", Some(false)),
            ("known(publish_rate > 0 or messages > 5)", Some(true)),
            // The default pack's exemption: an unknown topology exempts nobody.
            (
                "messages > 5 and not (known(is_dead_letter_target) and is_dead_letter_target)",
                Some(true),
            ),
        ];
        for (i, (src, want)) in cases.into_iter().enumerate() {
            assert_eq!(eval(src, &env), want, "case {i}: {src}");
        }
        let exempt = env.with("is_dead_letter_target", true);
        assert_eq!(
            eval(
                "messages > 5 and not (known(is_dead_letter_target) and is_dead_letter_target)",
                &exempt
            ),
            Some(false)
        );
        let printed = Expr::compile_bool("known( publish_rate+1 )", Scope::Queue)
            .unwrap()
            .to_string();
        assert_eq!(printed, "known(publish_rate + 1)");
        assert_eq!(
            Expr::compile_bool(&printed, Scope::Queue)
                .unwrap()
                .referenced_fields(),
            ["publish_rate"]
        );
        assert!(
            errors("known(messages, status)")[0]
                .message
                .contains("exactly one argument")
        );
    }

    #[test]
    fn infinities_and_nan_follow_ieee() {
        let env = queue_env().with("consume_rate", 0.0);
        let cases = [
            ("drain_eta > 3600", true),
            ("drain_eta > 1h", true),
            ("drain_eta == drain_eta", true),
            ("-drain_eta < 0", true),
            ("messages / consume_rate > 1e300", true),
            ("-messages / consume_rate < 0", true),
            ("consume_rate / consume_rate > 0", false),
            ("consume_rate / consume_rate < 0", false),
            (
                "consume_rate / consume_rate == consume_rate / consume_rate",
                false,
            ),
            ("consume_rate / consume_rate != 0", true),
            ("min(consume_rate / consume_rate, 5) < 10", false),
            ("max(consume_rate / consume_rate, 5) > 0", false),
            ("min(drain_eta, 60) == 60", true),
        ];
        for (i, (src, want)) in cases.into_iter().enumerate() {
            assert_eq!(eval(src, &env), Some(want), "case {i}: {src}");
        }
    }

    #[test]
    fn durations_are_seconds() {
        let env = TestEnv::default();
        let cases = [
            ("30s == 30", true),
            ("5m == 300", true),
            ("1h == 3600", true),
            ("1h30m == 5400", true),
            ("250ms == 0.25", true),
            ("2d == 172800", true),
            ("1.5h == 90m", true),
            ("1d2h3m4s5ms == 93784.005", true),
            ("-5m == -300", true),
        ];
        for (i, (src, want)) in cases.into_iter().enumerate() {
            assert_eq!(eval(src, &env), Some(want), "case {i}: {src}");
        }
    }

    #[test]
    fn strings_booleans_and_regexes() {
        let env = queue_env();
        let cases = [
            ("status == \"growing\"", true),
            ("status != \"growing\"", false),
            ("\"a\\\"b\" == \"a\\\"b\"", true),
            ("durable == true", true),
            ("durable != is_dead_letter_target", true),
            ("matches(queue, \"^orders\\\\.\")", true),
            ("matches(queue, \"^payments\")", false),
            ("matches(\"abc\", \"b\")", true),
            (
                "matches(vhost, \"^/$\") and not is_dead_letter_target",
                true,
            ),
        ];
        for (i, (src, want)) in cases.into_iter().enumerate() {
            assert_eq!(eval(src, &env), Some(want), "case {i}: {src}");
        }
    }

    #[test]
    fn syntax_and_type_errors_carry_their_position() {
        // (source, line, col, part of the message)
        let cases = [
            (
                "publish_rate > \"x\"",
                1,
                14,
                "`>` needs numbers on both sides, but the right side is a string",
            ),
            ("status > 1", 1, 8, "the left side is a string"),
            (
                "status == 1",
                1,
                8,
                "cannot compare a string with a number using `==`",
            ),
            (
                "durable + 1 > 0",
                1,
                9,
                "`+` needs numbers on both sides, but the left side is a boolean",
            ),
            (
                "messages and durable",
                1,
                10,
                "`and` needs booleans on both sides, but the left side is a number",
            ),
            (
                "not messages",
                1,
                1,
                "`not` needs a boolean, but its operand is a number",
            ),
            ("-status == \"x\"", 1, 1, "`-` needs a number"),
            (
                "messages >",
                1,
                11,
                "expected a value, found the end of the expression",
            ),
            (
                "(messages > 1",
                1,
                14,
                "expected `)` to close the `(` at 1:1",
            ),
            (
                "messages > 1)",
                1,
                13,
                "unexpected `)` without a matching `(`",
            ),
            (
                "messages > 1 consumers > 0",
                1,
                14,
                "missing `and` or `or`?",
            ),
            ("1 < messages < 5", 1, 14, "comparisons cannot be chained"),
            ("messages = 1", 1, 10, "use `==`"),
            ("durable && true", 1, 9, "use `and`"),
            ("status == 'x'", 1, 11, "double quotes"),
            ("status == \"x", 1, 11, "unterminated string"),
            ("matches(queue, \"\\d+\")", 1, 17, "unknown escape `\\d`"),
            ("idle_for > 5min", 1, 12, "unknown unit `min`"),
            ("idle_for > 30m1h", 1, 12, "largest to smallest"),
            ("idle_for > 5m5m", 1, 12, "largest to smallest"),
            ("messages > 100x", 1, 12, "unknown unit `x`"),
            ("messages > 1e999", 1, 12, "too large"),
            (
                "messages > 1 and\n  consumers == \"none\"",
                2,
                13,
                "cannot compare a number with a string",
            ),
            (
                "messages > 1 and\n\tdurable and\n\tstatus + 1 > 2",
                3,
                9,
                "`+` needs numbers",
            ),
            ("", 1, 1, "empty expression"),
            ("status == ☃", 1, 11, "unexpected character `☃`"),
            ("foo(messages)", 1, 1, "unknown function `foo`"),
            ("mni(messages, 1) > 0", 1, 1, "did you mean min?"),
            (
                "messages(1) > 0",
                1,
                1,
                "`messages` is a field, not a function",
            ),
            (
                "abs(1, 2) > 0",
                1,
                1,
                "abs() takes exactly one argument, got 2",
            ),
            ("min(1) > 0", 1, 1, "min() takes at least two arguments"),
            (
                "max(1, status) > 0",
                1,
                8,
                "argument 2 of max() must be a number",
            ),
            (
                "matches(messages, \"x\")",
                1,
                9,
                "first argument of matches() must be a string",
            ),
            ("matches(queue, status)", 1, 16, "must be a string literal"),
            ("matches(queue)", 1, 1, "matches() takes two arguments"),
            ("matches > 1", 1, 1, "`matches` is a function"),
            (
                "messages > not durable",
                1,
                12,
                "put `not …` in parentheses",
            ),
        ];
        for (i, (src, line, col, message)) in cases.into_iter().enumerate() {
            let errs = errors(src);
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
    fn every_type_error_is_reported_not_just_the_first() {
        let errs = errors("publsh_rate > 1 and status > 2 or durable + 1 > 0 and nope");
        let found: Vec<(u64, &str)> = errs.iter().map(|e| (e.col, e.message.as_str())).collect();
        assert_eq!(errs.len(), 4, "{found:?}");
        assert_eq!(
            errs.iter().map(|e| e.col).collect::<Vec<_>>(),
            [1, 28, 43, 55]
        );
        // The expression around an ill-typed part stays quiet instead of adding follow-on errors.
        assert_eq!(errors("(status + 1) * 2 > 0 and true").len(), 1);
    }

    #[test]
    fn unknown_field_suggests_and_lists_the_scope_fields() {
        let errs = errors("publsh_rate > 0");
        assert_eq!(errs.len(), 1);
        assert_eq!((errs[0].line, errs[0].col), (1, 1));
        assert!(
            errs[0].message.starts_with(
                "unknown field \"publsh_rate\" for scope queue; did you mean publish_rate? valid fields: messages, messages_ready, "
            ),
            "{}",
            errs[0]
        );
        assert!(
            errs[0]
                .message
                .ends_with("durable, is_dead_letter_target, is_retry_queue"),
            "{}",
            errs[0]
        );

        let cases = [
            (Scope::Queue, "Messages > 0", "did you mean messages?"),
            (
                Scope::Queue,
                "mem_alarm",
                "(it is a field of scope node); valid fields: messages,",
            ),
            (Scope::Node, "disk_alrm", "did you mean disk_alarm?"),
            (
                Scope::Cluster,
                "zzz",
                "for scope cluster; valid fields: reachable, nodes_running",
            ),
            (
                Scope::Probe,
                "probe_latncy > 1",
                "did you mean probe_latency? valid fields: probe_ok",
            ),
        ];
        for (i, (scope, src, message)) in cases.into_iter().enumerate() {
            let errs = Expr::compile(src, scope).expect_err(src);
            assert!(errs[0].message.contains(message), "case {i}: {}", errs[0]);
        }
    }

    #[test]
    fn invalid_regex_is_a_compile_error_at_the_pattern() {
        let errs = errors("matches(queue, \"orders(\") and\n matches(vhost, \"[a-\")");
        assert_eq!(errs.len(), 2);
        assert_eq!((errs[0].line, errs[0].col), (1, 16));
        assert_eq!(
            errs[0].message,
            "invalid regex \"orders(\" in matches(): unclosed group"
        );
        assert_eq!((errs[1].line, errs[1].col), (2, 17));
        assert!(
            errs[1].message.starts_with("invalid regex \"[a-\""),
            "{}",
            errs[1]
        );
    }

    #[test]
    fn rule_expressions_must_be_conditions() {
        let errs = Expr::compile_bool("  messages * 2", Scope::Queue).expect_err("number");
        assert_eq!((errs[0].line, errs[0].col), (1, 3));
        assert!(
            errs[0].message.contains("but this one is a number"),
            "{}",
            errs[0]
        );
        assert!(
            errs[0].message.contains("`messages * 2 > 0`"),
            "{}",
            errs[0]
        );
        let errs = Expr::compile_bool("status", Scope::Queue).expect_err("string");
        assert!(
            errs[0].message.ends_with("e.g. `status == \"…\"`"),
            "{}",
            errs[0]
        );

        let expr = Expr::compile("messages * 2", Scope::Queue).expect("number");
        assert_eq!(expr.ty(), Type::Number);
        assert_eq!(expr.eval_number(&queue_env()), Some(300.0));
        assert_eq!(expr.eval(&queue_env()), Some(Value::Num(300.0)));
        assert_eq!(expr.eval_bool(&queue_env()), None);
        let status = Expr::compile("status", Scope::Queue).expect("string");
        let env = queue_env();
        assert_eq!(status.eval(&env), Some(Value::from("growing")));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let parens = format!("{}true{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(errors(&parens)[0].message.contains("nested too deeply"));
        let chain = vec!["messages"; 10_000].join(" + ") + " > 0";
        assert!(errors(&chain)[0].message.contains("nested too deeply"));
        let nots = "not ".repeat(10_000) + "true";
        assert!(errors(&nots)[0].message.contains("nested too deeply"));
        // Realistic expressions are far from the limit.
        let fine = vec!["messages > 0"; 50].join(" and ");
        assert!(Expr::compile_bool(&fine, Scope::Queue).is_ok());
    }

    #[test]
    fn referenced_fields_are_listed_once_in_order() {
        let expr = Expr::compile_bool(
            "publish_rate > consume_rate * 1.1 and matches(queue, \"x\") and publish_rate > 0 or durable",
            Scope::Queue,
        )
        .expect("valid");
        assert_eq!(
            expr.referenced_fields(),
            ["publish_rate", "consume_rate", "queue", "durable"]
        );
    }

    #[test]
    fn scopes_and_field_ids() {
        assert_eq!(Scope::parse("queue"), Some(Scope::Queue));
        assert_eq!(Scope::parse("probe"), Some(Scope::Probe));
        assert_eq!(Scope::parse("Queue"), None);
        for scope in Scope::ALL {
            for (i, (name, ty)) in fields(scope).iter().enumerate() {
                let id = scope.field(name).expect("listed field resolves");
                assert_eq!(
                    (id.index(), id.name(), id.ty(), id.scope()),
                    (i, *name, *ty, scope)
                );
            }
        }
        assert_eq!(
            field::queue::PUBLISH_RATE,
            Scope::Queue.field("publish_rate").expect("exists")
        );
        assert_eq!(field::queue::IS_DEAD_LETTER_TARGET.ty(), Type::Bool);
        assert_eq!(field::node::NODE.name(), "node");
        assert_eq!(field::cluster::STATS_MODE.ty(), Type::String);
        assert_eq!(field::probe::VHOST.index(), 5);
        assert_ne!(field::queue::CLUSTER, field::node::CLUSTER);
    }

    #[test]
    fn env_implementations_match_on_field_constants() {
        struct Queue<'q> {
            name: &'q str,
            ready: f64,
        }
        impl Env for Queue<'_> {
            fn get(&self, id: FieldId) -> Option<Value<'_>> {
                match id {
                    field::queue::QUEUE => Some(Value::from(self.name)),
                    field::queue::MESSAGES_READY => Some(Value::Num(self.ready)),
                    _ => None,
                }
            }
        }
        let name = String::from("orders.eu");
        let q = Queue {
            name: &name,
            ready: 3.0,
        };
        let expr = Expr::compile_bool(
            "matches(queue, \"^orders\") and messages_ready > 2",
            Scope::Queue,
        )
        .expect("valid");
        assert_eq!(expr.eval_bool(&q), Some(true));
        let dyn_env: &dyn Env = &q;
        assert_eq!(expr.eval_bool(dyn_env), Some(true));
    }
}
