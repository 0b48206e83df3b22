//! Processes as Linux's `/proc` shows them: a process's CPU time (user and system, from
//! `/proc/PID/stat`), so a run can report what it cost the server, the database and the load
//! generator itself ([`super::cost`]); its resident memory (`VmRSS` of `/proc/PID/status`) at
//! an expiry storm's phase end, since the holds a storm leaves behind are what might grow it;
//! the process named as a database is (`mariadbd`, `mysqld`); and the machine's busy time
//! (`/proc/stat`). Every reading is optional: without `/proc`, or once a process has exited,
//! the figures are absent rather than the run failing.

use serde::{Deserialize, Serialize};

/// Clock ticks per second of the times in `/proc/PID/stat`: Linux reports them in `USER_HZ`,
/// which its ABI fixes at 100 on every architecture this runs on (x86, ARM).
const USER_HZ: u64 = 100;

/// What one phase cost the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerUse {
    /// CPU seconds (user and system) the server used during the phase.
    pub cpu_s: Option<f64>,
    /// Resident memory at the phase's end, in KiB.
    pub rss_kib: Option<u64>,
}

impl ServerUse {
    /// The server's use since `cpu_start` (its CPU seconds when the phase started), and its
    /// memory now; all absent without a pid.
    pub fn since(pid: Option<u32>, cpu_start: Option<f64>) -> Self {
        let Some(pid) = pid else {
            return Self::default();
        };
        let cpu_s = match (cpu_start, cpu_s(pid)) {
            (Some(start), Some(end)) => Some(((end - start) * 100.0).round() / 100.0),
            _ => None,
        };
        Self {
            cpu_s,
            rss_kib: rss_kib(pid),
        }
    }
}

/// CPU seconds process `pid` has used so far.
pub fn cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = cpu_ticks(&stat)?;
    Some(ticks as f64 / USER_HZ as f64)
}

/// Seconds the machine's cores have been busy so far, all together: every state of the first
/// line of `/proc/stat` but idle and waiting for IO.
pub fn busy_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks = busy_ticks(stat.lines().next()?)?;
    Some(ticks as f64 / USER_HZ as f64)
}

/// The busy ticks of a `cpu  user nice system idle iowait irq softirq steal ...` line.
fn busy_ticks(line: &str) -> Option<u64> {
    let fields: Vec<u64> = (line.strip_prefix("cpu ")?.split_ascii_whitespace())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let all = fields.iter().take(8).sum::<u64>();
    let idle = fields.get(3)?.checked_add(*fields.get(4)?)?;
    all.checked_sub(idle)
}

/// The id of the first process (lowest id) whose command name is one of `names`.
pub fn pid_named(names: &[&str]) -> Option<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.into_iter().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| names.contains(&comm.trim_end()))
    })
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    vm_rss_kib(&status)
}

/// `utime + stime` of a `/proc/PID/stat` line. The command name (field 2) is in parentheses
/// and may hold spaces or parentheses itself, so fields are counted after its last `)`: there
/// the state is field 3, and `utime` and `stime` are fields 14 and 15.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// The `VmRSS:` line of `/proc/PID/status`, in KiB.
fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_after_the_command_name() {
        let stat = "4242 (flash sale) S 1 4242 4242 0 -1 4194304 2885 0 0 0 731 158 0 0 20 0 \
                    3 0 123456 1000000 5000 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(889));
        assert_eq!(cpu_ticks("4242 (x) S 1"), None);
        assert_eq!(cpu_ticks("no name at all"), None);
    }

    #[test]
    fn busy_ticks_are_all_but_idle_and_iowait() {
        let line = "cpu  100 5 50 1000 20 3 2 0 0 0";
        assert_eq!(busy_ticks(line), Some(160));
        assert_eq!(
            busy_ticks("cpu0 1 2 3 4 5"),
            None,
            "the machine's line only"
        );
        assert_eq!(busy_ticks("cpu  1 2"), None);
    }

    #[test]
    fn the_resident_memory_is_read_from_the_vm_rss_line() {
        let status = "Name:\tflashsale\nVmPeak:\t  300000 kB\nVmRSS:\t   28104 kB\nThreads:\t5\n";
        assert_eq!(vm_rss_kib(status), Some(28_104));
        assert_eq!(vm_rss_kib("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn this_process_can_read_its_own_figures_on_linux() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let pid = std::process::id();
        assert!(cpu_s(pid).is_some());
        assert!(busy_s().is_some_and(|s| s > 0.0));
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let own = pid_named(&[comm.trim_end()]);
        assert!(own.is_some_and(|found| found <= pid), "{comm:?}: {own:?}");
        assert!(rss_kib(pid).is_some_and(|kib| kib > 0));
    }
}
