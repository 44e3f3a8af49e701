//! CPU time and memory readings: `getrusage(RUSAGE_THREAD)` for the thread that plays the
//! host (the guest OS side: host stack or miniport), `/proc/<pid>/stat` for the device
//! process's CPU, `/proc/<pid>/status` for its resident memory.

use std::time::Duration;

use crate::error::{BenchError, Result};

/// CPU time (user + system) used so far by the calling thread.
pub fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own; no other memory involved.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// CPU time (user + system, all threads) of process `pid`, from `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| BenchError::io(&path, e))?;
    // The command name (field 2) is in parentheses and may contain spaces: fields after
    // the last ')' start with field 3 (state); utime and stime are fields 14 and 15.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| BenchError::Parse(format!("{path}: no ')' in {text:?}")))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| BenchError::Parse(format!("{path}: field {n} in {text:?}")))
    };
    let ticks = field(14)? + field(15)?;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / clock_ticks()))
}

/// Resident set size of process `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn process_rss(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| BenchError::io(&path, e))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| BenchError::Parse(format!("{path}: no VmRSS line")))?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| BenchError::Parse(format!("{path}: VmRSS value in {line:?}")))?;
    Ok(kb * 1024)
}

/// A CPU + wall clock window over a measurement.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    wall: std::time::Instant,
    host: Duration,
    device: Duration,
    device_pid: u32,
}

/// What a [`Window`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Spent {
    pub wall: Duration,
    /// CPU of the thread that opened the window (the host side).
    pub host_cpu: Duration,
    /// CPU of the whole device process.
    pub device_cpu: Duration,
}

impl Window {
    pub fn open(device_pid: u32) -> Result<Window> {
        Ok(Window {
            wall: std::time::Instant::now(),
            host: thread_cpu(),
            device: process_cpu(device_pid)?,
            device_pid,
        })
    }

    pub fn wall_elapsed(&self) -> Duration {
        self.wall.elapsed()
    }

    /// Must be called on the thread that opened the window.
    pub fn close(&self) -> Result<Spent> {
        Ok(Spent {
            wall: self.wall.elapsed(),
            host_cpu: thread_cpu().saturating_sub(self.host),
            device_cpu: process_cpu(self.device_pid)?.saturating_sub(self.device),
        })
    }
}

/// Physical memory of the machine in bytes (`MemTotal`).
pub fn mem_total() -> Result<u64> {
    let text =
        std::fs::read_to_string("/proc/meminfo").map_err(|e| BenchError::io("/proc/meminfo", e))?;
    text.lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| BenchError::Parse("/proc/meminfo: no MemTotal".into()))
}

/// Short description of the machine for the report.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb as f64 / (1 << 20) as f64))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("{cpus} vCPU {model}, {mem}, Linux {kernel}, load average at start {load}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_readings_are_nonzero_and_rss_grows_with_touched_memory() {
        let pid = std::process::id();
        let before = process_rss(pid).expect("rss");
        assert!(before > 0, "VmRSS of this test process is 0");
        let v = vec![1u8; 64 << 20];
        let after = process_rss(pid).expect("rss");
        assert!(
            after >= before + (48 << 20),
            "RSS grew by {} bytes after touching 64 MiB",
            after.saturating_sub(before)
        );
        drop(v);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        assert!(process_cpu(pid).is_ok());
    }
}
