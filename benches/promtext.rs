//! Our streaming Prometheus text parser (`rabbitwatch::scrape::promtext`) against the
//! `prometheus-parse` crate, doing the job the daemon will do with RabbitMQ 4.0's
//! `/metrics/detailed?family=queue_coarse_metrics&family=queue_consumer_count&family=queue_delivery_metrics&family=queue_exchange_metrics`:
//! parse one node's whole body and sum the per-queue samples into a map keyed by (vhost, queue).
//!
//! Run with `cargo bench --bench promtext` (`-- 1000 10000` to pick sizes). The body is generated in
//! the shape the 4.0 plugin writes (`# TYPE` before `# HELP`, labels `vhost`, [`exchange`,] `queue`,
//! integer values), with a few queue names that need escapes. `promtext` is fed the body in 64 KiB
//! chunks (as HTTP delivers it); `prometheus-parse` is given `body.lines()`, as it requires. Both runs
//! are interleaved; medians of thread CPU time (so builds running alongside do not inflate them); a
//! counting allocator reports the peak heap each run adds on top of the body.

use std::alloc::{GlobalAlloc, Layout, System};
use std::borrow::{Borrow, Cow};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::io::BufRead;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "common/cpu_time.rs"]
mod cpu_time;
use cpu_time::{measure, median};

use rabbitwatch::scrape::prometheus::NodeReading;
use rabbitwatch::scrape::promtext::{self, Line};

// ---------------------------------------------------------------- heap accounting

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak heap `f` adds on top of what was live when it started.
fn peak_heap<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - base)
}

// ---------------------------------------------------------------- the body RabbitMQ 4.0 writes

/// The families the daemon asks for, in the order the 4.0 plugin writes them, with its HELP text.
const FAMILIES: [(&str, &str, &str); 13] = [
    (
        "rabbitmq_detailed_queue_messages_ready",
        "gauge",
        "Messages ready to be delivered to consumers",
    ),
    (
        "rabbitmq_detailed_queue_messages_unacked",
        "gauge",
        "Messages delivered to consumers but not yet acknowledged",
    ),
    (
        "rabbitmq_detailed_queue_messages",
        "gauge",
        "Sum of ready and unacknowledged messages - total queue depth",
    ),
    (
        "rabbitmq_detailed_queue_process_reductions_total",
        "counter",
        "Total number of queue process reductions",
    ),
    (
        "rabbitmq_detailed_queue_consumers",
        "gauge",
        "Consumers on a queue",
    ),
    (
        "rabbitmq_detailed_queue_get_ack_total",
        "counter",
        "Total number of messages fetched from a queue with basic.get in manual acknowledgement mode",
    ),
    (
        "rabbitmq_detailed_queue_get_total",
        "counter",
        "Total number of messages fetched from a queue with basic.get in automatic acknowledgement mode",
    ),
    (
        "rabbitmq_detailed_queue_messages_delivered_ack_total",
        "counter",
        "Total number of messages delivered from a queue to consumers in manual acknowledgement mode",
    ),
    (
        "rabbitmq_detailed_queue_messages_delivered_total",
        "counter",
        "Total number of messages delivered from a queue to consumers in automatic acknowledgement mode",
    ),
    (
        "rabbitmq_detailed_queue_messages_redelivered_total",
        "counter",
        "Total number of messages redelivered from a queue to consumers",
    ),
    (
        "rabbitmq_detailed_queue_messages_acked_total",
        "counter",
        "Total number of messages acknowledged by consumers on a queue",
    ),
    (
        "rabbitmq_detailed_queue_get_empty_total",
        "counter",
        "Total number of times basic.get operations fetched no message on a queue",
    ),
    (
        "rabbitmq_detailed_queue_exchange_messages_published_total",
        "counter",
        "Total number of messages published into a queue through an exchange",
    ),
];
const K: usize = FAMILIES.len();
const PUBLISHED: usize = K - 1;

/// Which sum a sample name adds to.
fn field(name: &str) -> Option<usize> {
    FAMILIES.iter().position(|(family, _, _)| *family == name)
}

struct Queue {
    vhost: &'static str,
    /// As written in the exposition: `\`, `"` and newlines escaped.
    escaped_name: String,
    exchanges: &'static [&'static str],
}

fn queues(n: usize) -> Vec<Queue> {
    const VHOSTS: [&str; 4] = ["/", "/", "prod", "staging-eu"];
    const EXCHANGES: [&[&str]; 3] = [&[""], &["", "orders.events"], &["amq.topic"]];
    (0..n)
        .map(|i| {
            let app = ["audit", "billing", "email", "events", "orders", "payments"][i % 6];
            let role = ["api", "batch", "notify", "sync", "worker"][(i / 6) % 5];
            let escaped_name = match i % 500 {
                // A few names that need escapes (and survive prometheus-parse's naive label split,
                // which neither decodes escapes nor allows `,` `=` `}` or a trailing `\"`).
                7 => format!("legacy \\\"{app}\\\" queue {i}"),
                13 => format!("C:\\\\spool\\\\{app}-{i}"),
                _ if i % 3 == 0 => format!("{app}.{role}.q{i:07}"),
                _ if i % 3 == 1 => format!("{app}-{role}-{i}"),
                _ => format!("amq.gen-{i:08x}-{role}"),
            };
            Queue {
                vhost: VHOSTS[i % VHOSTS.len()],
                escaped_name,
                exchanges: EXCHANGES[i % EXCHANGES.len()],
            }
        })
        .collect()
}

fn body(queues: &[Queue]) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(11);
    let mut s = String::with_capacity(queues.len() * 1_400 + 2_000);
    for (f, (family, kind, help)) in FAMILIES.iter().enumerate() {
        let _ = writeln!(s, "# TYPE {family} {kind}\n# HELP {family} {help}");
        for q in queues {
            let labels = |s: &mut String, exchange: Option<&str>| {
                let _ = write!(s, "{family}{{vhost=\"{}\",", q.vhost);
                if let Some(x) = exchange {
                    let _ = write!(s, "exchange=\"{x}\",");
                }
                let _ = write!(s, "queue=\"{}\"}} ", q.escaped_name);
            };
            if f == PUBLISHED {
                for x in q.exchanges {
                    labels(&mut s, Some(x));
                    let _ = writeln!(s, "{}", rng.u64(0..50_000_000));
                }
            } else {
                labels(&mut s, None);
                let value = match f {
                    3 => rng.u64(10_000..5_000_000_000),
                    4 => rng.u64(0..4),
                    0..3 => rng.u64(0..100_000),
                    _ => rng.u64(0..50_000_000),
                };
                let _ = writeln!(s, "{value}");
            }
        }
    }
    // What else the endpoint writes after the requested families.
    s.push_str(concat!(
        "# TYPE rabbitmq_build_info untyped\n",
        "# HELP rabbitmq_build_info RabbitMQ & Erlang/OTP version info\n",
        "rabbitmq_build_info{rabbitmq_version=\"4.0.5\",prometheus_plugin_version=\"4.0.5\",prometheus_client_version=\"4.11.0\",erlang_version=\"27.3.4.1\"} 1\n",
        "# TYPE rabbitmq_identity_info untyped\n",
        "# HELP rabbitmq_identity_info RabbitMQ node & cluster identity info\n",
        "rabbitmq_identity_info{rabbitmq_node=\"rabbit4a@localhost\",rabbitmq_cluster=\"rabbit4a@vm\",rabbitmq_cluster_permanent_id=\"rabbitmq-cluster-id-ba1FywDhuBRyLjBRMYm-Gw\"} 1\n",
        "# TYPE telemetry_scrape_duration_seconds summary\n",
        "# HELP telemetry_scrape_duration_seconds Scrape duration\n",
        "telemetry_scrape_duration_seconds_count{registry=\"detailed\",content_type=\"text/plain; version=0.0.4\"} 2\n",
        "telemetry_scrape_duration_seconds_sum{registry=\"detailed\",content_type=\"text/plain; version=0.0.4\"} 0.005244103\n",
    ));
    s.into_bytes()
}

// ---------------------------------------------------------------- the accumulator both fill

/// (vhost, queue) → sums, looked up by borrowed strings so that a queue seen before costs no
/// allocation (the `Borrow<dyn QueueKey>` trick: `(String, String)` hashes as its two strs do).
type Sums = HashMap<(String, String), [f64; K], foldhash::fast::RandomState>;

trait QueueKey {
    fn key(&self) -> (&str, &str);
}

impl QueueKey for (String, String) {
    fn key(&self) -> (&str, &str) {
        (&self.0, &self.1)
    }
}

impl QueueKey for (&str, &str) {
    fn key(&self) -> (&str, &str) {
        (self.0, self.1)
    }
}

impl<'a> Borrow<dyn QueueKey + 'a> for (String, String) {
    fn borrow(&self) -> &(dyn QueueKey + 'a) {
        self
    }
}

impl Hash for dyn QueueKey + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialEq for dyn QueueKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for dyn QueueKey + '_ {}

fn add(sums: &mut Sums, vhost: &str, queue: &str, field: usize, value: f64) {
    if let Some(row) = sums.get_mut(&(vhost, queue) as &dyn QueueKey) {
        row[field] += value;
    } else {
        let mut row = [0.0; K];
        row[field] = value;
        sums.insert((vhost.to_owned(), queue.to_owned()), row);
    }
}

const CHUNK: usize = 64 * 1024;

fn with_promtext(body: &[u8]) -> Sums {
    let mut sums = Sums::default();
    let mut sum = |line: Line<'_>| {
        let Line::Sample(sample) = line else { return };
        let Some(field) = field(sample.name) else {
            return;
        };
        if let (Some(vhost), Some(queue)) = (sample.label("vhost"), sample.label("queue")) {
            add(&mut sums, &vhost, &queue, field, sample.value);
        }
    };
    let mut parser = promtext::Parser::new();
    for chunk in body.chunks(CHUNK) {
        parser
            .feed(chunk, &mut sum)
            .expect("the generated body parses");
    }
    parser.finish(&mut sum).expect("the generated body parses");
    sums
}

/// The parser alone: count the samples, sum nothing.
fn promtext_only(body: &[u8]) -> usize {
    let mut samples = 0;
    let mut count = |line: Line<'_>| samples += usize::from(matches!(line, Line::Sample(_)));
    let mut parser = promtext::Parser::new();
    for chunk in body.chunks(CHUNK) {
        parser
            .feed(chunk, &mut count)
            .expect("the generated body parses");
    }
    parser
        .finish(&mut count)
        .expect("the generated body parses");
    samples
}

/// What the daemon runs: promtext into `scrape::prometheus::NodeReading` (its own keys and sums).
fn with_node_reading(body: &[u8]) -> NodeReading {
    let mut reading = NodeReading::default();
    let mut parser = promtext::Parser::new();
    for chunk in body.chunks(CHUNK) {
        parser
            .feed(chunk, |l| reading.add(l))
            .expect("the generated body parses");
    }
    parser
        .finish(|l| reading.add(l))
        .expect("the generated body parses");
    reading
}

fn prometheus_parse_only(body: &[u8]) -> usize {
    prometheus_parse::Scrape::parse(body.lines())
        .expect("the generated body parses")
        .samples
        .len()
}

/// prometheus-parse keeps label values as written: decode the escapes as the daemon would have to.
fn unescaped(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => {}
            },
            (c, false) => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn with_prometheus_parse(body: &[u8]) -> Sums {
    use prometheus_parse::Value;
    let scrape = prometheus_parse::Scrape::parse(body.lines()).expect("the generated body parses");
    let mut sums = Sums::default();
    for sample in &scrape.samples {
        let Some(field) = field(&sample.metric) else {
            continue;
        };
        let value = match sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            Value::Histogram(_) | Value::Summary(_) => continue,
        };
        if let (Some(vhost), Some(queue)) = (sample.labels.get("vhost"), sample.labels.get("queue"))
        {
            add(
                &mut sums,
                &unescaped(vhost),
                &unescaped(queue),
                field,
                value,
            );
        }
    }
    sums
}

// ---------------------------------------------------------------- measuring

struct Row {
    parser: &'static str,
    queues: usize,
    body_bytes: usize,
    samples: usize,
    cpu: Duration,
    parse_only: Duration,
    heap: usize,
}

const REPS: usize = 9;

fn run(n: usize) -> [Row; 3] {
    let body = body(&queues(n));
    let samples = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty() && l[0] != b'#')
        .count();
    // Same answers first (not timed): every queue, every sum.
    let (ours, ours_heap) = peak_heap(|| with_promtext(&body));
    let (theirs, theirs_heap) = peak_heap(|| with_prometheus_parse(&body));
    assert_eq!(ours.len(), n, "one row per queue");
    assert!(
        ours == theirs,
        "promtext and prometheus-parse disagree at {n} queues"
    );
    // The daemon's reading: one row per queue, and the same publish total.
    let (daemon, daemon_heap) = peak_heap(|| with_node_reading(&body));
    assert_eq!(daemon.queues.len(), n, "one row per queue");
    let published: u64 = daemon.queues.values().map(|q| q.counters.publish).sum();
    let expected: f64 = ours.values().map(|row| row[PUBLISHED]).sum();
    assert_eq!(published as f64, expected, "the daemon's publish total");
    drop((ours, theirs, daemon));
    assert_eq!(promtext_only(&body), samples);
    let (mut a, mut b, mut a_only, mut b_only) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut d = Vec::new();
    for _ in 0..REPS {
        d.push(measure(|| with_node_reading(&body)).1);
        a.push(measure(|| with_promtext(&body)).1);
        b.push(measure(|| with_prometheus_parse(&body)).1);
        a_only.push(measure(|| promtext_only(&body)).1);
        b_only.push(measure(|| prometheus_parse_only(&body)).1);
    }
    let a_only = median(a_only);
    let row = |parser, cpu, parse_only, heap| Row {
        parser,
        queues: n,
        body_bytes: body.len(),
        samples,
        cpu,
        parse_only,
        heap,
    };
    [
        row("promtext (64 KiB chunks)", median(a), a_only, ours_heap),
        row(
            "prometheus-parse 0.2.5",
            median(b),
            median(b_only),
            theirs_heap,
        ),
        row(
            "promtext + the daemon's NodeReading",
            median(d),
            a_only,
            daemon_heap,
        ),
    ]
}

fn main() {
    // `cargo bench` passes `--bench`; numbers pick the sizes.
    let mut sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if sizes.is_empty() {
        sizes = vec![10_000, 100_000];
    }
    let started = Instant::now();
    println!(
        "rabbitwatch promtext bench: parse a RabbitMQ 4.0 /metrics/detailed body and sum per (vhost, queue);"
    );
    println!(
        "one thread, median of {REPS} interleaved runs of thread CPU time; peak heap = what a run adds on top of the body"
    );
    println!();
    println!(
        "| queues | body MB | samples | parser | parse + sum ms | MB/s | parse only ms | peak heap MB |"
    );
    println!("|---:|---:|---:|---|---:|---:|---:|---:|");
    for n in sizes {
        for r in run(n) {
            let mib = r.body_bytes as f64 / 1_048_576.0;
            println!(
                "| {} | {:.1} | {} | {} | {:.1} | {:.0} | {:.1} | {:.1} |",
                r.queues,
                mib,
                r.samples,
                r.parser,
                r.cpu.as_secs_f64() * 1e3,
                mib / r.cpu.as_secs_f64(),
                r.parse_only.as_secs_f64() * 1e3,
                r.heap as f64 / 1_048_576.0,
            );
        }
    }
    println!();
    println!(
        "both give the same sums for every queue (checked before timing); MB/s is of parse + sum;"
    );
    println!(
        "parse only = the parser without the accumulator (promtext: count samples; prometheus-parse: Scrape::parse)"
    );
    println!(
        "peak heap = of parse + sum: promtext's is the accumulator's rows (the parser holds at most one line); prometheus-parse's is its Scrape, every sample owned"
    );
    println!("total bench time {:.1} s", started.elapsed().as_secs_f64());
}
