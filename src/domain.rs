//! Shared vocabulary: the names every module agrees on.
//!
//! Owns plain data types only; it must never do I/O or depend on another module.

use std::fmt;
use std::sync::Arc;

/// Milliseconds since the Unix epoch. Passed into pure code as `now` so nothing below `app` reads the clock.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_orders_by_urgency() {
        assert!(Severity::Critical > Severity::Warning);
        assert!(Severity::Warning > Severity::Info);
    }

    #[test]
    fn secs_since_is_signed() {
        assert_eq!(Timestamp(5_500).secs_since(Timestamp(1_000)), 4.5);
        assert_eq!(Timestamp(1_000).secs_since(Timestamp(2_000)), -1.0);
    }
}
