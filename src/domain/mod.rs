//! Shared vocabulary: the names every module agrees on (Alertmanager's `types`).
//!
//! Owns plain data types that cross module borders: queue keys, timestamps, severities, label
//! matchers, silences, secrets and the notifications receivers are handed. It must never do I/O or
//! depend on another module of this crate, so every layer can use it (see `layering`).

mod histogram;
mod matcher;
mod notification;
mod secret;

pub use histogram::Histogram;
pub use matcher::{MatchOp, Matcher, Silence};
pub use notification::{
    AlertStatus, AlertSummary, GroupStatus, Notification, ScalingMetrics, ScalingRequest,
    fingerprint,
};
pub use secret::Secret;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Milliseconds since the Unix epoch. The pure modules (`snapshot`, `analysis`, `view`, `rules`,
/// `alerts`) are handed `now` and never call `Timestamp::now` themselves (`layering` checks it), so
/// every behaviour of theirs is a deterministic test; the I/O edges read the clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn from_secs_f64(secs: f64) -> Self {
        Timestamp((secs * 1000.0) as i64)
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }

    /// Seconds from `earlier` to `self` (negative if `earlier` is later).
    pub fn secs_since(self, earlier: Timestamp) -> f64 {
        (self.0 - earlier.0) as f64 / 1000.0
    }

    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(d.as_millis() as i64)
    }
}

/// Identifies one queue within one cluster. Vhost names repeat across thousands of queues, so they are shared.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueKey {
    pub vhost: Arc<str>,
    pub name: Box<str>,
}

impl fmt::Display for QueueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.vhost, self.name)
    }
}

/// Alert severity, ordered from least to most urgent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// How much the broker tells us: `Full` has message counters, `DepthOnly` only queue depths
/// (`disable_stats`, `rates_mode: none`), so rates are unknown rather than zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum StatsMode {
    #[default]
    Full,
    DepthOnly,
}

impl StatsMode {
    pub const ALL: [StatsMode; 2] = [StatsMode::Full, StatsMode::DepthOnly];

    pub fn as_str(self) -> &'static str {
        match self {
            StatsMode::Full => "full",
            StatsMode::DepthOnly => "depth_only",
        }
    }
}

/// Serde for maps of numbers that may be ±Inf or NaN (a drain ETA of +Inf means "never"): JSON has
/// no such numbers, so they are written as the strings "+Inf", "-Inf", "NaN", as Prometheus does.
pub mod float_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Num {
        Finite(f64),
        Special(String),
    }

    pub fn serialize<S: Serializer>(map: &BTreeMap<String, f64>, s: S) -> Result<S::Ok, S::Error> {
        let out: BTreeMap<&String, Num> = map
            .iter()
            .map(|(k, v)| {
                let n = if v.is_finite() {
                    Num::Finite(*v)
                } else if v.is_nan() {
                    Num::Special("NaN".into())
                } else if *v > 0.0 {
                    Num::Special("+Inf".into())
                } else {
                    Num::Special("-Inf".into())
                };
                (k, n)
            })
            .collect();
        out.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
        let raw: BTreeMap<String, Option<Num>> = BTreeMap::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| {
                let x = match v {
                    Some(Num::Finite(x)) => x,
                    Some(Num::Special(s)) => match s.as_str() {
                        "+Inf" | "Inf" => f64::INFINITY,
                        "-Inf" => f64::NEG_INFINITY,
                        "NaN" => f64::NAN,
                        other => {
                            return Err(serde::de::Error::custom(format!(
                                "not a number: {other:?}"
                            )));
                        }
                    },
                    // Older records wrote non-finite values as null.
                    None => f64::NAN,
                };
                Ok((k, x))
            })
            .collect()
    }
}

/// One problem in a file the user wrote (config, rules, rule tests), with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u64,
    pub col: u64,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_orders_by_urgency() {
        assert!(Severity::Critical > Severity::Warning);
        assert!(Severity::Warning > Severity::Info);
    }

    #[test]
    fn infinite_values_survive_a_json_round_trip() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct V {
            #[serde(with = "float_map")]
            v: std::collections::BTreeMap<String, f64>,
        }
        let v = V {
            v: [
                ("eta".to_string(), f64::INFINITY),
                ("rate".to_string(), 2.5),
            ]
            .into(),
        };
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, r#"{"v":{"eta":"+Inf","rate":2.5}}"#);
        let back: V = serde_json::from_str(&json).unwrap();
        assert_eq!(back.v["eta"], f64::INFINITY);
    }

    #[test]
    fn secs_since_is_signed() {
        assert_eq!(Timestamp(5_500).secs_since(Timestamp(1_000)), 4.5);
        assert_eq!(Timestamp(1_000).secs_since(Timestamp(2_000)), -1.0);
    }
}
