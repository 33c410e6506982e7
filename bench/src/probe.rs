//! Looking at processes from outside through /proc: the server's resident
//! memory, and this process's open-file limit.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Resident memory of a process in KiB (`VmRSS` in /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// CPU time a process has used, user plus system (fields 14 and 15 of
/// /proc/PID/stat, in clock ticks of 1/100 s: Linux's `USER_HZ` on every
/// mainstream architecture). Time spent by the kernel on the process's
/// behalf — its syscalls, and on loopback much of the receiving side's TCP
/// work — is included: that is what the machine pays per delivery.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    stat_cpu_time(&format!("/proc/{pid}/stat"))
}

/// CPU time the calling thread has used (as [`cpu_time`], for one thread).
pub fn thread_cpu_time() -> Option<Duration> {
    stat_cpu_time("/proc/thread-self/stat")
}

fn stat_cpu_time(path: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces; fields after it do not.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((user + system) * 10))
}

/// The soft and hard "Max open files" of a process (`self` or a pid);
/// `None` for unlimited or unknown.
pub fn open_file_limit(pid: &str) -> (Option<u64>, Option<u64>) {
    let Ok(limits) = std::fs::read_to_string(format!("/proc/{pid}/limits")) else {
        return (None, None);
    };
    let Some(line) = limits.lines().find(|l| l.starts_with("Max open files")) else {
        return (None, None);
    };
    let mut fields = line["Max open files".len()..].split_whitespace();
    let soft = fields.next().and_then(|v| v.parse().ok());
    let hard = fields.next().and_then(|v| v.parse().ok());
    (soft, hard)
}

/// Descriptors this process has open now.
pub fn open_files() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| dir.count() as u64)
}

/// Fails with a clear message when `needed` more descriptors would break
/// this process's open-file limit.
pub fn check_fd_budget(needed: u64) -> anyhow::Result<()> {
    let (soft, hard) = open_file_limit("self");
    let in_use = open_files().unwrap_or(0);
    // Room for the runtime, stdio, the RSS probe and a few retries.
    let headroom = 64;
    if let Some(soft) = soft
        && in_use + needed + headroom > soft
    {
        let hard = hard.map_or("unlimited".to_owned(), |h| h.to_string());
        anyhow::bail!(
            "{needed} connections need about {} open files, but this process may open {soft} \
             (hard limit {hard}, {in_use} already open): lower the count, or raise the limit \
             with `ulimit -n` (up to the hard limit) or run several bench processes",
            in_use + needed + headroom
        );
    }
    Ok(())
}

/// Resident memory figures of the server over a run, in KiB.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RssFigures {
    /// The first sample at or after the end of warm-up.
    pub warm_kib: Option<u64>,
    /// The last sample.
    pub end_kib: Option<u64>,
    pub max_kib: Option<u64>,
    pub samples: usize,
}

impl RssFigures {
    /// `end - warm`, in KiB (negative when memory was given back).
    pub fn growth_kib(&self) -> Option<i64> {
        Some(self.end_kib? as i64 - self.warm_kib? as i64)
    }
}

impl std::fmt::Display for RssFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib =
            |k: Option<u64>| k.map_or("?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        write!(
            f,
            "after warm-up {}, at end {}, max {} ({} samples)",
            mib(self.warm_kib),
            mib(self.end_kib),
            mib(self.max_kib),
            self.samples
        )
    }
}

/// Samples a process's RSS every second until stopped.
pub struct RssSampler {
    stop: CancellationToken,
    handle: JoinHandle<RssFigures>,
}

impl RssSampler {
    /// Starts sampling `pid`; the warm-up sample is the first one taken
    /// `warmup` after now.
    pub fn start(pid: u32, warmup: Duration) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle = tokio::spawn(async move {
            let start = Instant::now();
            let mut figures = RssFigures::default();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if let Some(kib) = rss_kib(pid) {
                    figures.samples += 1;
                    figures.end_kib = Some(kib);
                    figures.max_kib = Some(figures.max_kib.map_or(kib, |m| m.max(kib)));
                    if figures.warm_kib.is_none() && start.elapsed() >= warmup {
                        figures.warm_kib = Some(kib);
                    }
                }
            }
            // One last look, so short runs still get an end figure.
            if let Some(kib) = rss_kib(pid) {
                figures.samples += 1;
                figures.end_kib = Some(kib);
                figures.max_kib = Some(figures.max_kib.map_or(kib, |m| m.max(kib)));
            }
            figures
        });
        Self { stop, handle }
    }

    pub async fn finish(self) -> RssFigures {
        self.stop.cancel();
        self.handle.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_rss_and_limits() {
        let pid = std::process::id();
        assert!(rss_kib(pid).is_some_and(|k| k > 0));
        let (soft, _) = open_file_limit("self");
        assert!(soft.is_some_and(|s| s > 0));
        assert!(open_files().is_some_and(|n| n >= 3));
    }

    #[test]
    fn cpu_time_counts_work_done() {
        let pid = std::process::id();
        let before = cpu_time(pid).expect("our own /proc/PID/stat");
        // Spin until the process has used 30 ms more (bounded in wall time:
        // on a loaded machine the spinning thread gets less than all of it).
        let spin = Instant::now();
        let mut x = 0u64;
        loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            if cpu_time(pid).unwrap() >= before + Duration::from_millis(30) {
                break;
            }
            assert!(
                spin.elapsed() < Duration::from_secs(10),
                "CPU time never grew"
            );
        }
    }

    #[test]
    fn an_impossible_descriptor_budget_is_refused_clearly() {
        let err = check_fd_budget(u64::MAX / 4).unwrap_err().to_string();
        assert!(err.contains("open files"), "{err}");
    }
}
