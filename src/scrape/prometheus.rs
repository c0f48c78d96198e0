//! The `prometheus` source's reading of one node: RabbitMQ's `rabbitmq_prometheus` plugin,
//! `/metrics/detailed` with the queue families, summed per `{vhost, queue}` as it streams in.
//!
//! What RabbitMQ 4.0 lists there, and what it becomes (docs/sources.md):
//!
//! | metric (`rabbitmq_detailed_queue_…`)                   | family                 | becomes |
//! |---|---|---|
//! | `messages`, `messages_ready`, `messages_unacked`     | queue_coarse_metrics   | depth (from the node hosting the queue, or a quorum queue's leader) |
//! | `consumers`                                          | queue_consumer_count   | consumers |
//! | `exchange_messages_published_total{exchange}`        | queue_exchange_metrics | `publish`, summed over exchanges |
//! | `messages_delivered_ack_total`, `get_ack_total`      | queue_delivery_metrics | `delivered` |
//! | `messages_delivered_total`, `get_total` (auto-ack)   | queue_delivery_metrics | `delivered` and `no_ack` |
//! | `messages_acked_total`                               | queue_delivery_metrics | `ack` |
//! | `messages_redelivered_total`                         | queue_delivery_metrics | `redeliver` |
//!
//! The counters are kept by the node of the channel that published or consumed, so a queue's
//! counters are the sum over every node; the depths are listed by one node. RabbitMQ 3.x lists
//! the coarse depths and consumers only (its plugin has no per-queue counters): a node whose
//! answer has no `# TYPE` line for the delivery and exchange families leaves the cycle depth-only.
//! Messages of AMQP 1.0 and MQTT clients are not counted there (RabbitMQ issues #16528, #9032).
//! With `management.rates_mode = none` channels count nothing per queue and 4.0 lists the counter
//! families empty: the scrape reads `rates_mode` from `/api/overview` and goes depth-only there.

use std::borrow::Cow;

use foldhash::HashMap;

use super::promtext::{Line, Sample};
use crate::snapshot::Counters;

/// The query that reads a node's queue figures.
pub const DETAILED_PATH: &str = "/metrics/detailed?family=queue_coarse_metrics&family=queue_consumer_count&family=queue_delivery_metrics&family=queue_exchange_metrics";

/// The families whose `# TYPE` line says the node lists per-queue counters.
const COUNTER_FAMILIES: [&str; 2] = [
    "rabbitmq_detailed_queue_messages_acked_total",
    "rabbitmq_detailed_queue_exchange_messages_published_total",
];

/// One queue's figures as read so far (from one node, or summed over several).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sums {
    pub messages: Option<u64>,
    pub ready: Option<u64>,
    pub unacked: Option<u64>,
    pub consumers: Option<u64>,
    pub counters: Counters,
}

impl Sums {
    fn merge(&mut self, o: &Sums) {
        fn add(a: Option<u64>, b: Option<u64>) -> Option<u64> {
            match (a, b) {
                (Some(x), Some(y)) => Some(x.saturating_add(y)),
                (x, y) => x.or(y),
            }
        }
        self.messages = add(self.messages, o.messages);
        self.ready = add(self.ready, o.ready);
        self.unacked = add(self.unacked, o.unacked);
        self.consumers = add(self.consumers, o.consumers);
        let (c, d) = (&mut self.counters, &o.counters);
        c.publish = c.publish.saturating_add(d.publish);
        c.delivered = c.delivered.saturating_add(d.delivered);
        c.ack = c.ack.saturating_add(d.ack);
        c.no_ack = c.no_ack.saturating_add(d.no_ack);
        c.redeliver = c.redeliver.saturating_add(d.redeliver);
    }

    /// True when a node listed the queue's depth: without it the queue's figures are pending.
    pub fn has_depth(&self) -> bool {
        self.messages.is_some() || self.ready.is_some() || self.unacked.is_some()
    }
}

/// Queues keyed by `vhost + '\0' + name` (a name with a NUL in it would share a key; RabbitMQ
/// names never hold one in practice), in the order first seen. A family lists the queues in the
/// order of the table it reads, and the families of one table (the coarse depths, consumer counts,
/// the delivery counters) mostly in the same order: a cursor tries the row after the last one
/// first, so most samples cost a string comparison instead of a hash probe into a 100k-row table
/// (benches/promtext: parse + sum at 100k queues 454 → 223 ms, docs/performance.md).
#[derive(Debug, Default)]
pub struct QueueSums {
    keys: Vec<Box<str>>,
    rows: Vec<Sums>,
    index: HashMap<Box<str>, u32>,
    cursor: usize,
}

impl QueueSums {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&Sums> {
        self.index.get(key).map(|&i| &self.rows[i as usize])
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| &**k)
    }

    pub fn values(&self) -> impl Iterator<Item = &Sums> {
        self.rows.iter()
    }

    /// The next lookups start from the first row (a new family begins).
    fn rewind(&mut self) {
        self.cursor = 0;
    }

    /// The row of `key`, added when new.
    fn row_mut(&mut self, key: &str) -> &mut Sums {
        let c = self.cursor;
        let i = if self.keys.get(c).is_some_and(|k| **k == *key) {
            c
        } else if c > 0 && *self.keys[c - 1] == *key {
            // The same queue again (the exchange family lists one row per exchange).
            c - 1
        } else if let Some(&i) = self.index.get(key) {
            i as usize
        } else {
            let i = self.rows.len();
            self.keys.push(key.into());
            self.index.insert(key.into(), i as u32);
            self.rows.push(Sums::default());
            i
        };
        self.cursor = i + 1;
        &mut self.rows[i]
    }
}

/// The map key of a queue.
pub fn queue_key(buf: &mut String, vhost: &str, name: &str) {
    buf.clear();
    buf.push_str(vhost);
    buf.push('\0');
    buf.push_str(name);
}

/// What one node's endpoint said.
#[derive(Debug, Default)]
pub struct NodeReading {
    /// `rabbitmq_identity_info{rabbitmq_node}`: which node answered.
    pub node: Option<String>,
    /// `rabbitmq_build_info{rabbitmq_version}`.
    pub version: Option<String>,
    /// Which of `COUNTER_FAMILIES` had a `# TYPE` line.
    counter_families: [bool; 2],
    pub queues: QueueSums,
    key: String,
}

impl NodeReading {
    /// True when the node lists per-queue counters (RabbitMQ 4.0+).
    pub fn lists_counters(&self) -> bool {
        self.counter_families.iter().all(|&b| b)
    }

    /// Folds one line of the node's answer in.
    pub fn add(&mut self, line: Line<'_>) {
        match line {
            Line::Type { family, .. } => {
                if let Some(i) = COUNTER_FAMILIES.iter().position(|f| *f == family) {
                    self.counter_families[i] = true;
                }
                self.queues.rewind();
            }
            Line::Sample(s) => self.sample(&s),
        }
    }

    fn sample(&mut self, s: &Sample<'_>) {
        let Some(metric) = s.name.strip_prefix("rabbitmq_detailed_queue_") else {
            match s.name {
                "rabbitmq_identity_info" => {
                    self.node = s.label("rabbitmq_node").map(Cow::into_owned)
                }
                "rabbitmq_build_info" => {
                    self.version = s.label("rabbitmq_version").map(Cow::into_owned)
                }
                _ => {}
            }
            return;
        };
        // A negative, fractional or non-finite figure is not a count: left unknown.
        if !(s.value.is_finite() && s.value >= 0.0) {
            return;
        }
        let v = s.value as u64;
        type Apply = fn(&mut Sums, u64);
        let apply: Apply = match metric {
            "messages" => |q, v| q.messages = Some(v),
            "messages_ready" => |q, v| q.ready = Some(v),
            "messages_unacked" => |q, v| q.unacked = Some(v),
            "consumers" => |q, v| q.consumers = Some(v),
            "exchange_messages_published_total" => {
                |q, v| q.counters.publish = q.counters.publish.saturating_add(v)
            }
            "messages_delivered_ack_total" | "get_ack_total" => {
                |q, v| q.counters.delivered = q.counters.delivered.saturating_add(v)
            }
            "messages_delivered_total" | "get_total" => |q, v| {
                q.counters.delivered = q.counters.delivered.saturating_add(v);
                q.counters.no_ack = q.counters.no_ack.saturating_add(v);
            },
            "messages_acked_total" => |q, v| q.counters.ack = q.counters.ack.saturating_add(v),
            "messages_redelivered_total" => {
                |q, v| q.counters.redeliver = q.counters.redeliver.saturating_add(v)
            }
            _ => return,
        };
        let (Some(vhost), Some(queue)) = (s.label("vhost"), s.label("queue")) else {
            return;
        };
        queue_key(&mut self.key, &vhost, &queue);
        apply(self.queues.row_mut(&self.key), v);
    }

    /// Adds another node's figures to these.
    pub fn merge(&mut self, mut other: NodeReading) {
        if self.queues.len() < other.queues.len() {
            std::mem::swap(&mut self.queues, &mut other.queues);
        }
        self.queues.rewind();
        for (k, s) in other.queues.keys.iter().zip(&other.queues.rows) {
            self.queues.row_mut(k).merge(s);
        }
        for (a, b) in self.counter_families.iter_mut().zip(other.counter_families) {
            *a &= b;
        }
    }
}

/// The URL of a node's listener when `prometheus.urls` is not set: the host of its node name
/// (`rabbit@HOST`), port 15692 (15691 when the management API is served over https).
pub fn default_url(management: &reqwest::Url, node: &str) -> Option<reqwest::Url> {
    let host = node.split_once('@')?.1;
    let (scheme, port) = if management.scheme() == "https" {
        ("https", 15691)
    } else {
        ("http", 15692)
    };
    reqwest::Url::parse(&format!("{scheme}://{host}:{port}")).ok()
}

#[cfg(test)]
mod tests {
    use super::super::promtext;
    use super::*;

    fn read(body: &str) -> NodeReading {
        let mut r = NodeReading::default();
        promtext::parse(body.as_bytes(), |l| r.add(l)).unwrap();
        r
    }

    fn get<'a>(r: &'a NodeReading, vhost: &str, name: &str) -> Option<&'a Sums> {
        let mut k = String::new();
        queue_key(&mut k, vhost, name);
        r.queues.get(&k)
    }

    // What RabbitMQ 4.0.5 answered for two nodes: `qq` a quorum queue led by rabbit4b, `cq` a
    // classic queue on rabbit4b; messages published to both through each node, fetched with
    // basic.get through rabbit4a (auto-ack) and rabbit4b (manual ack, requeued).
    const NODE_A: &str = r#"# TYPE rabbitmq_detailed_queue_messages_ready gauge
# HELP rabbitmq_detailed_queue_messages_ready Messages ready to be delivered to consumers
# TYPE rabbitmq_detailed_queue_messages gauge
# TYPE rabbitmq_detailed_queue_consumers gauge
# TYPE rabbitmq_detailed_queue_get_total counter
rabbitmq_detailed_queue_get_ack_total{vhost="pt",queue="qq"} 0
rabbitmq_detailed_queue_get_total{vhost="pt",queue="qq"} 2
rabbitmq_detailed_queue_messages_delivered_ack_total{vhost="pt",queue="qq"} 0
rabbitmq_detailed_queue_messages_redelivered_total{vhost="pt",queue="qq"} 0
# TYPE rabbitmq_detailed_queue_messages_acked_total counter
rabbitmq_detailed_queue_messages_acked_total{vhost="pt",queue="qq"} 0
# TYPE rabbitmq_detailed_queue_exchange_messages_published_total counter
rabbitmq_detailed_queue_exchange_messages_published_total{vhost="pt",exchange="",queue="qq"} 5
rabbitmq_detailed_queue_exchange_messages_published_total{vhost="pt",exchange="amq.direct",queue="qq"} 2
rabbitmq_detailed_queue_exchange_messages_published_total{vhost="pt",exchange="",queue="cq"} 1
rabbitmq_build_info{rabbitmq_version="4.0.5",prometheus_plugin_version="4.0.5"} 1
rabbitmq_identity_info{rabbitmq_node="rabbit4a@localhost",rabbitmq_cluster="rabbit4a@vm"} 1
"#;

    const NODE_B: &str = r#"# TYPE rabbitmq_detailed_queue_messages_ready gauge
rabbitmq_detailed_queue_messages_ready{vhost="pt",queue="cq"} 5
rabbitmq_detailed_queue_messages_ready{vhost="pt",queue="qq"} 3
rabbitmq_detailed_queue_messages_unacked{vhost="pt",queue="cq"} 1
rabbitmq_detailed_queue_messages_unacked{vhost="pt",queue="qq"} 0
rabbitmq_detailed_queue_messages{vhost="pt",queue="cq"} 6
rabbitmq_detailed_queue_messages{vhost="pt",queue="qq"} 3
rabbitmq_detailed_queue_process_reductions_total{vhost="pt",queue="cq"} 13314
rabbitmq_detailed_queue_consumers{vhost="pt",queue="cq"} 1
rabbitmq_detailed_queue_consumers{vhost="pt",queue="qq"} 0
rabbitmq_detailed_queue_get_ack_total{vhost="pt",queue="cq"} 3
rabbitmq_detailed_queue_messages_delivered_ack_total{vhost="pt",queue="cq"} 4
rabbitmq_detailed_queue_messages_redelivered_total{vhost="pt",queue="cq"} 3
# TYPE rabbitmq_detailed_queue_messages_acked_total counter
rabbitmq_detailed_queue_messages_acked_total{vhost="pt",queue="cq"} 2
# TYPE rabbitmq_detailed_queue_exchange_messages_published_total counter
rabbitmq_detailed_queue_exchange_messages_published_total{vhost="pt",exchange="",queue="cq"} 5
rabbitmq_identity_info{rabbitmq_node="rabbit4b@localhost",rabbitmq_cluster="rabbit4a@vm"} 1
"#;

    #[test]
    fn counters_are_summed_over_nodes_and_depths_come_from_the_node_that_lists_them() {
        let a = read(NODE_A);
        assert_eq!(a.node.as_deref(), Some("rabbit4a@localhost"));
        assert_eq!(a.version.as_deref(), Some("4.0.5"));
        assert!(a.lists_counters());
        let qq = get(&a, "pt", "qq").unwrap();
        assert!(!qq.has_depth(), "node a hosts neither queue");
        assert_eq!(qq.counters.publish, 7, "summed over exchanges");
        assert_eq!((qq.counters.delivered, qq.counters.no_ack), (2, 2));

        let mut all = read(NODE_B);
        all.merge(a);
        assert!(all.lists_counters());
        let cq = *get(&all, "pt", "cq").unwrap();
        assert_eq!(
            (cq.messages, cq.ready, cq.unacked, cq.consumers),
            (Some(6), Some(5), Some(1), Some(1))
        );
        assert_eq!(
            cq.counters,
            Counters {
                publish: 6,
                delivered: 7,
                ack: 2,
                no_ack: 0,
                redeliver: 3,
            }
        );
        let qq = *get(&all, "pt", "qq").unwrap();
        assert_eq!(
            (qq.messages, qq.consumers, qq.counters.publish),
            (Some(3), Some(0), 7)
        );
    }

    #[test]
    fn a_node_without_the_counter_families_makes_the_reading_depth_only() {
        // RabbitMQ 3.10's plugin: TYPE lines for the coarse families only.
        let old = read(
            "# TYPE rabbitmq_detailed_queue_messages gauge\n\
             rabbitmq_detailed_queue_messages{vhost=\"/\",queue=\"q\"} 4\n",
        );
        assert!(!old.lists_counters());
        let mut all = read(NODE_A);
        all.merge(old);
        assert!(!all.lists_counters(), "one node without counters is enough");
        assert_eq!(get(&all, "/", "q").unwrap().messages, Some(4));
    }

    #[test]
    fn escaped_names_and_odd_values_are_read_as_the_broker_meant() {
        let r = read(
            "rabbitmq_detailed_queue_messages{vhost=\"v\\\\1\",queue=\"say \\\"hi\\\"\"} 2\n\
             rabbitmq_detailed_queue_messages{vhost=\"v\",queue=\"nan\"} NaN\n\
             rabbitmq_detailed_queue_messages{vhost=\"v\",queue=\"neg\"} -1\n\
             rabbitmq_detailed_queue_messages{queue=\"no-vhost\"} 1\n\
             rabbitmq_detailed_queue_unknown_total{vhost=\"v\",queue=\"x\"} 1\n",
        );
        assert_eq!(get(&r, "v\\1", "say \"hi\"").unwrap().messages, Some(2));
        assert!(get(&r, "v", "nan").is_none() && get(&r, "v", "neg").is_none());
        assert_eq!(r.queues.len(), 1);
    }

    #[test]
    fn families_in_other_orders_and_repeated_rows_land_on_the_right_queue() {
        let mut body = String::from("# TYPE rabbitmq_detailed_queue_messages gauge\n");
        let names = ["a", "b", "c", "d"];
        for (i, q) in names.iter().enumerate() {
            body += &format!("rabbitmq_detailed_queue_messages{{vhost=\"v\",queue=\"{q}\"}} {i}\n");
        }
        // Reversed, one queue missing, then a queue no other family has.
        body += "# TYPE rabbitmq_detailed_queue_messages_acked_total counter\n";
        for (i, q) in ["d", "c", "a", "e"].iter().enumerate() {
            body += &format!(
                "rabbitmq_detailed_queue_messages_acked_total{{vhost=\"v\",queue=\"{q}\"}} {}\n",
                10 * (i + 1)
            );
        }
        // One row per exchange: each queue twice in a row, and `b` again later.
        body += "# TYPE rabbitmq_detailed_queue_exchange_messages_published_total counter\n";
        for q in ["b", "b", "a", "a", "c", "b"] {
            body += &format!(
                "rabbitmq_detailed_queue_exchange_messages_published_total{{vhost=\"v\",exchange=\"x\",queue=\"{q}\"}} 1\n"
            );
        }
        let r = read(&body);
        let row = |q| get(&r, "v", q).copied().unwrap_or_default();
        let got: Vec<(Option<u64>, u64, u64)> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|q| {
                (
                    row(q).messages,
                    row(q).counters.ack,
                    row(q).counters.publish,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (Some(0), 30, 2),
                (Some(1), 0, 3),
                (Some(2), 20, 1),
                (Some(3), 10, 0),
                (None, 40, 0)
            ]
        );
        assert_eq!(r.queues.len(), 5);
        let keys: Vec<&str> = r.queues.keys().collect();
        assert_eq!(keys, ["v\0a", "v\0b", "v\0c", "v\0d", "v\0e"]);

        // Merging a node that lists them in another order adds to the same rows.
        let mut all = read(&body);
        all.merge(r);
        assert_eq!(get(&all, "v", "b").unwrap().counters.publish, 6);
        assert_eq!(get(&all, "v", "e").unwrap().counters.ack, 80);
        assert_eq!(all.queues.len(), 5);
    }

    #[test]
    fn default_urls_follow_the_node_names_host() {
        let http = reqwest::Url::parse("http://mq.example:15672").unwrap();
        let https = reqwest::Url::parse("https://mq.example").unwrap();
        assert_eq!(
            default_url(&http, "rabbit@node-1").unwrap().as_str(),
            "http://node-1:15692/"
        );
        assert_eq!(
            default_url(&https, "rabbit@node-1.internal")
                .unwrap()
                .as_str(),
            "https://node-1.internal:15691/"
        );
        assert!(default_url(&http, "no-host").is_none());
    }
}
