//! A cluster's state at one instant, and each queue's recent history.
//!
//! Owns `Snapshot` (what one scrape saw) and `Window` (a compact ring of a queue's samples).
//! No I/O and no clock: timestamps come from the caller.

use std::collections::VecDeque;

use crate::domain::{QueueKey, StatsMode, Timestamp};

/// Monotonic message counters of one queue, as the broker reports them (`message_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub publish: u64,
    /// `deliver_get`: every delivery or get, acked or not.
    pub delivered: u64,
    pub ack: u64,
    /// `deliver_no_ack + get_no_ack`: messages that left the queue without an ack.
    pub no_ack: u64,
    pub redeliver: u64,
}

impl Counters {
    /// Messages that left the queue: acks plus no-ack deliveries and gets.
    pub fn consumed(&self) -> u64 {
        self.ack.saturating_add(self.no_ack)
    }

    fn any_decreased_from(&self, prev: &Counters) -> bool {
        self.publish < prev.publish
            || self.delivered < prev.delivered
            || self.ack < prev.ack
            || self.no_ack < prev.no_ack
            || self.redeliver < prev.redeliver
    }
}

/// What one scrape saw of one queue.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueSample {
    pub key: QueueKey,
    /// `classic`, `quorum`, `stream`: one shared allocation per distinct type in a scrape.
    pub kind: std::sync::Arc<str>,
    pub durable: bool,
    pub messages: u64,
    pub messages_ready: u64,
    pub messages_unacked: u64,
    pub consumers: u64,
    pub consumer_utilisation: Option<f64>,
    /// `None` when the broker keeps no message statistics (depth-only mode).
    pub counters: Option<Counters>,
    /// Publish time of the head message, where the broker reports it (seconds since the epoch).
    pub head_message_timestamp: Option<f64>,
    /// The queue's limits (max-length, max-length-bytes, bytes, delivery limit), packed.
    pub limits: Limits,
    /// Listed without any counts: a node that has just started lists its queues for about one
    /// statistics interval (5 s by default) before it has their numbers. The figures above are then
    /// not facts; `view::Tracker` shows the last known ones instead of reading the queue as empty.
    pub stats_pending: bool,
}

/// A queue's limits as RabbitMQ applies them, packed: each unset limit is a sentinel rather than an
/// `Option`, so the four cost 28 bytes inline. Inline because a boxed set cost every queue with a
/// limit an allocation and a free per cycle: with 20% of 100k fixture queues limited, `observe` went
/// from 31 to 53 ms (benches/pipeline), and on RabbitMQ 4.x every quorum queue has a delivery limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    max_length: u64,
    max_length_bytes: u64,
    message_bytes: u64,
    delivery_limit: i32,
}

/// What an unset `u64` limit is stored as.
const UNSET: u64 = u64::MAX;
/// What an unknown delivery limit is stored as.
const UNSET_DELIVERY: i32 = i32::MIN;

impl Default for Limits {
    fn default() -> Self {
        Limits::NONE
    }
}

impl Limits {
    /// No limit known.
    pub const NONE: Limits = Limits {
        max_length: UNSET,
        max_length_bytes: UNSET,
        message_bytes: UNSET,
        delivery_limit: UNSET_DELIVERY,
    };

    /// - `max_length`: the effective `max-length`, the lower of the `x-max-length` argument and the
    ///   policies' (policy and operator policy); never set for a stream (retention, not overflow);
    /// - `max_length_bytes`: the same for `max-length-bytes`;
    /// - `message_bytes`: the bytes of the messages in the queue, where the source says;
    /// - `delivery_limit`: a quorum queue's delivery limit (returned this many times, a message is
    ///   dropped or dead-lettered) as RabbitMQ 4.x lists it (20 by default), else from
    ///   `x-delivery-limit` and the policies; -1 unlimited; `None` when not known (3.x without a
    ///   setting, which is unlimited).
    ///
    /// A value that collides with a sentinel (`u64::MAX` messages or bytes, a delivery limit past
    /// `i32`) is kept as the nearest value that does not.
    pub fn new(
        max_length: Option<u64>,
        max_length_bytes: Option<u64>,
        message_bytes: Option<u64>,
        delivery_limit: Option<i64>,
    ) -> Limits {
        let pack = |v: Option<u64>| v.map_or(UNSET, |v| v.min(UNSET - 1));
        Limits {
            max_length: pack(max_length),
            max_length_bytes: pack(max_length_bytes),
            message_bytes: pack(message_bytes),
            delivery_limit: delivery_limit.map_or(UNSET_DELIVERY, |l| {
                l.clamp(i64::from(UNSET_DELIVERY) + 1, i64::from(i32::MAX)) as i32
            }),
        }
    }
}

impl QueueSample {
    pub fn max_length(&self) -> Option<u64> {
        Some(self.limits.max_length).filter(|v| *v != UNSET)
    }

    pub fn max_length_bytes(&self) -> Option<u64> {
        Some(self.limits.max_length_bytes).filter(|v| *v != UNSET)
    }

    pub fn message_bytes(&self) -> Option<u64> {
        Some(self.limits.message_bytes).filter(|v| *v != UNSET)
    }

    pub fn delivery_limit(&self) -> Option<i64> {
        Some(self.limits.delivery_limit)
            .filter(|v| *v != UNSET_DELIVERY)
            .map(i64::from)
    }

    /// How full the queue is against the nearer of its limits: messages over `max-length`, bytes
    /// over `max-length-bytes`. Unknown without a limit (or without the byte count a byte limit
    /// needs).
    pub fn fill_ratio(&self) -> Option<f64> {
        let by_count = self
            .max_length()
            .filter(|m| *m > 0)
            .map(|m| self.messages as f64 / m as f64);
        let by_bytes = self
            .max_length_bytes()
            .filter(|m| *m > 0)
            .zip(self.message_bytes())
            .map(|(m, b)| b as f64 / m as f64);
        match (by_count, by_bytes) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// One node as the management API lists it. Every figure but `running` is `None` when the broker did
/// not say: RabbitMQ 4.0 with `management_metrics_collection` denied (and 3.x with
/// `management_agent.disable_metrics_collector`) lists only name, type and running. Unknown is
/// never zero, and an alarm nobody reported is not "no alarm".
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSample {
    pub name: String,
    pub running: bool,
    pub mem_used: Option<u64>,
    pub mem_limit: Option<u64>,
    pub mem_alarm: Option<bool>,
    pub disk_free: Option<u64>,
    pub disk_free_limit: Option<u64>,
    pub disk_alarm: Option<bool>,
    pub fd_used: Option<u64>,
    pub fd_total: Option<u64>,
    pub partitions: Option<u64>,
}

/// Where a scrape read the queues' figures (config `source`, docs/sources.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The management API's `/api/queues`.
    #[default]
    Management,
    /// Every node's `rabbitmq_prometheus` `/metrics/detailed`, summed per queue.
    Prometheus,
}

impl Source {
    pub const ALL: [Source; 2] = [Source::Management, Source::Prometheus];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Management => "management",
            Source::Prometheus => "prometheus",
        }
    }
}

/// Everything one successful scrape of a cluster produced.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub taken_at: Timestamp,
    pub stats_mode: StatsMode,
    /// The source this scrape read.
    pub source: Source,
    /// Why `source: auto` reads the management API rather than the Prometheus plugin; `None` when
    /// the source is the one configured or preferred.
    pub source_reason: Option<String>,
    pub rabbitmq_version: String,
    pub nodes: Vec<NodeSample>,
    pub queues: Vec<QueueSample>,
    /// Queues left out by the `max_queues` guard (the ones with the smallest backlog).
    pub truncated: usize,
    /// Queues listed with their statistics pending (see `QueueSample::stats_pending`).
    pub stats_pending: usize,
    /// Every listed queue that dead-letters somewhere (before the name filters and `max_queues`:
    /// a queue nobody watches can still dead-letter into one that is watched).
    pub dead_letterings: Vec<DeadLettering>,
    /// The exchanges those queues dead-letter into, with their bindings; `None` when they could not
    /// be read (then whether a queue is a dead-letter target is unknown, not "no").
    pub exchanges: Option<std::sync::Arc<Exchanges>>,
    /// Why `exchanges` is `None`, when it is.
    pub topology_error: Option<String>,
    /// The stream consumers, read only when the cluster lists a stream (`None` otherwise).
    pub streams: Option<StreamsReading>,
    /// The deprecated features the cluster uses (`/api/deprecated-features/used`, RabbitMQ 3.13+),
    /// by name; `None` when the broker cannot say (3.x before 3.13, or the request failed).
    pub deprecated_features: Option<std::sync::Arc<Vec<String>>>,
}

/// What the broker said of the readers of its streams (`/api/stream/consumers`, the
/// `rabbitmq_stream_management` plugin).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamsReading {
    /// Every stream-protocol consumer of a watched stream.
    pub consumers: Vec<StreamConsumerSample>,
    /// Why the consumers could not be read (the plugin is not enabled, the request failed): every
    /// reader's lag is then unknown, never zero.
    pub error: Option<String>,
}

/// One stream-protocol subscription as the broker lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamConsumerSample {
    pub vhost: std::sync::Arc<str>,
    pub stream: std::sync::Arc<str>,
    /// The consumer's `name` property: what it stores its offset under. `None` for an anonymous
    /// reader, which is known by its connection and subscription id while it is subscribed.
    pub name: Option<String>,
    /// The connection's name (the client's `connection_name`, else its address).
    pub connection: String,
    pub subscription_id: u64,
    /// The offset of the last message dispatched to it.
    pub offset: u64,
    /// The stream's committed offset minus `offset`.
    pub offset_lag: u64,
    /// The super stream this stream is a partition of, when the consumer subscribed through it
    /// (property `super-stream`).
    pub super_stream: Option<String>,
    /// A single-active-consumer group's standby is subscribed but not active.
    pub active: bool,
}

/// One queue's dead-letter settings: its `x-dead-letter-exchange` argument, else its effective
/// policy's `dead-letter-exchange` (RabbitMQ lets the argument win; the routing key is resolved the
/// same way, separately).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLettering {
    /// The queue whose rejected, expired or overflowing messages are dead-lettered.
    pub queue: QueueKey,
    /// The exchange they are republished to, in the queue's vhost; `""` is the default exchange.
    pub exchange: Box<str>,
    /// The routing key they are republished with; `None` keeps each message's own routing keys.
    pub routing_key: Option<Box<str>>,
    /// Its messages expire (`x-message-ttl` or a policy's `message-ttl`): dead-lettering back to
    /// where they came from, it is a delayed-retry "wait" queue.
    pub expires: bool,
}

/// How an exchange routes, as far as dead-letter targets go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeKind {
    /// `routing key == binding key`.
    Direct,
    /// Every binding.
    Fanout,
    /// `*`/`#` patterns over dot-separated words.
    Topic,
    /// Headers, consistent-hash, x-delayed-message…: routing we do not model, so every binding counts.
    Other,
}

impl ExchangeKind {
    pub fn parse(kind: &str) -> ExchangeKind {
        match kind {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            _ => ExchangeKind::Other,
        }
    }
}

/// Where a binding leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Queue(Box<str>),
    Exchange(Box<str>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub destination: Destination,
    pub routing_key: Box<str>,
}

/// One exchange as the topology read saw it; `kind` is `None` when the exchange does not exist
/// (messages dead-lettered to it are dropped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub kind: Option<ExchangeKind>,
    pub bindings: Vec<Binding>,
}

/// The exchanges queues dead-letter into and those their exchange-to-exchange bindings lead to,
/// keyed by (vhost, exchange name). The default exchange `""` is never listed: it routes a message
/// to the queue its routing key names.
pub type Exchanges = std::collections::HashMap<(std::sync::Arc<str>, Box<str>), Exchange>;

/// One point of a queue's history, as the analysis reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Point {
    pub at: Timestamp,
    pub messages: u64,
    pub counters: Counters,
}

/// A point stored as 32-bit offsets from the window's base: 28 bytes instead of 56, which is what lets
/// 100k queues × a 5-minute window fit in the memory budget.
#[derive(Clone, Copy, Debug)]
struct Packed {
    dt_ms: u32,
    messages: u32,
    publish: u32,
    delivered: u32,
    ack: u32,
    no_ack: u32,
    redeliver: u32,
}

/// Outcome of adding a sample to a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    Appended,
    /// A counter went down (node restart, queue re-declared) or the stats mode changed: history restarted.
    Reset,
    /// The sample is not newer than the last one; ignored.
    Stale,
}

/// A queue's samples over the analysis window, oldest first. Counters in it never decrease: a decrease
/// restarts the window, so rates computed from it are never negative.
#[derive(Clone, Debug)]
pub struct Window {
    base: Point,
    has_counters: bool,
    points: VecDeque<Packed>,
}

impl Window {
    pub fn new(at: Timestamp, messages: u64, counters: Option<Counters>) -> Self {
        let mut w = Window {
            base: Point {
                at,
                messages: 0,
                counters: counters.unwrap_or_default(),
            },
            has_counters: counters.is_some(),
            points: VecDeque::with_capacity(4),
        };
        w.restart(at, messages, counters);
        w
    }

    fn restart(&mut self, at: Timestamp, messages: u64, counters: Option<Counters>) {
        self.base = Point {
            at,
            messages: 0,
            counters: counters.unwrap_or_default(),
        };
        self.has_counters = counters.is_some();
        self.points.clear();
        let packed = self
            .pack(&Point {
                at,
                messages,
                counters: counters.unwrap_or_default(),
            })
            .expect("a point equal to the base always packs");
        self.points.push_back(packed);
    }

    /// Whether the samples carry message counters (false in depth-only mode).
    pub fn has_counters(&self) -> bool {
        self.has_counters
    }

    /// The next sample's counters come from elsewhere (another source) and cannot be compared with
    /// these: the next push restarts the window, as a counter reset does, rather than reading the
    /// difference between two sources' counters as traffic.
    pub fn forget_counters(&mut self) {
        self.has_counters = false;
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Adds a sample and forgets samples older than `span` before it.
    pub fn push(
        &mut self,
        at: Timestamp,
        messages: u64,
        counters: Option<Counters>,
        span_ms: i64,
    ) -> Push {
        let last = self.last();
        if at <= last.at {
            return Push::Stale;
        }
        let reset = match counters {
            Some(c) => !self.has_counters || c.any_decreased_from(&last.counters),
            None => self.has_counters,
        };
        if reset {
            self.restart(at, messages, counters);
            return Push::Reset;
        }
        let point = Point {
            at,
            messages,
            counters: counters.unwrap_or_default(),
        };
        let cutoff = Timestamp(at.0 - span_ms);
        while self.points.len() > 1 && self.unpack(&self.points[0]).at < cutoff {
            self.points.pop_front();
        }
        match self.pack(&point) {
            Some(p) => self.points.push_back(p),
            None => {
                self.rebase();
                match self.pack(&point) {
                    Some(p) => self.points.push_back(p),
                    // A jump too large to store as an offset even from the oldest kept point: start over.
                    None => {
                        self.restart(at, messages, counters);
                        return Push::Reset;
                    }
                }
            }
        }
        Push::Appended
    }

    pub fn first(&self) -> Point {
        self.unpack(&self.points[0])
    }

    pub fn last(&self) -> Point {
        self.unpack(&self.points[self.points.len() - 1])
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Point> + ExactSizeIterator + '_ {
        self.points.iter().map(|p| self.unpack(p))
    }

    fn unpack(&self, p: &Packed) -> Point {
        let b = &self.base;
        Point {
            at: Timestamp(b.at.0 + i64::from(p.dt_ms)),
            messages: u64::from(p.messages),
            counters: Counters {
                publish: b.counters.publish + u64::from(p.publish),
                delivered: b.counters.delivered + u64::from(p.delivered),
                ack: b.counters.ack + u64::from(p.ack),
                no_ack: b.counters.no_ack + u64::from(p.no_ack),
                redeliver: b.counters.redeliver + u64::from(p.redeliver),
            },
        }
    }

    fn pack(&self, p: &Point) -> Option<Packed> {
        let b = &self.base;
        let off = |v: u64, base: u64| u32::try_from(v.checked_sub(base)?).ok();
        Some(Packed {
            dt_ms: u32::try_from(p.at.0.checked_sub(b.at.0)?).ok()?,
            // Depth above 4 billion is saturated rather than rejected: it only ever means "huge".
            messages: u32::try_from(p.messages).unwrap_or(u32::MAX),
            publish: off(p.counters.publish, b.counters.publish)?,
            delivered: off(p.counters.delivered, b.counters.delivered)?,
            ack: off(p.counters.ack, b.counters.ack)?,
            no_ack: off(p.counters.no_ack, b.counters.no_ack)?,
            redeliver: off(p.counters.redeliver, b.counters.redeliver)?,
        })
    }

    /// Moves the base to the oldest kept point so offsets stay small as counters grow over days.
    fn rebase(&mut self) {
        let points: Vec<Point> = self.iter().collect();
        self.base = Point {
            messages: 0,
            ..points[0]
        };
        self.points.clear();
        for p in &points {
            let packed = self
                .pack(p)
                .expect("points newer than the base pack after a rebase");
            self.points.push_back(packed);
        }
    }
}

/// Why a canary round trip failed (`probe_error`; docs/canary.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeError {
    /// The connection could not be opened or was closed: refused, reset, the vhost refusing
    /// connections, the node stopping.
    Connect,
    /// The broker refused the credentials or the user's permissions in the vhost.
    Auth,
    /// The broker blocked the connection's publishes (a memory or disk alarm).
    Blocked,
    /// The message reached no queue (`basic.return` of a mandatory publish), or the exchange or
    /// queue named in the probe does not exist.
    Unroutable,
    /// The broker refused to take responsibility for the message (a publisher-confirm nack).
    Nack,
    /// Published, but not confirmed or not delivered back within the probe's `timeout`.
    Timeout,
}

impl ProbeError {
    pub const ALL: [ProbeError; 6] = [
        ProbeError::Connect,
        ProbeError::Auth,
        ProbeError::Blocked,
        ProbeError::Unroutable,
        ProbeError::Nack,
        ProbeError::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeError::Connect => "connect",
            ProbeError::Auth => "auth",
            ProbeError::Blocked => "blocked",
            ProbeError::Unroutable => "unroutable",
            ProbeError::Nack => "nack",
            ProbeError::Timeout => "timeout",
        }
    }
}

/// What one canary (a `probe:` entry) found by its last round trip: judged by `scope: probe` rules.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeSample {
    pub name: String,
    pub vhost: String,
    /// The last round trip succeeded; `None` until the first one ended.
    pub ok: Option<bool>,
    /// Seconds from publish to delivery of the last round trip, when it succeeded.
    pub latency: Option<f64>,
    /// Consecutive failed round trips.
    pub failures: u64,
    /// Why the last round trip failed; `None` when it succeeded.
    pub error: Option<ProbeError>,
    /// The failure in words (the broker's reply text, or what timed out); empty when ok.
    pub detail: String,
    /// When the last round trip ended.
    pub at: Option<Timestamp>,
    /// When a round trip last succeeded.
    pub last_success: Option<Timestamp>,
}

impl ProbeSample {
    pub fn new(name: &str, vhost: &str) -> Self {
        ProbeSample {
            name: name.to_string(),
            vhost: vhost.to_string(),
            ok: None,
            latency: None,
            failures: 0,
            error: None,
            detail: String::new(),
            at: None,
            last_success: None,
        }
    }

    /// The sample after a round trip that ended at `at`: `Ok(latency)` or the failure and its detail.
    pub fn after(&self, at: Timestamp, outcome: Result<f64, (ProbeError, String)>) -> Self {
        let mut next = self.clone();
        next.at = Some(at);
        match outcome {
            Ok(latency) => {
                next.ok = Some(true);
                next.latency = Some(latency);
                next.failures = 0;
                next.error = None;
                next.detail.clear();
                next.last_success = Some(at);
            }
            Err((error, detail)) => {
                next.ok = Some(false);
                next.latency = None;
                next.failures += 1;
                next.error = Some(error);
                next.detail = detail;
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listing of 100k queues is held as samples, and again inside the views: the limits are
    /// packed (28 bytes for four) and every one reads back as set, or as unknown.
    #[test]
    fn a_sample_stays_small_and_its_limits_read_back() {
        assert!(std::mem::size_of::<QueueSample>() <= 200);
        let q = |limits| QueueSample {
            key: QueueKey {
                vhost: "/".into(),
                name: "q".into(),
            },
            kind: "quorum".into(),
            durable: true,
            messages: 1,
            messages_ready: 1,
            messages_unacked: 0,
            consumers: 0,
            consumer_utilisation: None,
            counters: None,
            head_message_timestamp: None,
            limits,
            stats_pending: false,
        };
        let set = q(Limits::new(Some(0), Some(5000), Some(u64::MAX), Some(-1)));
        assert_eq!(
            (
                set.max_length(),
                set.max_length_bytes(),
                set.message_bytes(),
                set.delivery_limit()
            ),
            (Some(0), Some(5000), Some(u64::MAX - 1), Some(-1))
        );
        let none = q(Limits::NONE);
        assert_eq!(
            (
                none.max_length(),
                none.max_length_bytes(),
                none.message_bytes(),
                none.delivery_limit()
            ),
            (None, None, None, None)
        );
        assert_eq!(
            q(Limits::new(None, None, None, Some(i64::MAX))).delivery_limit(),
            Some(i64::from(i32::MAX))
        );
    }

    #[test]
    fn a_probe_counts_consecutive_failures_and_a_success_clears_them() {
        let s = ProbeSample::new("canary", "/");
        assert_eq!(s.ok, None, "unknown before the first round trip");
        let s = s.after(Timestamp(1_000), Ok(0.004));
        assert_eq!((s.ok, s.latency, s.failures), (Some(true), Some(0.004), 0));
        let s = s.after(
            Timestamp(2_000),
            Err((ProbeError::Timeout, "no delivery in 5s".into())),
        );
        let s = s.after(
            Timestamp(3_000),
            Err((ProbeError::Connect, "refused".into())),
        );
        assert_eq!((s.ok, s.latency, s.failures), (Some(false), None, 2));
        assert_eq!(
            (s.error, s.detail.as_str()),
            (Some(ProbeError::Connect), "refused")
        );
        assert_eq!(s.last_success, Some(Timestamp(1_000)));
        let s = s.after(Timestamp(4_000), Ok(0.002));
        assert_eq!((s.failures, s.error, s.detail.as_str()), (0, None, ""));
    }

    fn c(publish: u64, ack: u64) -> Option<Counters> {
        Some(Counters {
            publish,
            delivered: ack,
            ack,
            no_ack: 0,
            redeliver: 0,
        })
    }

    #[test]
    fn points_round_trip_through_packing() {
        let mut w = Window::new(Timestamp(1_000), 5, c(100, 50));
        assert_eq!(
            w.push(Timestamp(2_000), 7, c(110, 55), 60_000),
            Push::Appended
        );
        let pts: Vec<Point> = w.iter().collect();
        assert_eq!(pts.len(), 2);
        assert_eq!(pts[1].at, Timestamp(2_000));
        assert_eq!(pts[1].messages, 7);
        assert_eq!(pts[1].counters.publish, 110);
        assert_eq!(pts[1].counters.consumed(), 55);
    }

    #[test]
    fn counter_decrease_restarts_the_window() {
        let mut w = Window::new(Timestamp(0), 5, c(100, 50));
        w.push(Timestamp(1_000), 5, c(120, 60), 60_000);
        assert_eq!(w.push(Timestamp(2_000), 0, c(3, 0), 60_000), Push::Reset);
        assert_eq!(w.len(), 1);
        assert_eq!(w.first().counters.publish, 3);
    }

    #[test]
    fn forgotten_counters_restart_the_window_at_the_next_push() {
        let mut w = Window::new(Timestamp(0), 5, c(100, 50));
        assert_eq!(
            w.push(Timestamp(1_000), 5, c(110, 60), 60_000),
            Push::Appended
        );
        w.forget_counters();
        // Higher counters from another source: a restart, not 890 messages in a second.
        assert_eq!(
            w.push(Timestamp(2_000), 5, c(1_000, 60), 60_000),
            Push::Reset
        );
        assert_eq!(w.len(), 1);
        assert_eq!(
            w.push(Timestamp(3_000), 5, c(1_010, 70), 60_000),
            Push::Appended
        );
    }

    #[test]
    fn stats_mode_change_restarts_the_window() {
        let mut w = Window::new(Timestamp(0), 5, c(100, 50));
        assert_eq!(w.push(Timestamp(1_000), 5, None, 60_000), Push::Reset);
        assert!(!w.has_counters());
    }

    #[test]
    fn old_points_fall_out_of_the_span() {
        let mut w = Window::new(Timestamp(0), 0, c(0, 0));
        for i in 1..=20 {
            w.push(Timestamp(i * 1_000), 0, c(i as u64, 0), 5_000);
        }
        assert_eq!(w.first().at, Timestamp(15_000));
        assert_eq!(w.last().at, Timestamp(20_000));
    }

    #[test]
    fn stale_samples_are_ignored() {
        let mut w = Window::new(Timestamp(5_000), 0, c(0, 0));
        assert_eq!(w.push(Timestamp(5_000), 1, c(1, 0), 60_000), Push::Stale);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn counters_beyond_32_bits_rebase_instead_of_overflowing() {
        let big = 10_000_000_000u64;
        let mut w = Window::new(Timestamp(0), 0, c(big, 0));
        w.push(Timestamp(1_000), 0, c(big + 4_000_000_000, 0), 1_500);
        // 8e9 past the original base does not fit 32 bits; the base moves to the oldest kept point.
        assert_eq!(
            w.push(Timestamp(2_000), 0, c(big + 8_000_000_000, 0), 1_500),
            Push::Appended
        );
        let pts: Vec<u64> = w.iter().map(|p| p.counters.publish).collect();
        assert_eq!(pts, vec![big + 4_000_000_000, big + 8_000_000_000]);
    }
}
