//! Each stream reader's history and verdict: what `StreamTracker::observe` folds from one cycle's
//! `StreamsReading` next to the analysed queues. Pure, like the rest of `view`.
//!
//! A reader is known by its consumer name (what it stores its offset under) or, unnamed, by its
//! connection and subscription id. Readers of one super stream with the same name are one reader,
//! summed over the partitions (offsets and lags added). A single-active-consumer group's members
//! share a name: the group is one reader, at the active member's position.
//!
//! A named reader that unsubscribes is remembered: its position stays where it was last seen and the
//! stream moves on without it (the stream's publish counter, else its log length, gives how far), so
//! a reader that stopped while the stream is fed is `stopped` and its lag keeps growing. The position
//! last seen is the last message dispatched to it, at or after any offset it stored: the lag shown is
//! a lower bound. It is forgotten `FORGET_OFFLINE_MS` after it left, or with its stream. An unnamed
//! reader that leaves has no position to come back to and is forgotten at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{QueueView, escape_label_value};
use crate::analysis::Params;
use crate::analysis::stream::{self, LagPoint, LagWindow, StreamConsumerHealth};
use crate::domain::Timestamp;
use crate::snapshot::{StreamConsumerSample, StreamsReading};

/// A named reader gone this long is forgotten (Burrow expires groups likewise): long enough to page
/// and be looked at, short enough that a decommissioned reader does not page forever.
pub const FORGET_OFFLINE_MS: i64 = 24 * 3600 * 1000;

/// One reader of a stream (or of a super stream, summed over its partitions), as published.
#[derive(Clone, Debug)]
pub struct StreamConsumerView {
    pub vhost: Arc<str>,
    /// The stream, or the super stream for a reader of one.
    pub stream: Arc<str>,
    /// The consumer name, or `connection#subscription` for an unnamed reader.
    pub consumer: String,
    pub named: bool,
    /// Set when `stream` is a super stream.
    pub super_stream: bool,
    /// Partitions (or single-active-consumer members) it was read from this cycle.
    pub subscriptions: u32,
    /// Subscribed now; `false` for a named reader that left.
    pub online: bool,
    pub health: StreamConsumerHealth,
    /// `cluster="…",vhost="…",stream="…",consumer="…"`, escaped for the exposition format.
    pub prom_labels: Arc<str>,
}

/// A stream whose readers include some with no offset to read (AMQP 0.9.1 or 1.0 consumers): their
/// lag is unknown, and said so.
#[derive(Clone, Debug)]
pub struct UnknownReaders {
    pub vhost: Arc<str>,
    pub stream: Arc<str>,
    pub readers: u64,
    pub reason: &'static str,
}

pub const AMQP_READERS: &str =
    "AMQP 0.9.1/1.0 readers of a stream expose no offset: their lag is unknown";

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct ReaderKey {
    vhost: Arc<str>,
    stream: Arc<str>,
    consumer: String,
}

struct Reader {
    window: LagWindow,
    named: bool,
    super_stream: bool,
    subscriptions: u32,
    online: bool,
    /// Where it was when last subscribed: its offset, the stream's committed offset (offset + lag),
    /// and the stream's publish counter and log length then.
    left_at: Mark,
    last_seen: Timestamp,
    prom_labels: Arc<str>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Mark {
    offset: u64,
    committed: u64,
    published: Option<u64>,
    messages: Option<u64>,
}

/// The stream-side figures of a reader's stream (summed over the partitions of a super stream):
/// its publish counter and its retained log length, each `None` when unknown.
#[derive(Clone, Copy, Debug, Default)]
struct StreamFigures {
    published: Option<u64>,
    messages: Option<u64>,
}

#[derive(Default)]
pub struct StreamTracker {
    readers: BTreeMap<ReaderKey, Reader>,
}

/// What one cycle of readings made of the readers.
#[derive(Debug, Default)]
pub struct StreamsView {
    pub consumers: Vec<StreamConsumerView>,
    pub unknown: Vec<UnknownReaders>,
    pub error: Option<String>,
}

impl StreamTracker {
    /// Folds one cycle: `queues` are the cycle's analysed queues (the streams among them give the
    /// figures readers are judged against), `reading` what the broker listed of their readers
    /// (`None`: the cluster lists no stream, and every reader is forgotten).
    pub fn observe(
        &mut self,
        cluster: &str,
        queues: &[QueueView],
        reading: Option<StreamsReading>,
        at: Timestamp,
        params: &Params,
    ) -> StreamsView {
        let Some(reading) = reading else {
            self.readers.clear();
            return StreamsView::default();
        };
        let streams: HashMap<(&str, &str), &QueueView> = queues
            .iter()
            .filter(|q| &*q.sample.kind == "stream")
            .map(|q| ((&*q.sample.key.vhost, &*q.sample.key.name), q))
            .collect();
        let mut out = StreamsView {
            error: reading.error.clone(),
            ..StreamsView::default()
        };
        if reading.error.is_some() {
            // Nothing is known this cycle: every reader's lag is unknown, their histories kept.
            for (key, r) in &self.readers {
                out.consumers
                    .push(r.view(key, StreamConsumerHealth::unknown()));
            }
            return out;
        }
        // Per stream: the subscriptions the broker listed, for the AMQP readers' count.
        let mut listed: HashMap<(&str, &str), u64> = HashMap::new();
        for c in &reading.consumers {
            *listed.entry((&*c.vhost, &*c.stream)).or_default() += 1;
        }
        for ((vhost, name), q) in &streams {
            let amqp = q
                .sample
                .consumers
                .saturating_sub(listed.get(&(*vhost, *name)).copied().unwrap_or(0));
            if amqp > 0 {
                out.unknown.push(UnknownReaders {
                    vhost: q.sample.key.vhost.clone(),
                    stream: Arc::from(*name),
                    readers: amqp,
                    reason: AMQP_READERS,
                });
            }
        }
        // Each stream's committed offset, as its subscribed readers show it (offset + lag).
        let mut committed: HashMap<(&str, &str), u64> = HashMap::new();
        for c in &reading.consumers {
            let e = committed.entry((&*c.vhost, &*c.stream)).or_default();
            *e = (*e).max(c.offset + c.offset_lag);
        }
        // One position per reader: the active member of a name on a stream, then summed over the
        // partitions of a super stream.
        let mut per_stream: BTreeMap<(ReaderKey, Arc<str>), &StreamConsumerSample> =
            BTreeMap::new();
        for c in &reading.consumers {
            let (stream, consumer) = match (&c.super_stream, &c.name) {
                (Some(sup), Some(name)) => (Arc::from(sup.as_str()), name.clone()),
                (_, Some(name)) => (c.stream.clone(), name.clone()),
                (_, None) => (
                    c.stream.clone(),
                    format!("{}#{}", c.connection, c.subscription_id),
                ),
            };
            let key = ReaderKey {
                vhost: c.vhost.clone(),
                stream,
                consumer,
            };
            let slot = per_stream.entry((key, c.stream.clone())).or_insert(c);
            if (c.active, c.offset) > (slot.active, slot.offset) {
                *slot = c;
            }
        }
        struct Sum {
            offset: u64,
            lag: u64,
            subscriptions: u32,
            named: bool,
            super_stream: bool,
            figures: StreamFigures,
        }
        let mut readings: BTreeMap<ReaderKey, Sum> = BTreeMap::new();
        for ((key, partition), c) in per_stream {
            let f = figures(streams.get(&(&*c.vhost, &*partition)).copied());
            let s = readings.entry(key).or_insert(Sum {
                offset: 0,
                lag: 0,
                subscriptions: 0,
                named: c.name.is_some(),
                super_stream: c.super_stream.is_some() && c.name.is_some(),
                figures: StreamFigures::ZERO,
            });
            s.offset += c.offset;
            s.lag += c.offset_lag;
            s.subscriptions += 1;
            s.figures = s.figures.plus(f);
        }
        for (key, s) in readings {
            let mark = Mark {
                offset: s.offset,
                committed: s.offset + s.lag,
                published: s.figures.published,
                messages: s.figures.messages,
            };
            let r = self.readers.entry(key.clone()).or_insert_with(|| Reader {
                window: LagWindow::default(),
                named: s.named,
                super_stream: s.super_stream,
                subscriptions: 0,
                online: true,
                left_at: mark,
                last_seen: at,
                prom_labels: Arc::from(labels(cluster, &key)),
            });
            r.subscriptions = s.subscriptions;
            r.online = true;
            r.left_at = mark;
            r.last_seen = at;
            r.window.push(
                LagPoint {
                    at,
                    offset: s.offset,
                    lag: s.lag,
                    messages: s.figures.messages,
                },
                params.window_ms,
            );
            let health = stream::judge(&r.window, true, params);
            out.consumers.push(r.view(&key, health));
        }
        // The named readers that left: still behind on a stream that still exists.
        let seen = out.consumers.len();
        self.readers.retain(|key, r| {
            if r.last_seen == at {
                return true;
            }
            let partitions = partitions_of(&streams, key, r.super_stream);
            if !r.named || partitions.is_empty() || at.0 - r.last_seen.0 > FORGET_OFFLINE_MS {
                return false;
            }
            let f = partitions
                .iter()
                .fold(StreamFigures::ZERO, |acc, q| acc.plus(figures(Some(q))));
            let m = r.left_at;
            // Where the stream is now: as the readers still subscribed show it, else by what was
            // published since it left, else by how much the log grew (retention aside).
            let now_committed: Option<u64> = partitions
                .iter()
                .map(|q| {
                    committed
                        .get(&(&*q.sample.key.vhost, &*q.sample.key.name))
                        .copied()
                })
                .sum();
            let lag = match (now_committed, f.published, m.published) {
                (Some(c), _, _) => c.saturating_sub(m.offset),
                (None, Some(now), Some(then)) => m.committed - m.offset + now.saturating_sub(then),
                _ => {
                    let grown = f
                        .messages
                        .zip(m.messages)
                        .map_or(0, |(a, b)| a.saturating_sub(b));
                    m.committed - m.offset + grown
                }
            };
            r.online = false;
            r.window.push(
                LagPoint {
                    at,
                    offset: m.offset,
                    lag,
                    messages: f.messages,
                },
                params.window_ms,
            );
            true
        });
        for (key, r) in &self.readers {
            if !r.online {
                let health = stream::judge(&r.window, false, params);
                out.consumers.push(r.view(key, health));
            }
        }
        out.consumers[seen..].sort_by(|a, b| {
            (&a.vhost, &a.stream, &a.consumer).cmp(&(&b.vhost, &b.stream, &b.consumer))
        });
        out
    }
}

impl Reader {
    fn view(&self, key: &ReaderKey, health: StreamConsumerHealth) -> StreamConsumerView {
        StreamConsumerView {
            vhost: key.vhost.clone(),
            stream: key.stream.clone(),
            consumer: key.consumer.clone(),
            named: self.named,
            super_stream: self.super_stream,
            subscriptions: self.subscriptions,
            online: self.online,
            health,
            prom_labels: self.prom_labels.clone(),
        }
    }
}

impl StreamFigures {
    /// The sum over no partitions.
    const ZERO: StreamFigures = StreamFigures {
        published: Some(0),
        messages: Some(0),
    };

    /// The figures of two partitions together; unknown when either is.
    fn plus(self, o: StreamFigures) -> StreamFigures {
        StreamFigures {
            published: self.published.zip(o.published).map(|(a, b)| a + b),
            messages: self.messages.zip(o.messages).map(|(a, b)| a + b),
        }
    }
}

/// A stream's publish counter (unknown without counters) and retained log length.
fn figures(q: Option<&QueueView>) -> StreamFigures {
    let Some(q) = q else {
        return StreamFigures::default();
    };
    StreamFigures {
        published: q.sample.counters.map(|c| c.publish),
        messages: Some(q.sample.messages),
    }
}

/// The stream a reader reads, or the partitions of its super stream (`<super>-<n>`, as RabbitMQ
/// names them).
fn partitions_of<'a>(
    streams: &HashMap<(&str, &str), &'a QueueView>,
    key: &ReaderKey,
    super_stream: bool,
) -> Vec<&'a QueueView> {
    if !super_stream {
        return streams
            .get(&(&*key.vhost, &*key.stream))
            .copied()
            .into_iter()
            .collect();
    }
    streams
        .iter()
        .filter(|((v, name), _)| {
            *v == &*key.vhost
                && name
                    .strip_prefix(&*key.stream)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|(_, q)| *q)
        .collect()
}

fn labels(cluster: &str, key: &ReaderKey) -> String {
    let mut s = String::new();
    for (name, value) in [
        ("cluster", cluster),
        ("vhost", &*key.vhost),
        ("stream", &*key.stream),
        ("consumer", key.consumer.as_str()),
    ] {
        if !s.is_empty() {
            s.push(',');
        }
        s.push_str(name);
        s.push_str("=\"");
        escape_label_value(&mut s, value);
        s.push('"');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::QueueHealth;
    use crate::analysis::stream::StreamStatus;
    use crate::domain::QueueKey;
    use crate::snapshot::{Counters, QueueSample};

    const PARAMS: Params = Params { window_ms: 60_000 };

    fn stream(name: &str, consumers: u64, published: u64, messages: u64) -> QueueView {
        QueueView {
            sample: QueueSample {
                key: QueueKey {
                    vhost: "/".into(),
                    name: name.into(),
                },
                kind: "stream".into(),
                durable: true,
                messages,
                messages_ready: messages,
                messages_unacked: 0,
                consumers,
                consumer_utilisation: None,
                counters: Some(Counters {
                    publish: published,
                    ..Counters::default()
                }),
                head_message_timestamp: None,
                limits: crate::snapshot::Limits::NONE,
                stats_pending: false,
            },
            health: QueueHealth::default().into(),
            dead_letter_target: None,
            retry_queue: None,
            prom_labels: "".into(),
        }
    }

    fn reader(
        stream: &str,
        name: Option<&str>,
        sub: u64,
        offset: u64,
        lag: u64,
    ) -> StreamConsumerSample {
        StreamConsumerSample {
            vhost: "/".into(),
            stream: stream.into(),
            name: name.map(str::to_string),
            connection: "conn-1".into(),
            subscription_id: sub,
            offset,
            offset_lag: lag,
            super_stream: None,
            active: true,
        }
    }

    fn reading(consumers: Vec<StreamConsumerSample>) -> Option<StreamsReading> {
        Some(StreamsReading {
            consumers,
            error: None,
        })
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp(secs * 1000)
    }

    #[test]
    fn named_and_anonymous_readers_with_amqp_readers_counted_as_unknown() {
        let mut t = StreamTracker::default();
        let queues = [stream("events", 4, 1000, 1000)];
        let v = t.observe(
            "c",
            &queues,
            reading(vec![
                reader("events", Some("billing"), 0, 500, 499),
                reader("events", None, 1, 999, 0),
            ]),
            at(0),
            &PARAMS,
        );
        let names: Vec<&str> = v.consumers.iter().map(|c| c.consumer.as_str()).collect();
        assert_eq!(names, ["billing", "conn-1#1"]);
        assert_eq!(v.consumers[0].health.offset_lag, Some(499.0));
        assert_eq!(
            &*v.consumers[0].prom_labels,
            r#"cluster="c",vhost="/",stream="events",consumer="billing""#
        );
        assert_eq!(v.unknown.len(), 1, "4 consumers, 2 of them stream-protocol");
        assert_eq!(v.unknown[0].readers, 2);
    }

    #[test]
    fn a_named_reader_that_leaves_is_stopped_and_falls_behind_as_the_stream_is_fed() {
        let mut t = StreamTracker::default();
        t.observe(
            "c",
            &[stream("events", 1, 1000, 1000)],
            reading(vec![reader("events", Some("billing"), 0, 999, 0)]),
            at(0),
            &PARAMS,
        );
        // Gone; 400 more published since.
        let v = t.observe(
            "c",
            &[stream("events", 0, 1400, 1400)],
            reading(vec![]),
            at(20),
            &PARAMS,
        );
        let c = &v.consumers[0];
        assert!(!c.online);
        assert_eq!(c.health.offset_lag, Some(400.0));
        assert_eq!(c.health.status, StreamStatus::Stopped);
        // An unnamed reader that leaves is simply gone; so is every reader of a deleted stream.
        let v = t.observe("c", &[], reading(vec![]), at(40), &PARAMS);
        assert!(v.consumers.is_empty());
    }

    #[test]
    fn a_reader_that_left_is_measured_against_the_readers_still_there() {
        let mut t = StreamTracker::default();
        let both = vec![
            reader("events", Some("billing"), 0, 999, 1),
            reader("events", Some("audit"), 1, 1000, 0),
        ];
        t.observe(
            "c",
            &[stream("events", 2, 0, 1000)],
            reading(both),
            at(0),
            &PARAMS,
        );
        // Stream-protocol publishes are in no publish counter: the one still reading shows where
        // the stream is (1500 + 0).
        let v = t.observe(
            "c",
            &[stream("events", 1, 0, 1500)],
            reading(vec![reader("events", Some("audit"), 1, 1500, 0)]),
            at(20),
            &PARAMS,
        );
        let billing = v
            .consumers
            .iter()
            .find(|c| c.consumer == "billing")
            .expect("kept");
        assert_eq!(billing.health.offset_lag, Some(501.0));
        assert_eq!(billing.health.status, StreamStatus::Stopped);
    }

    #[test]
    fn a_super_stream_reader_is_summed_over_partitions_and_a_group_is_read_at_its_active_member() {
        let mut t = StreamTracker::default();
        let part = |p: &str, sub, offset, lag, active| StreamConsumerSample {
            super_stream: Some("orders".into()),
            active,
            ..reader(p, Some("app"), sub, offset, lag)
        };
        let queues = [
            stream("orders-0", 2, 100, 100),
            stream("orders-1", 1, 100, 100),
            stream("orders-2", 1, 100, 100),
        ];
        let v = t.observe(
            "c",
            &queues,
            reading(vec![
                part("orders-0", 0, 90, 10, true),
                part("orders-0", 1, 0, 100, false),
                part("orders-1", 2, 80, 20, true),
                part("orders-2", 3, 70, 30, true),
            ]),
            at(0),
            &PARAMS,
        );
        assert_eq!(v.consumers.len(), 1, "{:?}", v.consumers);
        let c = &v.consumers[0];
        assert_eq!(
            (&*c.stream, c.consumer.as_str(), c.super_stream),
            ("orders", "app", true)
        );
        assert_eq!(
            c.health.offset_lag,
            Some(60.0),
            "10 + 20 + 30; the standby not counted"
        );
        assert_eq!(c.subscriptions, 3);
    }

    #[test]
    fn an_unreadable_listing_makes_every_reader_unknown_not_zero() {
        let mut t = StreamTracker::default();
        let queues = [stream("events", 1, 1000, 1000)];
        t.observe(
            "c",
            &queues,
            reading(vec![reader("events", Some("b"), 0, 1, 999)]),
            at(0),
            &PARAMS,
        );
        let v = t.observe(
            "c",
            &queues,
            Some(StreamsReading {
                consumers: vec![],
                error: Some("enable the rabbitmq_stream_management plugin".into()),
            }),
            at(10),
            &PARAMS,
        );
        assert_eq!(v.consumers[0].health, StreamConsumerHealth::unknown());
        assert!(v.error.is_some());
    }
}
