//! Prometheus text exposition (format 0.0.4) rendered from the latest `ClusterView`s.
//!
//! Rendering reads published views only; it never fetches (a slow broker cannot pile up scrapes here)
//! and keeps no series registry, so a queue that left the view is simply not written: nothing to reset.
//! Written by hand rather than through a metrics registry because at 100k queues the registry's per-series
//! bookkeeping dominates; each queue's label set is escaped once and copied.

use std::fmt::Write;
use std::ops::ControlFlow;
use std::sync::Arc;

use crate::alerts::State;
use crate::domain::{Histogram, StatsMode, Timestamp};
use crate::engine::{Published, ReloadStatus, ScalerStatus};
use crate::outbox::Stats;
use crate::probe::Probe;
use crate::snapshot::{NodeSample, Source};
use crate::view::{ClusterView, QueueView, escape_label_value};

mod gzip;
pub use gzip::{CacheStats, LEVEL as GZIP_LEVEL, QueueCache, accepts_gzip};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Out {
    buf: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        push_family(&mut self.buf, name, kind, help);
    }

    fn sample(&mut self, name: &str, labels: &str, value: f64) {
        push_sample(&mut self.buf, name, labels, value);
    }

    /// One histogram's `_bucket`, `_sum` and `_count` samples (the family line is the caller's).
    fn histogram(&mut self, family: &str, labels: &str, h: &Histogram) {
        let bucket = format!("{family}_bucket");
        let sep = if labels.is_empty() { "" } else { "," };
        let mut le = String::new();
        for (bound, count) in h.buckets() {
            le.clear();
            push_f64(&mut le, bound);
            self.sample(&bucket, &format!("{labels}{sep}le=\"{le}\""), count as f64);
        }
        self.sample(&format!("{family}_sum"), labels, h.sum());
        self.sample(&format!("{family}_count"), labels, h.count() as f64);
    }
}

fn push_family(buf: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(buf, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn push_sample(buf: &mut String, name: &str, labels: &str, value: f64) {
    buf.push_str(name);
    if !labels.is_empty() {
        buf.push('{');
        buf.push_str(labels);
        buf.push('}');
    }
    buf.push(' ');
    push_f64(buf, value);
    buf.push('\n');
}

fn push_f64(buf: &mut String, v: f64) {
    if v.is_nan() {
        buf.push_str("NaN");
    } else if v.is_infinite() {
        buf.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        buf.push_str(itoa::Buffer::new().format(v as i64));
    } else {
        buf.push_str(ryu::Buffer::new().format_finite(v));
    }
}

fn label(name: &str, value: &str) -> String {
    let mut s = String::with_capacity(name.len() + value.len() + 3);
    s.push_str(name);
    s.push_str("=\"");
    escape_label_value(&mut s, value);
    s.push('"');
    s
}

type QueueGauge = (
    &'static str,
    &'static str,
    &'static str,
    fn(&QueueView) -> Option<f64>,
);

/// Per-queue families: name, type, help, value (absent when unknown rather than a made-up zero).
const QUEUE_FAMILIES: &[QueueGauge] = &[
    (
        "rabbitwatch_queue_messages",
        "gauge",
        "Messages in the queue (ready + unacknowledged).",
        |q| Some(q.sample.messages as f64),
    ),
    (
        "rabbitwatch_queue_messages_ready",
        "gauge",
        "Messages ready for delivery.",
        |q| Some(q.sample.messages_ready as f64),
    ),
    (
        "rabbitwatch_queue_messages_unacked",
        "gauge",
        "Messages delivered and not yet acknowledged.",
        |q| Some(q.sample.messages_unacked as f64),
    ),
    (
        "rabbitwatch_queue_consumers",
        "gauge",
        "Consumers attached to the queue.",
        |q| Some(q.sample.consumers as f64),
    ),
    (
        "rabbitwatch_queue_published_total",
        "counter",
        "Messages published into the queue, as counted by the broker.",
        |q| q.sample.counters.map(|c| c.publish as f64),
    ),
    (
        "rabbitwatch_queue_consumed_total",
        "counter",
        "Messages that left the queue (acks, no-ack deliveries and gets).",
        |q| q.sample.counters.map(|c| c.consumed() as f64),
    ),
    (
        "rabbitwatch_queue_redelivered_total",
        "counter",
        "Messages delivered again after a requeue or a lost consumer.",
        |q| q.sample.counters.map(|c| c.redeliver as f64),
    ),
    (
        "rabbitwatch_queue_publish_rate",
        "gauge",
        "Messages published per second over the analysis window.",
        |q| q.health.publish_rate(),
    ),
    (
        "rabbitwatch_queue_deliver_rate",
        "gauge",
        "Messages delivered per second over the analysis window.",
        |q| q.health.deliver_rate(),
    ),
    (
        "rabbitwatch_queue_consume_rate",
        "gauge",
        "Messages leaving the queue per second over the analysis window.",
        |q| q.health.consume_rate(),
    ),
    (
        "rabbitwatch_queue_redeliver_rate",
        "gauge",
        "Messages redelivered per second over the analysis window.",
        |q| q.health.redeliver_rate(),
    ),
    (
        "rabbitwatch_queue_backlog_growth_rate",
        "gauge",
        "Least-squares slope of the queue depth over the analysis window, messages per second.",
        |q| q.health.backlog_growth(),
    ),
    (
        "rabbitwatch_queue_drain_eta_seconds",
        "gauge",
        "Seconds until the queue is empty at current rates; +Inf when consumers are slower than publishers.",
        |q| q.health.drain_eta(),
    ),
    (
        "rabbitwatch_queue_oldest_message_age_seconds",
        "gauge",
        "Estimated age of the oldest message (a lower bound when older than the window).",
        |q| q.health.oldest_message_age(),
    ),
    (
        "rabbitwatch_queue_growing_seconds",
        "gauge",
        "Seconds the queue's backlog has kept rising up to the latest poll (no fall, a rise at least every 15 s); 0 when it is not rising.",
        |q| q.health.growing_for(),
    ),
];

/// Per-cluster queue counts, one gauge family each: (name, help, count).
type ClusterCount = (&'static str, &'static str, fn(&ClusterView) -> usize);

const CLUSTER_QUEUE_FAMILIES: &[ClusterCount] = &[
    (
        "rabbitwatch_cluster_queues",
        "Queues watched in the cluster.",
        |c| c.queues.len(),
    ),
    (
        "rabbitwatch_cluster_queues_truncated",
        "Queues not watched because of max_queues (those with the smallest backlog).",
        |c| c.truncated,
    ),
    (
        "rabbitwatch_cluster_queues_stats_pending",
        "Queues the broker listed without statistics (node starting, or its metrics collector disabled): shown with their last known figures, or not at all.",
        |c| c.stats_pending,
    ),
];

/// A node figure the broker did not list (`None`) has no sample: unknown is never zero.
type NodeGauge = (&'static str, &'static str, fn(&NodeSample) -> Option<f64>);

const NODE_FAMILIES: &[NodeGauge] = &[
    (
        "rabbitwatch_node_running",
        "1 if the node is running.",
        |n| Some(f64::from(u8::from(n.running))),
    ),
    (
        "rabbitwatch_node_mem_used_bytes",
        "Memory used by the node.",
        |n| n.mem_used.map(|v| v as f64),
    ),
    (
        "rabbitwatch_node_mem_limit_bytes",
        "Memory high watermark of the node.",
        |n| n.mem_limit.map(|v| v as f64),
    ),
    (
        "rabbitwatch_node_mem_alarm",
        "1 while the memory alarm blocks publishers.",
        |n| n.mem_alarm.map(|a| f64::from(u8::from(a))),
    ),
    (
        "rabbitwatch_node_disk_free_bytes",
        "Free disk space on the node.",
        |n| n.disk_free.map(|v| v as f64),
    ),
    (
        "rabbitwatch_node_disk_free_limit_bytes",
        "Free disk space below which the disk alarm fires.",
        |n| n.disk_free_limit.map(|v| v as f64),
    ),
    (
        "rabbitwatch_node_disk_alarm",
        "1 while the disk alarm blocks publishers.",
        |n| n.disk_alarm.map(|a| f64::from(u8::from(a))),
    ),
    (
        "rabbitwatch_node_fd_used",
        "File descriptors in use.",
        |n| n.fd_used.map(|v| v as f64),
    ),
    (
        "rabbitwatch_node_fd_limit",
        "File descriptors available.",
        |n| n.fd_total.map(|v| v as f64),
    ),
    (
        "rabbitwatch_node_partitions",
        "Nodes this node sees as partitioned away.",
        |n| n.partitions.map(|v| v as f64),
    ),
];

/// The daemon's own state beyond the clusters: alerts and delivery.
pub struct Extras<'a> {
    pub alerts: &'a Published,
    pub receivers: &'a Stats,
    /// (outbox entries, dead letters); `None` when the store could not be read.
    pub outbox: Option<(u64, u64)>,
    pub reload: Option<&'a ReloadStatus>,
    /// Whether the state store accepts writes; `None`: not known (benchmarks).
    pub store_writable: Option<bool>,
    /// The daemon's own resource use; `None` in tests and benchmarks.
    pub process: Option<&'a crate::process::Usage>,
    /// The `scalers:` entries and what each decided last.
    pub scalers: &'a [ScalerStatus],
    /// The canaries (`probe:` entries).
    pub probes: &'a [Arc<Probe>],
}

/// Pieces of about this size are handed to the HTTP layer while the rest is still being rendered: the
/// whole exposition is ~140 MB at 100k queues, and holding it at once was most of the daemon's peak RSS.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Runs `f` with empty alerting and delivery state: the cluster metrics only (tests and benchmarks).
fn without_extras<R>(f: impl FnOnce(&Extras<'_>) -> R) -> R {
    let stats = Stats::new();
    let alerts = Published::default();
    f(&Extras {
        alerts: &alerts,
        receivers: &stats,
        outbox: None,
        reload: None,
        store_writable: None,
        process: None,
        scalers: &[],
        probes: &[],
    })
}

/// Renders the cluster metrics only into one string (tests).
pub fn render(clusters: &[Arc<ClusterView>], now: Timestamp) -> String {
    without_extras(|x| render_with(clusters, x, now))
}

/// Renders the cluster metrics only, in pieces as `/metrics` sends them (benchmarks).
pub fn render_clusters_chunked(
    clusters: &[Arc<ClusterView>],
    now: Timestamp,
    emit: &mut dyn FnMut(String) -> ControlFlow<()>,
) {
    let _ = without_extras(|x| render_chunked(clusters, x, now, CHUNK_BYTES, emit));
}

/// Serves the cluster metrics only as a gzip scrape does, through `cache` (benchmarks and tests).
pub fn serve_clusters_gzip(
    cache: &QueueCache,
    clusters: &[Arc<ClusterView>],
    now: Timestamp,
    emit: &mut dyn FnMut(bytes::Bytes) -> ControlFlow<()>,
) {
    let _ = without_extras(|x| cache.serve(clusters, x, now, emit));
}

/// Renders every metric into one string. `now` decides which clusters' data is still fresh enough to
/// present.
pub fn render_with(clusters: &[Arc<ClusterView>], extras: &Extras<'_>, now: Timestamp) -> String {
    let mut out = String::new();
    let _ = render_chunked(clusters, extras, now, usize::MAX, &mut |s| {
        out = s;
        ControlFlow::Continue(())
    });
    out
}

/// Collects rendered text and hands it to `emit` whenever it holds `chunk` bytes or more.
struct Chunker<'e> {
    buf: String,
    chunk: usize,
    emit: &'e mut dyn FnMut(String) -> ControlFlow<()>,
}

impl Chunker<'_> {
    fn full(&mut self) -> ControlFlow<()> {
        if self.buf.len() < self.chunk {
            return ControlFlow::Continue(());
        }
        let cap = self.chunk.min(CHUNK_BYTES) + 4096;
        (self.emit)(std::mem::replace(&mut self.buf, String::with_capacity(cap)))
    }

    fn finish(mut self) -> ControlFlow<()> {
        if self.buf.is_empty() {
            return ControlFlow::Continue(());
        }
        (self.emit)(std::mem::take(&mut self.buf))
    }
}

/// Renders every metric and hands the text to `emit` in order, in pieces of about `chunk` bytes, as it
/// is written, so memory stays at one piece however many queues there are. `emit` returning `Break`
/// (the scraper went away) stops rendering; so does the returned value.
///
/// The format needs each family in one block, so queue families are written one after the other,
/// each reading every queue. A family never spans clusters' blocks: all clusters' queues are in it.
pub fn render_chunked(
    clusters: &[Arc<ClusterView>],
    extras: &Extras<'_>,
    now: Timestamp,
    chunk: usize,
    emit: &mut dyn FnMut(String) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let fresh = fresh_clusters(clusters, now);
    let mut out = Chunker {
        buf: head(clusters, &fresh, extras),
        chunk,
        emit,
    };
    out.full()?;
    render_queues_into(&fresh, &mut out)?;
    out.finish()
}

/// Everything but the per-queue families: what may change from one scrape to the next (process and
/// delivery figures, cluster up/down and freshness). Small; rendered on every scrape.
pub fn render_head(clusters: &[Arc<ClusterView>], extras: &Extras<'_>, now: Timestamp) -> String {
    head(clusters, &fresh_clusters(clusters, now), extras)
}

fn head(clusters: &[Arc<ClusterView>], fresh: &[&ClusterView], extras: &Extras<'_>) -> String {
    let mut o = Out {
        buf: String::with_capacity(16 * 1024),
    };

    o.family(
        "rabbitwatch_build_info",
        "gauge",
        "Build information; always 1.",
    );
    o.sample(
        "rabbitwatch_build_info",
        &label("version", env!("CARGO_PKG_VERSION")),
        1.0,
    );

    let cl: Vec<String> = clusters.iter().map(|c| label("cluster", &c.name)).collect();
    o.family(
        "rabbitwatch_up",
        "gauge",
        "1 if the last scrape of the cluster's management API succeeded.",
    );
    for (c, l) in clusters.iter().zip(&cl) {
        o.sample("rabbitwatch_up", l, f64::from(u8::from(c.up)));
    }
    o.family(
        "rabbitwatch_scrape_duration_seconds",
        "gauge",
        "Duration of the last scrape of the cluster.",
    );
    for (c, l) in clusters.iter().zip(&cl) {
        if let Some(d) = c.scrape_duration {
            o.sample("rabbitwatch_scrape_duration_seconds", l, d);
        }
    }
    o.family(
        "rabbitwatch_scrape_errors_total",
        "counter",
        "Failed scrapes by reason.",
    );
    for (c, l) in clusters.iter().zip(&cl) {
        for (reason, n) in &c.errors_total {
            o.sample(
                "rabbitwatch_scrape_errors_total",
                &format!("{l},{}", label("reason", reason.as_str())),
                *n as f64,
            );
        }
    }
    o.family(
        "rabbitwatch_scrape_skipped_total",
        "counter",
        "Poll ticks skipped because the previous scrape was still running.",
    );
    for (c, l) in clusters.iter().zip(&cl) {
        o.sample(
            "rabbitwatch_scrape_skipped_total",
            l,
            c.skipped_total as f64,
        );
    }
    o.family(
        "rabbitwatch_last_scrape_timestamp_seconds",
        "gauge",
        "Unix time of the last successful scrape.",
    );
    for (c, l) in clusters.iter().zip(&cl) {
        if let Some(t) = c.last_success {
            o.sample(
                "rabbitwatch_last_scrape_timestamp_seconds",
                l,
                t.as_secs_f64(),
            );
        }
    }
    o.family(
        "rabbitwatch_cluster_stats_mode",
        "gauge",
        "1 for the statistics mode the broker runs in (full, or depth_only without message rates).",
    );
    for (c, l) in clusters.iter().zip(&cl) {
        if c.last_success.is_some() {
            for m in StatsMode::ALL {
                o.sample(
                    "rabbitwatch_cluster_stats_mode",
                    &format!("{l},{}", label("mode", m.as_str())),
                    f64::from(u8::from(c.stats_mode == m)),
                );
            }
        }
    }
    o.family(
        "rabbitwatch_cluster_source",
        "gauge",
        "1 for the source the queue figures are read from (management, or prometheus: the rabbitmq_prometheus plugin).",
    );
    for (c, l) in clusters.iter().zip(&cl) {
        if c.last_success.is_some() {
            for src in Source::ALL {
                o.sample(
                    "rabbitwatch_cluster_source",
                    &format!("{l},{}", label("source", src.as_str())),
                    f64::from(u8::from(c.source == src)),
                );
            }
        }
    }
    o.family(
        "rabbitwatch_cluster_deprecated_feature_used",
        "gauge",
        "1 for each deprecated feature the cluster uses (a later RabbitMQ removes it); no series when the broker cannot say (before 3.13).",
    );
    for c in fresh {
        for f in c.deprecated_features.iter().flat_map(|d| d.iter()) {
            o.sample(
                "rabbitwatch_cluster_deprecated_feature_used",
                &format!("{},{}", label("cluster", &c.name), label("feature", f)),
                1.0,
            );
        }
    }
    for (name, help, value) in CLUSTER_QUEUE_FAMILIES {
        o.family(name, "gauge", help);
        for c in fresh {
            o.sample(name, &label("cluster", &c.name), value(c) as f64);
        }
    }

    for (name, help, value) in NODE_FAMILIES {
        o.family(name, "gauge", help);
        for c in fresh {
            for n in c.nodes.iter() {
                let Some(v) = value(n) else { continue };
                let l = format!("{},{}", label("cluster", &c.name), label("node", &n.name));
                o.sample(name, &l, v);
            }
        }
    }

    render_streams(&mut o, fresh);
    render_alerting(&mut o, extras);
    render_scalers(&mut o, extras.scalers);
    render_probes(&mut o, extras.probes);
    if let Some(p) = extras.process {
        render_process(&mut o, p);
    }
    o.buf
}

/// The per-queue families of the clusters fresh at `now`, in pieces of about `chunk` bytes. They depend
/// only on those clusters' published queue lists, so they change once per poll cycle (`QueueCache`).
pub fn render_queues(
    clusters: &[Arc<ClusterView>],
    now: Timestamp,
    chunk: usize,
    emit: &mut dyn FnMut(String) -> ControlFlow<()>,
) -> ControlFlow<()> {
    render_queues_into_pieces(&fresh_clusters(clusters, now), chunk, emit)
}

fn render_queues_into_pieces(
    fresh: &[&ClusterView],
    chunk: usize,
    emit: &mut dyn FnMut(String) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let mut out = Chunker {
        buf: String::with_capacity(chunk.min(CHUNK_BYTES) + 4096),
        chunk,
        emit,
    };
    render_queues_into(fresh, &mut out)?;
    out.finish()
}

fn fresh_clusters(clusters: &[Arc<ClusterView>], now: Timestamp) -> Vec<&ClusterView> {
    clusters
        .iter()
        .map(Arc::as_ref)
        .filter(|c| c.is_fresh(now))
        .collect()
}

fn render_queues_into(fresh: &[&ClusterView], out: &mut Chunker<'_>) -> ControlFlow<()> {
    let queues = || fresh.iter().flat_map(|c| c.queues.iter());
    for (name, kind, help, value) in QUEUE_FAMILIES {
        push_family(&mut out.buf, name, kind, help);
        for q in queues() {
            if let Some(v) = value(q) {
                push_sample(&mut out.buf, name, &q.prom_labels, v);
                out.full()?;
            }
        }
    }
    let status_family = "rabbitwatch_queue_status";
    push_family(
        &mut out.buf,
        status_family,
        "gauge",
        "The queue's current health status, with its type (classic, quorum, stream); the series with value 1 names both.",
    );
    for q in queues() {
        let buf = &mut out.buf;
        buf.push_str(status_family);
        buf.push('{');
        buf.push_str(&q.prom_labels);
        buf.push_str(",status=\"");
        buf.push_str(q.health.status.as_str());
        buf.push_str("\",type=\"");
        escape_label_value(buf, &q.sample.kind);
        buf.push_str("\"} 1\n");
        out.full()?;
    }
    ControlFlow::Continue(())
}

type StreamGauge = (
    &'static str,
    &'static str,
    fn(&crate::view::StreamConsumerView) -> Option<f64>,
);

/// Per stream reader (labels `cluster, vhost, stream, consumer`): name, help, value (absent when
/// unknown: an AMQP reader, or the consumers could not be read).
const STREAM_CONSUMER_FAMILIES: &[StreamGauge] = &[
    (
        "rabbitwatch_stream_consumer_offset_lag",
        "Messages between the reader's offset and the stream's committed offset.",
        |c| c.health.offset_lag,
    ),
    (
        "rabbitwatch_stream_consumer_lag_growth_rate",
        "How fast the reader's lag grows over the analysis window, messages per second (negative: catching up).",
        |c| c.health.lag_growth,
    ),
    (
        "rabbitwatch_stream_consumer_offset_rate",
        "How fast the reader's offset advances, messages per second.",
        |c| c.health.offset_rate,
    ),
    (
        "rabbitwatch_stream_consumer_truncation_eta_seconds",
        "Seconds until retention removes the reader's position (+Inf while it does not close in).",
        |c| c.health.truncation_eta,
    ),
    (
        "rabbitwatch_stream_consumer_online",
        "1 while the reader is subscribed; 0 for a named reader that left (its last position kept).",
        |c| Some(f64::from(u8::from(c.online))),
    ),
];

/// Stream readers: a few per stream, so rendered with the head on each scrape.
fn render_streams(o: &mut Out, fresh: &[&ClusterView]) {
    let readers = || fresh.iter().flat_map(|c| c.stream_consumers.iter());
    if readers().next().is_none() && fresh.iter().all(|c| c.stream_unknown.is_empty()) {
        return;
    }
    for (name, help, value) in STREAM_CONSUMER_FAMILIES {
        o.family(name, "gauge", help);
        for c in readers() {
            if let Some(v) = value(c) {
                o.sample(name, &c.prom_labels, v);
            }
        }
    }
    let status = "rabbitwatch_stream_consumer_status";
    o.family(
        status,
        "gauge",
        "The reader's verdict over the analysis window; the series with value 1 names it.",
    );
    for c in readers() {
        let l = format!(
            "{},{}",
            c.prom_labels,
            label("status", c.health.status.as_str())
        );
        o.sample(status, &l, 1.0);
    }
    let unknown = "rabbitwatch_stream_unknown_readers";
    o.family(
        unknown,
        "gauge",
        "Readers of the stream that expose no offset (AMQP 0.9.1/1.0 consumers): their lag is unknown.",
    );
    for c in fresh {
        for u in c.stream_unknown.iter() {
            let l = format!(
                "{},{},{}",
                label("cluster", &c.name),
                label("vhost", &u.vhost),
                label("stream", &u.stream)
            );
            o.sample(unknown, &l, u.readers as f64);
        }
    }
}

fn render_alerting(o: &mut Out, x: &Extras<'_>) {
    use std::collections::BTreeMap;
    use std::sync::atomic::Ordering::Relaxed;
    let mut counts: BTreeMap<(&str, &str, &str, &str), u64> = BTreeMap::new();
    for a in x
        .alerts
        .alerts
        .iter()
        .filter(|a| a.state != State::Resolved)
    {
        let severity = a.labels.get("severity").map_or("", String::as_str);
        *counts
            .entry((&a.alertname, severity, a.state.as_str(), a.mode.as_str()))
            .or_default() += 1;
    }
    o.family(
        "rabbitwatch_alerts",
        "gauge",
        "Pending and firing alerts (shadow-mode ones have mode=\"shadow\" and are never sent).",
    );
    for ((name, sev, state, mode), n) in counts {
        let l = format!(
            "{},{},{},{}",
            label("alertname", name),
            label("severity", sev),
            label("state", state),
            label("mode", mode)
        );
        o.sample("rabbitwatch_alerts", &l, n as f64);
    }
    if let Some(r) = x.reload {
        o.family("rabbitwatch_config_last_reload_successful", "gauge", "1 if the last config load (start or reload) succeeded; 0 means the running config is older than the file.");
        o.sample(
            "rabbitwatch_config_last_reload_successful",
            "",
            f64::from(u8::from(r.ok.load(Relaxed))),
        );
        o.family(
            "rabbitwatch_config_last_reload_success_timestamp_seconds",
            "gauge",
            "Unix time of the last successful config load.",
        );
        o.sample(
            "rabbitwatch_config_last_reload_success_timestamp_seconds",
            "",
            r.last_success.load(Relaxed) as f64 / 1000.0,
        );
    }
    if let Some(writable) = x.store_writable {
        o.family(
            "rabbitwatch_state_store_up",
            "gauge",
            "1 if the state store accepts writes; 0 while alert state and notifications wait in memory.",
        );
        o.sample(
            "rabbitwatch_state_store_up",
            "",
            f64::from(u8::from(writable)),
        );
    }
    if let Some((pending, dead)) = x.outbox {
        o.family(
            "rabbitwatch_outbox_pending",
            "gauge",
            "Notifications waiting in the durable outbox (new or retrying).",
        );
        o.sample("rabbitwatch_outbox_pending", "", pending as f64);
        o.family("rabbitwatch_dead_letters", "gauge", "Notifications that could not be delivered; list and replay them with rabbitwatch deadletters.");
        o.sample("rabbitwatch_dead_letters", "", dead as f64);
    }
    o.family(
        "rabbitwatch_notifications_total",
        "counter",
        "Delivery attempts by receiver and outcome (delivered, retried, dead_lettered).",
    );
    for (name, st) in x.receivers {
        for (outcome, n) in [
            ("delivered", &st.delivered),
            ("retried", &st.retried),
            ("dead_lettered", &st.dead_lettered),
        ] {
            o.sample(
                "rabbitwatch_notifications_total",
                &format!("{},{}", label("receiver", name), label("outcome", outcome)),
                n.load(Relaxed) as f64,
            );
        }
    }
    o.family(
        "rabbitwatch_notification_latency_seconds",
        "histogram",
        "Time from a notification entering the outbox to its delivery.",
    );
    for (name, st) in x.receivers {
        o.histogram(
            "rabbitwatch_notification_latency_seconds",
            &label("receiver", name),
            &st.latency,
        );
    }
}

/// The canaries, labelled `cluster, vhost, probe`: up (absent before the first round trip ended),
/// the round-trip latency of the successful ones, and the failed ones by error.
fn render_probes(o: &mut Out, probes: &[Arc<Probe>]) {
    if probes.is_empty() {
        return;
    }
    let labels: Vec<String> = probes
        .iter()
        .map(|p| {
            let c = &p.config;
            format!(
                "{},{},{}",
                label("cluster", &c.cluster),
                label("vhost", &c.vhost),
                label("probe", &c.name)
            )
        })
        .collect();
    o.family(
        "rabbitwatch_probe_up",
        "gauge",
        "1 when the canary's last round trip (publish, confirm, delivery) succeeded, 0 when it failed; absent before the first.",
    );
    for (p, l) in probes.iter().zip(&labels) {
        if let Some(ok) = p.sample().ok {
            o.sample("rabbitwatch_probe_up", l, if ok { 1.0 } else { 0.0 });
        }
    }
    o.family(
        "rabbitwatch_probe_latency_seconds",
        "histogram",
        "Publish to delivery of the canary's successful round trips.",
    );
    for (p, l) in probes.iter().zip(&labels) {
        o.histogram("rabbitwatch_probe_latency_seconds", l, &p.latency);
    }
    o.family(
        "rabbitwatch_probe_failures_total",
        "counter",
        "Failed canary round trips by error (connect, auth, blocked, unroutable, nack, timeout).",
    );
    for (p, l) in probes.iter().zip(&labels) {
        for (e, n) in p.failures_total() {
            o.sample(
                "rabbitwatch_probe_failures_total",
                &format!("{l},{}", label("error", e.as_str())),
                n as f64,
            );
        }
    }
}

/// The `process_*` families under the names and units of the Prometheus client libraries, and the heap.
/// The scalers' figures, labelled `scaler, cluster, vhost, queue`: desired (absent while an input is
/// unknown: never a guess, never 0 for "unknown"), current (absent while the queue is not listed)
/// and the recommendations made, by direction.
fn render_scalers(o: &mut Out, scalers: &[ScalerStatus]) {
    if scalers.is_empty() {
        return;
    }
    let labels: Vec<String> = scalers
        .iter()
        .map(|s| {
            format!(
                "{},{},{},{}",
                label("scaler", &s.name),
                label("cluster", &s.cluster),
                label("vhost", &s.vhost),
                label("queue", &s.queue)
            )
        })
        .collect();
    o.family(
        "rabbitwatch_scaler_desired_consumers",
        "gauge",
        "Consumers the queue needs this cycle (publish rate plus backlog over target_drain_time, per consumer's rate, within min and max); absent while an input is unknown.",
    );
    for (s, l) in scalers.iter().zip(&labels) {
        if let Some(d) = s.desired {
            o.sample("rabbitwatch_scaler_desired_consumers", l, f64::from(d));
        }
    }
    o.family(
        "rabbitwatch_scaler_current_consumers",
        "gauge",
        "Consumers the scaler's queue has now; absent while the queue is not listed.",
    );
    for (s, l) in scalers.iter().zip(&labels) {
        if let Some(c) = s.current {
            o.sample("rabbitwatch_scaler_current_consumers", l, c as f64);
        }
    }
    o.family(
        "rabbitwatch_scaler_recommendations_total",
        "counter",
        "Recommendations made, by direction (sent to the webhook in active mode; computed, not sent, in shadow mode).",
    );
    for (s, l) in scalers.iter().zip(&labels) {
        for (direction, n) in [
            ("up", s.recommendations_up),
            ("down", s.recommendations_down),
        ] {
            let l = format!("{l},{}", label("direction", direction));
            o.sample("rabbitwatch_scaler_recommendations_total", &l, n as f64);
        }
    }
}

fn render_process(o: &mut Out, p: &crate::process::Usage) {
    let heap = p.heap.as_ref();
    let families: [(&str, &str, &str, Option<f64>); 8] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            p.resident_bytes.map(|b| b as f64),
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            p.virtual_bytes.map(|b| b as f64),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            p.open_fds.map(|n| n as f64),
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            p.max_fds.map(|n| n as f64),
        ),
        (
            "rabbitwatch_heap_in_use_bytes",
            "gauge",
            "Heap bytes allocated and not yet freed (glibc mallinfo2).",
            heap.map(|h| h.in_use_bytes as f64),
        ),
        (
            "rabbitwatch_heap_free_bytes",
            "gauge",
            "Freed heap bytes the allocator keeps instead of returning them to the system; growth here with flat in-use bytes is fragmentation, not a leak.",
            heap.map(|h| h.free_bytes as f64),
        ),
    ];
    for (name, kind, help, value) in families {
        if let Some(v) = value {
            o.family(name, kind, help);
            o.sample(name, "", v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{QueueHealth, Status};
    use crate::domain::QueueKey;
    use crate::snapshot::QueueSample;
    use std::time::Duration;

    pub(super) fn view(up: bool, last_success: Option<i64>) -> ClusterView {
        let mut v = ClusterView::new("local", Duration::from_secs(10));
        v.up = up;
        v.last_success = last_success.map(Timestamp);
        v.queues = Arc::new(vec![QueueView {
            sample: QueueSample {
                key: QueueKey {
                    vhost: Arc::from("/"),
                    name: "orders".into(),
                },
                kind: "classic".into(),
                durable: true,
                messages: 12,
                messages_ready: 10,
                messages_unacked: 2,
                consumers: 1,
                consumer_utilisation: None,
                counters: None,
                head_message_timestamp: None,
                limits: crate::snapshot::Limits::NONE,
                stats_pending: false,
            },
            health: QueueHealth {
                drain_eta: Some(f64::INFINITY),
                backlog_growth: Some(0.5),
                status: Status::Growing,
                ..Default::default()
            }
            .into(),
            prom_labels: Arc::from(r#"cluster="local",vhost="/",queue="orders""#),
            dead_letter_target: None,
            retry_queue: None,
        }]);
        v
    }

    #[test]
    fn fresh_cluster_exports_its_queues() {
        let text = render(&[Arc::new(view(true, Some(100_000)))], Timestamp(105_000));
        assert!(text.contains("rabbitwatch_up{cluster=\"local\"} 1\n"));
        assert!(text.contains(
            "rabbitwatch_queue_messages{cluster=\"local\",vhost=\"/\",queue=\"orders\"} 12\n"
        ));
        assert!(text.contains("rabbitwatch_queue_drain_eta_seconds{cluster=\"local\",vhost=\"/\",queue=\"orders\"} +Inf\n"));
        assert!(text.contains("rabbitwatch_queue_backlog_growth_rate{cluster=\"local\",vhost=\"/\",queue=\"orders\"} 0.5\n"));
        assert!(text.contains("rabbitwatch_queue_status{cluster=\"local\",vhost=\"/\",queue=\"orders\",status=\"growing\",type=\"classic\"} 1\n"));
        assert!(text.contains("rabbitwatch_cluster_queues_stats_pending{cluster=\"local\"} 0\n"));

        let mut restarting = view(true, Some(100_000));
        restarting.stats_pending = 7;
        let text = render(&[Arc::new(restarting)], Timestamp(105_000));
        assert!(text.contains("rabbitwatch_cluster_queues_stats_pending{cluster=\"local\"} 7\n"));
    }

    #[test]
    fn node_figures_the_broker_did_not_list_have_no_series() {
        // RabbitMQ 4.0 without management metrics collection lists only whether a node runs.
        let mut v = view(true, Some(100_000));
        v.nodes = Arc::new(vec![NodeSample {
            name: "rabbit4a@localhost".into(),
            running: true,
            mem_used: None,
            mem_limit: None,
            mem_alarm: None,
            disk_free: None,
            disk_free_limit: None,
            disk_alarm: None,
            fd_used: None,
            fd_total: Some(20_000),
            partitions: None,
        }]);
        let text = render(&[Arc::new(v)], Timestamp(105_000));
        let l = r#"{cluster="local",node="rabbit4a@localhost"}"#;
        assert!(text.contains(&format!("rabbitwatch_node_running{l} 1\n")));
        assert!(text.contains(&format!("rabbitwatch_node_fd_limit{l} 20000\n")));
        for absent in [
            "mem_used_bytes",
            "mem_alarm",
            "disk_free_bytes",
            "disk_alarm",
            "fd_used",
        ] {
            assert!(
                !text.contains(&format!("rabbitwatch_node_{absent}{{")),
                "{absent}: {text}"
            );
        }
    }

    #[test]
    fn each_family_is_one_contiguous_block_across_clusters_and_pieces() {
        let queue = |labels: &str| {
            let mut q = Arc::into_inner(view(true, None).queues).unwrap().remove(0);
            q.prom_labels = Arc::from(labels);
            q
        };
        let mut other = view(true, Some(100_000));
        other.name = "other".into();
        other.queues = Arc::new(vec![
            queue(r#"cluster="other",vhost="/",queue="orders""#),
            queue(r#"cluster="other",vhost="/",queue="billing""#),
        ]);
        let clusters = [Arc::new(view(true, Some(100_000))), Arc::new(other)];
        // Pieces of 100 bytes: families are cut across pieces many times over.
        let mut pieces = Vec::new();
        let done = without_extras(|x| {
            render_chunked(&clusters, x, Timestamp(105_000), 100, &mut |p| {
                pieces.push(p);
                ControlFlow::Continue(())
            })
        });
        assert!(done.is_continue());
        assert!(
            pieces.iter().filter(|p| !p.starts_with("# HELP")).count() > 5,
            "pieces start inside families: {pieces:?}"
        );
        let text = pieces.concat();
        assert_eq!(text, render(&clusters, Timestamp(105_000)));

        // Every sample belongs to the family whose TYPE line came last, and no family is declared twice.
        let mut declared = std::collections::HashSet::new();
        let mut current = String::new();
        let mut queue_messages = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap().to_string();
                assert!(declared.insert(current.clone()), "{current} declared twice");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = name
                    .strip_suffix("_total")
                    .filter(|_| !current.ends_with("_total"));
                assert!(
                    name == current || family == Some(current.as_str()),
                    "{line:?} outside its family (current {current})"
                );
                queue_messages += usize::from(name == "rabbitwatch_queue_messages");
            }
        }
        assert_eq!(queue_messages, 3, "one series per queue of both clusters");
        assert!(text.contains("rabbitwatch_queue_status{cluster=\"other\",vhost=\"/\",queue=\"billing\",status=\"growing\",type=\"classic\"} 1\n"));
    }

    #[test]
    fn rendering_stops_when_the_scraper_goes_away() {
        let clusters = [Arc::new(view(true, Some(100_000)))];
        let mut pieces = 0;
        let done = without_extras(|x| {
            render_chunked(&clusters, x, Timestamp(105_000), 10, &mut |_| {
                pieces += 1;
                ControlFlow::Break(())
            })
        });
        assert!(done.is_break());
        assert_eq!(
            pieces, 1,
            "nothing is rendered after the receiver refused a piece"
        );
    }

    #[test]
    fn unknown_rates_are_absent_not_zero() {
        let text = render(&[Arc::new(view(true, Some(100_000)))], Timestamp(105_000));
        assert!(!text.contains("rabbitwatch_queue_publish_rate{"));
        assert!(!text.contains("rabbitwatch_queue_published_total{"));
    }

    #[test]
    fn stale_cluster_data_is_not_presented_as_current() {
        let text = render(&[Arc::new(view(false, Some(100_000)))], Timestamp(200_000));
        assert!(text.contains("rabbitwatch_up{cluster=\"local\"} 0\n"));
        assert!(!text.contains("rabbitwatch_queue_messages{"));
    }

    #[test]
    fn floats_render_in_prometheus_syntax() {
        let mut s = String::new();
        for v in [1.0, 0.25, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 1e20] {
            push_f64(&mut s, v);
            s.push(' ');
        }
        assert_eq!(s, "1 0.25 +Inf -Inf NaN 1e20 ");
    }
}
