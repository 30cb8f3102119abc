//! Clocks, CPU time, memory and allocation counters, and percentiles.

use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::resource::{getrusage, UsageWho};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

/// Counts every allocation of this process (the system allocator underneath).
#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Wall-clock time in nanoseconds since the Unix epoch: comparable across processes
/// (`date +%s%N` in a `consul watch` handler) and threads.
pub fn wall_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn usage_us(who: UsageWho) -> u64 {
    let Ok(u) = getrusage(who) else { return 0 };
    let us = |t: nix::sys::time::TimeVal| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec()).unwrap_or(0)
    };
    us(u.user_time()) + us(u.system_time())
}

/// CPU time (user + system) of this whole process so far, in microseconds.
pub fn process_cpu_us() -> u64 {
    usage_us(UsageWho::RUSAGE_SELF)
}

/// CPU time (user + system) of the calling thread so far, in microseconds.
pub fn thread_cpu_us() -> u64 {
    usage_us(UsageWho::RUSAGE_THREAD)
}

/// CPU time of another process (all its threads), in nanoseconds, from
/// `/proc/<pid>/task/*/schedstat`; 0 when it cannot be read.
pub fn other_process_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut total = 0;
    for task in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// Resident memory of this process (`VmRSS`), in bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Allocation counters of the whole process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocs {
    /// Calls to `alloc` (and `realloc`, which may move).
    pub count: u64,
    /// Bytes requested by those calls.
    pub bytes: u64,
    /// Bytes allocated and not yet freed.
    pub live: i64,
}

impl Allocs {
    /// The counters now.
    pub fn now() -> Self {
        let s = GLOBAL.stats();
        let live = i64::try_from(s.bytes_allocated).unwrap_or(i64::MAX)
            - i64::try_from(s.bytes_deallocated).unwrap_or(i64::MAX)
            + i64::try_from(s.bytes_reallocated).unwrap_or(0);
        Self {
            count: (s.allocations + s.reallocations) as u64,
            bytes: s.bytes_allocated as u64 + s.bytes_reallocated.max(0) as u64,
            live,
        }
    }

    /// What happened between `earlier` and `self`.
    #[must_use]
    pub fn since(self, earlier: Self) -> Self {
        Self {
            count: self.count.saturating_sub(earlier.count),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            live: self.live - earlier.live,
        }
    }
}

/// Nearest-rank percentile `q` (0..=1) of `sorted` (ascending).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50, p90, p99 of `values` (sorted here).
pub fn p50_90_99(values: &[f64]) -> [f64; 3] {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    [
        percentile(&v, 0.5),
        percentile(&v, 0.9),
        percentile(&v, 0.99),
    ]
}

/// Formats milliseconds with a unit chosen for readability.
pub fn fmt_ms(ms: f64) -> String {
    if ms.is_nan() {
        "n/a".to_owned()
    } else if ms.abs() >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms.abs() >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// Formats microseconds of CPU time.
pub fn fmt_us(us: f64) -> String {
    if us.is_nan() {
        "n/a".to_owned()
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// Formats a byte count.
pub fn fmt_bytes(b: f64) -> String {
    if b.is_nan() {
        "n/a".to_owned()
    } else if b.abs() >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else if b.abs() >= 10.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!((percentile(&v, 0.5) - 50.0).abs() < f64::EPSILON);
        assert!((percentile(&v, 0.99) - 99.0).abs() < f64::EPSILON);
        assert!((percentile(&v, 1.0) - 100.0).abs() < f64::EPSILON);
    }

    #[test]
    fn counters_move() {
        let before = Allocs::now();
        let v = vec![0u8; 4096];
        let after = Allocs::now().since(before);
        assert!(
            after.count >= 1 && after.bytes >= 4096,
            "{after:?} {}",
            v.len()
        );
        assert!(process_cpu_us() > 0 || thread_cpu_us() == 0);
    }
}
