//! The "merely parsing" baseline of docs/performance.md's targets: how long `serde_json::from_slice` into a typed struct
//! with the fields the daemon reads takes over one cycle's saved `/api/queues` pages, and (when the pages
//! were saved gzipped, as the daemon receives them) gunzip + parse. Used by `scripts/bench`.
//!
//! ```text
//! cargo run --release --example parse_baseline -- DIR [REPS]
//! ```
//!
//! Reads every `DIR/*.json` (plain) and `DIR/*.json.gz` (gzip) file, runs each step REPS times (default
//! 7) on one thread and prints the median thread CPU time of each as `key=value` pairs.

use std::borrow::Cow;
use std::hint::black_box;
use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::Deserialize;

#[path = "../benches/common/cpu_time.rs"]
mod cpu_time;
use cpu_time::thread_cpu;

#[derive(Deserialize)]
#[allow(dead_code)]
struct Page<'a> {
    #[serde(borrow)]
    items: Vec<Queue<'a>>,
    page_count: u32,
}

/// Mirrors the fields of `QUEUE_COLUMNS` (src/scrape.rs), borrowed where the daemon borrows.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Queue<'a> {
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
    arguments: Option<Arguments>,
    message_stats: Option<MessageStats>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Arguments {
    #[serde(rename = "x-max-length")]
    max_length: Option<u64>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct MessageStats {
    publish: Option<u64>,
    deliver_get: Option<u64>,
    ack: Option<u64>,
    redeliver: Option<u64>,
    deliver_no_ack: Option<u64>,
    get_no_ack: Option<u64>,
}

fn parse_all(pages: &[Vec<u8>]) -> usize {
    pages
        .iter()
        .map(|p| {
            // A page object, or the plain array of an unpaged request (the daemon's default); told
            // apart by the first byte so that neither pays for serde's untagged buffering.
            if p.first() == Some(&b'[') {
                serde_json::from_slice::<Vec<Queue<'_>>>(p)
                    .expect("a saved listing is valid JSON")
                    .len()
            } else {
                serde_json::from_slice::<Page<'_>>(p)
                    .expect("a saved page is valid JSON")
                    .items
                    .len()
            }
        })
        .sum()
}

/// Median CPU time of `reps` runs (wall-clock time where the kernel has no schedstat).
fn median(reps: usize, mut f: impl FnMut() -> usize) -> (Duration, usize) {
    let mut times = Vec::with_capacity(reps);
    let mut items = 0;
    for _ in 0..reps {
        let (t, c) = (Instant::now(), thread_cpu());
        items = black_box(f());
        times.push(match (c, thread_cpu()) {
            (Some(a), Some(b)) => b - a,
            _ => t.elapsed(),
        });
    }
    times.sort();
    SPREAD.with(|s| s.set((times[0], times[times.len() - 1])));
    (times[times.len() / 2], items)
}

thread_local! {
    /// The fastest and slowest run of the last `median`, printed beside it so a noisy run shows.
    static SPREAD: std::cell::Cell<(Duration, Duration)> = const { std::cell::Cell::new((Duration::ZERO, Duration::ZERO)) };
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: parse_baseline DIR [REPS]");
        return ExitCode::from(2);
    };
    let reps: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(7).max(1);
    let mut plain = Vec::new();
    let mut gz = Vec::new();
    let mut entries: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(d) => d.filter_map(Result::ok).map(|e| e.path()).collect(),
        Err(e) => {
            eprintln!("cannot read {dir}: {e}");
            return ExitCode::FAILURE;
        }
    };
    entries.sort();
    for path in entries {
        let name = path.to_string_lossy();
        let bytes = std::fs::read(&path).expect("readable page file");
        if name.ends_with(".json.gz") {
            gz.push(bytes);
        } else if name.ends_with(".json") {
            plain.push(bytes);
        }
    }
    if plain.is_empty() && gz.is_empty() {
        eprintln!("no *.json or *.json.gz files in {dir}");
        return ExitCode::FAILURE;
    }
    if plain.is_empty() {
        plain = gz
            .iter()
            .map(|g| {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&g[..])
                    .read_to_end(&mut out)
                    .expect("valid gzip");
                out
            })
            .collect();
    }
    let (parse, items) = median(reps, || parse_all(&plain));
    print!(
        "pages={} items={items} bytes={} parse_ms={:.2}",
        plain.len(),
        plain.iter().map(Vec::len).sum::<usize>(),
        parse.as_secs_f64() * 1e3
    );
    let (lo, hi) = SPREAD.with(std::cell::Cell::get);
    print!(
        " parse_spread=range_{:.2}–{:.2}",
        lo.as_secs_f64() * 1e3,
        hi.as_secs_f64() * 1e3
    );
    if !gz.is_empty() {
        let (both, _) = median(reps, || {
            let pages: Vec<Vec<u8>> = gz
                .iter()
                .map(|g| {
                    let mut out = Vec::with_capacity(g.len() * 8);
                    flate2::read::GzDecoder::new(&g[..])
                        .read_to_end(&mut out)
                        .expect("valid gzip");
                    out
                })
                .collect();
            parse_all(&pages)
        });
        print!(
            " gz_bytes={} gunzip_parse_ms={:.2}",
            gz.iter().map(Vec::len).sum::<usize>(),
            both.as_secs_f64() * 1e3
        );
    }
    println!();
    ExitCode::SUCCESS
}
