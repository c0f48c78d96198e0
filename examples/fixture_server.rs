//! A stand-in for the RabbitMQ 3.10 management HTTP API with N synthetic queues, for benchmarks and
//! soak tests (`scripts/bench`). No broker, no AMQP: every answer is computed from a small per-queue
//! model at request time, so counters advance with wall time and the daemon computes real rates.
//!
//! ```text
//! cargo run --release --example fixture_server -- --listen 127.0.0.1:15673 --queues 100000 \
//!     [--vhosts 4] [--nodes 3] [--growing 0.05] [--churn 10] [--no-gzip]
//! ```
//!
//! Serves `GET /api/overview`, `/api/whoami`, `/api/nodes`, `/api/vhosts`, `/api/queues` and
//! `/api/queues/{vhost}` with RabbitMQ's paging (`page`, `page_size` ≤ 500, else HTTP 400
//! `invalid_pagination_parameters`; `page_out_of_range` past the end) and `columns` (dotted names
//! select nested keys, e.g. `message_stats.publish`). Without `columns` a queue is the full ~1.8 KB
//! object RabbitMQ 3.10 lists.
//! Items are sorted by name (what `sort=name` asks for). Responses are gzipped when the client accepts
//! it, as RabbitMQ's web server does. Any credentials are accepted.
//!
//! Queue mix: ~10% never used (no `message_stats`), ~30% idle with history, `--growing` of them
//! publishing faster than they are consumed, the rest steady (consumed as fast as published).
//! `--churn K` deletes K random queues and creates K new ones (new names, counters from zero) every
//! second.
//!
//! Extra endpoints for the bench script (not part of RabbitMQ's API):
//! - `GET /fixture/stats`: request counters, bytes sent, live queue count, deletions.
//! - `GET /fixture/wait-cycle?after=N`: blocks (≤ 120 s) until more than N `/api/overview` requests
//!   have been served, i.e. the daemon started a new poll cycle; answers the new count.
//! - `GET /fixture/deleted?older_than=S`: `vhost<TAB>name` of every queue deleted more than S s ago.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Imitates the RabbitMQ management API for N synthetic queues")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:15673")]
    listen: SocketAddr,
    /// Number of queues.
    #[arg(long, default_value_t = 1000)]
    queues: usize,
    /// Number of vhosts ("/" plus vh-01, vh-02, ...); queues are spread round-robin.
    #[arg(long, default_value_t = 1)]
    vhosts: usize,
    /// Number of cluster nodes reported by /api/nodes (1 or 3).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Fraction of queues whose backlog grows (published faster than consumed).
    #[arg(long, default_value_t = 0.05)]
    growing: f64,
    /// Queues deleted and created (with new names) per second.
    #[arg(long, default_value_t = 0)]
    churn: usize,
    /// Never gzip responses, even when the client accepts it.
    #[arg(long)]
    no_gzip: bool,
    /// gzip level (RabbitMQ uses zlib's default, 6; 1 keeps the fixture cheap and bytes within ~15%).
    #[arg(long, default_value_t = 1)]
    gzip_level: u32,
    /// Seed of the queue mix.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

// ---------------------------------------------------------------- model

const PREFIXES: &[&str] = &[
    "audit",
    "billing",
    "email",
    "events",
    "inventory",
    "orders",
    "payments",
    "search",
];
const SERVICES: &[&str] = &[
    "api",
    "batch",
    "export",
    "import",
    "notify",
    "reporting",
    "sync",
    "worker",
];

/// One synthetic queue. Its counters are a linear function of wall time since `born`.
struct Queue {
    name: Box<str>,
    vhost: u32,
    node: u32,
    born: f64,
    publish_rate: f64,
    consume_rate: f64,
    redeliver_rate: f64,
    base_publish: u64,
    base_ack: u64,
    base_redeliver: u64,
    depth: u64,
    unacked: u64,
    consumers: u64,
    durable: bool,
    quorum: bool,
    max_length: Option<u64>,
    has_stats: bool,
    head_ts: Option<u64>,
    noise: u64,
}

/// A queue's numbers at one instant.
struct Live {
    publish: u64,
    ack: u64,
    redeliver: u64,
    deliver_get: u64,
    messages: u64,
    ready: u64,
    unacked: u64,
}

impl Queue {
    fn generate(
        rng: &mut fastrand::Rng,
        name: String,
        vhost: u32,
        node: u32,
        now: f64,
        growing: f64,
        fresh: bool,
    ) -> Queue {
        let roll = rng.f64();
        let mut q = Queue {
            name: name.into(),
            vhost,
            node,
            born: now,
            publish_rate: 0.0,
            consume_rate: 0.0,
            redeliver_rate: 0.0,
            base_publish: 0,
            base_ack: 0,
            base_redeliver: 0,
            depth: 0,
            unacked: 0,
            consumers: u64::from(rng.u8(0..3)),
            durable: rng.f64() < 0.8,
            quorum: rng.f64() < 0.1,
            max_length: (rng.f64() < 0.2).then(|| 10_000 * rng.u64(1..100)),
            has_stats: true,
            head_ts: None,
            noise: rng.u64(..),
        };
        if !fresh {
            q.base_publish = rng.u64(0..5_000_000);
            q.base_ack = q.base_publish / 2;
            q.base_redeliver = q.base_ack / 1000;
        }
        if roll < growing {
            // Backlog grows: publishers outpace consumers (a third of these have no consumer at all).
            q.publish_rate = 1.0 + rng.f64() * 49.0;
            if rng.u8(0..3) == 0 {
                q.consumers = 0;
            } else {
                q.consumers = q.consumers.max(1);
                q.consume_rate = q.publish_rate * 0.5;
            }
            q.depth = rng.u64(100..10_000);
            q.head_ts = Some(now as u64 - rng.u64(60..3600));
        } else if roll < growing + 0.10 {
            q.has_stats = false;
            q.base_publish = 0;
            q.base_ack = 0;
            q.base_redeliver = 0;
            q.consumers = 0;
        } else if roll < growing + 0.40 {
            // Idle, with history.
        } else {
            q.publish_rate = 0.1 + rng.f64() * 20.0;
            q.consume_rate = q.publish_rate;
            q.redeliver_rate = q.consume_rate * 0.01;
            q.consumers = q.consumers.max(1);
            q.depth = rng.u64(0..50);
            q.unacked = q.depth.min(rng.u64(0..10));
        }
        q
    }

    fn live(&self, now: f64) -> Live {
        let el = (now - self.born).max(0.0);
        let published = (self.publish_rate * el) as u64;
        let consumed = (self.consume_rate * el) as u64;
        let messages = (self.depth + published).saturating_sub(consumed);
        let unacked = self.unacked.min(messages);
        let redeliver = self.base_redeliver + (self.redeliver_rate * el) as u64;
        let ack = self.base_ack + consumed;
        Live {
            publish: self.base_publish + published,
            ack,
            redeliver,
            // Every delivery: acked ones, the ones in flight (a constant) and redeliveries.
            deliver_get: ack + self.unacked + redeliver,
            messages,
            ready: messages - unacked,
            unacked,
        }
    }
}

struct Snapshot {
    vhosts: Arc<Vec<String>>,
    /// Every queue, sorted by name.
    all: Vec<Arc<Queue>>,
    /// Per vhost, sorted by name.
    by_vhost: Vec<Vec<Arc<Queue>>>,
}

impl Snapshot {
    fn new(vhosts: Arc<Vec<String>>, all: Vec<Arc<Queue>>) -> Snapshot {
        let by_vhost = if vhosts.len() == 1 {
            vec![all.clone()]
        } else {
            let mut by: Vec<Vec<Arc<Queue>>> = vec![Vec::new(); vhosts.len()];
            for q in &all {
                by[q.vhost as usize].push(q.clone());
            }
            by
        };
        Snapshot {
            vhosts,
            all,
            by_vhost,
        }
    }
}

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    overview: AtomicU64,
    queue_pages: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_rendered: AtomicU64,
    deleted_total: AtomicU64,
    created_total: AtomicU64,
}

struct App {
    snap: ArcSwap<Snapshot>,
    nodes: usize,
    gzip: Option<flate2::Compression>,
    stats: Stats,
    cycle: tokio::sync::watch::Sender<u64>,
    deleted: Mutex<Vec<(f64, u32, Box<str>)>>,
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

// ---------------------------------------------------------------- JSON writing with column selection

/// A `columns=` selection: each key either whole (`None`) or narrowed to some of its sub-keys.
#[derive(Default, Debug)]
struct Sel {
    keys: Vec<(String, Option<Sel>)>,
}

impl Sel {
    fn parse(text: &str) -> Option<Sel> {
        let mut root = Sel::default();
        for col in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            root.add(&col.split('.').collect::<Vec<_>>());
        }
        (!root.keys.is_empty()).then_some(root)
    }

    fn add(&mut self, path: &[&str]) {
        let Some((head, rest)) = path.split_first() else {
            return;
        };
        match self.keys.iter_mut().find(|(k, _)| k == head) {
            Some((_, sub)) => {
                if rest.is_empty() {
                    *sub = None;
                } else if let Some(s) = sub {
                    s.add(rest);
                }
            }
            None => {
                let sub = (!rest.is_empty()).then(|| {
                    let mut s = Sel::default();
                    s.add(rest);
                    s
                });
                self.keys.push((head.to_string(), sub));
            }
        }
    }

    /// `None`: not selected; `Some(None)`: all of it; `Some(Some(s))`: the parts `s` selects.
    fn get(&self, key: &str) -> Option<Option<&Sel>> {
        self.keys
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, s)| s.as_ref())
    }
}

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = std::fmt::Write::write_fmt(out, format_args!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writes one JSON object, skipping keys the selection leaves out.
struct Obj<'o, 's> {
    out: &'o mut String,
    sel: Option<&'s Sel>,
    n: u32,
}

impl<'o, 's> Obj<'o, 's> {
    fn open(out: &'o mut String, sel: Option<&'s Sel>) -> Self {
        out.push('{');
        Obj { out, sel, n: 0 }
    }

    fn close(self) {
        self.out.push('}');
    }

    fn key(&mut self, k: &str) -> Option<Option<&'s Sel>> {
        let sub = match self.sel {
            None => None,
            Some(s) => s.get(k)?,
        };
        if self.n > 0 {
            self.out.push(',');
        }
        self.n += 1;
        self.out.push('"');
        self.out.push_str(k);
        self.out.push_str("\":");
        Some(sub)
    }

    fn u64(&mut self, k: &str, v: u64) {
        if self.key(k).is_some() {
            self.out.push_str(itoa::Buffer::new().format(v));
        }
    }

    fn f64(&mut self, k: &str, v: f64) {
        if self.key(k).is_some() {
            self.out.push_str(ryu::Buffer::new().format(v));
        }
    }

    /// A literal: `null`, `true`, `false`, a number or an already quoted string.
    fn raw(&mut self, k: &str, v: &str) {
        if self.key(k).is_some() {
            self.out.push_str(v);
        }
    }

    fn bool(&mut self, k: &str, v: bool) {
        self.raw(k, if v { "true" } else { "false" });
    }

    fn str(&mut self, k: &str, v: &str) {
        if self.key(k).is_some() {
            push_json_str(self.out, v);
        }
    }

    fn obj(&mut self, k: &str, f: impl FnOnce(&mut Obj<'_, 's>)) {
        if let Some(sub) = self.key(k) {
            let mut o = Obj::open(&mut *self.out, sub);
            f(&mut o);
            o.close();
        }
    }

    /// `"<k>_details":{"rate":r}`, as RabbitMQ pairs with every counter and gauge it samples.
    fn details(&mut self, k: &str, rate: f64) {
        let mut name = String::with_capacity(k.len() + 8);
        name.push_str(k);
        name.push_str("_details");
        // RabbitMQ reports rates with one decimal.
        self.obj(&name, |o| o.f64("rate", (rate * 10.0).round() / 10.0));
    }
}

fn node_name(i: u32) -> String {
    format!("rabbit@fixture-{}", i + 1)
}

fn write_queue(
    out: &mut String,
    q: &Queue,
    vhost: &str,
    nodes: usize,
    now: f64,
    sel: Option<&Sel>,
) {
    let l = q.live(now);
    let msg_bytes = l.messages * (200 + q.noise % 800);
    let ready_bytes = l.ready * (200 + q.noise % 800);
    let mut o = Obj::open(out, sel);
    o.obj("arguments", |a| {
        if let Some(m) = q.max_length {
            a.u64("x-max-length", m);
        }
        if q.quorum {
            a.raw("x-queue-type", "\"quorum\"");
        }
    });
    o.bool("auto_delete", false);
    if !q.quorum {
        o.obj("backing_queue_status", |b| {
            b.f64("avg_ack_egress_rate", q.consume_rate);
            b.f64("avg_ack_ingress_rate", q.consume_rate);
            b.f64("avg_egress_rate", q.consume_rate);
            b.f64("avg_ingress_rate", q.publish_rate);
            b.raw("delta", "[\"delta\",\"undefined\",0,0,\"undefined\"]");
            b.u64("len", l.messages);
            b.raw("mode", "\"default\"");
            b.u64("next_deliver_seq_id", l.deliver_get);
            b.u64("next_seq_id", l.publish);
            b.u64("q1", 0);
            b.u64("q2", 0);
            b.u64("q3", 0);
            b.u64("q4", l.ready);
            b.raw("target_ram_count", "\"infinity\"");
            b.u64("version", 1);
        });
    }
    let busy = q.consumers > 0 && q.consume_rate > 0.0;
    o.f64("consumer_capacity", if busy { 1.0 } else { 0.0 });
    o.f64("consumer_utilisation", if busy { 1.0 } else { 0.0 });
    o.u64("consumers", q.consumers);
    o.bool("durable", q.durable || q.quorum);
    o.obj("effective_policy_definition", |_| {});
    o.bool("exclusive", false);
    o.raw("exclusive_consumer_tag", "null");
    o.obj("garbage_collection", |g| {
        g.u64("fullsweep_after", 65535);
        g.u64("max_heap_size", 0);
        g.u64("min_bin_vheap_size", 46422);
        g.u64("min_heap_size", 233);
        g.u64("minor_gcs", q.noise % 5000);
    });
    match q.head_ts {
        Some(ts) => o.u64("head_message_timestamp", ts),
        None => o.raw("head_message_timestamp", "null"),
    }
    if q.publish_rate == 0.0 {
        o.raw("idle_since", "\"2026-11-27T09:12:44.120+00:00\"");
    }
    o.u64("memory", 14_000 + q.noise % 60_000 + l.messages * 4);
    o.u64("message_bytes", msg_bytes);
    o.u64("message_bytes_paged_out", 0);
    o.u64(
        "message_bytes_persistent",
        if q.durable { msg_bytes } else { 0 },
    );
    o.u64("message_bytes_ram", msg_bytes);
    o.u64("message_bytes_ready", ready_bytes);
    o.u64("message_bytes_unacknowledged", msg_bytes - ready_bytes);
    if q.has_stats {
        let cr = q.consume_rate;
        o.obj("message_stats", |m| {
            m.u64("ack", l.ack);
            m.details("ack", cr);
            m.u64("deliver", l.deliver_get);
            m.details("deliver", cr);
            m.u64("deliver_get", l.deliver_get);
            m.details("deliver_get", cr);
            m.u64("deliver_no_ack", 0);
            m.details("deliver_no_ack", 0.0);
            m.u64("get", 0);
            m.details("get", 0.0);
            m.u64("get_empty", 0);
            m.details("get_empty", 0.0);
            m.u64("get_no_ack", 0);
            m.details("get_no_ack", 0.0);
            m.u64("publish", l.publish);
            m.details("publish", q.publish_rate);
            m.u64("redeliver", l.redeliver);
            m.details("redeliver", q.redeliver_rate);
        });
    }
    let growth = q.publish_rate - q.consume_rate;
    o.u64("messages", l.messages);
    o.details("messages", growth);
    o.u64("messages_paged_out", 0);
    o.u64(
        "messages_persistent",
        if q.durable { l.messages } else { 0 },
    );
    o.u64("messages_ram", l.messages);
    o.u64("messages_ready", l.ready);
    o.details("messages_ready", growth);
    o.u64("messages_ready_ram", l.ready);
    o.u64("messages_unacknowledged", l.unacked);
    o.details("messages_unacknowledged", 0.0);
    o.u64("messages_unacknowledged_ram", l.unacked);
    if q.quorum {
        o.str("leader", &node_name(q.node));
        if o.key("members").is_some() {
            o.out.push('[');
            for i in 0..nodes as u32 {
                if i > 0 {
                    o.out.push(',');
                }
                push_json_str(o.out, &node_name(i));
            }
            o.out.push(']');
        }
    }
    o.str("name", &q.name);
    o.str("node", &node_name(q.node));
    o.raw("operator_policy", "null");
    o.raw("policy", "null");
    o.raw("recoverable_slaves", "null");
    o.u64(
        "reductions",
        10_000 + (q.noise % 1_000_000) + l.publish * 50,
    );
    o.details("reductions", q.publish_rate * 50.0);
    o.raw("single_active_consumer_tag", "null");
    o.raw("state", "\"running\"");
    o.raw(
        "type",
        if q.quorum {
            "\"quorum\""
        } else {
            "\"classic\""
        },
    );
    o.str("vhost", vhost);
    o.close();
}

fn write_node(out: &mut String, i: u32, queues: u64, sel: Option<&Sel>) {
    let mut o = Obj::open(out, sel);
    o.u64("context_switches", 123_456_789 + u64::from(i));
    o.details("context_switches", 2_500.0);
    o.str("db_dir", "/var/lib/rabbitmq/mnesia/rabbit@fixture");
    o.u64("disk_free", 81_706_418_176 - u64::from(i) * 1_000_000);
    o.bool("disk_free_alarm", false);
    o.details("disk_free", 0.0);
    o.u64("disk_free_limit", 50_000_000);
    o.u64("fd_total", 1_048_576);
    o.u64("fd_used", 40 + queues / 50);
    o.details("fd_used", 0.0);
    o.u64("gc_bytes_reclaimed", 987_654_321_000);
    o.details("gc_bytes_reclaimed", 1.2e7);
    o.u64("gc_num", 12_345_678);
    o.details("gc_num", 900.0);
    o.u64("io_read_avg_time", 0);
    o.u64("io_write_avg_time", 0);
    o.bool("mem_alarm", false);
    o.raw("mem_calculation_strategy", "\"rss\"");
    o.u64("mem_limit", 10_110_425_497);
    o.u64("mem_used", 147_439_616 + queues * 40_000);
    o.details("mem_used", 0.0);
    o.str("name", &node_name(i));
    o.u64("net_ticktime", 60);
    o.u64("os_pid", 2955 + u64::from(i));
    o.raw("partitions", "[]");
    o.u64("proc_total", 1_048_576);
    o.u64("proc_used", 400 + queues * 3);
    o.u64("processors", 2);
    o.raw("rates_mode", "\"basic\"");
    o.u64("run_queue", 0);
    o.bool("running", true);
    o.u64("sockets_total", 943_626);
    o.u64("sockets_used", 3);
    o.raw("type", "\"disc\"");
    o.u64("uptime", 86_400_000);
    o.close();
}

// ---------------------------------------------------------------- handlers

type Params = Query<HashMap<String, String>>;

/// An error answer in RabbitMQ's shape: status, `error`, `reason`.
struct ApiError(StatusCode, &'static str, String);

fn json_error(status: StatusCode, error: &str, reason: &str) -> Response {
    let mut body = String::from("{\"error\":");
    push_json_str(&mut body, error);
    body.push_str(",\"reason\":");
    push_json_str(&mut body, reason);
    body.push('}');
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Gzips when the client accepts it (as RabbitMQ's cowboy does) and counts the bytes.
fn send(app: &App, headers: &HeaderMap, body: String) -> Response {
    app.stats
        .bytes_rendered
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    let accepts_gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let mut resp = match app.gzip {
        Some(level) if accepts_gzip && body.len() >= 300 => {
            let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 6), level);
            enc.write_all(body.as_bytes()).expect("writing to a Vec");
            let gz = enc.finish().expect("writing to a Vec");
            app.stats
                .bytes_sent
                .fetch_add(gz.len() as u64, Ordering::Relaxed);
            let mut r = gz.into_response();
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            r
        }
        _ => {
            app.stats
                .bytes_sent
                .fetch_add(body.len() as u64, Ordering::Relaxed);
            body.into_response()
        }
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::VARY,
        HeaderValue::from_static("accept, accept-encoding, origin"),
    );
    resp
}

/// Renders off the async workers (a full unpaged listing of 100k queues is ~190 MB).
async fn render_blocking(
    app: Arc<App>,
    headers: HeaderMap,
    f: impl FnOnce(&App) -> Result<String, ApiError> + Send + 'static,
) -> Response {
    app.stats.requests.fetch_add(1, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || match f(&app) {
        Ok(body) => send(&app, &headers, body),
        Err(ApiError(status, error, reason)) => json_error(status, error, &reason),
    })
    .await
    .unwrap_or_else(|e| {
        json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        )
    })
}

fn columns(p: &HashMap<String, String>) -> Option<Sel> {
    p.get("columns").and_then(|c| Sel::parse(c))
}

async fn overview(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    app.stats.overview.fetch_add(1, Ordering::Relaxed);
    app.cycle.send_modify(|n| *n += 1);
    render_blocking(app, headers, |app| {
        let snap = app.snap.load();
        let now = now_secs();
        let (mut messages, mut ready, mut unacked, mut publish, mut ack) = (0, 0, 0, 0, 0);
        for q in &snap.all {
            let l = q.live(now);
            messages += l.messages;
            ready += l.ready;
            unacked += l.unacked;
            publish += l.publish;
            ack += l.ack;
        }
        let mut out = String::with_capacity(4096);
        let mut o = Obj::open(&mut out, None);
        o.raw("management_version", "\"3.10.8\"");
        o.raw("rates_mode", "\"basic\"");
        o.raw(
            "sample_retention_policies",
            r#"{"global":[600,3600,28800,86400],"basic":[600,3600],"detailed":[600]}"#,
        );
        o.raw(
            "exchange_types",
            r#"[{"name":"direct","description":"AMQP direct exchange, as per the AMQP specification","enabled":true},{"name":"fanout","description":"AMQP fanout exchange, as per the AMQP specification","enabled":true},{"name":"headers","description":"AMQP headers exchange, as per the AMQP specification","enabled":true},{"name":"topic","description":"AMQP topic exchange, as per the AMQP specification","enabled":true}]"#,
        );
        o.raw("product_version", "\"3.10.8\"");
        o.raw("product_name", "\"RabbitMQ\"");
        o.raw("rabbitmq_version", "\"3.10.8\"");
        o.raw("cluster_name", "\"rabbit@fixture-1\"");
        o.raw("erlang_version", "\"25.2.3\"");
        o.raw(
            "erlang_full_version",
            "\"Erlang/OTP 25 [erts-13.1.5] [source] [64-bit] [smp:2:2] [ds:2:2:10] [async-threads:1] [jit:ns]\"",
        );
        o.raw("release_series_support_status", "\"supported\"");
        o.bool("disable_stats", false);
        o.bool("enable_queue_totals", false);
        o.obj("message_stats", |m| {
            m.u64("ack", ack);
            m.u64("publish", publish);
        });
        o.obj("churn_rates", |_| {});
        o.obj("queue_totals", |t| {
            t.u64("messages", messages);
            t.details("messages", 0.0);
            t.u64("messages_ready", ready);
            t.details("messages_ready", 0.0);
            t.u64("messages_unacknowledged", unacked);
            t.details("messages_unacknowledged", 0.0);
        });
        o.obj("object_totals", |t| {
            t.u64("channels", 0);
            t.u64("connections", 0);
            t.u64("consumers", 0);
            t.u64("exchanges", 7 * snap.vhosts.len() as u64);
            t.u64("queues", snap.all.len() as u64);
        });
        o.u64("statistics_db_event_queue", 0);
        o.str("node", &node_name(0));
        o.raw(
            "listeners",
            r#"[{"node":"rabbit@fixture-1","protocol":"amqp","ip_address":"127.0.0.1","port":5672,"socket_opts":{}},{"node":"rabbit@fixture-1","protocol":"http","ip_address":"127.0.0.1","port":15672,"socket_opts":{}}]"#,
        );
        o.raw("contexts", r#"[{"ssl_opts":[],"node":"rabbit@fixture-1","description":"RabbitMQ Management","path":"/","cowboy_opts":"[{sendfile,false}]","ip":"127.0.0.1","port":"15672"}]"#);
        o.close();
        Ok(out)
    })
    .await
}

async fn nodes(State(app): State<Arc<App>>, Query(p): Params, headers: HeaderMap) -> Response {
    render_blocking(app, headers, move |app| {
        let sel = columns(&p);
        let queues = app.snap.load().all.len() as u64;
        let mut out = String::from("[");
        for i in 0..app.nodes as u32 {
            if i > 0 {
                out.push(',');
            }
            write_node(&mut out, i, queues / app.nodes as u64, sel.as_ref());
        }
        out.push(']');
        Ok(out)
    })
    .await
}

async fn vhosts(State(app): State<Arc<App>>, Query(p): Params, headers: HeaderMap) -> Response {
    render_blocking(app, headers, move |app| {
        let sel = columns(&p);
        let snap = app.snap.load();
        let mut out = String::from("[");
        for (i, v) in snap.vhosts.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let mut o = Obj::open(&mut out, sel.as_ref());
            o.raw("cluster_state", r#"{"rabbit@fixture-1":"running"}"#);
            o.raw("default_queue_type", "\"undefined\"");
            o.raw("description", "\"\"");
            o.u64("messages", 0);
            o.details("messages", 0.0);
            o.str("name", v);
            o.raw("tags", "[]");
            o.bool("tracing", false);
            o.close();
        }
        out.push(']');
        Ok(out)
    })
    .await
}

async fn queues_all(State(app): State<Arc<App>>, Query(p): Params, headers: HeaderMap) -> Response {
    list_queues(app, None, p, headers).await
}

async fn queues_in(
    State(app): State<Arc<App>>,
    Path(vhost): Path<String>,
    Query(p): Params,
    headers: HeaderMap,
) -> Response {
    list_queues(app, Some(vhost), p, headers).await
}

async fn list_queues(
    app: Arc<App>,
    vhost: Option<String>,
    p: HashMap<String, String>,
    headers: HeaderMap,
) -> Response {
    render_blocking(app, headers, move |app| {
        let snap = app.snap.load_full();
        let list: &[Arc<Queue>] = match &vhost {
            None => &snap.all,
            Some(v) => match snap.vhosts.iter().position(|x| x == v) {
                Some(i) => &snap.by_vhost[i],
                None => {
                    return Err(ApiError(
                        StatusCode::NOT_FOUND,
                        "Object Not Found",
                        "Not Found".to_string(),
                    ));
                }
            },
        };
        let sel = columns(&p);
        let now = now_secs();
        let total = list.len();
        let mut out;
        let write_items = |out: &mut String, items: &[Arc<Queue>]| {
            out.push('[');
            for (i, q) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_queue(
                    out,
                    q,
                    &snap.vhosts[q.vhost as usize],
                    app.nodes,
                    now,
                    sel.as_ref(),
                );
            }
            out.push(']');
        };
        let per_item = if sel.is_some() { 450 } else { 1900 };
        match p.get("page") {
            None => {
                out = String::with_capacity(total * per_item + 2);
                write_items(&mut out, list);
            }
            Some(page_text) => {
                app.stats.queue_pages.fetch_add(1, Ordering::Relaxed);
                let page: u64 = page_text.parse().unwrap_or(0);
                let size: u64 = match p.get("page_size") {
                    Some(s) => s.parse().unwrap_or(0),
                    None => 100,
                };
                if page == 0 || size == 0 || size > 500 {
                    return Err(ApiError(
                        StatusCode::BAD_REQUEST,
                        "invalid_pagination_parameters",
                        format!(
                            "Invalid pagination parameters: page number {page}, page size {size}"
                        ),
                    ));
                }
                let page_count = (total as u64).div_ceil(size);
                if page > page_count.max(1) {
                    return Err(ApiError(
                        StatusCode::BAD_REQUEST,
                        "page_out_of_range",
                        format!("Page out of range, page: {page} page size: {size}, len: {total}"),
                    ));
                }
                let start = ((page - 1) * size).min(total as u64) as usize;
                let end = (start + size as usize).min(total);
                let items = &list[start..end];
                out = String::with_capacity(items.len() * per_item + 200);
                out.push_str("{\"filtered_count\":");
                out.push_str(itoa::Buffer::new().format(total));
                out.push_str(",\"item_count\":");
                out.push_str(itoa::Buffer::new().format(items.len()));
                out.push_str(",\"items\":");
                write_items(&mut out, items);
                out.push_str(",\"page\":");
                out.push_str(itoa::Buffer::new().format(page));
                out.push_str(",\"page_count\":");
                out.push_str(itoa::Buffer::new().format(page_count));
                out.push_str(",\"page_size\":");
                out.push_str(itoa::Buffer::new().format(size));
                out.push_str(",\"total_count\":");
                out.push_str(itoa::Buffer::new().format(total));
                out.push('}');
            }
        }
        Ok(out)
    })
    .await
}

/// Any credentials are accepted; the user is an administrator (enough for rabbitwatch's start-up check).
async fn whoami(State(app): State<Arc<App>>) -> Response {
    app.stats.requests.fetch_add(1, Ordering::Relaxed);
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"name":"guest","tags":["administrator"]}"#,
    )
        .into_response()
}

async fn fixture_stats(State(app): State<Arc<App>>) -> Response {
    let s = &app.stats;
    let body = format!(
        r#"{{"requests":{},"overview_requests":{},"queue_page_requests":{},"bytes_sent":{},"bytes_rendered":{},"queues":{},"created_total":{},"deleted_total":{}}}"#,
        s.requests.load(Ordering::Relaxed),
        s.overview.load(Ordering::Relaxed),
        s.queue_pages.load(Ordering::Relaxed),
        s.bytes_sent.load(Ordering::Relaxed),
        s.bytes_rendered.load(Ordering::Relaxed),
        app.snap.load().all.len(),
        s.created_total.load(Ordering::Relaxed),
        s.deleted_total.load(Ordering::Relaxed),
    );
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn wait_cycle(State(app): State<Arc<App>>, Query(p): Params) -> Response {
    let after: u64 = p.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let mut rx = app.cycle.subscribe();
    match tokio::time::timeout(Duration::from_secs(120), rx.wait_for(|n| *n > after)).await {
        Ok(Ok(n)) => n.to_string().into_response(),
        _ => (StatusCode::REQUEST_TIMEOUT, "no new cycle within 120 s").into_response(),
    }
}

async fn deleted(State(app): State<Arc<App>>, Query(p): Params) -> Response {
    let older_than: f64 = p
        .get("older_than")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0.0);
    let cutoff = now_secs() - older_than;
    let snap = app.snap.load();
    let mut out = String::new();
    for (at, vhost, name) in app.deleted.lock().expect("not poisoned").iter() {
        if *at <= cutoff {
            out.push_str(&snap.vhosts[*vhost as usize]);
            out.push('\t');
            out.push_str(name);
            out.push('\n');
        }
    }
    out.into_response()
}

// ---------------------------------------------------------------- churn

fn churn_once(app: &App, rng: &mut fastrand::Rng, k: usize, generation: u64, growing: f64) {
    let snap = app.snap.load_full();
    let now = now_secs();
    let mut all = snap.all.clone();
    let k = k.min(all.len());
    let mut gone = Vec::with_capacity(k);
    for _ in 0..k {
        let i = rng.usize(0..all.len());
        let q = all.remove(i);
        gone.push((now, q.vhost, q.name.clone()));
    }
    for j in 0..k {
        let vhost = rng.u32(0..snap.vhosts.len() as u32);
        let name = format!(
            "{}.churn-g{generation:07}.q{j:03}",
            PREFIXES[rng.usize(0..PREFIXES.len())]
        );
        let q = Arc::new(Queue::generate(
            rng,
            name,
            vhost,
            vhost % app.nodes as u32,
            now,
            growing,
            true,
        ));
        let at = all.partition_point(|x| x.name < q.name);
        all.insert(at, q);
    }
    app.snap
        .store(Arc::new(Snapshot::new(snap.vhosts.clone(), all)));
    app.stats
        .deleted_total
        .fetch_add(k as u64, Ordering::Relaxed);
    app.stats
        .created_total
        .fetch_add(k as u64, Ordering::Relaxed);
    let mut log = app.deleted.lock().expect("not poisoned");
    log.extend(gone);
    // Bounded: an hour at 50/s.
    let excess = log.len().saturating_sub(200_000);
    log.drain(..excess);
}

// ---------------------------------------------------------------- main

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!((1..=3).contains(&args.nodes), "--nodes must be 1, 2 or 3");
    anyhow::ensure!(args.vhosts >= 1, "--vhosts must be at least 1");
    anyhow::ensure!(
        (0.0..=0.6).contains(&args.growing),
        "--growing must be between 0 and 0.6"
    );
    let vhost_names: Vec<String> = std::iter::once("/".to_string())
        .chain((1..args.vhosts).map(|i| format!("vh-{i:02}")))
        .collect();
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let now = now_secs();
    let mut all: Vec<Arc<Queue>> = (0..args.queues)
        .map(|i| {
            let name = format!(
                "{}.{}.q{i:07}",
                PREFIXES[i % PREFIXES.len()],
                SERVICES[(i / PREFIXES.len()) % SERVICES.len()]
            );
            let vhost = (i % vhost_names.len()) as u32;
            let node = (i % args.nodes) as u32;
            Arc::new(Queue::generate(
                &mut rng,
                name,
                vhost,
                node,
                now,
                args.growing,
                false,
            ))
        })
        .collect();
    all.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    let (cycle, _) = tokio::sync::watch::channel(0u64);
    let app = Arc::new(App {
        snap: ArcSwap::from_pointee(Snapshot::new(Arc::new(vhost_names), all)),
        nodes: args.nodes,
        gzip: (!args.no_gzip).then(|| flate2::Compression::new(args.gzip_level.min(9))),
        stats: Stats::default(),
        cycle,
        deleted: Mutex::new(Vec::new()),
    });

    if args.churn > 0 {
        let app = app.clone();
        let (k, growing) = (args.churn, args.growing);
        let mut rng = fastrand::Rng::with_seed(args.seed ^ 0x5eed);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut generation = 0u64;
            loop {
                tick.tick().await;
                generation += 1;
                churn_once(&app, &mut rng, k, generation, growing);
            }
        });
    }

    let router = Router::new()
        .route("/api/overview", get(overview))
        .route("/api/whoami", get(whoami))
        .route("/api/nodes", get(nodes))
        .route("/api/vhosts", get(vhosts))
        .route("/api/queues", get(queues_all))
        .route("/api/queues/{vhost}", get(queues_in))
        .route("/fixture/stats", get(fixture_stats))
        .route("/fixture/wait-cycle", get(wait_cycle))
        .route("/fixture/deleted", get(deleted))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!(
        "fixture_server: {} queues in {} vhost(s), {} node(s), churn {}/s, listening on http://{}",
        args.queues,
        args.vhosts,
        args.nodes,
        args.churn,
        listener.local_addr()?
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
