//! Alerting rules: rule files → typed `Rule`s, and their evaluation over a cluster's latest view.
//!
//! Owns the rule file format (Prometheus-shaped YAML, `load`), the expression language (`expr`),
//! annotation templates (`template`) and `evaluate`, which turns a `ClusterView` into the outcomes the
//! alert state machine consumes. Loading reads files; evaluation is pure (`now` is passed in).

pub mod eval;
pub mod export;
pub mod expr;
pub mod load;
pub mod template;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;

use crate::domain::StatsMode;

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
    Stream,
    Consumer,
}

impl SelectOn {
    pub fn as_str(self) -> &'static str {
        match self {
            SelectOn::Cluster => "cluster",
            SelectOn::Vhost => "vhost",
            SelectOn::Queue => "queue",
            SelectOn::Node => "node",
            SelectOn::Probe => "probe",
            SelectOn::Stream => "stream",
            SelectOn::Consumer => "consumer",
        }
    }
}

/// All loaded rules, in file order.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
}

/// Queue fields only the broker's message counters can supply: unknown for every queue of a cluster
/// in depth-only mode (`disable_stats`, `rates_mode: none`).
pub const COUNTER_FIELDS: [&str; 7] = [
    "publish_rate",
    "deliver_rate",
    "ack_rate",
    "consume_rate",
    "redeliver_rate",
    "discard_rate",
    "idle_for",
];

impl Rule {
    /// Whether the rule judges cluster `name` (its `select: cluster`, if any).
    pub fn selects_cluster(&self, name: &str) -> bool {
        self.select
            .iter()
            .filter(|(on, _)| *on == SelectOn::Cluster)
            .all(|(_, re)| re.is_match(name))
    }

    /// The fields its `expr` and `clear` read that a cluster in `mode` can never supply: a rule
    /// reading them never fires on that cluster (or only through its other operands).
    pub fn unsupplied_fields(&self, mode: StatsMode) -> Vec<&'static str> {
        if self.scope != Scope::Queue || mode != StatsMode::DepthOnly {
            return Vec::new();
        }
        let mut fields = self.expr.referenced_fields();
        if let Some(clear) = &self.clear {
            fields.extend(clear.referenced_fields());
        }
        let mut out: Vec<&'static str> = Vec::new();
        for f in fields {
            if COUNTER_FIELDS.contains(&f) && !out.contains(&f) {
                out.push(f);
            }
        }
        out
    }
}

impl RuleSet {
    /// The rules (active or shadow) that read a field cluster `name` cannot supply in `mode`, with
    /// those fields: what `/api/v1/status` shows and the daemon warns about once per rule and cluster.
    pub fn unsupplied(&self, name: &str, mode: StatsMode) -> Vec<(&Rule, Vec<&'static str>)> {
        self.rules
            .iter()
            .filter(|r| r.mode != Mode::Off && r.selects_cluster(name))
            .map(|r| (r, r.unsupplied_fields(mode)))
            .filter(|(_, f)| !f.is_empty())
            .collect()
    }

    /// Probe rules (active or shadow) that no cluster with canaries selects: every field they read
    /// is unknown for good, since without a `probe:` entry there is no round trip to judge. Known
    /// from the config alone, so `rabbitwatch check` warns. `clusters` is each cluster's name and
    /// whether it has a `probe:` entry.
    pub fn probe_rules_without_probes(&self, clusters: &[(&str, bool)]) -> Vec<&Rule> {
        self.rules
            .iter()
            .filter(|r| r.mode != Mode::Off && r.scope == Scope::Probe)
            .filter(|r| {
                !clusters
                    .iter()
                    .any(|(name, probed)| *probed && r.selects_cluster(name))
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn rules(yaml: &str) -> RuleSet {
        let file = parse_file(Path::new("r.yaml"), yaml).unwrap_or_else(|e| panic!("{e:?}"));
        RuleSet { rules: file.rules }
    }

    #[test]
    fn depth_only_clusters_cannot_supply_counter_fields() {
        let set = rules(
            r#"groups:
  - name: g
    rules:
      - alert: Rates
        scope: queue
        expr: publish_rate > consume_rate and messages > 10
        clear: idle_for > 60 or publish_rate == 0
      - alert: Depth
        scope: queue
        expr: messages > 10 and backlog_growth > 0
      - alert: ProdOnly
        scope: queue
        select: { cluster: "prod" }
        expr: redeliver_rate > 1
      - alert: Disabled
        scope: queue
        mode: off
        expr: ack_rate > 1
      - alert: Node
        scope: node
        expr: mem_alarm
"#,
        );
        let got = |cluster: &str, mode| -> Vec<(String, Vec<&str>)> {
            set.unsupplied(cluster, mode)
                .into_iter()
                .map(|(r, f)| (r.alert.clone(), f))
                .collect()
        };
        assert_eq!(
            got("local", StatsMode::DepthOnly),
            [(
                "Rates".to_string(),
                vec!["publish_rate", "consume_rate", "idle_for"]
            )]
        );
        assert_eq!(got("prod", StatsMode::DepthOnly).len(), 2);
        assert!(got("prod", StatsMode::Full).is_empty());
    }

    #[test]
    fn probe_rules_need_a_selected_cluster_with_a_probe() {
        let set = rules(
            r#"groups:
  - name: g
    rules:
      - alert: Any
        scope: probe
        expr: not probe_ok
      - alert: Staging
        scope: probe
        select: { cluster: "staging" }
        expr: probe_latency > 1
"#,
        );
        let names = |clusters: &[(&str, bool)]| -> Vec<String> {
            set.probe_rules_without_probes(clusters)
                .iter()
                .map(|r| r.alert.clone())
                .collect()
        };
        assert_eq!(names(&[("prod", false)]), ["Any", "Staging"]);
        assert_eq!(names(&[("prod", true), ("staging", false)]), ["Staging"]);
        assert!(names(&[("prod", false), ("staging", true)]).is_empty());
    }
}
