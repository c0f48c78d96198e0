//! Liveness of the daemon's own loops: every long-running loop (a poll loop per cluster, the
//! dispatcher tick, an outbox worker per receiver) marks progress on its `Beat`; `/healthz` and the
//! watchdog judge the beats with the same pure function, so what `/healthz` reports is what the
//! watchdog acts on, only earlier.
//!
//! A loop is *unhealthy* after 3 of its intervals plus `grace` without progress (`/healthz` 503), and
//! *stuck* after 5 intervals plus twice `grace` (the watchdog exits with status 70 so the supervisor
//! restarts the daemon: die rather than limp). Every wait inside a loop is bounded (request timeouts,
//! the poll-cycle deadline), so only a bug can make a loop stop beating.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::domain::Timestamp;

/// Exit status of a watchdog exit: EX_SOFTWARE, an internal error.
pub const EXIT_STUCK: i32 = 70;

/// `watchdog.grace` default: `/healthz` fails after 3 intervals + 30 s, the watchdog exits after 5
/// intervals + 60 s.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// One loop's progress mark.
#[derive(Debug)]
pub struct Beat {
    /// `poll:<cluster>`, `dispatcher`, `outbox:<receiver>`.
    pub name: String,
    /// How often the loop is expected to make progress when all is well.
    pub interval: Duration,
    last_ms: AtomicI64,
}

impl Beat {
    pub fn new(name: impl Into<String>, interval: Duration, now: Timestamp) -> Arc<Beat> {
        Arc::new(Beat {
            name: name.into(),
            interval,
            last_ms: AtomicI64::new(now.0),
        })
    }

    pub fn mark(&self, now: Timestamp) {
        self.last_ms.fetch_max(now.0, Ordering::Relaxed);
    }

    pub fn last(&self) -> Timestamp {
        Timestamp(self.last_ms.load(Ordering::Relaxed))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// `/healthz` answers 503.
    Unhealthy,
    /// The watchdog exits.
    Stuck,
}

/// The limits, in seconds, for a loop with `interval`: (unhealthy after, stuck after).
pub fn limits(interval: Duration, grace: Duration) -> (f64, f64) {
    let (i, g) = (interval.as_secs_f64(), grace.as_secs_f64());
    (3.0 * i + g, 5.0 * i + 2.0 * g)
}

/// The verdict on a loop idle for `idle_s` seconds.
pub fn judge(idle_s: f64, interval: Duration, grace: Duration) -> Verdict {
    let (unhealthy, stuck) = limits(interval, grace);
    if idle_s > stuck {
        Verdict::Stuck
    } else if idle_s > unhealthy {
        Verdict::Unhealthy
    } else {
        Verdict::Ok
    }
}

/// One loop's state, as `/healthz` shows it.
#[derive(Clone, Debug)]
pub struct LoopState {
    pub name: String,
    pub idle_s: f64,
    pub unhealthy_after_s: f64,
    pub stuck_after_s: f64,
    pub verdict: Verdict,
}

/// Every loop's beat and the grace they are judged with.
#[derive(Clone, Debug)]
pub struct Liveness {
    pub beats: Vec<Arc<Beat>>,
    pub grace: Duration,
}

impl Liveness {
    pub fn states(&self, now: Timestamp) -> Vec<LoopState> {
        self.beats
            .iter()
            .map(|b| {
                let idle_s = now.secs_since(b.last()).max(0.0);
                let (unhealthy_after_s, stuck_after_s) = limits(b.interval, self.grace);
                LoopState {
                    name: b.name.clone(),
                    idle_s,
                    unhealthy_after_s,
                    stuck_after_s,
                    verdict: judge(idle_s, b.interval, self.grace),
                }
            })
            .collect()
    }

    pub fn all_ok(&self, now: Timestamp) -> bool {
        self.states(now).iter().all(|s| s.verdict == Verdict::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_is_unhealthy_after_three_intervals_and_stuck_after_five() {
        let (i, g) = (Duration::from_secs(10), DEFAULT_GRACE);
        // (idle seconds, expected) — the defaults: 3×10+30 = 60 s, 5×10+60 = 110 s.
        let table = [
            (0.0, Verdict::Ok),
            (60.0, Verdict::Ok),
            (60.1, Verdict::Unhealthy),
            (110.0, Verdict::Unhealthy),
            (110.1, Verdict::Stuck),
        ];
        for (n, (idle, want)) in table.iter().enumerate() {
            assert_eq!(judge(*idle, i, g), *want, "row {n}: idle {idle}s");
        }
    }

    #[test]
    fn a_short_grace_shortens_both_limits() {
        assert_eq!(
            limits(Duration::from_secs(1), Duration::from_secs(5)),
            (8.0, 15.0)
        );
    }

    #[test]
    fn a_beat_never_goes_backwards() {
        let b = Beat::new("x", Duration::from_secs(1), Timestamp(5_000));
        b.mark(Timestamp(4_000));
        assert_eq!(b.last(), Timestamp(5_000));
        b.mark(Timestamp(6_000));
        assert_eq!(b.last(), Timestamp(6_000));
    }
}
