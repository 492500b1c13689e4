//! The leak audit run after every crash test: everything a daemon can make
//! (VMM processes, TAPs, nft chains, directories, rows, addresses, loop and
//! device-mapper devices, mounts, operations) compared with what its rows
//! say it should have. A converged daemon has no finding.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;

use crate::{TestDaemon, TestNetns};

/// One VM row as the audit needs it.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    name: String,
    state: String,
    pid: Option<i64>,
    tap: String,
    ip: String,
}

fn rows(db: &Path) -> Result<Vec<Row>, String> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("cannot open {}: {e}", db.display()))?;
    let mut stmt = c
        .prepare("SELECT id, name, state, pid, tap, ip FROM vms")
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], |r| {
            Ok(Row {
                id: r.get(0)?,
                name: r.get(1)?,
                state: r.get(2)?,
                pid: r.get(3)?,
                tap: r.get(4)?,
                ip: r.get(5)?,
            })
        })
        .map_err(|e| e.to_string())?;
    rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
}

/// The TAP a VM's row names.
pub fn tap_of(d: &TestDaemon, id: &str) -> String {
    rows(&d.state_dir.join("banger.db"))
        .ok()
        .and_then(|r| r.into_iter().find(|r| r.id == id))
        .map(|r| r.tap)
        .unwrap_or_default()
}

fn column(db: &Path, sql: &str) -> Vec<String> {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| {
            let mut stmt = c.prepare(sql)?;
            let v = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(v)
        })
        .unwrap_or_else(|e| vec![format!("<query failed: {e}>")])
}

fn out(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A process's command line (NULs as spaces), empty when it is gone.
fn cmdline(pid: i64) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// VMM processes of this daemon: they name its runtime dir's `vms/`.
fn vmms(d: &TestDaemon) -> HashMap<i64, String> {
    let pattern = format!("{}/run/vms/", d.dir.display());
    let mut found = HashMap::new();
    for line in out(Command::new("pgrep").args(["-af", &pattern])).lines() {
        let mut parts = line.splitn(2, ' ');
        let (Some(pid), Some(cmd)) = (parts.next(), parts.next()) else {
            continue;
        };
        // pgrep itself, and shells that only mention the path, are not VMMs.
        if cmd.starts_with("pgrep") {
            continue;
        }
        if let Ok(pid) = pid.parse() {
            found.insert(pid, cmd.to_string());
        }
    }
    found
}

/// What the daemon at `d` (running, in `ns`) has that its rows do not
/// account for. Empty when nothing leaked.
pub fn leak_audit(d: &TestDaemon, ns: &TestNetns) -> Vec<String> {
    let db = d.state_dir.join("banger.db");
    let rows = match rows(&db) {
        Ok(r) => r,
        Err(e) => return vec![e],
    };
    let mut leaks = Vec::new();
    let ids: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let running: Vec<&Row> = rows.iter().filter(|r| r.state == "running").collect();
    // Rows: converged states only, and a running VM's pid is its VMM.
    let procs = vmms(d);
    for r in &rows {
        match r.state.as_str() {
            "running" => match r.pid {
                Some(pid) if cmdline(pid).contains(&r.id[..16]) => {}
                pid => leaks.push(format!("running VM {} has no VMM (pid {pid:?})", r.name)),
            },
            "stopped" => {
                if r.pid.is_some() {
                    leaks.push(format!("stopped VM {} keeps a pid", r.name));
                }
            }
            s => leaks.push(format!("VM {} is left `{s}`", r.name)),
        }
    }
    // Addresses are each a VM's own.
    let mut ips = HashSet::new();
    for r in &rows {
        if !ips.insert(r.ip.as_str()) {
            leaks.push(format!("address {} is given twice", r.ip));
        }
    }
    // VMM processes no running row owns.
    for (pid, cmd) in &procs {
        if !running.iter().any(|r| r.pid == Some(*pid)) {
            leaks.push(format!("VMM pid {pid} has no running VM: {cmd}"));
        }
    }
    // TAPs: a VM's TAP exists only while it runs.
    let links = ns.links();
    for link in &links {
        let name = link.split('@').next().unwrap_or(link);
        if name.starts_with("bg-") && !running.iter().any(|r| r.tap == name) {
            leaks.push(format!("TAP {name} belongs to no running VM"));
        }
    }
    for r in &running {
        if !links
            .iter()
            .any(|l| l.split('@').next() == Some(r.tap.as_str()))
        {
            leaks.push(format!("running VM {} has no TAP {}", r.name, r.tap));
        }
    }
    // nft chains per VM (egress-, host-, port- + the id's first 12).
    let ruleset =
        out(Command::new("ip").args(["netns", "exec", &ns.name, "nft", "list", "ruleset"]));
    for line in ruleset.lines() {
        let Some(chain) = line.trim().strip_prefix("chain ") else {
            continue;
        };
        let chain = chain.trim_end_matches(" {");
        if let Some((_, id)) = chain.split_once('-') {
            if !ids.iter().any(|known| known.starts_with(id)) {
                leaks.push(format!("nft chain {chain} belongs to no VM"));
            }
        }
    }
    // Directories of VMs, snapshots and operations.
    for base in [d.state_dir.join("vms"), d.dir.join("run/vms")] {
        for e in entries(&base) {
            if !ids.contains(e.as_str()) {
                leaks.push(format!("{}/{e} belongs to no VM", base.display()));
            }
        }
    }
    let snaps = column(&db, "SELECT id FROM snapshots");
    for e in entries(&d.state_dir.join("snapshots")) {
        if !snaps.contains(&e) {
            leaks.push(format!("snapshot dir {e} belongs to no snapshot"));
        }
    }
    for e in entries(&d.state_dir.join("tmp")) {
        leaks.push(format!("scratch dir tmp/{e} is left"));
    }
    for op in column(&db, "SELECT id FROM ops WHERE state = 'running'") {
        leaks.push(format!("operation {op} is left running"));
    }
    // Loop devices on this daemon's files, device-mapper devices of VMs
    // that do not run, and mounts under its dirs.
    let dir = d.dir.display().to_string();
    for line in out(Command::new("losetup").args(["-a"])).lines() {
        if line.contains(&dir)
            && !running
                .iter()
                .any(|r| line.contains(&format!("/vms/{}/", r.id)))
        {
            leaks.push(format!("loop device left: {line}"));
        }
    }
    for line in out(Command::new("dmsetup").args(["ls"])).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        for r in &rows {
            if name.contains(&r.id) && r.state != "running" {
                leaks.push(format!(
                    "device-mapper device {name} of stopped VM {}",
                    r.name
                ));
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines().filter(|l| l.contains(&dir)) {
        leaks.push(format!("mount left: {line}"));
    }
    leaks
}

/// Panics naming every leak `leak_audit` finds, with `after` saying when.
pub fn assert_no_leaks(d: &TestDaemon, ns: &TestNetns, after: &str) {
    let leaks = leak_audit(d, ns);
    if leaks.is_empty() {
        return;
    }
    let log = d.stderr();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    panic!(
        "after {after}, the leak audit found {}:\n  {}\nthe daemon's log ends:\n{}",
        leaks.len(),
        leaks.join("\n  "),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}
