//! VM statistics: host side from /proc, guest side over SSH. Parsing is
//! pure and strict.

use std::collections::HashMap;
use std::time::Instant;

use banger_api::GuestStats;

/// The kernel's clock ticks per second (`/proc/PID/stat` counts in them).
pub fn clock_ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// CPU use in percent of one core, to 0.1, from `ticks` used over `secs`
/// at `hz` ticks per second. Pure.
pub fn cpu_percent(ticks: u64, hz: f64, secs: f64) -> f64 {
    (ticks as f64 / hz / secs.max(0.001) * 1000.0).round() / 10.0
}

/// CPU percentages from successive tick samples per VM (the fleet stream
/// samples every VM once per round). Pure apart from the clock it is given.
#[derive(Debug, Default)]
pub struct CpuMeter {
    hz: f64,
    prev: HashMap<String, (u64, Instant)>,
    next: HashMap<String, (u64, Instant)>,
}

impl CpuMeter {
    pub fn new(hz: f64) -> CpuMeter {
        CpuMeter {
            hz,
            ..CpuMeter::default()
        }
    }

    /// Records VM `id`'s `ticks` at `now`; its CPU use since the last
    /// round's sample, if it had one.
    pub fn sample(&mut self, id: &str, ticks: u64, now: Instant) -> Option<f64> {
        let cpu = self.prev.remove(id).map(|(t0, at)| {
            let secs = now.duration_since(at).as_secs_f64();
            cpu_percent(ticks.saturating_sub(t0), self.hz, secs)
        });
        self.next.insert(id.to_string(), (ticks, now));
        cpu
    }

    /// Ends a round: VMs not sampled in it are forgotten.
    pub fn end_round(&mut self) {
        self.prev = std::mem::take(&mut self.next);
    }
}

/// The command run in the guest; [`parse_guest`] reads its output.
pub const GUEST_STATS_COMMAND: &str = "cat /proc/loadavg; grep -E '^(MemTotal|MemAvailable):' /proc/meminfo; df -Pk / /work 2>/dev/null";

/// Parses the output of [`GUEST_STATS_COMMAND`].
pub fn parse_guest(text: &str) -> Result<GuestStats, String> {
    let mut lines = text.lines();
    let load_line = lines.next().ok_or("no /proc/loadavg line")?;
    let load: Vec<f64> = load_line
        .split_whitespace()
        .take(3)
        .map(|x| x.parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad loadavg {load_line:?}: {e}"))?;
    if load.len() != 3 {
        return Err(format!("bad loadavg {load_line:?}"));
    }
    let (mut total, mut avail) = (None, None);
    let mut mounts: Vec<(String, u64, u64)> = Vec::new();
    for l in lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            ["MemTotal:", kb, "kB"] => total = Some(kib(kb, "MemTotal")?),
            ["MemAvailable:", kb, "kB"] => avail = Some(kib(kb, "MemAvailable")?),
            ["Filesystem", ..] => {}
            [_, blocks, used, _avail, _pct, mount] => {
                let b = kib(blocks, "df blocks")?;
                let u = kib(used, "df used")?;
                mounts.push((mount.to_string(), u, b));
            }
            [] => {}
            _ => return Err(format!("unexpected line {l:?}")),
        }
    }
    let root = mounts
        .iter()
        .find(|m| m.0 == "/")
        .ok_or("no df line for /")?;
    let work = mounts.iter().find(|m| m.0 == "/work");
    Ok(GuestStats {
        load: [load[0], load[1], load[2]],
        mem_total_bytes: total.ok_or("no MemTotal")?,
        mem_available_bytes: avail.ok_or("no MemAvailable")?,
        root_used_bytes: root.1,
        root_total_bytes: root.2,
        work_used_bytes: work.map(|w| w.1),
        work_total_bytes: work.map(|w| w.2),
    })
}

/// A guest's count of KiB as bytes; a number that does not fit is an
/// error, not a wrap (the guest is untrusted). Pure.
fn kib(text: &str, what: &str) -> Result<u64, String> {
    text.parse::<u64>()
        .map_err(|e| format!("bad {what} {text:?}: {e}"))?
        .checked_mul(1024)
        .ok_or_else(|| format!("{what} {text} KiB is more than a u64 holds"))
}

/// utime + stime of a process, in clock ticks (`/proc/PID/stat` fields 14, 15).
pub fn parse_proc_stat_ticks(stat: &str) -> Option<u64> {
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, so utime (14) is index 11.
    f.get(11)?
        .parse::<u64>()
        .ok()?
        .checked_add(f.get(12)?.parse::<u64>().ok()?)
}

/// VmRSS from `/proc/PID/status`, in bytes.
pub fn parse_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .and_then(|kb| kb.checked_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_meter_reports_use_between_rounds_and_forgets_gone_vms() {
        let mut m = CpuMeter::new(100.0);
        let t0 = Instant::now();
        assert_eq!(m.sample("a", 1000, t0), None);
        m.end_round();
        let t1 = t0 + std::time::Duration::from_secs(2);
        // 150 ticks at 100 Hz over 2 s: 75 % of one core.
        assert_eq!(m.sample("a", 1150, t1), Some(75.0));
        m.end_round();
        m.end_round();
        assert_eq!(
            m.sample("a", 1200, t1),
            None,
            "a round without it forgets it"
        );
        assert_eq!(cpu_percent(1, 100.0, 0.0), 1000.0, "no division by zero");
    }

    #[test]
    fn parses_guest_output() {
        let out = "0.12 0.05 0.01 1/80 345\nMemTotal:        1000000 kB\nMemAvailable:     800000 kB\nFilesystem     1024-blocks   Used Available Capacity Mounted on\n/dev/vda           1000000 400000    600000      40% /\n/dev/vdc            200000      24    199976       1% /work\n";
        let g = parse_guest(out).expect("parses");
        assert_eq!(g.load, [0.12, 0.05, 0.01]);
        assert_eq!(g.mem_total_bytes, 1_024_000_000);
        assert_eq!(g.root_used_bytes, 409_600_000);
        assert_eq!(g.work_total_bytes, Some(204_800_000));
    }

    #[test]
    fn rejects_garbage() {
        let huge = format!(
            "0.1 0.1 0.1 1/1 1\nMemTotal: {} kB\nMemAvailable: 1 kB\n\
             /dev/vda 1 1 0 1% /\n",
            u64::MAX
        );
        assert!(parse_guest(&huge)
            .expect_err("overflow")
            .contains("more than"));
        assert_eq!(parse_rss(&format!("VmRSS: {} kB\n", u64::MAX)), None);
        assert_eq!(
            parse_proc_stat_ticks(&format!("1 (x) S {} {} {}", "0 ".repeat(8), u64::MAX, 1)),
            None
        );
        assert!(parse_guest("").is_err());
        assert!(parse_guest("x y z\n").is_err());
        assert!(
            parse_guest("0.1 0.1 0.1 1/1 1\nMemTotal: 1 kB\n").is_err(),
            "no df"
        );
        assert!(parse_guest("0.1 0.1 0.1 1/1 1\nrm -rf /\n").is_err());
    }

    #[test]
    fn parses_proc_files() {
        let stat = "1234 (qemu-system-x86) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_proc_stat_ticks(stat), Some(300));
        assert_eq!(parse_rss("Name:\tx\nVmRSS:\t  2048 kB\n"), Some(2 << 20));
        assert_eq!(parse_rss("Name:\tx\n"), None);
    }
}
