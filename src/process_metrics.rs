//! The standard Prometheus process metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_start_time_seconds`), rendered as exposition text from
//! `/proc/self` at each scrape and appended to `/metrics` by `http`.
//!
//! Hand-written rather than a crate: six numbers from three files, and the `metrics` facade has
//! no float counter for CPU seconds. Parsing is pure (`from_proc`) and unit-tested; on a system
//! without `/proc` nothing is rendered.

use std::fmt::Write;

/// Clock ticks per second of `/proc/<pid>/stat` times: the kernel reports them in USER_HZ,
/// which is 100 on every Linux architecture Kubernetes runs on.
const USER_HZ: f64 = 100.0;

/// One reading of the process's resources.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time_seconds: f64,
}

/// Parses the contents of `/proc/self/stat`, `/proc/self/status`, `/proc/self/limits` and the
/// `btime` line's file `/proc/stat`; `None` when a field is missing.
pub fn from_proc(
    stat: &str,
    status: &str,
    limits: &str,
    system_stat: &str,
    open_fds: u64,
) -> Option<Reading> {
    // The command name (field 2) may contain spaces and parentheses: fields restart after the
    // last ')'. Of the rest, index 0 is field 3 (state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |field: usize| -> Option<f64> { fields.get(field - 3)?.parse::<f64>().ok() };
    let cpu_seconds = (ticks(14)? + ticks(15)?) / USER_HZ;
    let kb = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|v| v * 1024)
    };
    let btime: f64 = system_stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    let max_fds = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l["Max open files".len()..].split_whitespace().next())
        .and_then(|soft| soft.parse().ok());
    Some(Reading {
        cpu_seconds,
        resident_bytes: kb("VmRSS:")?,
        virtual_bytes: kb("VmSize:")?,
        open_fds,
        max_fds,
        start_time_seconds: btime + ticks(22)? / USER_HZ,
    })
}

/// Reads this process's resources now; `None` without `/proc`.
pub fn read() -> Option<Reading> {
    let file = |p: &str| std::fs::read_to_string(p).ok();
    let fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    from_proc(
        &file("/proc/self/stat")?,
        &file("/proc/self/status")?,
        &file("/proc/self/limits").unwrap_or_default(),
        &file("/proc/stat")?,
        // The directory handle used for counting is one of them.
        fds.saturating_sub(1),
    )
}

/// Prometheus text exposition of `reading`.
pub fn render(reading: &Reading) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    metric(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent, in seconds.",
        reading.cpu_seconds.to_string(),
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        reading.resident_bytes.to_string(),
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        reading.virtual_bytes.to_string(),
    );
    metric("process_open_fds", "gauge", "Open file descriptors.", reading.open_fds.to_string());
    if let Some(max) = reading.max_fds {
        metric("process_max_fds", "gauge", "Limit of open file descriptors.", max.to_string());
    }
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
        reading.start_time_seconds.to_string(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (k8s (work) reg) S 1 4242 4242 0 -1 4194560 1861 0 0 0 250 75 0 0 20 0 \
                        12 0 360000 123456789 1500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
    const STATUS: &str =
        "Name:\tk8s-workload-re\nVmPeak:\t  200000 kB\nVmSize:\t  190000 kB\nVmRSS:\t   51200 kB\n";
    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units\n\
                          Max open files            1048576              1048576              files\n";
    const SYSTEM: &str = "cpu  1 2 3\nbtime 1764633600\nprocesses 10\n";

    #[test]
    fn parses_the_proc_files() {
        let r = from_proc(STAT, STATUS, LIMITS, SYSTEM, 9).unwrap();
        assert_eq!(r.cpu_seconds, 3.25, "utime 250 + stime 75 ticks");
        assert_eq!(r.resident_bytes, 51200 * 1024);
        assert_eq!(r.virtual_bytes, 190000 * 1024);
        assert_eq!(r.open_fds, 9);
        assert_eq!(r.max_fds, Some(1048576));
        assert_eq!(r.start_time_seconds, 1764633600.0 + 3600.0, "starttime 360000 ticks after boot");
    }

    #[test]
    fn a_missing_field_gives_nothing_rather_than_a_wrong_number() {
        assert!(from_proc("4242 (x) S 1", STATUS, LIMITS, SYSTEM, 1).is_none());
        assert!(from_proc(STAT, "Name:\tx\n", LIMITS, SYSTEM, 1).is_none());
        assert!(from_proc(STAT, STATUS, LIMITS, "cpu 1\n", 1).is_none());
        assert_eq!(from_proc(STAT, STATUS, "", SYSTEM, 1).unwrap().max_fds, None);
    }

    #[test]
    fn renders_prometheus_text_and_reads_this_process() {
        let text = render(&read().expect("/proc on Linux"));
        for name in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{text}");
            let value = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap();
            assert!(value.rsplit(' ').next().unwrap().parse::<f64>().unwrap() > 0.0, "{value}");
        }
    }
}
