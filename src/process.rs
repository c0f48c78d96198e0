//! The daemon's own resource use, read when `/metrics` is scraped: the `process_*` families every
//! Prometheus client library exports (same names and units, so existing dashboards and alerts work), and,
//! on glibc, the allocator's heap split into bytes in use and free bytes it holds. The split is what
//! tells a leak (in use grows) from fragmentation (free grows while in use stays flat).
//!
//! The `process_*` figures come from `/proc/self` and the heap from `mallinfo2`; where either is missing
//! (not Linux, not glibc) those families are left out.

use std::time::Duration;

/// One reading. Fields the system could not give are `None` and are not exported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub heap: Option<Heap>,
}

/// The allocator's view of the heap (glibc `mallinfo2`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heap {
    /// Bytes handed out and not yet freed, including blocks served by their own mapping.
    pub in_use_bytes: u64,
    /// Freed bytes the allocator keeps for reuse instead of returning them to the system; part of them
    /// may no longer be resident.
    pub free_bytes: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat` times: the kernel's USER_HZ, 100 on every Linux
/// architecture's user ABI (the Prometheus client libraries assume the same).
const USER_HZ: f64 = 100.0;

/// Reads the current process's usage. Cheap: a few small `/proc` files and one walk of the
/// allocator's free lists.
pub fn read() -> Usage {
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let stat = stat.as_deref().and_then(parse_stat);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // The boot time never changes; /proc/stat has a line per CPU, so it is read once, not per scrape.
    static BOOT_TIME: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let boot_time = *BOOT_TIME.get_or_init(|| {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_boot_time(&s))
    });
    Usage {
        cpu_seconds: cpu_seconds().or(stat.map(|s| s.cpu.as_secs_f64())),
        resident_bytes: status_bytes(&status, "VmRSS"),
        virtual_bytes: status_bytes(&status, "VmSize"),
        start_time_seconds: stat
            .zip(boot_time)
            .map(|(s, boot)| boot as f64 + s.start_ticks as f64 / USER_HZ),
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64),
        max_fds: std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| parse_max_open_files(&s)),
        heap: heap(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    cpu: Duration,
    start_ticks: u64,
}

/// `/proc/<pid>/stat`: the command name (field 2) may hold spaces and parentheses, so fields are
/// counted from the last `)`. utime, stime and starttime are fields 14, 15 and 22.
fn parse_stat(s: &str) -> Option<Stat> {
    let rest = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let ticks = field(14)? + field(15)?;
    Some(Stat {
        cpu: Duration::from_millis(ticks * 10),
        start_ticks: field(22)?,
    })
}

/// A `VmRSS:    1234 kB` line of `/proc/<pid>/status`, in bytes.
fn status_bytes(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        let kb = v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
        Some(kb * 1024)
    })
}

fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// The soft limit of the `Max open files` row of `/proc/<pid>/limits`; `None` when unlimited.
fn parse_max_open_files(limits: &str) -> Option<u64> {
    let row = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    row.split_whitespace().next()?.parse().ok()
}

/// CPU time (user + system, every thread, those ended included) of the process, from the kernel's
/// nanosecond clock: `/proc/self/stat` counts 10 ms ticks, too coarse to tell one 50 ms poll cycle from
/// the next. Cheap enough to read per request (`/api/v1/status`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn cpu_seconds() -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer and has no other effect.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn cpu_seconds() -> Option<f64> {
    None
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap() -> Option<Heap> {
    // SAFETY: mallinfo2 only reads the allocator's bookkeeping (under its locks) and returns a plain
    // struct; it has no preconditions.
    let m = unsafe { libc::mallinfo2() };
    Some(Heap {
        in_use_bytes: (m.uordblks + m.hblkhd) as u64,
        free_bytes: m.fordblks as u64,
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap() -> Option<Heap> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with spaces and a ')' of its own must not shift the fields.
        let line = "4242 (rabbit watch) x) S 1 4242 4242 0 -1 4194560 2269 0 0 0 \
                    150 37 0 0 20 0 9 0 12345 123456789 4567 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.cpu, Duration::from_millis(1870));
        assert_eq!(s.start_ticks, 12345);
        assert_eq!(parse_stat("4242 (cut short) S 1 2"), None);
    }

    #[test]
    fn status_sizes_are_read_in_kilobytes() {
        let status = "Name:\trabbitwatch\nVmSize:\t  812044 kB\nVmRSS:\t   29576 kB\nThreads:\t9\n";
        assert_eq!(status_bytes(status, "VmRSS"), Some(29576 * 1024));
        assert_eq!(status_bytes(status, "VmSize"), Some(812044 * 1024));
        assert_eq!(status_bytes(status, "VmHWM"), None);
        // VmRSS must not be found in a line that merely starts with it.
        assert_eq!(status_bytes("VmRSSx:\t1 kB\n", "VmRSS"), None);
    }

    #[test]
    fn open_file_limit_is_the_soft_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95162                95162                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_open_files(unlimited), None);
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1764380000\nprocesses 9\n"),
            Some(1764380000)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reading_this_process_gives_plausible_figures() {
        // Hold 64 MiB in use, written so it is resident, and read: both must show at least that much
        // (other tests run in this process too, so only lower bounds are certain).
        let block = vec![1u8; 64 << 20];
        let after = read();
        assert!(block.iter().all(|&b| b == 1));
        assert!(after.resident_bytes.unwrap() >= 64 << 20, "{after:?}");
        assert!(after.virtual_bytes.unwrap() >= after.resident_bytes.unwrap());
        assert!(after.cpu_seconds.is_some(), "{after:?}");
        assert!(after.max_fds.is_none_or(|m| m >= after.open_fds.unwrap()));
        assert!(after.open_fds.unwrap() >= 3);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = after.start_time_seconds.unwrap();
        assert!(
            started <= now + 1.0 && started > now - 86_400.0,
            "{started} vs {now}"
        );
        #[cfg(target_env = "gnu")]
        {
            let heap = after.heap.unwrap();
            assert!(heap.in_use_bytes >= 64 << 20, "{heap:?}");
        }
    }
}
