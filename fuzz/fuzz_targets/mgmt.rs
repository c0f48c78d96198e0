//! Decoding management-API answers: `/api/queues` (an unpaged array or a page object), `/api/nodes`,
//! `/api/overview` and `/api/whoami`. Every decoder runs on every input; none may panic, and a queue
//! listing becomes the same samples whether decoded item by item (the daemon's streaming collector) or
//! as a whole.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use rabbitwatch::config::NameFilter;
use rabbitwatch::domain::StatsMode;
use rabbitwatch::scrape::{
    QueueCollector, decode_nodes, decode_overview, decode_queue_page, decode_whoami_tags,
    keep_largest,
};

// Compiled once: building regexes on every input would cost more than the decoding under test.
static ALL: LazyLock<NameFilter> = LazyLock::new(|| NameFilter {
    include: regex::Regex::new(".*").expect("literal regex"),
    exclude: None,
});
static SOME: LazyLock<NameFilter> = LazyLock::new(|| NameFilter {
    include: regex::Regex::new("^[a-m]").expect("literal regex"),
    exclude: Some(regex::Regex::new(r"^amq\.").expect("literal regex")),
});

fuzz_target!(|data: &[u8]| {
    let _ = decode_overview(data);
    let _ = decode_nodes(data);
    let _ = decode_whoami_tags(data);

    let (all, some) = (&*ALL, &*SOME);
    let whole = decode_queue_page(data);
    for mode in [StatsMode::Full, StatsMode::DepthOnly] {
        let mut c = QueueCollector::new(all, all, mode);
        let streamed = c.add_listing(data);
        if let (Ok(pages), Ok((items, whole_pages))) = (&streamed, &whole) {
            assert_eq!(c.len(), items.len(), "streamed and whole decoding disagree");
            assert_eq!(pages, whole_pages, "streamed and whole decoding disagree");
        }
        let mut samples = c.finish();
        let n = samples.len();
        assert_eq!(keep_largest(&mut samples, 2), n.saturating_sub(2));
        assert!(samples.len() <= 2);
        let mut filtered = QueueCollector::new(some, some, mode);
        let _ = filtered.add_listing(data);
    }
});
