//! `/metrics` for clients that accept gzip (Prometheus always does), without rendering and compressing
//! the per-queue families on every scrape.
//!
//! The per-queue families are ~99% of the exposition (140 MB of text at 100k queues) and depend only on
//! the queue lists the poll loops published, which change once per poll cycle, while a poll interval is
//! longer than a scrape interval. So they are rendered and deflated once per cycle, by the first scrape
//! that finds them out of date, and kept compressed (`QueueCache`); every scrape renders the small head
//! (process, delivery and cluster figures, which change between scrapes) afresh and sends it in front.
//!
//! The response is one gzip member, not two concatenated ones, so decoders that stop after the first
//! member (some do) read the whole exposition: the head is deflated with a sync flush (byte-aligned, not
//! final) and the kept queue stream, from a compressor of its own that ends with the final block, follows
//! it; the trailer's CRC-32 is the two parts' CRCs combined (the same splice `pigz` makes).
//!
//! Only the compressed bytes are kept (~1/20 of the text): clients without gzip get the text rendered
//! afresh and streamed as before, rather than a second copy of the whole exposition held in memory.
//!
//! Once a gzip scraper has read a block, the next cycle's block is built as soon as the cycle is
//! published (`QueueCache::prebuild`), off the scrape path: the scrape after a cycle then sends kept
//! pieces instead of waiting for the render and deflate (~0.3 s of CPU at 100k queues). A block
//! nobody read is not followed by another one built ahead, so a daemon nobody scrapes, or scrapes
//! less often than it polls, does not render every cycle for nothing.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress, Status};

use super::{CHUNK_BYTES, Extras, fresh_clusters, render_head, render_queues_into_pieces};
use crate::domain::Timestamp;
use crate::view::{ClusterView, QueueView};

/// zlib level 1: at 100k queues the first scrape after a cycle deflates ~140 MB of text, and level 1
/// already shrinks this repetitive text ~20x; higher levels cost much more CPU for a few % of bytes
/// (docs/performance.md).
pub const LEVEL: u32 = 1;

/// Size of the compressed pieces handed to the HTTP layer and kept: 1 MiB, the mmap threshold the
/// daemon sets (`main.rs`), so each kept piece is a mapping of its own that goes back to the system
/// when the next cycle's block replaces it, instead of heap pages that pin the heap's high-water mark.
const PIECE_BYTES: usize = 1024 * 1024;

/// A gzip member header: deflate, no name or time, OS unknown.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// The per-queue families of one set of published queue lists, deflated, with what the gzip trailer
/// needs of the text they came from.
struct Block {
    /// The queue lists of the fresh clusters it was rendered from, in order. `Weak` so the cache keeps
    /// no old cycle alive; it still pins the allocations, so a new list cannot reuse an old address.
    from: Vec<Weak<Vec<QueueView>>>,
    /// A raw deflate stream ending with the final block.
    pieces: Vec<Bytes>,
    crc: crc32fast::Hasher,
    text_len: u64,
    /// A scrape sent it (or is sending it): what makes the next cycle's block worth building ahead.
    read: AtomicBool,
}

impl Block {
    fn is_of(&self, fresh: &[&ClusterView]) -> bool {
        self.from.len() == fresh.len()
            && self
                .from
                .iter()
                .zip(fresh)
                .all(|(w, c)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&c.queues)))
    }

    fn compressed_len(&self) -> usize {
        self.pieces.iter().map(Bytes::len).sum()
    }
}

/// The deflated per-queue families of the latest cycle, shared by every `/metrics` scrape.
#[derive(Default)]
pub struct QueueCache {
    block: Mutex<Option<Arc<Block>>>,
    stats: Mutex<CacheStats>,
}

/// What the cache did, for tests and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct CacheStats {
    /// Times the queue families were rendered and compressed (once per cycle that was scraped).
    pub builds: u64,
    /// Scrapes served from a block already built.
    pub hits: u64,
    /// Of the builds, those made ahead of any scrape as a cycle was published (`prebuild`).
    pub prebuilds: u64,
    /// Size of the block kept: compressed bytes, and the text they stand for.
    pub compressed_bytes: usize,
    pub text_bytes: u64,
}

impl QueueCache {
    pub fn stats(&self) -> CacheStats {
        *lock(&self.stats)
    }

    /// Sends the whole exposition as one gzip member, in order, through `emit`: the head rendered now,
    /// then the queue families of the clusters fresh at `now` (kept from an earlier scrape of the same
    /// cycle, or built now and kept), then the trailer. A `Break` from `emit` (the client went away)
    /// stops sending; a block being built is finished and kept all the same.
    pub fn serve(
        &self,
        clusters: &[Arc<ClusterView>],
        extras: &Extras<'_>,
        now: Timestamp,
        emit: &mut dyn FnMut(Bytes) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let head = render_head(clusters, extras, now);
        let mut crc = crc32fast::Hasher::new();
        crc.update(head.as_bytes());
        let mut out = Vec::with_capacity(head.len() / 4 + 64);
        out.extend_from_slice(&HEADER);
        let mut deflate = Compress::new(Compression::new(LEVEL), false);
        deflate_all(
            &mut deflate,
            head.as_bytes(),
            FlushCompress::Sync,
            &mut out,
            &mut |p| pieces_to(emit, p),
        );
        emit(Bytes::from(out))?;

        let fresh = fresh_clusters(clusters, now);
        let block = self.block_for(&fresh, emit)?;
        block.read.store(true, Ordering::Relaxed);
        crc.combine(&block.crc);
        let mut trailer = Vec::with_capacity(8);
        trailer.extend_from_slice(&crc.finalize().to_le_bytes());
        // ISIZE is the length modulo 2^32 (RFC 1952).
        let len = head.len() as u64 + block.text_len;
        trailer.extend_from_slice(&(len as u32).to_le_bytes());
        emit(Bytes::from(trailer))
    }

    /// Builds the block of the clusters fresh at `now` ahead of the next scrape, when a scrape read the
    /// block it replaces; returns whether it built. Called as a poll cycle is published, on a thread
    /// that may block: a scrape arriving meanwhile waits for this build instead of starting another.
    pub fn prebuild(&self, clusters: &[Arc<ClusterView>], now: Timestamp) -> bool {
        let fresh = fresh_clusters(clusters, now);
        {
            let kept = lock(&self.block);
            let Some(b) = kept.as_ref() else {
                return false; // no gzip scrape yet
            };
            if b.is_of(&fresh) || !b.read.load(Ordering::Relaxed) {
                return false;
            }
        }
        let built = self
            .build(&fresh, &mut |_| ControlFlow::Continue(()))
            .is_some();
        if built {
            lock(&self.stats).prebuilds += 1;
        }
        built
    }

    /// The block for `fresh`: the kept one when it is of these queue lists, else a new one, built
    /// while its pieces go to `emit` as they are made (the first scraper of a cycle does not wait for
    /// the end). Returns `Break` when `emit` refused a piece of a kept block; a block being built is
    /// completed regardless.
    fn block_for(
        &self,
        fresh: &[&ClusterView],
        emit: &mut dyn FnMut(Bytes) -> ControlFlow<()>,
    ) -> ControlFlow<(), Arc<Block>> {
        loop {
            if let Some(b) = self.kept_of(fresh) {
                lock(&self.stats).hits += 1;
                for p in &b.pieces {
                    emit(p.clone())?;
                }
                return ControlFlow::Continue(b);
            }
            if let Some((b, client)) = self.build(fresh, emit) {
                client?;
                return ControlFlow::Continue(b);
            }
            // A prebuild made it while this scrape waited: sent from the top.
        }
    }

    fn kept_of(&self, fresh: &[&ClusterView]) -> Option<Arc<Block>> {
        lock(&self.block)
            .as_ref()
            .filter(|b| b.is_of(fresh))
            .cloned()
    }

    /// Renders and deflates the queue families of `fresh` into a new kept block, handing each piece to
    /// `emit` as it is made until `emit` breaks (the block is completed regardless); returns the block
    /// and whether `emit` took every piece. `None` when the kept block turns out to be of `fresh`
    /// already (built by another thread meanwhile).
    fn build(
        &self,
        fresh: &[&ClusterView],
        emit: &mut dyn FnMut(Bytes) -> ControlFlow<()>,
    ) -> Option<(Arc<Block>, ControlFlow<()>)> {
        // One thread builds while concurrent scrapes and prebuilds wait here, then read what it built.
        let mut kept = lock(&self.block);
        if kept.as_ref().is_some_and(|b| b.is_of(fresh)) {
            return None;
        }
        // The old cycle's block goes before the new one is built, so the two are never held at once.
        *kept = None;
        let mut crc = crc32fast::Hasher::new();
        let mut text_len = 0u64;
        let mut pieces = Vec::new();
        let mut client = ControlFlow::Continue(());
        let mut keep = |p: Vec<u8>| {
            let p = Bytes::from(p);
            if client.is_continue() {
                client = emit(p.clone());
            }
            pieces.push(p);
        };
        let mut deflate = Compress::new(Compression::new(LEVEL), false);
        let mut out = Vec::with_capacity(PIECE_BYTES);
        // Rendering and deflating take about as long as each other (~190 and ~160 ms at 100k queues):
        // a second thread renders while this one deflates, a few pieces ahead at most, so the first
        // scrape of a cycle waits for the longer of the two rather than their sum.
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<String>(4);
            s.spawn(move || {
                render_queues_into_pieces(fresh, CHUNK_BYTES, &mut |text| match tx.send(text) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(_) => ControlFlow::Break(()),
                })
            });
            for text in rx {
                crc.update(text.as_bytes());
                text_len += text.len() as u64;
                deflate_all(
                    &mut deflate,
                    text.as_bytes(),
                    FlushCompress::None,
                    &mut out,
                    &mut keep,
                );
            }
        });
        deflate_all(
            &mut deflate,
            &[],
            FlushCompress::Finish,
            &mut out,
            &mut keep,
        );
        if !out.is_empty() {
            keep(out);
        }
        let block = Arc::new(Block {
            from: fresh.iter().map(|c| Arc::downgrade(&c.queues)).collect(),
            pieces,
            crc,
            text_len,
            read: AtomicBool::new(false),
        });
        *kept = Some(block.clone());
        drop(kept);
        let mut stats = lock(&self.stats);
        stats.builds += 1;
        stats.compressed_bytes = block.compressed_len();
        stats.text_bytes = block.text_len;
        Some((block, client))
    }
}

/// A full `Vec` is handed on as one piece of the head (the head is small; this rarely happens).
fn pieces_to(emit: &mut dyn FnMut(Bytes) -> ControlFlow<()>, piece: Vec<u8>) {
    let _ = emit(Bytes::from(piece));
}

/// Feeds all of `input` to `deflate`, appending to `out` and handing `out` to `full` whenever it has no
/// room left. `Sync` returns once the output is byte-aligned and complete; `Finish` once the final block
/// is written.
fn deflate_all(
    deflate: &mut Compress,
    mut input: &[u8],
    flush: FlushCompress,
    out: &mut Vec<u8>,
    full: &mut dyn FnMut(Vec<u8>),
) {
    loop {
        if out.capacity() - out.len() < 1024 {
            full(std::mem::replace(out, Vec::with_capacity(PIECE_BYTES)));
        }
        let before = deflate.total_in();
        // In-memory deflate fails only on misuse of the stream (a call after Finish), which this
        // function never makes; an error ends the stream short and the gzip trailer check fails the
        // client's decode, never a silent truncation.
        let status = match deflate.compress_vec(input, out, flush) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "deflating /metrics failed");
                return;
            }
        };
        input = &input[(deflate.total_in() - before) as usize..];
        let room_left = out.len() < out.capacity();
        let done = match flush {
            FlushCompress::Finish => status == Status::StreamEnd,
            FlushCompress::None => input.is_empty(),
            _ => input.is_empty() && room_left,
        };
        if done {
            return;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A scrape that panicked mid-build left `None` or a complete block behind: both are usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether an `Accept-Encoding` value accepts gzip (`gzip`, `x-gzip` or `*`, without `q=0`).
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or("");
        let named = ["gzip", "x-gzip", "*"]
            .iter()
            .any(|c| coding.eq_ignore_ascii_case(c));
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .or_else(|| p.strip_prefix("Q="))
                .and_then(|q| q.trim().parse::<f64>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        named && !refused
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{render, tests::view, without_extras};
    use std::io::Read;

    fn gzip_scrape(cache: &QueueCache, clusters: &[Arc<ClusterView>], now: Timestamp) -> Vec<u8> {
        let mut body = Vec::new();
        let done = without_extras(|x| {
            cache.serve(clusters, x, now, &mut |p| {
                body.extend_from_slice(&p);
                ControlFlow::Continue(())
            })
        });
        assert!(done.is_continue());
        body
    }

    /// Decodes with a reader that stops after the first gzip member, so a response made of several
    /// members would come out short here.
    fn gunzip_one_member(body: &[u8]) -> String {
        let mut text = String::new();
        flate2::read::GzDecoder::new(body)
            .read_to_string(&mut text)
            .expect("a valid gzip stream, CRC and length included");
        text
    }

    fn with_queues(up_at: i64, queues: usize, messages: u64) -> Arc<ClusterView> {
        let mut v = view(true, Some(up_at));
        v.queues = Arc::new(
            (0..queues)
                .map(|i| {
                    let mut q = Arc::into_inner(view(true, None).queues).unwrap().remove(0);
                    q.sample.messages = messages + i as u64;
                    q.prom_labels =
                        Arc::from(format!(r#"cluster="local",vhost="/",queue="orders-{i}""#));
                    q
                })
                .collect(),
        );
        Arc::new(v)
    }

    #[test]
    fn a_gzip_scrape_decodes_to_exactly_the_plain_exposition() {
        // Enough queues for the queue families to span many compressed pieces.
        let clusters = [with_queues(100_000, 5_000, 7)];
        let now = Timestamp(105_000);
        let cache = QueueCache::default();
        let body = gzip_scrape(&cache, &clusters, now);
        assert_eq!(gunzip_one_member(&body), render(&clusters, now));
        assert!(body.len() * 5 < render(&clusters, now).len(), "compressed");
    }

    #[test]
    fn later_scrapes_of_a_cycle_reuse_the_block_and_a_new_cycle_replaces_it() {
        let now = Timestamp(105_000);
        let cache = QueueCache::default();
        let first = [with_queues(100_000, 50, 7)];
        let a = gunzip_one_member(&gzip_scrape(&cache, &first, now));
        let b = gunzip_one_member(&gzip_scrape(&cache, &first, now));
        assert_eq!(a, b);
        assert_eq!((cache.stats().builds, cache.stats().hits), (1, 1));

        // The next cycle publishes new queue lists: the next scrape shows their values, never the kept ones.
        let second = [with_queues(110_000, 50, 1_000)];
        let c = gunzip_one_member(&gzip_scrape(&cache, &second, Timestamp(110_500)));
        assert_eq!(c, render(&second, Timestamp(110_500)));
        assert!(c.contains(
            "rabbitwatch_queue_messages{cluster=\"local\",vhost=\"/\",queue=\"orders-3\"} 1003\n"
        ));
        assert!(!c.contains(
            "rabbitwatch_queue_messages{cluster=\"local\",vhost=\"/\",queue=\"orders-3\"} 10\n"
        ));
        assert_eq!(cache.stats().builds, 2);
    }

    #[test]
    fn a_cycle_is_built_ahead_only_for_a_scraper_that_read_the_last_block() {
        let cache = QueueCache::default();
        let first = [with_queues(100_000, 50, 7)];
        // Nobody has scraped with gzip yet: nothing is built ahead.
        assert!(!cache.prebuild(&first, Timestamp(100_500)));
        assert_eq!(cache.stats().builds, 0);
        gzip_scrape(&cache, &first, Timestamp(100_500));

        // The next cycle is built as it is published; its scrape sends what was kept, and shows the
        // new cycle's values.
        let second = [with_queues(110_000, 50, 1_000)];
        assert!(cache.prebuild(&second, Timestamp(110_100)));
        assert!(
            !cache.prebuild(&second, Timestamp(110_200)),
            "already built"
        );
        let text = gunzip_one_member(&gzip_scrape(&cache, &second, Timestamp(110_500)));
        assert_eq!(text, render(&second, Timestamp(110_500)));
        let s = cache.stats();
        assert_eq!((s.builds, s.prebuilds, s.hits), (2, 1, 1));

        // The third cycle's block is built ahead too, but nobody reads it: the fourth is not built
        // until a scrape asks for it.
        let third = [with_queues(120_000, 50, 2_000)];
        assert!(cache.prebuild(&third, Timestamp(120_100)));
        let fourth = [with_queues(130_000, 50, 3_000)];
        assert!(!cache.prebuild(&fourth, Timestamp(130_100)));
        let text = gunzip_one_member(&gzip_scrape(&cache, &fourth, Timestamp(130_500)));
        assert_eq!(text, render(&fourth, Timestamp(130_500)));
        let s = cache.stats();
        assert_eq!((s.builds, s.prebuilds, s.hits), (4, 2, 1));
    }

    #[test]
    fn a_cluster_gone_stale_loses_its_queue_series_though_its_list_is_unchanged() {
        let clusters = [with_queues(100_000, 10, 7)];
        let cache = QueueCache::default();
        let fresh = gunzip_one_member(&gzip_scrape(&cache, &clusters, Timestamp(105_000)));
        assert!(fresh.contains("rabbitwatch_queue_messages{"));
        let stale = gunzip_one_member(&gzip_scrape(&cache, &clusters, Timestamp(200_000)));
        assert_eq!(stale, render(&clusters, Timestamp(200_000)));
        assert!(!stale.contains("rabbitwatch_queue_messages{"));
    }

    #[test]
    fn a_client_that_leaves_mid_build_still_leaves_a_complete_block() {
        let clusters = [with_queues(100_000, 5_000, 7)];
        let now = Timestamp(105_000);
        let cache = QueueCache::default();
        let mut pieces = 0;
        let done = without_extras(|x| {
            cache.serve(&clusters, x, now, &mut |_| {
                pieces += 1;
                if pieces > 2 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
        });
        assert!(done.is_break());
        let body = gzip_scrape(&cache, &clusters, now);
        assert_eq!(gunzip_one_member(&body), render(&clusters, now));
        assert_eq!((cache.stats().builds, cache.stats().hits), (1, 1));
    }

    #[test]
    fn accept_encoding_is_read_as_http_defines_it() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("identity, GZIP;q=0.5"));
        assert!(accepts_gzip("gzip, deflate, br"));
        assert!(accepts_gzip("*"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("identity"));
        assert!(!accepts_gzip(""));
        assert!(!accepts_gzip("br, zstd"));
    }
}
