//! Thread CPU time for the benchmarks (`benches/*.rs`) and `examples/parse_baseline.rs`, shared by
//! `#[path]`: medians of it, so builds and tests competing for the cores slow a run down without
//! adding to what it measures.

#![allow(dead_code)] // each includer uses its own part

use std::hint::black_box;
use std::time::{Duration, Instant};

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// CPU time this thread has run (`CLOCK_THREAD_CPUTIME_ID`, ns precision). `None` off Linux.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
pub fn thread_cpu() -> Option<Duration> {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    unsafe extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: glibc's clock_gettime writes one timespec (two 64-bit fields on this target) into `ts`.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
pub fn thread_cpu() -> Option<Duration> {
    None
}

/// Thread CPU time of `f` (wall-clock time where the kernel gives no thread clock).
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let (t, c) = (Instant::now(), thread_cpu());
    let out = black_box(f());
    let spent = match (c, thread_cpu()) {
        (Some(a), Some(b)) => b - a,
        _ => t.elapsed(),
    };
    (out, spent)
}
