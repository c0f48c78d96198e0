//! Desired consumer counts for the `scalers:` entries (docs/scaling.md).
//!
//! Owns the scaling maths and its guards: `decide(config, observed queue, history, now) → Decision`,
//! either a `Recommendation` (up at once; down only to the highest desired count of the stabilisation
//! window; tolerance; a cooldown per direction) or a `Hold` whose reason an operator can read. It is
//! pure: no I/O, never reads the clock (`now` is passed in), and the caller keeps the `History` (plain
//! data, persisted with the alert state) and sends what it is told to send.
//!
//! What it must never do: recommend on input it does not have. An unknown rate is not a zero rate, a
//! cluster that stopped answering is not an empty queue, and a queue missing from a listing is not an
//! idle one. Each of these holds with its own reason, and a hold for unknown input also breaks the
//! stabilisation run, so a scale-down needs a full window of known figures after it. (KEDA's RabbitMQ
//! scaler read missing stats as zero and scaled workloads to zero, kedacore/keda#7180; it scaled on the
//! broker's instantaneous `rate`, which is spiky, kedacore/keda#4507. Here rates are the analysis
//! window's regression slopes, and unknown is a hold.) See docs/scaling.md.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::analysis::{QueueHealth, Status};
use crate::domain::{StatsMode, Timestamp};
use crate::view::{ClusterView, QueueView};
use crate::yaml::{S, Values};

/// `mode:` of a scaler. Shadow scalers decide exactly as active ones (history, cooldowns and
/// sequence numbers included) so their figures show what would have been sent; only sending differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScalerMode {
    Active,
    Shadow,
    Off,
}

impl ScalerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ScalerMode::Active => "active",
            ScalerMode::Shadow => "shadow",
            ScalerMode::Off => "off",
        }
    }
}

/// The validated form of one `scalers:` entry (docs/configuration.md). `problems()` lists the invariants the
/// maths relies on, by key, for config validation to report with their location; `decide` holds
/// with `invalid_config` rather than compute with a config that breaks them.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalerConfig {
    pub name: String,
    pub cluster: String,
    pub vhost: String,
    pub queue: String,
    /// Messages per second one consumer handles; `None`: learned as consume_rate / consumers.
    pub per_consumer_rate: Option<f64>,
    /// A backlog should be gone within this.
    pub target_drain_time: Duration,
    pub min: u32,
    pub max: u32,
    /// No recommendation within this fraction of the current count (0.1 = 10%).
    pub tolerance: f64,
    /// Scale down only to the highest desired count of this window.
    pub scale_down_stabilization: Duration,
    /// No two recommendations in the same direction closer than this.
    pub cooldown: Duration,
    /// The webhook receiver recommendations go to.
    pub receiver: String,
    pub mode: ScalerMode,
}

/// One broken invariant of a `ScalerConfig`: which key, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl ScalerConfig {
    /// Every invariant the maths relies on that this config breaks (none for a valid one).
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |field, message: String| out.push(Problem { field, message });
        if let Some(r) = self.per_consumer_rate
            && !(r.is_finite() && r > 0.0)
        {
            bad(
                "per_consumer_rate",
                format!("must be a positive number of messages per second, not {r}"),
            );
        }
        if self.target_drain_time.is_zero() {
            bad("target_drain_time", "must be longer than 0s".into());
        }
        if self.max == 0 {
            bad("max", "must be at least 1".into());
        }
        if self.min > self.max {
            bad(
                "min",
                format!("must not exceed max ({} > {})", self.min, self.max),
            );
        }
        if !(self.tolerance.is_finite() && (0.0..1.0).contains(&self.tolerance)) {
            bad(
                "tolerance",
                format!(
                    "must be at least 0 and below 1 (0.1 = 10%), not {}: at 1 or more no scale-down could ever be recommended",
                    self.tolerance
                ),
            );
        }
        out
    }
}

/// One `scalers:` entry as written in the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScalerConfig {
    pub name: S,
    pub cluster: S,
    pub vhost: S,
    pub queue: S,
    per_consumer_rate: Option<Spanned<f64>>,
    target_drain_time: Option<S>,
    min: Option<Spanned<u32>>,
    max: Spanned<u32>,
    tolerance: Option<Spanned<f64>>,
    scale_down_stabilization: Option<S>,
    cooldown: Option<S>,
    pub receiver: Option<S>,
    mode: Option<S>,
}

impl RawScalerConfig {
    /// Reads the entry and checks its own rules (`ScalerConfig::problems`), each problem at its key.
    /// Whether `cluster` and `receiver` name a configured cluster and webhook receiver is the
    /// config's to check.
    pub fn validate(&self, v: &mut Values<'_>) -> Option<ScalerConfig> {
        let mode = match self.mode.as_ref().map(|m| (m, v.string(m))) {
            None => ScalerMode::Active,
            Some((_, m)) if m == "active" => ScalerMode::Active,
            Some((_, m)) if m == "shadow" => ScalerMode::Shadow,
            Some((_, m)) if m == "off" => ScalerMode::Off,
            Some((at, other)) => {
                v.error_at(
                    at,
                    format!(
                        "scalers.mode: unknown value {other:?}; expected active, shadow or off"
                    ),
                );
                return None;
            }
        };
        if mode == ScalerMode::Active && self.receiver.is_none() {
            v.error_at(
                &self.name,
                "scalers.receiver is required with mode: active (a webhook receiver to send the recommendations to; or set mode: shadow to compute and export them only)",
            );
            return None;
        }
        let duration = |v: &mut Values<'_>, s: &Option<S>, default: u64, key: &str| {
            v.duration(
                s.as_ref(),
                Duration::from_secs(default),
                Duration::from_secs(1),
                key,
            )
        };
        let cfg = ScalerConfig {
            name: v.string(&self.name),
            cluster: v.string(&self.cluster),
            vhost: v.string(&self.vhost),
            queue: v.string(&self.queue),
            per_consumer_rate: self.per_consumer_rate.as_ref().map(|r| r.value),
            target_drain_time: duration(
                v,
                &self.target_drain_time,
                120,
                "scalers.target_drain_time",
            ),
            min: self.min.as_ref().map_or(1, |m| m.value),
            max: self.max.value,
            tolerance: self.tolerance.as_ref().map_or(0.1, |t| t.value),
            scale_down_stabilization: duration(
                v,
                &self.scale_down_stabilization,
                300,
                "scalers.scale_down_stabilization",
            ),
            cooldown: duration(v, &self.cooldown, 60, "scalers.cooldown"),
            receiver: self
                .receiver
                .as_ref()
                .map(|r| v.string(r))
                .unwrap_or_default(),
            mode,
        };
        let at = |field: &str| -> Option<serde_saphyr::Location> {
            match field {
                "per_consumer_rate" => self.per_consumer_rate.as_ref().map(|s| s.referenced),
                "target_drain_time" => self.target_drain_time.as_ref().map(|s| s.referenced),
                "min" => self.min.as_ref().map(|s| s.referenced),
                "max" => Some(self.max.referenced),
                "tolerance" => self.tolerance.as_ref().map(|s| s.referenced),
                _ => None,
            }
        };
        let problems = cfg.problems();
        let clean = problems.is_empty();
        for Problem { field, message } in problems {
            let message = format!("scalers.{field}: {message}");
            match at(field) {
                Some(location) => v.diags.error_at_location(&location, message),
                None => v.error_at(&self.name, message),
            }
        }
        clean.then_some(cfg)
    }
}

/// Whether the cluster's figures describe the queue now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// The last scrape succeeded and is recent.
    Fresh,
    /// No scrape has been attempted yet (the daemon just started).
    NotScrapedYet,
    /// The last scrape failed: the queue figures are the last known ones, not current.
    Unreachable,
    /// The last success is older than three poll intervals (a stuck or overrunning poll loop).
    Stale,
}

/// What `decide` needs to know about one queue and its cluster. Built from the latest view with
/// `Observed::from_view`; plain values, so tests write them directly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observed {
    pub cluster: ClusterState,
    pub stats_mode: StatsMode,
    /// The cluster's poll interval: cycles further apart than three of these are a gap in the history.
    pub poll_interval: Duration,
    /// The analysis window (`analysis.window`): a decision waits until the queue's rates stand on
    /// that much history (less two polls), so a burst in a young window is not read as the rate.
    pub window: Duration,
    /// `None`: the queue is not in the latest listing.
    pub queue: Option<QueueObserved>,
}

/// The queue's figures. Rates are the analysis window's (messages per second); `None` is unknown.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QueueObserved {
    /// The current consumer count.
    pub consumers: u64,
    pub messages_ready: u64,
    pub messages_unacked: u64,
    pub publish_rate: Option<f64>,
    pub consume_rate: Option<f64>,
    /// Slope of the depth over the window; what depth-only mode estimates the inflow from.
    pub backlog_growth: Option<f64>,
    pub status: Status,
    /// Seconds of history the rates stand on.
    pub window_span: f64,
}

impl QueueObserved {
    pub fn of(q: &QueueView) -> Self {
        QueueObserved::from_health(
            q.sample.consumers,
            q.sample.messages_ready,
            q.sample.messages_unacked,
            &q.health.unpack(),
        )
    }

    pub fn from_health(
        consumers: u64,
        messages_ready: u64,
        messages_unacked: u64,
        h: &QueueHealth,
    ) -> Self {
        QueueObserved {
            consumers,
            messages_ready,
            messages_unacked,
            publish_rate: h.publish_rate,
            consume_rate: h.consume_rate,
            backlog_growth: h.backlog_growth,
            status: h.status,
            window_span: h.window_span,
        }
    }
}

impl Observed {
    /// The scaler's queue as the cluster's latest view shows it. A linear search of the listing:
    /// fine for a handful of scalers; the wiring can index the view if there are many.
    pub fn from_view(
        view: &ClusterView,
        vhost: &str,
        queue: &str,
        window: Duration,
        now: Timestamp,
    ) -> Self {
        let cluster = if view.last_attempt.is_none() {
            ClusterState::NotScrapedYet
        } else if !view.up {
            ClusterState::Unreachable
        } else if !view.is_fresh(now) {
            ClusterState::Stale
        } else {
            ClusterState::Fresh
        };
        let queue = view
            .queues
            .iter()
            .find(|q| &*q.sample.key.vhost == vhost && &*q.sample.key.name == queue)
            .map(QueueObserved::of);
        Observed {
            cluster,
            stats_mode: view.stats_mode,
            poll_interval: view.poll_interval,
            window,
            queue,
        }
    }
}

/// A desired count at a time: one cycle's, or a recommendation's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredAt {
    #[serde(with = "millis")]
    pub at: Timestamp,
    pub desired: u32,
}

/// What a scaler remembers between cycles. Plain data: the caller persists it with the alert state,
/// in the same transaction as the recommendation's outbox entry. Bounded: `recent` holds only the
/// cycles within `scale_down_stabilization` of the latest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct History {
    /// Desired counts of the cycles of the current unbroken run, oldest first, within the
    /// stabilisation window.
    pub recent: VecDeque<DesiredAt>,
    /// When the current unbroken run of known desired counts began. A hold for unknown input (and a
    /// gap of more than three poll intervals between cycles) ends the run; a scale-down needs a run
    /// at least as long as the stabilisation window, so a brief dip, or a dip right after the
    /// figures come back, cannot scale down.
    #[serde(with = "millis_opt")]
    pub run_since: Option<Timestamp>,
    pub last_up: Option<DesiredAt>,
    pub last_down: Option<DesiredAt>,
    /// Recommendations made so far; the last one's number. Never reset (the webhook's idempotency
    /// key is built from it).
    pub sequence: u64,
}

impl History {
    /// Unknown input this cycle: whatever comes next starts a new run.
    fn break_run(&mut self) {
        self.recent.clear();
        self.run_since = None;
    }

    fn record(&mut self, now: Timestamp, desired: u32, poll: Duration, window_ms: i64) {
        let max_gap = 3 * millis_of(poll) + 1_000;
        if self
            .recent
            .back()
            .is_some_and(|last| now.0.saturating_sub(last.at.0) > max_gap)
        {
            self.break_run();
        }
        self.run_since.get_or_insert(now);
        self.recent.push_back(DesiredAt { at: now, desired });
        let cutoff = now.0.saturating_sub(window_ms);
        while self.recent.front().is_some_and(|d| d.at.0 < cutoff) {
            self.recent.pop_front();
        }
    }

    /// How long the current run has lasted at `now`.
    fn run_ms(&self, now: Timestamp) -> i64 {
        self.run_since
            .map_or(0, |since| now.0.saturating_sub(since.0))
    }

    fn highest(&self) -> Option<u32> {
        self.recent.iter().map(|d| d.desired).max()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// Where the per-consumer throughput came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateSource {
    /// `per_consumer_rate` in the config.
    Configured,
    /// consume_rate / consumers over the analysis window.
    Learned,
}

impl RateSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RateSource::Configured => "configured",
            RateSource::Learned => "learned",
        }
    }
}

/// Where the inflow came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InflowSource {
    /// The publish rate of the analysis window.
    Measured,
    /// Depth-only mode: consumers × per_consumer_rate + backlog growth, while a backlog shows the
    /// consumers are busy.
    EstimatedFromDepth,
}

/// The figures a desired count was computed from (the webhook payload's `metrics`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Inputs {
    pub publish_rate: Option<f64>,
    pub consume_rate: Option<f64>,
    pub messages_ready: u64,
    /// Messages per second arriving: the publish rate, or the depth-only estimate.
    pub inflow: f64,
    pub inflow_source: InflowSource,
    pub per_consumer_rate: f64,
    pub per_consumer_rate_source: RateSource,
}

/// A recommendation to send (or, in shadow mode, to record).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recommendation {
    pub current: u32,
    /// The count to scale to: this cycle's for a scale-up, the highest of the stabilisation window
    /// for a scale-down.
    pub desired: u32,
    /// This cycle's desired count from the formula (what the gauge shows): `desired` for a
    /// scale-up, at most `desired` for a scale-down.
    pub computed: u32,
    pub direction: Direction,
    /// What drove it, for people: the formula with its numbers, and the stabilisation for a scale-down.
    pub reason: String,
    pub inputs: Inputs,
    pub sequence: u64,
}

/// Why no recommendation was made this cycle. The names are stable (metrics label, API, logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldReason {
    /// `mode: off`.
    Off,
    /// The config breaks an invariant of the maths (`ScalerConfig::problems`).
    InvalidConfig,
    /// The cluster has not been scraped yet, or the queue's analysis window is still filling (a new
    /// queue, a daemon start, a counter reset).
    InsufficientData,
    /// The last scrape of the cluster failed.
    ClusterUnreachable,
    /// The last successful scrape is older than three poll intervals.
    StaleData,
    /// The queue is not in the latest listing of its cluster.
    QueueNotFound,
    /// A rate the formula needs is not known yet (the window spans less than one statistics interval).
    RateUnknown,
    /// Depth-only cluster and no `per_consumer_rate`: there is no consume rate to learn one from.
    DepthOnlyNeedsPerConsumerRate,
    /// Depth-only cluster and nothing ready: the inflow of a queue kept empty cannot be told from its depth.
    DepthOnlyInflowUnknown,
    /// Learning the per-consumer rate, and the queue has no consumers.
    NoConsumersToLearnFrom,
    /// Learning the per-consumer rate, and the consumers consumed nothing over the window.
    NoConsumptionToLearnFrom,
    /// The desired count is within `tolerance` of the current one.
    WithinTolerance,
    /// The current count is at `min` or `max` and the formula wants beyond it.
    AtBound,
    /// A scale-down waits: the stabilisation window is not covered yet, or holds a higher desired count.
    Stabilising,
    /// A recommendation in this direction was made less than `cooldown` ago.
    Cooldown,
}

impl HoldReason {
    pub const ALL: [HoldReason; 15] = [
        HoldReason::Off,
        HoldReason::InvalidConfig,
        HoldReason::InsufficientData,
        HoldReason::ClusterUnreachable,
        HoldReason::StaleData,
        HoldReason::QueueNotFound,
        HoldReason::RateUnknown,
        HoldReason::DepthOnlyNeedsPerConsumerRate,
        HoldReason::DepthOnlyInflowUnknown,
        HoldReason::NoConsumersToLearnFrom,
        HoldReason::NoConsumptionToLearnFrom,
        HoldReason::WithinTolerance,
        HoldReason::AtBound,
        HoldReason::Stabilising,
        HoldReason::Cooldown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::Off => "off",
            HoldReason::InvalidConfig => "invalid_config",
            HoldReason::InsufficientData => "insufficient_data",
            HoldReason::ClusterUnreachable => "cluster_unreachable",
            HoldReason::StaleData => "stale_data",
            HoldReason::QueueNotFound => "queue_not_found",
            HoldReason::RateUnknown => "rate_unknown",
            HoldReason::DepthOnlyNeedsPerConsumerRate => "depth_only_needs_per_consumer_rate",
            HoldReason::DepthOnlyInflowUnknown => "depth_only_inflow_unknown",
            HoldReason::NoConsumersToLearnFrom => "no_consumers_to_learn_from",
            HoldReason::NoConsumptionToLearnFrom => "no_consumption_to_learn_from",
            HoldReason::WithinTolerance => "within_tolerance",
            HoldReason::AtBound => "at_bound",
            HoldReason::Stabilising => "stabilising",
            HoldReason::Cooldown => "cooldown",
        }
    }

    /// Whether the desired count is unknown with this reason (the input was), rather than known
    /// and held back by tolerance, a bound, stabilisation or cooldown.
    pub fn is_unknown_input(self) -> bool {
        !matches!(
            self,
            HoldReason::WithinTolerance
                | HoldReason::AtBound
                | HoldReason::Stabilising
                | HoldReason::Cooldown
        )
    }
}

/// No recommendation this cycle, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hold {
    pub reason: HoldReason,
    /// This cycle's desired count when it is known (what the gauge shows); `None` when the input
    /// was not, never a guess.
    pub desired: Option<u32>,
    /// The reason for people, with the numbers.
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Recommend(Recommendation),
    Hold(Hold),
}

impl Decision {
    /// This cycle's desired count (`rabbitwatch_scaler_desired_consumers`): the formula, clamped to
    /// [min, max], whether or not it was sent; `None` when the input is unknown. A scale-down
    /// recommends the highest desired count of the stabilisation window, which can be above it.
    pub fn desired(&self) -> Option<u32> {
        match self {
            Decision::Recommend(r) => Some(r.computed),
            Decision::Hold(h) => h.desired,
        }
    }

    pub fn hold_reason(&self) -> Option<HoldReason> {
        match self {
            Decision::Recommend(_) => None,
            Decision::Hold(h) => Some(h.reason),
        }
    }
}

/// One scaler's cycle: what to recommend, if anything, given the queue as observed at `now`.
/// Updates `history` (the desired count of this cycle, and the recommendation made); call it once per
/// poll cycle of the scaler's cluster, holds included, so the history sees every cycle.
pub fn decide(
    cfg: &ScalerConfig,
    observed: &Observed,
    history: &mut History,
    now: Timestamp,
) -> Decision {
    let c = match compute(cfg, observed) {
        Ok(c) => c,
        Err(hold) => {
            history.break_run();
            return Decision::Hold(hold);
        }
    };
    let window_ms = millis_of(cfg.scale_down_stabilization);
    history.record(now, c.desired, observed.poll_interval, window_ms);

    let (current, desired) = (c.current, c.desired);
    let hold = |reason, detail: String| {
        Decision::Hold(Hold {
            reason,
            desired: Some(desired),
            detail,
        })
    };
    let within =
        |target: u32| f64::from(target.abs_diff(current)) <= cfg.tolerance * f64::from(current);
    // 0.07 × 100 is 7.000000000000001 in floats; a tenth of a percent is plenty.
    let pct = (cfg.tolerance * 1000.0).round() / 10.0;

    if desired == current {
        if c.wanted > f64::from(cfg.max) {
            return hold(
                HoldReason::AtBound,
                format!("{}; already at max {}", c.formula, cfg.max),
            );
        }
        if c.wanted < f64::from(cfg.min) {
            return hold(
                HoldReason::AtBound,
                format!("{}; already at min {}", c.formula, cfg.min),
            );
        }
        return hold(
            HoldReason::WithinTolerance,
            format!("{}; current is {current}", c.formula),
        );
    }
    if within(desired) {
        return hold(
            HoldReason::WithinTolerance,
            format!("{}; within {pct}% of current {current}", c.formula),
        );
    }

    let (direction, target, reason) = if desired > current {
        (
            Direction::Up,
            desired,
            format!("{}: up from {current} to {desired}", c.formula),
        )
    } else {
        let window = humantime::format_duration(cfg.scale_down_stabilization);
        let run = history.run_ms(now);
        if run < window_ms {
            return hold(
                HoldReason::Stabilising,
                format!(
                    "{}; a scale-down needs {window} of known figures, there are {} so far",
                    c.formula,
                    humantime::format_duration(Duration::from_millis(run.max(0) as u64)),
                ),
            );
        }
        let highest = history.highest().unwrap_or(desired).max(desired);
        if highest >= current {
            return hold(
                HoldReason::Stabilising,
                format!(
                    "{}; the highest desired in the last {window} is {highest}, not below current {current}",
                    c.formula
                ),
            );
        }
        if within(highest) {
            return hold(
                HoldReason::Stabilising,
                format!(
                    "{}; the highest desired in the last {window} is {highest}, within {pct}% of current {current}",
                    c.formula
                ),
            );
        }
        (
            Direction::Down,
            highest,
            format!(
                "{}; the highest desired in the last {window} is {highest}: down from {current} to {highest}",
                c.formula
            ),
        )
    };

    let last = match direction {
        Direction::Up => history.last_up,
        Direction::Down => history.last_down,
    };
    if let Some(last) = last {
        let since = now.0.saturating_sub(last.at.0);
        if since < millis_of(cfg.cooldown) {
            return hold(
                HoldReason::Cooldown,
                format!(
                    "{}; would go {} to {target}, but the last scale-{} (to {}) was {} ago, cooldown {}",
                    c.formula,
                    direction.as_str(),
                    direction.as_str(),
                    last.desired,
                    humantime::format_duration(Duration::from_millis(since.max(0) as u64)),
                    humantime::format_duration(cfg.cooldown),
                ),
            );
        }
    }

    history.sequence += 1;
    let sent = Some(DesiredAt {
        at: now,
        desired: target,
    });
    match direction {
        Direction::Up => history.last_up = sent,
        Direction::Down => history.last_down = sent,
    }
    Decision::Recommend(Recommendation {
        current,
        desired: target,
        computed: desired,
        direction,
        reason,
        inputs: c.inputs,
        sequence: history.sequence,
    })
}

/// This cycle's desired count, before stabilisation, tolerance and cooldown.
struct Computed {
    current: u32,
    /// The formula's count clamped to [min, max].
    desired: u32,
    /// The formula's count before clamping (an integer, as a float so it cannot overflow).
    wanted: f64,
    /// The formula with its numbers, for people.
    formula: String,
    inputs: Inputs,
}

/// A count a hair above an integer through float rounding is that integer: (0.7 + 0.2) / 0.3 must
/// need 3 consumers, not 4.
const CEIL_SLACK: f64 = 1e-9;

fn compute(cfg: &ScalerConfig, obs: &Observed) -> Result<Computed, Hold> {
    let unknown = |reason, detail: String| {
        Err(Hold {
            reason,
            desired: None,
            detail,
        })
    };
    if cfg.mode == ScalerMode::Off {
        return unknown(HoldReason::Off, "mode is off: nothing is computed".into());
    }
    let problems = cfg.problems();
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(Problem::to_string).collect();
        return unknown(HoldReason::InvalidConfig, list.join("; "));
    }
    let cluster = &cfg.cluster;
    match obs.cluster {
        ClusterState::Fresh => {}
        ClusterState::NotScrapedYet => {
            return unknown(
                HoldReason::InsufficientData,
                format!("cluster {cluster} has not been scraped yet"),
            );
        }
        ClusterState::Unreachable => {
            return unknown(
                HoldReason::ClusterUnreachable,
                format!("the last scrape of cluster {cluster} failed: its figures are not current"),
            );
        }
        ClusterState::Stale => {
            return unknown(
                HoldReason::StaleData,
                format!(
                    "cluster {cluster} has not been scraped successfully for over three poll intervals"
                ),
            );
        }
    }
    let depth_only = obs.stats_mode == StatsMode::DepthOnly;
    if depth_only && cfg.per_consumer_rate.is_none() {
        return unknown(
            HoldReason::DepthOnlyNeedsPerConsumerRate,
            format!(
                "cluster {cluster} keeps no message statistics (depth-only): there is no consume rate to learn a per-consumer rate from; set per_consumer_rate"
            ),
        );
    }
    let Some(q) = obs.queue else {
        return unknown(
            HoldReason::QueueNotFound,
            format!(
                "queue {:?} in vhost {:?} is not in the latest listing of cluster {cluster} (not declared, deleted, filtered out by vhosts:/queues:, or beyond max_queues)",
                cfg.queue, cfg.vhost
            ),
        );
    };
    if q.status == Status::InsufficientData {
        return unknown(
            HoldReason::InsufficientData,
            "the queue's analysis window is still filling (a new queue, a start, or a counter reset)"
                .into(),
        );
    }
    // Rates over a few seconds are nearly instantaneous: one burst would read as the rate. Decide on
    // a window's worth of history (less two polls, the sampling slack), as the alerts do.
    let needed = obs
        .window
        .saturating_sub(obs.poll_interval * 2)
        .as_secs_f64();
    if q.window_span < needed {
        return unknown(
            HoldReason::InsufficientData,
            format!(
                "the queue's rates stand on {:.0}s of history; a scaling decision waits for {needed:.0}s (analysis.window less two polls)",
                q.window_span
            ),
        );
    }
    let rate_unknown = |what: &str| {
        unknown(
            HoldReason::RateUnknown,
            format!(
                "the {what} is not known yet: the window spans less than one statistics interval"
            ),
        )
    };
    let n = q.consumers;

    let (pcr, pcr_source, pcr_text) = match cfg.per_consumer_rate {
        Some(r) => (
            r,
            RateSource::Configured,
            format!("{r:.1}/s per consumer (configured)"),
        ),
        None => {
            if n == 0 {
                return unknown(
                    HoldReason::NoConsumersToLearnFrom,
                    "no consumers to learn a per-consumer rate from; set per_consumer_rate to scale up from zero".into(),
                );
            }
            let Some(consumed) = q.consume_rate else {
                return rate_unknown("consume rate");
            };
            if consumed.is_nan() || consumed <= 0.0 {
                return unknown(
                    HoldReason::NoConsumptionToLearnFrom,
                    format!(
                        "{n} consumers consumed nothing over the window: no per-consumer rate to learn"
                    ),
                );
            }
            let r = consumed / n as f64;
            (
                r,
                RateSource::Learned,
                format!("{r:.2}/s per consumer (learned: consume {consumed:.1}/s / {n} consumers)"),
            )
        }
    };

    let (inflow, inflow_source, inflow_text) = if depth_only {
        if q.messages_ready == 0 {
            return unknown(
                HoldReason::DepthOnlyInflowUnknown,
                format!(
                    "cluster {cluster} is depth-only and nothing is ready: the inflow of a queue kept empty cannot be told from its depth"
                ),
            );
        }
        let Some(growth) = q.backlog_growth else {
            return rate_unknown("backlog growth");
        };
        // Messages are waiting, so the consumers are busy: they take n × pcr, and the depth moves by
        // what arrives beyond that.
        let est = (n as f64 * pcr + growth).max(0.0);
        (
            est,
            InflowSource::EstimatedFromDepth,
            format!(
                "inflow ~{est:.1}/s (depth-only estimate: {n} consumers x {pcr:.1}/s {growth:+.1}/s growth)"
            ),
        )
    } else {
        let Some(p) = q.publish_rate else {
            return rate_unknown("publish rate");
        };
        (p, InflowSource::Measured, format!("publish {p:.1}/s"))
    };
    if !inflow.is_finite() {
        return rate_unknown("inflow");
    }

    let drain_secs = cfg.target_drain_time.as_secs_f64();
    let drain = q.messages_ready as f64 / drain_secs;
    let need = (inflow + drain) / pcr;
    // `abs`: the ceiling of a hair below zero is -0, which would read "needs -0".
    let ceil = (need - CEIL_SLACK).ceil().max(0.0).abs();
    // Zero only when nothing arrives (measured, not estimated), nothing waits and nothing is in
    // flight: the last consumer is never taken away from work, nor on a guess.
    let may_be_zero = inflow_source == InflowSource::Measured
        && inflow == 0.0
        && q.messages_ready == 0
        && q.messages_unacked == 0;
    let wanted = if may_be_zero { ceil } else { ceil.max(1.0) };
    let desired = wanted.clamp(f64::from(cfg.min), f64::from(cfg.max)) as u32;

    let mut formula = format!(
        "{inflow_text} + {} ready / {} ({drain:.1}/s) = {:.1}/s at {pcr_text} needs {wanted}",
        q.messages_ready,
        humantime::format_duration(cfg.target_drain_time),
        inflow + drain,
    );
    if ceil < wanted {
        formula.push_str(" (at least 1 while messages are in flight or arriving)");
    }
    if wanted > f64::from(cfg.max) {
        formula.push_str(&format!(", capped at max {}", cfg.max));
    } else if wanted < f64::from(cfg.min) {
        formula.push_str(&format!(", raised to min {}", cfg.min));
    }
    Ok(Computed {
        current: u32::try_from(n).unwrap_or(u32::MAX),
        desired,
        wanted,
        formula,
        inputs: Inputs {
            publish_rate: q.publish_rate,
            consume_rate: q.consume_rate,
            messages_ready: q.messages_ready,
            inflow,
            inflow_source,
            per_consumer_rate: pcr,
            per_consumer_rate_source: pcr_source,
        },
    })
}

fn millis_of(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `Timestamp` as milliseconds since the epoch, the way the store keeps times.
mod millis {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::domain::Timestamp;

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(t.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        i64::deserialize(d).map(Timestamp)
    }
}

mod millis_opt {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::domain::Timestamp;

    pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        t.map(|t| t.0).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        Option::<i64>::deserialize(d).map(|t| t.map(Timestamp))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::analysis::{self, Latest, Params};
    use crate::domain::QueueKey;
    use crate::snapshot::{Counters, QueueSample, Window};
    use HoldReason as R;

    const POLL: Duration = Duration::from_secs(10);
    /// The analysis window of the table's queues (the default `analysis.window`).
    const WINDOW: Duration = Duration::from_secs(300);

    /// docs/scaling.md's example: 10/s per consumer, a backlog gone within 2m, 1..=20 consumers, 10%
    /// tolerance, 5m stabilisation, 1m cooldown.
    fn cfg() -> ScalerConfig {
        ScalerConfig {
            name: "orders-workers".into(),
            cluster: "local".into(),
            vhost: "shop".into(),
            queue: "orders".into(),
            per_consumer_rate: Some(10.0),
            target_drain_time: Duration::from_secs(120),
            min: 1,
            max: 20,
            tolerance: 0.1,
            scale_down_stabilization: Duration::from_secs(300),
            cooldown: Duration::from_secs(60),
            receiver: "autoscaler".into(),
            mode: ScalerMode::Active,
        }
    }

    fn learned() -> ScalerConfig {
        ScalerConfig {
            per_consumer_rate: None,
            ..cfg()
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp(secs * 1000)
    }

    /// A fresh, fully instrumented cluster; the queue's window filled, consumers keeping up as far
    /// as 10/s each allow, nothing in flight.
    fn queue(consumers: u64, ready: u64, publish: f64) -> Observed {
        Observed {
            cluster: ClusterState::Fresh,
            stats_mode: StatsMode::Full,
            poll_interval: POLL,
            window: WINDOW,
            queue: Some(QueueObserved {
                consumers,
                messages_ready: ready,
                messages_unacked: 0,
                publish_rate: Some(publish),
                consume_rate: Some(publish.min(consumers as f64 * 10.0)),
                backlog_growth: Some(0.0),
                status: Status::Ok,
                window_span: WINDOW.as_secs_f64(),
            }),
        }
    }

    fn with(mut o: Observed, f: impl FnOnce(&mut QueueObserved)) -> Observed {
        f(o.queue.as_mut().expect("a queue to change"));
        o
    }

    fn cluster(o: Observed, state: ClusterState) -> Observed {
        Observed {
            cluster: state,
            ..o
        }
    }

    /// Depth-only: the broker keeps no counters, so no rates; the depth trend is known.
    fn depth_only(consumers: u64, ready: u64, growth: f64) -> Observed {
        let o = with(queue(consumers, ready, 0.0), |q| {
            q.publish_rate = None;
            q.consume_rate = None;
            q.backlog_growth = Some(growth);
        });
        Observed {
            stats_mode: StatsMode::DepthOnly,
            ..o
        }
    }

    #[derive(Debug, PartialEq)]
    enum Want {
        Up(u32),
        Down(u32),
        Hold(HoldReason),
    }

    fn verdict(d: &Decision) -> Want {
        match d {
            Decision::Recommend(r) if r.direction == Direction::Up => Want::Up(r.desired),
            Decision::Recommend(r) => Want::Down(r.desired),
            Decision::Hold(h) => Want::Hold(h.reason),
        }
    }

    /// Burrow-style: one cycle from an empty history, each row with its verdict and the desired
    /// count the gauge would show.
    #[test]
    fn decide_table() {
        let min = |min| ScalerConfig { min, ..cfg() };
        let no_stabilisation = ScalerConfig {
            scale_down_stabilization: Duration::ZERO,
            ..cfg()
        };
        let idle =
            |consumers, unacked| with(queue(consumers, 0, 0.0), |q| q.messages_unacked = unacked);
        let cases: Vec<(&str, ScalerConfig, Observed, Want, Option<u32>)> = vec![
            (
                "1 steady: 40/s needs the 4 it has",
                cfg(),
                queue(4, 0, 40.0),
                Want::Hold(R::WithinTolerance),
                Some(4),
            ),
            (
                "2 16 wanted of 15 is within 10%",
                cfg(),
                queue(15, 0, 160.0),
                Want::Hold(R::WithinTolerance),
                Some(16),
            ),
            (
                "3 backlog growing: (32/s + 1200 / 2m) / 10/s = 4.2, up to 5 at once",
                cfg(),
                queue(3, 1200, 32.0),
                Want::Up(5),
                Some(5),
            ),
            (
                "4 publish rate unknown: hold, never 0, even with min 0",
                min(0),
                with(queue(3, 0, 0.0), |q| q.publish_rate = None),
                Want::Hold(R::RateUnknown),
                None,
            ),
            (
                "5 cluster unreachable",
                cfg(),
                cluster(queue(3, 1200, 32.0), ClusterState::Unreachable),
                Want::Hold(R::ClusterUnreachable),
                None,
            ),
            (
                "6 cluster figures stale",
                cfg(),
                cluster(queue(3, 1200, 32.0), ClusterState::Stale),
                Want::Hold(R::StaleData),
                None,
            ),
            (
                "7 cluster not scraped yet",
                cfg(),
                cluster(queue(3, 1200, 32.0), ClusterState::NotScrapedYet),
                Want::Hold(R::InsufficientData),
                None,
            ),
            (
                "8 queue not in the listing is not an empty queue",
                min(0),
                Observed {
                    queue: None,
                    ..queue(3, 0, 0.0)
                },
                Want::Hold(R::QueueNotFound),
                None,
            ),
            (
                "9 window still filling",
                cfg(),
                with(queue(3, 1200, 32.0), |q| {
                    q.status = Status::InsufficientData
                }),
                Want::Hold(R::InsufficientData),
                None,
            ),
            (
                "9b rates over a few seconds of history: one burst is not a rate",
                cfg(),
                with(queue(3, 1200, 150.0), |q| q.window_span = 8.0),
                Want::Hold(R::InsufficientData),
                None,
            ),
            (
                "10 depth-only without per_consumer_rate",
                learned(),
                depth_only(4, 1200, 5.0),
                Want::Hold(R::DepthOnlyNeedsPerConsumerRate),
                None,
            ),
            (
                "11 depth-only with per_consumer_rate: inflow ~ 4 x 10/s + 5/s growth; (45 + 10) / 10 = 5.5",
                cfg(),
                depth_only(4, 1200, 5.0),
                Want::Up(6),
                Some(6),
            ),
            (
                "12 depth-only and nothing ready: the inflow cannot be told",
                min(0),
                depth_only(4, 0, 0.0),
                Want::Hold(R::DepthOnlyInflowUnknown),
                None,
            ),
            (
                "13 learned: 4 consumers taking 32/s are 8/s each; 48/s needs 6",
                learned(),
                with(queue(4, 0, 48.0), |q| q.consume_rate = Some(32.0)),
                Want::Up(6),
                Some(6),
            ),
            (
                "14 learning with no consumers",
                learned(),
                with(queue(0, 100, 10.0), |q| q.status = Status::NoConsumers),
                Want::Hold(R::NoConsumersToLearnFrom),
                None,
            ),
            (
                "15 learning from stalled consumers",
                learned(),
                with(queue(2, 100, 10.0), |q| {
                    q.consume_rate = Some(0.0);
                    q.status = Status::Stalled;
                }),
                Want::Hold(R::NoConsumptionToLearnFrom),
                None,
            ),
            (
                "16 clamped to max: 35 wanted, up to 20",
                cfg(),
                queue(10, 6000, 300.0),
                Want::Up(20),
                Some(20),
            ),
            (
                "17 at max and wanting more",
                cfg(),
                queue(20, 6000, 300.0),
                Want::Hold(R::AtBound),
                Some(20),
            ),
            (
                "18 at min and wanting less",
                min(2),
                queue(2, 0, 5.0),
                Want::Hold(R::AtBound),
                Some(2),
            ),
            (
                "19 below min with a configured rate: up from 0 to min",
                min(2),
                with(queue(0, 5, 1.0), |q| q.status = Status::NoConsumers),
                Want::Up(2),
                Some(2),
            ),
            (
                "20 min 0, nothing published, ready or in flight: wants 0, after stabilisation",
                min(0),
                idle(2, 0),
                Want::Hold(R::Stabilising),
                Some(0),
            ),
            (
                "21 min 0 and no stabilisation: down to 0",
                ScalerConfig {
                    min: 0,
                    ..no_stabilisation.clone()
                },
                idle(2, 0),
                Want::Down(0),
                Some(0),
            ),
            (
                "22 min 0 with messages in flight: at least 1",
                ScalerConfig {
                    min: 0,
                    ..no_stabilisation.clone()
                },
                idle(2, 3),
                Want::Down(1),
                Some(1),
            ),
            (
                "23 min 0 and a trickle of 0.01/s: at least 1",
                ScalerConfig {
                    min: 0,
                    ..no_stabilisation.clone()
                },
                queue(2, 0, 0.01),
                Want::Down(1),
                Some(1),
            ),
            (
                "24 above max: down to max",
                no_stabilisation.clone(),
                queue(25, 0, 300.0),
                Want::Down(20),
                Some(20),
            ),
            (
                "25 mode off computes nothing",
                ScalerConfig {
                    mode: ScalerMode::Off,
                    ..cfg()
                },
                queue(3, 1200, 32.0),
                Want::Hold(R::Off),
                None,
            ),
            (
                "26 shadow decides as active does",
                ScalerConfig {
                    mode: ScalerMode::Shadow,
                    ..cfg()
                },
                queue(3, 1200, 32.0),
                Want::Up(5),
                Some(5),
            ),
            (
                "27 min above max is not computed with",
                ScalerConfig { min: 30, ..cfg() },
                queue(3, 1200, 32.0),
                Want::Hold(R::InvalidConfig),
                None,
            ),
            (
                "28 a float a hair over 3 needs 3: (0.7 + 0.2) / 0.3",
                ScalerConfig {
                    per_consumer_rate: Some(0.3),
                    ..cfg()
                },
                queue(3, 24, 0.7),
                Want::Hold(R::WithinTolerance),
                Some(3),
            ),
        ];
        for (name, cfg, observed, want, desired) in cases {
            let mut history = History::default();
            let d = decide(&cfg, &observed, &mut history, at(1000));
            assert_eq!(verdict(&d), want, "case {name}: {d:?}");
            assert_eq!(d.desired(), desired, "case {name}: desired");
            if let Decision::Hold(h) = &d {
                assert_eq!(
                    h.desired.is_none(),
                    h.reason.is_unknown_input(),
                    "case {name}"
                );
                assert!(!h.detail.is_empty(), "case {name}: a hold says why");
            }
        }
    }

    /// Runs numbered phases of cycles every `POLL` through one history; every cycle of a phase must
    /// come out as the phase says.
    fn run(cfg: &ScalerConfig, history: &mut History, phases: &[(&str, i64, i64, Observed, Want)]) {
        for (name, from, to, observed, want) in phases {
            let mut t = *from;
            while t <= *to {
                let d = decide(cfg, observed, history, at(t));
                assert_eq!(&verdict(&d), want, "phase {name}, t={t}s: {d:?}");
                t += POLL.as_secs() as i64;
            }
        }
    }

    #[test]
    fn a_dip_shorter_than_the_stabilisation_window_does_not_scale_down() {
        run(
            &cfg(),
            &mut History::default(),
            &[
                (
                    "1 busy: 80/s needs the 8 it has",
                    0,
                    290,
                    queue(8, 0, 80.0),
                    Want::Hold(R::WithinTolerance),
                ),
                (
                    "2 four minutes at 30/s want 3: the 8s of the last 5m hold",
                    300,
                    540,
                    queue(8, 0, 30.0),
                    Want::Hold(R::Stabilising),
                ),
                (
                    "3 busy again",
                    550,
                    900,
                    queue(8, 0, 80.0),
                    Want::Hold(R::WithinTolerance),
                ),
            ],
        );
    }

    #[test]
    fn scale_down_goes_to_the_highest_desired_of_the_window() {
        let mut h = History::default();
        run(
            &cfg(),
            &mut h,
            &[
                (
                    "1 100/s needs the 10 it has",
                    0,
                    0,
                    queue(10, 0, 100.0),
                    Want::Hold(R::WithinTolerance),
                ),
                (
                    "2 60/s wants 6: window not covered yet",
                    10,
                    150,
                    queue(10, 0, 60.0),
                    Want::Hold(R::Stabilising),
                ),
                (
                    "3 30/s wants 3; covered at 300 s, but the 10 at 0 s is in it",
                    160,
                    300,
                    queue(10, 0, 30.0),
                    Want::Hold(R::Stabilising),
                ),
            ],
        );
        // 4. The 10 left the window: down to 6, the highest in it, not to 3; the gauge shows 3.
        let d = decide(&cfg(), &queue(10, 0, 30.0), &mut h, at(310));
        assert_eq!(verdict(&d), Want::Down(6), "{d:?}");
        assert_eq!(d.desired(), Some(3));
        run(
            &cfg(),
            &mut h,
            &[
                (
                    "5 at 6: the 6s of 10..150 s still in the window",
                    320,
                    450,
                    queue(6, 0, 30.0),
                    Want::Hold(R::Stabilising),
                ),
                (
                    "6 only 3s in the last 5m: down to 3",
                    460,
                    460,
                    queue(6, 0, 30.0),
                    Want::Down(3),
                ),
                (
                    "7 settled",
                    470,
                    600,
                    queue(3, 0, 30.0),
                    Want::Hold(R::WithinTolerance),
                ),
            ],
        );
        assert_eq!(h.sequence, 2);
        assert_eq!(
            h.last_down,
            Some(DesiredAt {
                at: at(460),
                desired: 3
            })
        );
    }

    #[test]
    fn cooldown_is_per_direction() {
        let cfg = ScalerConfig {
            scale_down_stabilization: Duration::ZERO,
            ..cfg()
        };
        let mut history = History::default();
        let steps = [
            ("1 80/s on 4: up to 8", 0, queue(4, 0, 80.0), Want::Up(8)),
            (
                "2 pods still starting, 100/s wants 10: 10 s after an up",
                10,
                queue(4, 0, 100.0),
                Want::Hold(R::Cooldown),
            ),
            (
                "3 a down is not held by the up's cooldown",
                20,
                queue(8, 0, 30.0),
                Want::Down(3),
            ),
            (
                "4 up again 30 s after the last up",
                30,
                queue(3, 0, 80.0),
                Want::Hold(R::Cooldown),
            ),
            (
                "5 down again 20 s after the last down",
                40,
                queue(8, 0, 20.0),
                Want::Hold(R::Cooldown),
            ),
            (
                "6 a full minute after the last up",
                60,
                queue(3, 0, 80.0),
                Want::Up(8),
            ),
            (
                "7 a full minute after the last down",
                80,
                queue(8, 0, 20.0),
                Want::Down(2),
            ),
        ];
        let mut sequences = Vec::new();
        for (name, t, observed, want) in steps {
            let d = decide(&cfg, &observed, &mut history, at(t));
            assert_eq!(verdict(&d), want, "step {name}: {d:?}");
            if let Decision::Recommend(r) = d {
                sequences.push(r.sequence);
            }
        }
        assert_eq!(sequences, [1, 2, 3, 4]);
    }

    #[test]
    fn unknown_inputs_never_recommend_nor_say_zero() {
        // A history in which a scale-down to 0 would otherwise be due: min 0, idle for long.
        let cfg = ScalerConfig { min: 0, ..cfg() };
        let idle = queue(3, 0, 0.0);
        let primed = || {
            let mut h = History::default();
            for t in (0..300).step_by(10) {
                decide(&cfg, &queue(3, 0, 0.0), &mut h, at(t));
            }
            h
        };
        assert_eq!(
            verdict(&decide(&cfg, &idle, &mut primed(), at(300))),
            Want::Down(0),
            "the primed history is one cycle from scaling to zero"
        );
        let mut unknowns: Vec<(&str, ScalerConfig, Observed)> = Vec::new();
        for state in [
            ClusterState::NotScrapedYet,
            ClusterState::Unreachable,
            ClusterState::Stale,
        ] {
            unknowns.push(("cluster", cfg.clone(), cluster(idle, state)));
        }
        let learning = ScalerConfig {
            per_consumer_rate: None,
            ..cfg.clone()
        };
        unknowns.extend([
            (
                "missing queue",
                cfg.clone(),
                Observed {
                    queue: None,
                    ..idle
                },
            ),
            (
                "filling window",
                cfg.clone(),
                with(idle, |q| q.status = Status::InsufficientData),
            ),
            (
                "publish",
                cfg.clone(),
                with(idle, |q| q.publish_rate = None),
            ),
            (
                "consume",
                learning.clone(),
                with(idle, |q| q.consume_rate = None),
            ),
            ("nothing consumed", learning.clone(), idle),
            ("no consumers", learning.clone(), queue(0, 0, 0.0)),
            ("depth-only learning", learning, depth_only(3, 0, 0.0)),
            ("depth-only empty", cfg.clone(), depth_only(3, 0, 0.0)),
            (
                "depth-only young",
                cfg.clone(),
                with(depth_only(3, 10, 0.0), |q| q.backlog_growth = None),
            ),
        ]);
        for (name, cfg, observed) in unknowns {
            let mut h = primed();
            let d = decide(&cfg, &observed, &mut h, at(300));
            let Decision::Hold(hold) = &d else {
                panic!("{name}: recommended on unknown input: {d:?}");
            };
            assert!(hold.reason.is_unknown_input(), "{name}: {d:?}");
            assert_eq!(hold.desired, None, "{name}: unknown is not a number");
            assert!(
                h.run_since.is_none() && h.recent.is_empty(),
                "{name}: the run is broken"
            );
            // Known again: the idle queue must wait a whole window before scaling to zero.
            let d = decide(&cfg_min0(), &idle, &mut h, at(310));
            assert_eq!(verdict(&d), Want::Hold(R::Stabilising), "{name}");
        }
    }

    fn cfg_min0() -> ScalerConfig {
        ScalerConfig { min: 0, ..cfg() }
    }

    /// A queue under load as the poll loop sees it: samples into a real `Window`, analysed by
    /// `analysis::analyze`, as `view::Tracker` does.
    struct Sampled {
        window: Option<Window>,
        params: Params,
    }

    impl Sampled {
        fn new(window: Duration) -> Self {
            Sampled {
                window: None,
                params: Params {
                    window_ms: millis_of(window),
                },
            }
        }

        fn observe(
            &mut self,
            t: i64,
            consumers: u64,
            ready: u64,
            published: u64,
            consumed: u64,
            poll: Duration,
        ) -> Observed {
            let now = at(t);
            let counters = Some(Counters {
                publish: published,
                delivered: consumed,
                ack: consumed,
                no_ack: 0,
                redeliver: 0,
            });
            match &mut self.window {
                None => self.window = Some(Window::new(now, ready, counters)),
                Some(w) => {
                    w.push(now, ready, counters, self.params.window_ms);
                }
            }
            let w = self.window.as_ref().expect("just set");
            let latest = Latest {
                consumers,
                ..Latest::default()
            };
            let health = analysis::analyze(w, latest, &self.params, now);
            Observed {
                cluster: ClusterState::Fresh,
                stats_mode: StatsMode::Full,
                poll_interval: poll,
                window: Duration::from_millis(self.params.window_ms as u64),
                queue: Some(QueueObserved::from_health(consumers, ready, 0, &health)),
            }
        }
    }

    #[test]
    fn a_counter_reset_holds_rather_than_dropping_to_min() {
        // 8 consumers keep up with 80/s. At 300 s a node restarts: the counters start again from 0,
        // the window restarts, and the rates are unknown until it refills. A reader that took the
        // missing rates for zero would want (0 + 0) / 10 → min 1 and scale the queue down to 1.
        // Afterwards the load really is lower (30/s): the scale-down waits a whole stabilisation
        // window of known figures after the reset.
        let cfg = cfg();
        let mut q = Sampled::new(Duration::from_secs(60));
        let mut history = History::default();
        let mut holds_after_reset = Vec::new();
        let mut first_down = None;
        for t in (0..=1000).step_by(10) {
            let (rate, since) = if t < 300 { (80, 0) } else { (30, 300) };
            let count = rate * (t - since) as u64;
            let consumers = if first_down.is_some() { 3 } else { 8 };
            let observed = q.observe(t, consumers, 0, count, count, POLL);
            let d = decide(&cfg, &observed, &mut history, at(t));
            match &d {
                Decision::Recommend(r) => {
                    assert_eq!(r.direction, Direction::Down, "t={t}s: {d:?}");
                    assert!(first_down.is_none(), "t={t}s: once: {d:?}");
                    assert_eq!(r.desired, 3, "t={t}s: to what 30/s needs, not to min");
                    first_down = Some(t);
                }
                Decision::Hold(h) if (300..350).contains(&t) => {
                    holds_after_reset.push((t, h.reason, h.desired));
                }
                Decision::Hold(h) if t < 300 => {
                    assert!(t < 50 || h.reason == R::WithinTolerance, "t={t}s: {d:?}");
                }
                Decision::Hold(_) => {}
            }
        }
        assert_eq!(
            holds_after_reset,
            (300..350)
                .step_by(10)
                .map(|t| (t, R::InsufficientData, None))
                .collect::<Vec<_>>(),
            "the refilling window is unknown, not zero"
        );
        let known_again = 350;
        assert_eq!(
            first_down,
            Some(known_again + 300),
            "down once a whole window of known figures has passed"
        );
    }

    /// Bursts of `burst` messages every 10 s; `consumers` at 10/s each, replaced by what each
    /// recommendation says (the autoscaler obeys at once). Polled every 5 s with a 2m analysis
    /// window. Returns the recommendations, the desired counts of every cycle and the history.
    fn bursts(
        cfg: &ScalerConfig,
        burst: u64,
        minutes: i64,
    ) -> (Vec<(i64, Direction, u32)>, Vec<u32>, History) {
        let poll = Duration::from_secs(5);
        let mut q = Sampled::new(Duration::from_secs(120));
        let mut history = History::default();
        let (mut consumers, mut ready, mut published, mut consumed) = (2u64, 0u64, 0u64, 0u64);
        let mut recommendations = Vec::new();
        let mut desired = Vec::new();
        for t in 0..=minutes * 60 {
            if t % 10 == 0 {
                ready += burst;
                published += burst;
            }
            let taken = ready.min(consumers * 10);
            ready -= taken;
            consumed += taken;
            if t % 5 == 0 {
                let observed = q.observe(t, consumers, ready, published, consumed, poll);
                let d = decide(cfg, &observed, &mut history, at(t));
                desired.extend(d.desired());
                if let Decision::Recommend(r) = d {
                    recommendations.push((t, r.direction, r.desired));
                    consumers = u64::from(r.desired);
                }
            }
        }
        (recommendations, desired, history)
    }

    fn reversals(recs: &[(i64, Direction, u32)]) -> usize {
        recs.windows(2).filter(|w| w[0].1 != w[1].1).count()
    }

    #[test]
    fn a_bursty_queue_does_not_flap() {
        // 250 messages every 10 s (25/s on average) against a 10 s drain target: each burst is a
        // backlog for a moment, so this cycle's desired count swings with the phase of the poll.
        let cfg = ScalerConfig {
            target_drain_time: Duration::from_secs(10),
            ..cfg()
        };
        let (recs, desired, history) = bursts(&cfg, 250, 20);
        let (lo, hi) = (desired.iter().min().unwrap(), desired.iter().max().unwrap());
        assert!(hi - lo >= 2, "the scenario swings: desired {lo}..={hi}");
        let directions: Vec<Direction> = recs.iter().map(|r| r.1).collect();
        assert_eq!(
            directions,
            [Direction::Up, Direction::Down],
            "up once for the backlog built while the window filled, down once: {recs:?}"
        );
        assert!(
            recs.iter().all(|(t, _, _)| *t < 600),
            "settled after ten minutes while the desired count keeps swinging: {recs:?}"
        );
        let bound = (cfg.scale_down_stabilization.as_secs() / 5 + 1) as usize;
        assert!(
            history.recent.len() <= bound,
            "history bounded by the window: {} > {bound}",
            history.recent.len()
        );

        // The same queue without stabilisation follows every swing, a cooldown apart: what the
        // guard is for.
        let unstabilised = ScalerConfig {
            scale_down_stabilization: Duration::ZERO,
            ..cfg
        };
        let (recs, _, _) = bursts(&unstabilised, 250, 20);
        assert!(reversals(&recs) >= 10, "{recs:?}");
    }

    #[test]
    fn recommendations_say_what_drove_them() {
        // Nothing arriving and nothing waiting: "needs 0", never "needs -0".
        let idle = decide(&cfg(), &queue(1, 0, 0.0), &mut History::default(), at(0));
        assert!(!format!("{idle:?}").contains("needs -0"), "{idle:?}");
        let mut h = History::default();
        let Decision::Recommend(r) = decide(&cfg(), &queue(3, 1200, 32.0), &mut h, at(0)) else {
            panic!("an up");
        };
        assert_eq!(
            r.reason,
            "publish 32.0/s + 1200 ready / 2m (10.0/s) = 42.0/s at 10.0/s per consumer (configured) needs 5: up from 3 to 5"
        );
        assert_eq!(r.inputs.per_consumer_rate_source, RateSource::Configured);
        assert_eq!(r.inputs.inflow_source, InflowSource::Measured);
        assert_eq!(r.inputs.publish_rate, Some(32.0));
        assert_eq!(r.inputs.messages_ready, 1200);

        let observed = with(queue(4, 0, 48.0), |q| q.consume_rate = Some(32.0));
        let Decision::Recommend(r) = decide(&learned(), &observed, &mut History::default(), at(0))
        else {
            panic!("an up");
        };
        assert_eq!(r.inputs.per_consumer_rate_source, RateSource::Learned);
        assert_eq!(r.inputs.per_consumer_rate, 8.0);
        assert!(
            r.reason
                .contains("8.00/s per consumer (learned: consume 32.0/s / 4 consumers)"),
            "{}",
            r.reason
        );

        let Decision::Recommend(r) = decide(
            &cfg(),
            &depth_only(4, 1200, 5.0),
            &mut History::default(),
            at(0),
        ) else {
            panic!("an up");
        };
        assert_eq!(r.inputs.inflow_source, InflowSource::EstimatedFromDepth);
        assert_eq!(r.inputs.inflow, 45.0);
        assert!(r.reason.contains("depth-only estimate"), "{}", r.reason);

        let Decision::Recommend(r) = decide(
            &cfg(),
            &queue(10, 6000, 300.0),
            &mut History::default(),
            at(0),
        ) else {
            panic!("an up");
        };
        assert!(
            r.reason.contains("needs 35, capped at max 20"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn hold_reasons_have_stable_names() {
        let names: Vec<&str> = HoldReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "off",
                "invalid_config",
                "insufficient_data",
                "cluster_unreachable",
                "stale_data",
                "queue_not_found",
                "rate_unknown",
                "depth_only_needs_per_consumer_rate",
                "depth_only_inflow_unknown",
                "no_consumers_to_learn_from",
                "no_consumption_to_learn_from",
                "within_tolerance",
                "at_bound",
                "stabilising",
                "cooldown",
            ]
        );
        for r in HoldReason::ALL {
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::Value::from(r.as_str())
            );
        }
    }

    #[test]
    fn history_round_trips_as_plain_json() {
        let mut h = History::default();
        decide(&cfg(), &queue(3, 1200, 32.0), &mut h, at(5));
        decide(&cfg(), &queue(5, 0, 32.0), &mut h, at(15));
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(
            json,
            r#"{"recent":[{"at":5000,"desired":5},{"at":15000,"desired":4}],"run_since":5000,"last_up":{"at":5000,"desired":5},"last_down":null,"sequence":1}"#
        );
        assert_eq!(serde_json::from_str::<History>(&json).unwrap(), h);
        assert_eq!(
            serde_json::from_str::<History>("{}").unwrap(),
            History::default()
        );
    }

    #[test]
    fn a_gap_between_cycles_restarts_the_run() {
        // A history restored after the daemon was down, or a scaler that was not run for a while:
        // its old cycles do not count as covering the window.
        let cfg = cfg();
        let mut h = History::default();
        for t in (0..=300).step_by(10) {
            decide(&cfg, &queue(8, 0, 80.0), &mut h, at(t));
        }
        let d = decide(&cfg, &queue(8, 0, 30.0), &mut h, at(3600));
        assert_eq!(verdict(&d), Want::Hold(R::Stabilising), "{d:?}");
        assert_eq!(h.run_since, Some(at(3600)));
        assert_eq!(h.recent.len(), 1);
    }

    #[test]
    fn config_problems_name_each_broken_key() {
        assert!(cfg().problems().is_empty());
        let bad = ScalerConfig {
            per_consumer_rate: Some(0.0),
            target_drain_time: Duration::ZERO,
            min: 3,
            max: 0,
            tolerance: 1.0,
            ..cfg()
        };
        let fields: Vec<&str> = bad.problems().iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                "per_consumer_rate",
                "target_drain_time",
                "max",
                "min",
                "tolerance"
            ]
        );
        let nan = ScalerConfig {
            per_consumer_rate: Some(f64::NAN),
            tolerance: f64::NAN,
            ..cfg()
        };
        assert_eq!(nan.problems().len(), 2);
    }

    #[test]
    fn observed_from_view_reads_the_cluster_and_the_queue() {
        let sample = QueueSample {
            key: QueueKey {
                vhost: Arc::from("shop"),
                name: "orders".into(),
            },
            kind: Arc::from("classic"),
            durable: true,
            messages: 1210,
            messages_ready: 1200,
            messages_unacked: 10,
            consumers: 3,
            consumer_utilisation: None,
            counters: None,
            head_message_timestamp: None,
            limits: crate::snapshot::Limits::NONE,
            stats_pending: false,
        };
        let health = QueueHealth {
            publish_rate: Some(32.0),
            consume_rate: Some(30.0),
            backlog_growth: Some(2.0),
            status: Status::Growing,
            ..QueueHealth::default()
        };
        let mut view = ClusterView::new("local", POLL);
        let observe =
            |view: &ClusterView, now| Observed::from_view(view, "shop", "orders", WINDOW, at(now));
        assert_eq!(observe(&view, 0).cluster, ClusterState::NotScrapedYet);
        view.last_attempt = Some(at(0));
        assert_eq!(observe(&view, 0).cluster, ClusterState::Unreachable);
        view.up = true;
        view.last_success = Some(at(0));
        view.queues = Arc::new(vec![QueueView {
            sample,
            health: health.into(),
            prom_labels: Arc::from(""),
            dead_letter_target: None,
            retry_queue: None,
        }]);
        let o = observe(&view, 10);
        assert_eq!(o.cluster, ClusterState::Fresh);
        assert_eq!(o.poll_interval, POLL);
        assert_eq!(
            o.queue,
            Some(QueueObserved {
                consumers: 3,
                messages_ready: 1200,
                messages_unacked: 10,
                publish_rate: Some(32.0),
                consume_rate: Some(30.0),
                backlog_growth: Some(2.0),
                status: Status::Growing,
                window_span: 0.0,
            })
        );
        assert_eq!(observe(&view, 32).cluster, ClusterState::Stale);
        assert_eq!(
            Observed::from_view(&view, "shop", "other", WINDOW, at(10)).queue,
            None
        );
        assert_eq!(
            Observed::from_view(&view, "/", "orders", WINDOW, at(10)).queue,
            None
        );
    }
}
