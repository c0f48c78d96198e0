//! The latest published state of each cluster: what the rules, the scalers, `export` and `http` read.
//!
//! `Tracker` owns a cluster's history (one `Window` per queue, and each stream reader's in `streams`)
//! and turns each cycle's outcome into an immutable `ClusterView`, swapped in atomically so readers
//! never see half a cycle and never block the poll loop. Queues missing from a successful snapshot are
//! forgotten here, which is what makes a deleted queue's series vanish; a failed scrape keeps the last
//! queue list (queues never look gone because the broker did not answer) and counts its reason.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hashbrown::HashTable;
use serde::Serialize;

use crate::analysis::{self, Activity, Latest, PackedHealth, Params};
use crate::domain::{QueueKey, StatsMode, Timestamp};
use crate::scrape::{ScrapeError, ScrapeReason};
use crate::snapshot::{NodeSample, ProbeSample, QueueSample, Snapshot, Source, Window};

mod streams;
pub use streams::{AMQP_READERS, FORGET_OFFLINE_MS, StreamConsumerView, UnknownReaders};

#[derive(Debug)]
pub struct QueueView {
    pub sample: QueueSample,
    pub health: PackedHealth,
    /// Some queue dead-letters into this one (`analysis::dead_letter`); `None` when the topology
    /// could not be read this cycle.
    pub dead_letter_target: Option<bool>,
    /// The wait queue of a delayed-retry loop: its messages expire back to where they came from
    /// (`analysis::dead_letter::Roles`); `None` when the topology could not be read this cycle.
    pub retry_queue: Option<bool>,
    /// `cluster="…",vhost="…",queue="…"`, escaped once per queue for the exposition format.
    pub prom_labels: Arc<str>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LastError {
    pub reason: ScrapeReason,
    pub message: String,
    pub at: i64,
}

#[derive(Clone, Debug)]
pub struct ClusterView {
    pub name: String,
    pub poll_interval: Duration,
    pub up: bool,
    pub last_attempt: Option<Timestamp>,
    pub last_success: Option<Timestamp>,
    pub last_error: Option<LastError>,
    pub scrape_duration: Option<f64>,
    pub stats_mode: StatsMode,
    /// The source the last successful scrape read.
    pub source: Source,
    /// Why `source: auto` reads the management API (see `Snapshot::source_reason`).
    pub source_reason: Option<String>,
    pub rabbitmq_version: String,
    pub nodes: Arc<Vec<NodeSample>>,
    pub queues: Arc<Vec<QueueView>>,
    pub truncated: usize,
    /// Queues the last listing had with statistics pending: shown with their last known figures,
    /// or left out when there are none.
    pub stats_pending: usize,
    pub errors_total: BTreeMap<ScrapeReason, u64>,
    pub skipped_total: u64,
    /// The cluster's canaries as their last round trips left them (`probe`), whatever the scrape did.
    pub probes: Arc<Vec<ProbeSample>>,
    /// Why the last successful scrape could not read the dead-letter topology (then every queue's
    /// `is_dead_letter_target` is unknown); `None` when it could.
    pub topology_error: Option<String>,
    /// Every stream reader with its lag and verdict (`view::streams`); empty without streams.
    pub stream_consumers: Arc<Vec<StreamConsumerView>>,
    /// Streams read by AMQP consumers, whose lag nobody can know.
    pub stream_unknown: Arc<Vec<UnknownReaders>>,
    /// Why the last successful scrape could not read the stream consumers: every reader's lag is
    /// unknown.
    pub streams_error: Option<String>,
    /// The deprecated features the cluster uses; `None` when it cannot say (before RabbitMQ 3.13).
    pub deprecated_features: Option<Arc<Vec<String>>>,
}

impl ClusterView {
    pub fn new(name: &str, poll_interval: Duration) -> Self {
        ClusterView {
            name: name.to_string(),
            poll_interval,
            up: false,
            last_attempt: None,
            last_success: None,
            last_error: None,
            scrape_duration: None,
            stats_mode: StatsMode::Full,
            source: Source::Management,
            source_reason: None,
            rabbitmq_version: String::new(),
            nodes: Arc::default(),
            queues: Arc::default(),
            truncated: 0,
            stats_pending: 0,
            errors_total: BTreeMap::new(),
            skipped_total: 0,
            probes: Arc::default(),
            topology_error: None,
            stream_consumers: Arc::default(),
            stream_unknown: Arc::default(),
            streams_error: None,
            deprecated_features: None,
        }
    }

    /// Data older than three polls is not presented as current: a brief failure keeps series
    /// continuous, a real outage lets them go stale.
    pub fn is_fresh(&self, now: Timestamp) -> bool {
        self.last_success
            .is_some_and(|t| now.0 - t.0 <= 3 * self.poll_interval.as_millis() as i64 + 1_000)
    }
}

/// What a cycle's outcome is worth telling the operator; the poll loop logs each once.
#[derive(Clone, Debug, PartialEq)]
pub enum CycleEvent {
    /// The cluster answered, for the first time or after failing.
    Reachable { queues: usize, version: String },
    /// The broker keeps no message statistics (now, or since the first scrape), or its Prometheus
    /// plugin lists no per-queue counters (`source`): rates are unknown.
    DepthOnly { source: Source },
    /// The scrape reads another source than before, or, at the first scrape, the Prometheus plugin
    /// or the management API for a reason (`source: auto` falling back).
    Source {
        source: Source,
        reason: Option<String>,
    },
    /// More queues than `max_queues`: the largest backlogs are watched.
    Truncated { watched: usize, dropped: usize },
    /// The broker started listing queues without statistics.
    StatsPending { pending: usize, listed: usize },
    /// The scrape failed; the history is kept, no samples this cycle.
    Failed { reason: ScrapeReason, error: String },
    /// The cycle took longer than the poll interval: these ticks are skipped.
    Overran { took: Duration, skipped: u32 },
    /// The dead-letter topology could not be read (it could before, or this is the first scrape):
    /// `is_dead_letter_target` is unknown until it can.
    TopologyUnreadable { error: String },
    /// The stream consumers could not be read (they could before, or this is the first scrape):
    /// every stream reader's lag is unknown until they can.
    StreamsUnreadable { error: String },
}

/// A cluster's shared handle: the poll loop writes, everyone else reads.
pub struct ClusterHandle {
    pub name: String,
    pub poll_interval: Duration,
    pub view: ArcSwap<ClusterView>,
}

impl ClusterHandle {
    pub fn new(name: &str, poll_interval: Duration) -> Self {
        ClusterHandle {
            name: name.to_string(),
            poll_interval,
            view: ArcSwap::from_pointee(ClusterView::new(name, poll_interval)),
        }
    }
}

struct Tracked {
    key: QueueKey,
    window: Window,
    prom_labels: Arc<str>,
    /// The last cycle that listed this queue.
    seen: u64,
    /// Where the last listing had it in `Tracker::order`.
    pos: u32,
    carried: Carried,
    activity: Activity,
}

/// The last listed figures of a queue that its window does not keep, shown again while the broker
/// lists the queue with its statistics pending (see `QueueSample::stats_pending`).
#[derive(Clone, Copy, Debug)]
struct Carried {
    messages_ready: u64,
    messages_unacked: u64,
    consumers: u64,
    consumer_utilisation: Option<f64>,
    head_message_timestamp: Option<f64>,
}

impl Carried {
    fn of(q: &QueueSample) -> Self {
        Carried {
            messages_ready: q.messages_ready,
            messages_unacked: q.messages_unacked,
            consumers: q.consumers,
            consumer_utilisation: q.consumer_utilisation,
            head_message_timestamp: q.head_message_timestamp,
        }
    }
}

impl Tracked {
    /// Fills a stats-pending sample with the last known figures; the window gets no new point, so
    /// rates, growth and status stay what the last real sample made them.
    fn carry_into(&self, q: &mut QueueSample) {
        let last = self.window.last();
        let c = self.carried;
        q.messages = last.messages;
        q.counters = self.window.has_counters().then_some(last.counters);
        q.messages_ready = c.messages_ready;
        q.messages_unacked = c.messages_unacked;
        q.consumers = c.consumers;
        q.consumer_utilisation = c.consumer_utilisation;
        q.head_message_timestamp = c.head_message_timestamp;
    }
}

/// One cluster's history and the analysis over it.
pub struct Tracker {
    cluster: String,
    params: Params,
    /// Slots by their queue's key, which the slot holds (so the table keeps no second copy). The
    /// histories live outside the table: queues coming and going leave tombstones that make the table
    /// double once even at a steady queue count (hashbrown grows rather than rehashing in place while
    /// more than half full), and with the histories inline that step alone was +3.3 MB at 10k queues.
    index: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    slots: Slots,
    /// The slots in the order of the last listing. RabbitMQ lists queues in the same order every
    /// cycle, so each queue is first compared with the slot after the one matched last, and the index
    /// is asked only when that is not it (a queue added, deleted or moved): no hashing, and the slots
    /// are read in the order they were filled rather than at random.
    order: Vec<u32>,
    cycle: u64,
    /// Emptied buffers of earlier cycles, filled again by the next (`recycle`): their pages stay
    /// mapped, so a cycle does not fault in tens of MB of fresh pages at 100k queues.
    spare: Spare,
    /// The readers of the cluster's streams.
    streams: streams::StreamTracker,
}

/// Empty buffers kept from one cycle for the next, each with the capacity it had.
#[derive(Default)]
struct Spare {
    views: Vec<QueueView>,
    samples: Vec<QueueSample>,
    order: Vec<u32>,
}

/// A buffer is kept for reuse only while its capacity is within this factor of what a cycle needs,
/// so a cluster that shrank from 100k queues to 1k does not hold 100k queues' worth for good.
const SPARE_SLACK: usize = 2;

fn keep_spare<T>(buf: Vec<T>, needed: usize) -> Vec<T> {
    if buf.capacity() <= needed.saturating_mul(SPARE_SLACK).max(1024) {
        buf
    } else {
        Vec::new()
    }
}

/// The histories, in one array whose slots deleted queues hand on to new ones. One array rather than
/// a box per queue: boxes interleave with the label strings `/metrics` reads for every queue, and
/// rendering 100k queues took 14% longer with them scattered that way.
#[derive(Default)]
struct Slots {
    items: Vec<Option<Tracked>>,
    free: Vec<u32>,
}

impl Slots {
    fn insert(&mut self, t: Tracked) -> u32 {
        if let Some(i) = self.free.pop() {
            self.items[i as usize] = Some(t);
            return i;
        }
        if self.items.len() == self.items.capacity() {
            // Grow by an eighth, not double: at 100k queues a doubling would hold ~17 MB unused.
            self.items.reserve_exact(self.items.len() / 8 + 64);
        }
        self.items.push(Some(t));
        u32::try_from(self.items.len() - 1).expect("fewer than 4 billion queues")
    }

    fn get(&self, i: u32) -> &Tracked {
        self.items[i as usize]
            .as_ref()
            .expect("the index names live slots only")
    }

    fn get_mut(&mut self, i: u32) -> &mut Tracked {
        self.items[i as usize]
            .as_mut()
            .expect("the index names live slots only")
    }

    fn remove(&mut self, i: u32) {
        self.items[i as usize] = None;
        self.free.push(i);
    }
}

impl Tracker {
    pub fn new(cluster: &str, params: Params) -> Self {
        Tracker {
            cluster: cluster.to_string(),
            params,
            index: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            slots: Slots::default(),
            order: Vec::new(),
            cycle: 0,
            spare: Spare::default(),
            streams: streams::StreamTracker::default(),
        }
    }

    /// Takes back the buffers of a view nobody reads any more (the one the last published view
    /// replaced), for the next cycle to fill. A view still read elsewhere, or whose queue list the
    /// published one shares (a failed scrape keeps the list), is simply dropped.
    pub fn recycle(&mut self, old: Arc<ClusterView>) {
        let Ok(old) = Arc::try_unwrap(old) else {
            return;
        };
        let Ok(mut views) = Arc::try_unwrap(old.queues) else {
            return;
        };
        if views.capacity() > self.spare.views.capacity() {
            views.clear();
            self.spare.views = keep_spare(views, self.order.len());
        }
    }

    /// An empty buffer for the next cycle's samples (`QueueCollector::reusing`): the one the last
    /// cycle's samples came in.
    pub fn take_spare_samples(&mut self) -> Vec<QueueSample> {
        std::mem::take(&mut self.spare.samples)
    }

    /// The next snapshot's counters come from another source (`source: auto` switching): every
    /// window restarts at its next sample instead of reading the jump between the two sources'
    /// counters as traffic. Depths are kept.
    pub fn forget_counters(&mut self) {
        for t in self.slots.items.iter_mut().flatten() {
            t.window.forget_counters();
        }
    }

    /// Queues with history: those of the last listing.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Folds a complete snapshot's queues into the history and returns them analysed, in listing order.
    ///
    /// A queue listed twice (it shifted across a page boundary while the scrape paged) is analysed
    /// once. A queue missing from a listing is forgotten at once: not published, its history dropped,
    /// so a queue deleted and declared again under the same name starts a new window instead of reading
    /// its counters against the old queue's. (A queue a paged listing skipped restarts its window too;
    /// rates wait for a new window span, never misread.)
    ///
    /// A queue listed with its statistics pending (a node just started) is not read as empty: it is
    /// published with its last known figures, as long as those are less than a window old, and its
    /// window is left as it was. One with no usable history is left out until the broker has its
    /// numbers.
    pub fn observe(
        &mut self,
        mut queues: Vec<QueueSample>,
        at: Timestamp,
        now: Timestamp,
    ) -> Vec<QueueView> {
        self.cycle += 1;
        let cycle = self.cycle;
        let span = self.params.window_ms;
        let mut views = std::mem::take(&mut self.spare.views);
        views.reserve(queues.len());
        let mut order = std::mem::take(&mut self.spare.order);
        order.clear();
        order.reserve(queues.len());
        // Where the last listing continues: `self.order[next]` is the queue expected next.
        let mut next = 0;
        for mut q in queues.drain(..) {
            let found = match self.order.get(next) {
                Some(&i) if self.slots.get(i).key == q.key => Some(i),
                _ => self.find(&q.key),
            };
            let tracked = match found {
                Some(i) => {
                    let t = self.slots.get_mut(i);
                    if t.seen == cycle {
                        continue;
                    }
                    next = t.pos as usize + 1;
                    if q.stats_pending {
                        if at.0 - t.window.last().at.0 > span {
                            continue;
                        }
                        t.carry_into(&mut q);
                    } else {
                        let push = t.window.push(at, q.messages, q.counters, span);
                        t.activity = t.activity.after_push(&t.window, push);
                        t.carried = Carried::of(&q);
                    }
                    order.push(i);
                    t
                }
                None if q.stats_pending => continue,
                None => {
                    let i = self.slots.insert(Tracked {
                        key: q.key.clone(),
                        window: Window::new(at, q.messages, q.counters),
                        prom_labels: prom_labels(&self.cluster, &q.key).into(),
                        seen: cycle,
                        pos: 0,
                        carried: Carried::of(&q),
                        activity: Activity::default(),
                    });
                    let (slots, hasher) = (&self.slots, &self.hasher);
                    self.index.insert_unique(key_hash(hasher, &q.key), i, |&j| {
                        key_hash(hasher, &slots.get(j).key)
                    });
                    order.push(i);
                    self.slots.get_mut(i)
                }
            };
            tracked.seen = cycle;
            tracked.pos = u32::try_from(order.len() - 1).expect("fewer than 4 billion queues");
            let latest = Latest {
                consumers: q.consumers,
                stream: &*q.kind == "stream",
                head_message_timestamp: q.head_message_timestamp,
                activity: tracked.activity,
            };
            views.push(QueueView {
                health: analysis::analyze(&tracked.window, latest, &self.params, now).into(),
                prom_labels: tracked.prom_labels.clone(),
                dead_letter_target: None,
                retry_queue: None,
                sample: q,
            });
        }
        if order.len() != self.index.len() {
            let slots = &mut self.slots;
            self.index.retain(|&mut i| {
                let keep = slots.get(i).seen == cycle;
                if !keep {
                    slots.remove(i);
                }
                keep
            });
        }
        let listed = order.len();
        self.spare.order = keep_spare(std::mem::replace(&mut self.order, order), listed);
        self.spare.samples = keep_spare(queues, listed);
        views
    }
}

impl Tracker {
    fn find(&self, key: &QueueKey) -> Option<u32> {
        self.index
            .find(key_hash(&self.hasher, key), |&i| {
                self.slots.get(i).key == *key
            })
            .copied()
    }
}

fn key_hash(hasher: &foldhash::fast::RandomState, key: &QueueKey) -> u64 {
    hasher.hash_one(key)
}

impl Tracker {
    /// Folds one cycle's outcome into the cluster's next view, with what to tell the operator. Pure:
    /// `elapsed` is how long the scrape took, `now` when it ended. A failure keeps the previous view's
    /// queues (never "they vanished") and counts its reason; a cycle that overran the poll interval
    /// counts the ticks it skipped.
    pub fn next_view(
        &mut self,
        prev: &ClusterView,
        result: Result<Snapshot, ScrapeError>,
        elapsed: Duration,
        now: Timestamp,
    ) -> (ClusterView, Vec<CycleEvent>) {
        let mut events = Vec::new();
        let missed = (elapsed.as_nanos() / prev.poll_interval.as_nanos().max(1)) as u32;
        if missed > 0 {
            events.push(CycleEvent::Overran {
                took: elapsed,
                skipped: missed,
            });
        }
        let skipped_total = prev.skipped_total + u64::from(missed);
        let view = match result {
            Ok(mut snap) => {
                if !prev.up {
                    events.push(CycleEvent::Reachable {
                        queues: snap.queues.len(),
                        version: snap.rabbitmq_version.clone(),
                    });
                }
                if snap.stats_mode == StatsMode::DepthOnly
                    && (prev.stats_mode != StatsMode::DepthOnly || prev.last_success.is_none())
                {
                    events.push(CycleEvent::DepthOnly {
                        source: snap.source,
                    });
                }
                let source_changed = if prev.last_success.is_none() {
                    snap.source != Source::Management || snap.source_reason.is_some()
                } else {
                    snap.source != prev.source || snap.source_reason != prev.source_reason
                };
                if source_changed {
                    events.push(CycleEvent::Source {
                        source: snap.source,
                        reason: snap.source_reason.clone(),
                    });
                }
                if snap.truncated > 0 {
                    events.push(CycleEvent::Truncated {
                        watched: snap.queues.len(),
                        dropped: snap.truncated,
                    });
                }
                if snap.stats_pending > 0 && prev.stats_pending == 0 {
                    events.push(CycleEvent::StatsPending {
                        pending: snap.stats_pending,
                        listed: snap.queues.len(),
                    });
                }
                if let Some(error) = &snap.topology_error
                    && (prev.topology_error.is_none() || prev.last_success.is_none())
                {
                    events.push(CycleEvent::TopologyUnreadable {
                        error: error.clone(),
                    });
                }
                if prev.last_success.is_some() && snap.source != prev.source {
                    self.forget_counters();
                }
                let mut queues = self.observe(std::mem::take(&mut snap.queues), snap.taken_at, now);
                if let Some(exchanges) = &snap.exchanges {
                    let roles = analysis::dead_letter::roles(&snap.dead_letterings, exchanges);
                    for q in &mut queues {
                        q.dead_letter_target = Some(roles.targets.contains(&q.sample.key));
                        q.retry_queue = Some(roles.retry_queues.contains(&q.sample.key));
                    }
                }
                let readers = self.streams.observe(
                    &self.cluster,
                    &queues,
                    snap.streams.take(),
                    snap.taken_at,
                    &self.params,
                );
                if let Some(error) = &readers.error
                    && (prev.streams_error.is_none() || prev.last_success.is_none())
                {
                    events.push(CycleEvent::StreamsUnreadable {
                        error: error.clone(),
                    });
                }
                ClusterView {
                    name: prev.name.clone(),
                    poll_interval: prev.poll_interval,
                    up: true,
                    last_attempt: Some(now),
                    last_success: Some(snap.taken_at),
                    last_error: None,
                    scrape_duration: Some(elapsed.as_secs_f64()),
                    stats_mode: snap.stats_mode,
                    source: snap.source,
                    source_reason: snap.source_reason,
                    rabbitmq_version: snap.rabbitmq_version,
                    nodes: Arc::new(snap.nodes),
                    queues: Arc::new(queues),
                    truncated: snap.truncated,
                    stats_pending: snap.stats_pending,
                    errors_total: prev.errors_total.clone(),
                    skipped_total,
                    probes: prev.probes.clone(),
                    topology_error: snap.topology_error,
                    stream_consumers: Arc::new(readers.consumers),
                    stream_unknown: Arc::new(readers.unknown),
                    streams_error: readers.error,
                    deprecated_features: snap.deprecated_features,
                }
            }
            Err(e) => {
                let reason = e.reason();
                events.push(CycleEvent::Failed {
                    reason,
                    error: e.to_string(),
                });
                let mut errors_total = prev.errors_total.clone();
                *errors_total.entry(reason).or_insert(0) += 1;
                ClusterView {
                    up: false,
                    last_attempt: Some(now),
                    last_error: Some(LastError {
                        reason,
                        message: e.to_string(),
                        at: now.0,
                    }),
                    scrape_duration: Some(elapsed.as_secs_f64()),
                    errors_total,
                    skipped_total,
                    ..prev.clone()
                }
            }
        };
        (view, events)
    }
}

/// Escapes a label value for the Prometheus text format: backslash, double quote and newline.
pub fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn prom_labels(cluster: &str, key: &QueueKey) -> String {
    let mut s = String::with_capacity(cluster.len() + key.vhost.len() + key.name.len() + 28);
    s.push_str("cluster=\"");
    escape_label_value(&mut s, cluster);
    s.push_str("\",vhost=\"");
    escape_label_value(&mut s, &key.vhost);
    s.push_str("\",queue=\"");
    escape_label_value(&mut s, &key.name);
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::NameFilter;
    use crate::scrape::QueueCollector;
    use crate::snapshot::QueueSample;

    fn queues(names: &[(&str, u64)]) -> Vec<QueueSample> {
        let items: Vec<String> = names
            .iter()
            .map(|(n, publish)| {
                format!(
                    r#"{{"name":"{n}","vhost":"/","messages":1,"consumers":1,"message_stats":{{"publish":{publish}}}}}"#
                )
            })
            .collect();
        let all = NameFilter {
            include: regex::Regex::new(".*").unwrap(),
            exclude: None,
        };
        let mut c = QueueCollector::new(&all, &all, StatsMode::Full);
        c.add_listing(format!("[{}]", items.join(",")).as_bytes())
            .unwrap();
        c.finish()
    }

    fn observe(t: &mut Tracker, at_s: i64, names: &[(&str, u64)]) -> Vec<QueueView> {
        let at = Timestamp(at_s * 1000);
        t.observe(queues(names), at, at)
    }

    #[test]
    fn a_deleted_queue_is_not_published_on_the_next_snapshot() {
        let mut t = Tracker::new("c", Params { window_ms: 60_000 });
        assert_eq!(observe(&mut t, 0, &[("a", 0), ("b", 0)]).len(), 2);
        let views = observe(&mut t, 5, &[("a", 0)]);
        assert_eq!(views.len(), 1);
        assert_eq!(&*views[0].sample.key.name, "a");
        assert_eq!(t.len(), 1, "its history goes with it, not a cycle later");
    }

    #[test]
    fn a_queue_listed_twice_is_analysed_once() {
        let mut t = Tracker::new("c", Params { window_ms: 60_000 });
        let views = observe(&mut t, 0, &[("a", 0), ("b", 0), ("b", 0), ("c", 0)]);
        let names: Vec<&str> = views.iter().map(|v| &*v.sample.key.name).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn a_queue_missing_from_a_listing_is_forgotten_and_comes_back_afresh() {
        let mut t = Tracker::new("c", Params { window_ms: 30_000 });
        for i in 0..6 {
            observe(
                &mut t,
                i * 5,
                &[("a", 10 * i as u64), ("b", 100 + 10 * i as u64)],
            );
        }
        // "b" deleted, then declared again under the same name: its history must not carry over, or
        // the new queue's counters would be read against the old queue's.
        observe(&mut t, 30, &[("a", 60)]);
        let views = observe(&mut t, 35, &[("a", 70), ("b", 400)]);
        let b = views.iter().find(|v| &*v.sample.key.name == "b").unwrap();
        assert_eq!(
            b.health.publish_rate(),
            None,
            "one sample of the new queue: no rate yet"
        );
        let a = views.iter().find(|v| &*v.sample.key.name == "a").unwrap();
        assert!(a.health.publish_rate().is_some());
    }

    /// Checks a run of listings, one every 5 s, against what the tracker must make of any order: each
    /// queue published once, in listing order, with a rate from its own history only (every queue
    /// publishes at its own rate, so a history matched to the wrong queue shows), and a rate exactly
    /// when the listing before also had it (a queue missing once starts afresh).
    fn check_listings(listings: &[Vec<&str>]) {
        let rate_of = |n: &str| 1 + u64::from(n.as_bytes()[0] - b'a');
        let mut t = Tracker::new("c", Params { window_ms: 60_000 });
        let mut before: Vec<&str> = Vec::new();
        for (c, listing) in listings.iter().enumerate() {
            let at_s = 5 * c as i64;
            let listed: Vec<(&str, u64)> = listing
                .iter()
                .map(|n| (*n, rate_of(n) * at_s as u64))
                .collect();
            let views = observe(&mut t, at_s, &listed);
            let mut expected: Vec<&str> = Vec::new();
            for n in listing {
                if !expected.contains(n) {
                    expected.push(n);
                }
            }
            let names: Vec<&str> = views.iter().map(|v| &*v.sample.key.name).collect();
            assert_eq!(names, expected, "cycle {c}: {listing:?}");
            assert_eq!(t.len(), expected.len(), "cycle {c}: {listing:?}");
            for v in &views {
                let name = &*v.sample.key.name;
                match v.health.publish_rate() {
                    Some(r) => {
                        assert!(before.contains(&name), "cycle {c}: {name} kept a history");
                        assert!(
                            (r - rate_of(name) as f64).abs() < 1e-6,
                            "cycle {c}: {name} {r}"
                        );
                    }
                    None => assert!(
                        !before.contains(&name),
                        "cycle {c}: {name} lost its history"
                    ),
                }
            }
            before = expected;
        }
    }

    #[test]
    fn queues_keep_their_own_history_whatever_order_they_are_listed_in() {
        fn l(s: &'static str) -> Vec<&'static str> {
            s.split(' ').collect()
        }
        check_listings(&[
            l("a b c d e"),
            l("a b c d e"),
            l("e d c b a"),       // reversed
            l("a b f c d e"),     // f declared mid-list
            l("a c d e f"),       // b deleted
            l("a c a d e f"),     // a listed twice, apart
            l("b a c d e f"),     // b declared again: a new history in a reused slot
            l("b a d c e f"),     // two swapped
            l("b a d c e f f f"), // f listed three times, at the end
            l("g h"),             // everything replaced
            l("g h a b c d e f"), // and back
        ]);
    }

    #[test]
    fn queues_keep_their_own_history_through_random_listings() {
        let mut rng = fastrand::Rng::with_seed(18);
        let pool = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        let mut listing: Vec<&str> = pool.to_vec();
        let mut listings = Vec::new();
        for _ in 0..300 {
            match rng.u8(0..8) {
                0 => rng.shuffle(&mut listing),
                1 if !listing.is_empty() => {
                    listing.remove(rng.usize(0..listing.len()));
                }
                2 => listing.insert(rng.usize(0..=listing.len()), pool[rng.usize(0..pool.len())]),
                3 if listing.len() > 1 => {
                    let (i, j) = (rng.usize(0..listing.len()), rng.usize(0..listing.len()));
                    listing.swap(i, j);
                }
                _ => {}
            }
            listings.push(listing.clone());
        }
        check_listings(&listings);
    }

    /// How a node that has just started lists a queue: no counts, no consumers, no `message_stats`.
    fn pending(name: &str) -> Vec<QueueSample> {
        let all = NameFilter {
            include: regex::Regex::new(".*").unwrap(),
            exclude: None,
        };
        let mut c = QueueCollector::new(&all, &all, StatsMode::Full);
        c.add_listing(format!(r#"[{{"name":"{name}","vhost":"/","durable":true}}]"#).as_bytes())
            .unwrap();
        c.finish()
    }

    #[test]
    fn a_queue_listed_with_stats_pending_keeps_its_last_figures_and_rates() {
        let mut t = Tracker::new("c", Params { window_ms: 30_000 });
        for i in 0..4 {
            observe(&mut t, i * 5, &[("a", 10 * i as u64)]);
        }
        let before = observe(&mut t, 20, &[("a", 40)]).remove(0);
        let at = Timestamp(25_000);
        let during = t.observe(pending("a"), at, at).remove(0);
        assert_eq!(during.sample.messages, 1, "not read as empty");
        assert_eq!(during.sample.messages_ready, before.sample.messages_ready);
        assert_eq!(during.sample.consumers, 1);
        assert_eq!(during.sample.counters, before.sample.counters);
        assert_eq!(during.health.publish_rate(), before.health.publish_rate());
        assert_eq!(during.health.backlog_growth(), Some(0.0));
        assert_eq!(during.health.status, before.health.status);
        // The window got no point from it: the next real sample continues the same history.
        let after = observe(&mut t, 30, &[("a", 60)]).remove(0);
        let rate = after.health.publish_rate().expect("history kept");
        assert!((rate - 2.0).abs() < 0.01, "{rate}");
    }

    #[test]
    fn a_queue_first_listed_with_stats_pending_waits_for_its_numbers() {
        let mut t = Tracker::new("c", Params { window_ms: 30_000 });
        let at = Timestamp(0);
        assert!(t.observe(pending("a"), at, at).is_empty());
        assert!(t.is_empty());
        assert_eq!(observe(&mut t, 5, &[("a", 0)]).len(), 1);
    }

    #[test]
    fn figures_older_than_the_window_are_not_carried() {
        let mut t = Tracker::new("c", Params { window_ms: 30_000 });
        observe(&mut t, 0, &[("a", 0)]);
        observe(&mut t, 5, &[("a", 0)]);
        let at = Timestamp(30_000);
        assert_eq!(t.observe(pending("a"), at, at).len(), 1);
        let at = Timestamp(36_000);
        assert!(t.observe(pending("a"), at, at).is_empty());
    }

    fn snapshot(at_s: i64, names: &[(&str, u64)]) -> Snapshot {
        Snapshot {
            taken_at: Timestamp(at_s * 1000),
            stats_mode: StatsMode::Full,
            source: Default::default(),
            source_reason: None,
            rabbitmq_version: "3.10.8".into(),
            nodes: Vec::new(),
            queues: queues(names),
            truncated: 0,
            stats_pending: 0,
            dead_letterings: Vec::new(),
            exchanges: Some(Arc::default()),
            topology_error: None,
            streams: None,
            deprecated_features: None,
        }
    }

    /// The daemon's poll loop in miniature: publish each cycle's view, and hand the replaced one and
    /// the samples' buffer back to the tracker.
    #[test]
    fn a_replaced_view_lends_its_buffer_to_the_cycle_after_next_and_keeps_nothing_stale() {
        let poll = Duration::from_secs(5);
        let mut t = Tracker::new("c", Params { window_ms: 60_000 });
        let mut published = Arc::new(ClusterView::new("c", poll));
        let mut buffers = Vec::new();
        for i in 0..4u64 {
            let prev = published.clone();
            let names = [("a", 10 * i), ("b", 20 * i), ("c", 30 * i)];
            let mut snap = snapshot(i as i64 * 5, &names);
            snap.queues = {
                let mut buf = t.take_spare_samples();
                buf.extend(std::mem::take(&mut snap.queues));
                buf
            };
            let (view, _) =
                t.next_view(&prev, Ok(snap), Duration::ZERO, Timestamp(i as i64 * 5000));
            published = Arc::new(view);
            buffers.push(published.queues.as_ptr());
            t.recycle(prev);
            let rates: Vec<_> = published
                .queues
                .iter()
                .map(|q| q.health.publish_rate())
                .collect();
            if i > 0 {
                assert_eq!(rates, [Some(2.0), Some(4.0), Some(6.0)], "cycle {i}");
            }
        }
        // Cycle 2 filled cycle 0's buffer, cycle 3 cycle 1's.
        assert_eq!(buffers[2], buffers[0]);
        assert_eq!(buffers[3], buffers[1]);

        // A view still read elsewhere (a scrape of /metrics) is not taken back: the next cycle gets a
        // buffer of its own.
        let reader = published.clone();
        let prev = published.clone();
        let (view, _) = t.next_view(
            &prev,
            Ok(snapshot(20, &[("a", 40)])),
            Duration::ZERO,
            Timestamp(20_000),
        );
        t.recycle(prev);
        let (next, _) = t.next_view(
            &view,
            Ok(snapshot(25, &[("a", 50)])),
            Duration::ZERO,
            Timestamp(25_000),
        );
        assert_ne!(next.queues.as_ptr(), reader.queues.as_ptr());
        assert_eq!(reader.queues.len(), 3, "the reader's view is untouched");
    }

    fn refused() -> ScrapeError {
        ScrapeError::Connect {
            url: "http://127.0.0.1:1".into(),
            detail: "connection refused".into(),
        }
    }

    #[test]
    fn next_view_folds_each_outcome_and_says_what_to_log() {
        let poll = Duration::from_secs(10);
        let fast = Duration::from_millis(200);
        let mut t = Tracker::new("c", Params { window_ms: 60_000 });
        let start = ClusterView::new("c", poll);
        let kinds = |events: &[CycleEvent]| -> Vec<String> {
            events
                .iter()
                .map(|e| {
                    format!("{e:?}")
                        .split([' ', '{'])
                        .next()
                        .unwrap()
                        .to_string()
                })
                .collect()
        };

        // 1. the first answer: reachable, its queues published
        let (v1, ev) = t.next_view(&start, Ok(snapshot(0, &[("a", 0)])), fast, Timestamp(0));
        assert!(v1.up && v1.last_error.is_none());
        assert_eq!(v1.queues.len(), 1);
        assert_eq!(kinds(&ev), ["Reachable"]);

        // 2. a steady cycle: nothing to say
        let (v2, ev) = t.next_view(&v1, Ok(snapshot(10, &[("a", 5)])), fast, Timestamp(10_000));
        assert!(ev.is_empty(), "{ev:?}");

        // 3. a failure keeps the queues, counts the reason and is said once per cycle
        let (v3, ev) = t.next_view(&v2, Err(refused()), fast, Timestamp(20_000));
        assert!(!v3.up);
        assert_eq!(v3.queues.len(), 1, "queues never vanish on a failed scrape");
        assert_eq!(v3.last_success, v2.last_success);
        assert_eq!(v3.errors_total.get(&ScrapeReason::Connect), Some(&1));
        assert_eq!(kinds(&ev), ["Failed"]);
        let (v4, _) = t.next_view(&v3, Err(refused()), fast, Timestamp(30_000));
        assert_eq!(v4.errors_total.get(&ScrapeReason::Connect), Some(&2));

        // 4. back: reachable again, the error counts kept
        let (v5, ev) = t.next_view(&v4, Ok(snapshot(40, &[("a", 9)])), fast, Timestamp(40_000));
        assert!(v5.up && v5.last_error.is_none());
        assert_eq!(v5.errors_total.get(&ScrapeReason::Connect), Some(&2));
        assert_eq!(kinds(&ev), ["Reachable"]);

        // 5. depth-only, truncated and stats-pending listings; depth-only and pending said once
        let odd = |at| Snapshot {
            stats_mode: StatsMode::DepthOnly,
            truncated: 3,
            stats_pending: 1,
            ..snapshot(at, &[("a", 9)])
        };
        let (v6, ev) = t.next_view(&v5, Ok(odd(50)), fast, Timestamp(50_000));
        assert_eq!(kinds(&ev), ["DepthOnly", "Truncated", "StatsPending"]);
        assert_eq!(v6.stats_mode, StatsMode::DepthOnly);
        let (v7, ev) = t.next_view(&v6, Ok(odd(60)), fast, Timestamp(60_000));
        assert_eq!(kinds(&ev), ["Truncated"]);

        // 6. a cycle that took 2.5 polls skips two ticks
        let slow = Duration::from_millis(25_000);
        let (v8, ev) = t.next_view(&v7, Ok(snapshot(85, &[("a", 9)])), slow, Timestamp(85_000));
        assert_eq!(v8.skipped_total, 2);
        assert_eq!(
            ev,
            [CycleEvent::Overran {
                took: slow,
                skipped: 2
            }]
        );

        // 7. the source changes (source: auto falling back, then the plugin read): said each time
        let via = |at, source, reason: Option<&str>| Snapshot {
            source,
            source_reason: reason.map(String::from),
            ..snapshot(at, &[("a", 9)])
        };
        let why = Some("RabbitMQ 3.10.8: no per-queue counters");
        let (v9, ev) = t.next_view(
            &v8,
            Ok(via(90, Source::Management, why)),
            fast,
            Timestamp(90_000),
        );
        assert_eq!(
            ev,
            [CycleEvent::Source {
                source: Source::Management,
                reason: why.map(String::from)
            }]
        );
        assert_eq!(v9.source_reason.as_deref(), why);
        let (v10, ev) = t.next_view(
            &v9,
            Ok(via(100, Source::Management, why)),
            fast,
            Timestamp(100_000),
        );
        assert_eq!(kinds(&ev), Vec::<String>::new(), "said once");
        let (v11, ev) = t.next_view(
            &v10,
            Ok(via(110, Source::Prometheus, None)),
            fast,
            Timestamp(110_000),
        );
        assert_eq!(kinds(&ev), ["Source"]);
        assert_eq!((v11.source, v11.source_reason), (Source::Prometheus, None));
    }

    #[test]
    fn a_source_switch_restarts_the_windows_instead_of_reading_the_jump_as_traffic() {
        let mut t = Tracker::new("c", Params { window_ms: 60_000 });
        let fast = Duration::from_millis(100);
        let rate = |v: &ClusterView| v.queues[0].health.publish_rate();
        let v0 = ClusterView::new("c", Duration::from_secs(10));
        let (v1, _) = t.next_view(&v0, Ok(snapshot(0, &[("a", 100)])), fast, Timestamp(0));
        let (v2, _) = t.next_view(
            &v1,
            Ok(snapshot(10, &[("a", 200)])),
            fast,
            Timestamp(10_000),
        );
        let before = rate(&v2).expect("a rate from two samples");
        // The plugin's sum for the same queue is far above the management API's counter.
        let plugin = |at, publish| Snapshot {
            source: Source::Prometheus,
            ..snapshot(at, &[("a", publish)])
        };
        let (v3, _) = t.next_view(&v2, Ok(plugin(20, 5_000)), fast, Timestamp(20_000));
        assert_eq!(
            rate(&v3),
            None,
            "one sample since the switch: not known yet, not a spike"
        );
        let (v4, _) = t.next_view(&v3, Ok(plugin(30, 5_100)), fast, Timestamp(30_000));
        assert_eq!(rate(&v4), Some(before));
    }

    #[test]
    fn hostile_names_are_escaped_in_labels() {
        let key = QueueKey {
            vhost: Arc::from("/"),
            name: "a\"b\\c\nd".into(),
        };
        assert_eq!(
            prom_labels("x", &key),
            r#"cluster="x",vhost="/",queue="a\"b\\c\nd""#
        );
    }
}
