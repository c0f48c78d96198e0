//! Alerting rules: rule files → typed `Rule`s, and their evaluation over a cluster's latest view.
//!
//! Owns the rule file format (Prometheus-shaped YAML, `load`), the expression language (`expr`),
//! annotation templates (`template`) and `evaluate`, which turns a `ClusterView` into the outcomes the
//! alert state machine consumes. Loading reads files; evaluation is pure (`now` is passed in).

pub mod eval;
pub mod expr;
pub mod load;
pub mod template;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;

pub use eval::{Outcome, evaluate};
pub use expr::Scope;
pub use load::{RuleFile, load_files, parse_file};

/// `mode:` — feature-flag a rule. Shadow rules are evaluated and recorded but never notify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Active,
    Shadow,
    Off,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Active => "active",
            Mode::Shadow => "shadow",
            Mode::Off => "off",
        }
    }
}

/// One compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub alert: String,
    pub group: String,
    pub scope: Scope,
    /// Regex filters on identity fields (`cluster`, `vhost`, `queue`, `node`); all must match.
    pub select: Vec<(SelectOn, Regex)>,
    pub expr: expr::Expr,
    /// Hysteresis: once firing, the alert resolves only when this holds.
    pub clear: Option<expr::Expr>,
    pub for_: Duration,
    pub keep_firing_for: Duration,
    pub mode: Mode,
    pub labels: BTreeMap<String, String>,
    pub annotations: Vec<(String, template::Template)>,
    /// Where the rule was defined, for messages.
    pub file: PathBuf,
    pub line: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectOn {
    Cluster,
    Vhost,
    Queue,
    Node,
    Probe,
}

impl SelectOn {
    pub fn as_str(self) -> &'static str {
        match self {
            SelectOn::Cluster => "cluster",
            SelectOn::Vhost => "vhost",
            SelectOn::Queue => "queue",
            SelectOn::Node => "node",
            SelectOn::Probe => "probe",
        }
    }
}

/// All loaded rules, in file order.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
}

impl RuleSet {
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}
