//! In-process benchmark of the daemon's per-cycle work, without network: decode the queue pages,
//! fold the snapshot into the tracker, render `/metrics`. Run with `cargo bench --bench pipeline`
//! (`-- 1000 10000` to pick sizes). Medians of thread CPU time (so builds running alongside do not
//! inflate them); a counting allocator reports the heap the daemon keeps between cycles.
//!
//! For 1k/10k/100k queues:
//! - decode: `rabbitwatch::scrape::decode_queue_page` over every page of one cycle, as the daemon
//!   asks for them (`columns=QUEUE_COLUMNS`, 500 per page), then the same with the daemon's per-item
//!   work (`QueueCollector`: name filters, `into_sample`); next to it the baseline of merely parsing
//!   the bytes into a typed struct, and decoding full-size (no `columns`) pages for comparison;
//! - observe: `Tracker::observe` of cycle 31 (poll 5 s, window 1 m, so every window is full);
//! - render: `export::render_clusters_chunked` of the resulting `ClusterView` (as `/metrics` renders).
//! - process metrics: `process::read`, what `/metrics` adds per scrape for the `process_*` and heap
//!   families, timed with that size's history on the heap.

use std::alloc::{GlobalAlloc, Layout, System};
use std::borrow::Cow;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "common/cpu_time.rs"]
mod cpu_time;
use cpu_time::{measure, median};

use rabbitwatch::analysis::Params;
use rabbitwatch::config::NameFilter;
use rabbitwatch::domain::{StatsMode, Timestamp};
use rabbitwatch::export;
use rabbitwatch::scrape::{QueueCollector, decode_queue_page};
use rabbitwatch::snapshot::{Counters, QueueSample, Snapshot};
use rabbitwatch::view::{ClusterView, QueueView, Tracker};
use regex::Regex;
use serde::Deserialize;

// ---------------------------------------------------------------- heap accounting

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------- synthetic broker

const PAGE_SIZE: usize = 500;
const POLL_MS: i64 = 5_000;
const WINDOW_MS: i64 = 60_000;
const CYCLES: usize = 31;

/// Per-queue traffic model: counters advance by these per second.
struct Model {
    name: String,
    publish_rate: u64,
    consume_rate: u64,
    depth: u64,
    has_stats: bool,
    max_length: Option<u64>,
}

fn models(n: usize) -> Vec<Model> {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut v: Vec<Model> = (0..n)
        .map(|i| {
            let roll = rng.f64();
            let publish_rate = if roll < 0.4 { 0 } else { rng.u64(1..40) };
            Model {
                name: format!(
                    "{}.{}.q{i:07}",
                    ["audit", "billing", "email", "events", "orders", "payments"][i % 6],
                    ["api", "batch", "notify", "sync", "worker"][(i / 6) % 5]
                ),
                publish_rate,
                // 5% grow: consumed at half the publish rate.
                consume_rate: if roll > 0.95 {
                    publish_rate / 2
                } else {
                    publish_rate
                },
                depth: rng.u64(0..50),
                has_stats: roll >= 0.1,
                max_length: (rng.f64() < 0.2).then(|| 10_000 * rng.u64(1..100)),
            }
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// One page as RabbitMQ 3.10 answers the daemon's query (`columns=QUEUE_COLUMNS`, keys sorted).
fn column_page(ms: &[Model], page: usize, secs: u64) -> Vec<u8> {
    use std::fmt::Write;
    let pages = ms.len().div_ceil(PAGE_SIZE);
    let items = &ms[(page - 1) * PAGE_SIZE..(page * PAGE_SIZE).min(ms.len())];
    let mut s = String::with_capacity(items.len() * 450 + 200);
    let _ = write!(
        s,
        "{{\"filtered_count\":{n},\"item_count\":{},\"items\":[",
        items.len(),
        n = ms.len()
    );
    for (i, m) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let publish = 1_000_000 + m.publish_rate * secs;
        let ack = 500_000 + m.consume_rate * secs;
        let messages = m.depth + (m.publish_rate - m.consume_rate) * secs;
        s.push_str("{\"arguments\":{");
        if let Some(l) = m.max_length {
            let _ = write!(s, "\"x-max-length\":{l}");
        }
        let _ = write!(
            s,
            "}},\"consumer_utilisation\":{},\"consumers\":{},\"durable\":true,\"head_message_timestamp\":null,",
            if m.consume_rate > 0 { "1.0" } else { "0.0" },
            u8::from(m.consume_rate > 0)
        );
        if m.has_stats {
            let _ = write!(
                s,
                "\"message_stats\":{{\"ack\":{ack},\"deliver_get\":{},\"deliver_no_ack\":0,\"get_no_ack\":0,\"publish\":{publish},\"redeliver\":{}}},",
                ack + 2,
                ack / 1000
            );
        }
        let _ = write!(
            s,
            "\"messages\":{messages},\"messages_ready\":{},\"messages_unacknowledged\":{},\"name\":\"{}\",\"type\":\"classic\",\"vhost\":\"/\"}}",
            messages.saturating_sub(2),
            messages.min(2),
            m.name
        );
    }
    let _ = write!(
        s,
        "],\"page\":{page},\"page_count\":{pages},\"page_size\":{PAGE_SIZE},\"total_count\":{}}}",
        ms.len()
    );
    s.into_bytes()
}

/// The same queues as full-size 3.10 listing objects (no `columns`), for comparison.
fn full_page(ms: &[Model], page: usize, secs: u64) -> Vec<u8> {
    use std::fmt::Write;
    let items = &ms[(page - 1) * PAGE_SIZE..(page * PAGE_SIZE).min(ms.len())];
    let mut s = String::with_capacity(items.len() * 1900 + 200);
    s.push_str("{\"items\":[");
    for (i, m) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let publish = 1_000_000 + m.publish_rate * secs;
        let ack = 500_000 + m.consume_rate * secs;
        let messages = m.depth + (m.publish_rate - m.consume_rate) * secs;
        let r = m.publish_rate as f64;
        let _ = write!(
            s,
            r#"{{"arguments":{{}},"auto_delete":false,"backing_queue_status":{{"avg_ack_egress_rate":{r:.1},"avg_ack_ingress_rate":{r:.1},"avg_egress_rate":{r:.1},"avg_ingress_rate":{r:.1},"delta":["delta","undefined",0,0,"undefined"],"len":{messages},"mode":"default","next_deliver_seq_id":{ack},"next_seq_id":{publish},"q1":0,"q2":0,"q3":0,"q4":{messages},"target_ram_count":"infinity","version":1}},"consumer_capacity":1.0,"consumer_utilisation":1.0,"consumers":1,"durable":true,"effective_policy_definition":{{}},"exclusive":false,"exclusive_consumer_tag":null,"garbage_collection":{{"fullsweep_after":65535,"max_heap_size":0,"min_bin_vheap_size":46422,"min_heap_size":233,"minor_gcs":{i}}},"head_message_timestamp":null,"memory":16696,"message_bytes":{messages},"message_bytes_paged_out":0,"message_bytes_persistent":0,"message_bytes_ram":{messages},"message_bytes_ready":{messages},"message_bytes_unacknowledged":0,"message_stats":{{"ack":{ack},"ack_details":{{"rate":{r:.1}}},"deliver":{ack},"deliver_details":{{"rate":{r:.1}}},"deliver_get":{ack},"deliver_get_details":{{"rate":{r:.1}}},"deliver_no_ack":0,"deliver_no_ack_details":{{"rate":0.0}},"get":0,"get_details":{{"rate":0.0}},"get_empty":0,"get_empty_details":{{"rate":0.0}},"get_no_ack":0,"get_no_ack_details":{{"rate":0.0}},"publish":{publish},"publish_details":{{"rate":{r:.1}}},"redeliver":0,"redeliver_details":{{"rate":0.0}}}},"messages":{messages},"messages_details":{{"rate":0.0}},"messages_paged_out":0,"messages_persistent":0,"messages_ram":{messages},"messages_ready":{messages},"messages_ready_details":{{"rate":0.0}},"messages_ready_ram":{messages},"messages_unacknowledged":0,"messages_unacknowledged_details":{{"rate":0.0}},"messages_unacknowledged_ram":0,"name":"{}","node":"rabbit@localhost","operator_policy":null,"policy":null,"recoverable_slaves":null,"reductions":8965,"reductions_details":{{"rate":0.0}},"single_active_consumer_tag":null,"state":"running","type":"classic","vhost":"/"}}"#,
            m.name
        );
    }
    let _ = write!(
        s,
        "],\"page\":{page},\"page_count\":{}}}",
        ms.len().div_ceil(PAGE_SIZE)
    );
    s.into_bytes()
}

// ---------------------------------------------------------------- the daemon's work, step by step

/// The typed-struct baseline: the same fields as the daemon's DTO, parsed and nothing else.
#[derive(Deserialize)]
#[allow(dead_code)]
struct BasePage<'a> {
    #[serde(borrow)]
    items: Vec<BaseQueue<'a>>,
    page_count: u32,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct BaseQueue<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    vhost: Cow<'a, str>,
    #[serde(rename = "type")]
    kind: Option<&'a str>,
    durable: Option<bool>,
    messages: Option<u64>,
    messages_ready: Option<u64>,
    messages_unacknowledged: Option<u64>,
    consumers: Option<u64>,
    consumer_utilisation: Option<f64>,
    head_message_timestamp: Option<f64>,
    arguments: Option<BaseArgs>,
    message_stats: Option<BaseStats>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct BaseArgs {
    #[serde(rename = "x-max-length")]
    max_length: Option<u64>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct BaseStats {
    publish: Option<u64>,
    deliver_get: Option<u64>,
    ack: Option<u64>,
    redeliver: Option<u64>,
    deliver_no_ack: Option<u64>,
    get_no_ack: Option<u64>,
}

/// What `Scraper::scrape_queues` does with each page once the bytes are in: the daemon's own
/// `QueueCollector` (decode, filter by name, intern vhost and type, `into_sample`).
fn pages_to_samples(pages: &[Vec<u8>], vf: &NameFilter, qf: &NameFilter) -> Vec<QueueSample> {
    let mut c = QueueCollector::new(vf, qf, StatsMode::Full);
    for body in pages {
        c.add_listing(body).expect("valid page");
    }
    c.finish()
}

fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> Duration {
    median((0..reps).map(|_| measure(&mut f).1).collect())
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn mb(bytes: usize) -> String {
    format!("{:.1}", bytes as f64 / 1_048_576.0)
}

/// Advances a cycle-0 snapshot to cycle `c`: counters and depths move as the models say.
fn snapshot_at(base: &[QueueSample], ms_: &[Model], c: usize, poll_ms: i64) -> Snapshot {
    let secs = (c as i64 * poll_ms / 1000) as u64;
    let queues = base
        .iter()
        .zip(ms_)
        .map(|(s, m)| {
            let mut s = s.clone();
            if let Some(k) = s.counters.as_mut() {
                *k = Counters {
                    publish: k.publish + m.publish_rate * secs,
                    delivered: k.delivered + m.consume_rate * secs,
                    ack: k.ack + m.consume_rate * secs,
                    no_ack: k.no_ack,
                    redeliver: k.redeliver,
                };
            }
            s.messages += (m.publish_rate - m.consume_rate) * secs;
            s
        })
        .collect();
    Snapshot {
        taken_at: Timestamp(1_800_000_000_000 + c as i64 * poll_ms),
        queues,
        ..Default::default()
    }
}

struct Row {
    n: usize,
    pages: usize,
    page_bytes: usize,
    baseline: Duration,
    decode: Duration,
    samples: Duration,
    full_bytes: usize,
    full_decode: Duration,
    observe: Duration,
    observe_max: Duration,
    render: Duration,
    render_bytes: usize,
    gzip_first: Duration,
    gzip_later: Duration,
    gzip_bytes: usize,
    heap: usize,
    heap_default: usize,
    process_read: Duration,
}

fn run(n: usize) -> Row {
    let models = models(n);
    let pages_n = n.div_ceil(PAGE_SIZE);
    let pages: Vec<Vec<u8>> = (1..=pages_n).map(|p| column_page(&models, p, 0)).collect();
    let page_bytes: usize = pages.iter().map(Vec::len).sum();
    let reps = if n >= 100_000 { 5 } else { 9 };

    let baseline = time(reps, || {
        pages
            .iter()
            .map(|p| {
                serde_json::from_slice::<BasePage<'_>>(p)
                    .expect("valid page")
                    .items
                    .len()
            })
            .sum::<usize>()
    });
    let decode = time(reps, || {
        pages
            .iter()
            .map(|p| decode_queue_page(p).expect("valid page").0.len())
            .sum::<usize>()
    });
    let vf = NameFilter {
        include: Regex::new(".*").expect("literal"),
        exclude: None,
    };
    let qf = NameFilter {
        include: Regex::new(".*").expect("literal"),
        exclude: Some(Regex::new(r"^amq\.").expect("literal")),
    };
    let samples = time(reps, || pages_to_samples(&pages, &vf, &qf));
    let base = pages_to_samples(&pages, &vf, &qf);
    assert_eq!(base.len(), n);
    drop(pages);

    let full: Vec<Vec<u8>> = (1..=pages_n).map(|p| full_page(&models, p, 0)).collect();
    let full_bytes: usize = full.iter().map(Vec::len).sum();
    let full_decode = time(3, || {
        full.iter()
            .map(|p| decode_queue_page(p).expect("valid page").0.len())
            .sum::<usize>()
    });
    drop(full);

    // The tracker and the published view are what the daemon keeps between cycles.
    let heap_before = live_bytes();
    let mut tracker = Tracker::new(
        "bench",
        Params {
            window_ms: WINDOW_MS,
        },
    );
    let mut times = Vec::new();
    let mut views: Vec<QueueView> = Vec::new();
    for c in 0..CYCLES {
        let snap = snapshot_at(&base, &models, c, POLL_MS);
        // As in the daemon: the new view is built while the old one is published, then replaces it.
        let (v, spent) = measure(|| {
            let new = tracker.observe(snap.queues, snap.taken_at, snap.taken_at);
            drop(std::mem::take(&mut views));
            new
        });
        views = v;
        times.push(spent);
    }
    let heap = live_bytes() - heap_before;
    let full_window = times[CYCLES - 10..].to_vec();
    let observe_max = *full_window.iter().max().expect("cycles ran");
    let observe = median(full_window);
    let at = Timestamp(1_800_000_000_000 + (CYCLES as i64 - 1) * POLL_MS);

    let mut view = ClusterView::new("bench", Duration::from_millis(POLL_MS as u64));
    view.up = true;
    view.last_success = Some(at);
    view.last_attempt = Some(at);
    view.scrape_duration = Some(0.5);
    view.rabbitmq_version = "3.10.8".into();
    view.queues = Arc::new(views);
    let clusters = [Arc::new(view)];
    let mut render_bytes = 0;
    // As `/metrics` does it: pieces of `export::CHUNK_BYTES` handed on (here dropped) as they are written.
    let render = time(5, || {
        render_bytes = 0;
        export::render_clusters_chunked(&clusters, at, &mut |piece| {
            render_bytes += piece.len();
            std::ops::ControlFlow::Continue(())
        });
    });
    // A gzip scrape (what Prometheus sends): the first of a cycle renders and deflates the queue
    // families and keeps them (a fresh cache each run); later ones send the kept block.
    let mut gzip_bytes = 0;
    let gzip_first = time(5, || {
        let cache = export::QueueCache::default();
        gzip_bytes = 0;
        export::serve_clusters_gzip(&cache, &clusters, at, &mut |piece| {
            gzip_bytes += piece.len();
            std::ops::ControlFlow::Continue(())
        });
    });
    let cache = export::QueueCache::default();
    export::serve_clusters_gzip(&cache, &clusters, at, &mut |_| {
        std::ops::ControlFlow::Continue(())
    });
    let gzip_later = time(5, || {
        export::serve_clusters_gzip(&cache, &clusters, at, &mut |piece| {
            black_box(piece);
            std::ops::ControlFlow::Continue(())
        });
    });
    assert_eq!(cache.stats().builds, 1, "later scrapes reuse the block");
    drop(cache);
    // What `/metrics` adds per scrape for the process families: /proc reads and glibc's walk of its
    // free lists (mallinfo2), with this size's history on the heap.
    let process_read = time(5, || black_box(rabbitwatch::process::read()));
    let counted = clusters[0]
        .queues
        .iter()
        .filter(|q| q.health.publish_rate().is_some())
        .count();
    assert!(counted > 0, "rates are known once windows hold samples");
    drop(clusters);
    drop(tracker);

    // The same history with the default config (poll 10 s, window 5 m): 31 samples per queue.
    let heap_before = live_bytes();
    let mut tracker = Tracker::new("bench", Params { window_ms: 300_000 });
    let mut views: Vec<QueueView> = Vec::new();
    for c in 0..CYCLES {
        let snap = snapshot_at(&base, &models, c, 10_000);
        drop(views);
        views = tracker.observe(snap.queues, snap.taken_at, snap.taken_at);
    }
    let heap_default = live_bytes() - heap_before;
    drop(views);
    drop(tracker);

    Row {
        n,
        pages: pages_n,
        page_bytes,
        baseline,
        decode,
        samples,
        full_bytes,
        full_decode,
        observe,
        observe_max,
        render,
        render_bytes,
        gzip_first,
        gzip_later,
        gzip_bytes,
        heap,
        heap_default,
        process_read,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; numbers pick the sizes.
    let mut sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if sizes.is_empty() {
        sizes = vec![1_000, 10_000, 100_000];
    }
    let started = Instant::now();
    println!(
        "rabbitwatch pipeline bench: in-process, one thread, medians of thread CPU time; pages of {PAGE_SIZE} with the daemon's columns;"
    );
    println!(
        "observe = Tracker::observe of cycle {CYCLES} (poll {}s, window {}s: windows full); heap = tracker + published view",
        POLL_MS / 1000,
        WINDOW_MS / 1000
    );
    println!();
    let rows: Vec<Row> = sizes.iter().map(|&n| run(n)).collect();
    println!(
        "{:>7} {:>5} {:>9} {:>9} {:>9} {:>10} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9} {:>10}",
        "queues",
        "pages",
        "page MB",
        "parse ms",
        "decode ms",
        "+sample ms",
        "full MB",
        "full-dec ms",
        "observe ms",
        "(max) ms",
        "render ms",
        "render MB",
        "gz 1st ms",
        "gz next ms",
        "gz MB",
        "heap MB",
        "B/queue",
        "heap 5m MB",
    );
    for r in &rows {
        println!(
            "{:>7} {:>5} {:>9} {:>9} {:>9} {:>10} {:>8} {:>11} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8} {:>8} {:>9} {:>10}",
            r.n,
            r.pages,
            mb(r.page_bytes),
            ms(r.baseline),
            ms(r.decode),
            ms(r.samples),
            mb(r.full_bytes),
            ms(r.full_decode),
            ms(r.observe),
            ms(r.observe_max),
            ms(r.render),
            mb(r.render_bytes),
            ms(r.gzip_first),
            ms(r.gzip_later),
            mb(r.gzip_bytes),
            mb(r.heap),
            r.heap / r.n,
            mb(r.heap_default),
        );
    }
    println!();
    println!(
        "parse      = serde_json::from_slice into a typed struct with the same fields (the baseline)"
    );
    println!("decode     = rabbitwatch::scrape::decode_queue_page over every page");
    println!(
        "+sample    = QueueCollector: decode + name filters + into_sample (the daemon's per-page work)"
    );
    println!(
        "full-dec   = decode_queue_page over full-size pages (no columns), {:.0} B/queue",
        rows.last()
            .map_or(0.0, |r| r.full_bytes as f64 / r.n as f64)
    );
    println!(
        "gz 1st     = a gzip /metrics scrape that renders and deflates the queue families (first of a cycle); gz next = one served from the kept block"
    );
    println!("heap 5m    = the same history kept with the default config (poll 10s, window 5m)");
    for r in &rows {
        let cycle = r.samples + r.observe;
        println!(
            "{:>7} queues: in-process cycle (decode+sample+observe) {} ms = {:.2}x the parse baseline; render {:.0} B/queue; process metrics read in {:.2} ms",
            r.n,
            ms(cycle),
            cycle.as_secs_f64() / r.baseline.as_secs_f64(),
            r.render_bytes as f64 / r.n as f64,
            r.process_read.as_secs_f64() * 1e3
        );
    }
    println!("total bench time {:.1} s", started.elapsed().as_secs_f64());
}
