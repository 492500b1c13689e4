//! The guest as a whole: its name and identity (through the guest script
//! the daemon ships on the config disk, so the logic that applies a config
//! disk is the daemon's own version too), its listening sockets (from
//! /proc/net, with their processes), and its figures.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use banger_agent_proto::msg::{ErrorKind, GuestMetrics, ListenPort, Reply};

use crate::reply::error;

/// Where the guest init mounts the config disk.
pub const CONFIG_DIR: &str = "/run/banger/config";
/// The guest script on the config disk (`guest.sh rename NAME`, `guest.sh
/// reload EPOCH SEED`).
const GUEST_SH: &str = "guest.sh";
const BUSYBOX: &str = "/usr/lib/banger/busybox";

/// Runs the config disk's guest script with `args`; its first line of
/// output is the error when it fails.
async fn guest_sh(args: &[&str]) -> Result<(), Reply> {
    // A copy outside the config disk: `reload` unmounts it.
    let copy = Path::new("/run/banger").join(GUEST_SH);
    let src = Path::new(CONFIG_DIR).join(GUEST_SH);
    tokio::fs::copy(&src, &copy).await.map_err(|e| {
        error(
            ErrorKind::Failed,
            format!(
                "the config disk has no guest script ({}): {e}",
                src.display()
            ),
        )
    })?;
    let sh = if Path::new(BUSYBOX).exists() {
        vec![BUSYBOX, "sh"]
    } else {
        vec!["/bin/sh"]
    };
    let out = tokio::process::Command::new(sh[0])
        .args(&sh[1..])
        .arg(&copy)
        .args(args)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .output()
        .await
        .map_err(|e| {
            error(
                ErrorKind::Failed,
                format!("cannot run the guest script: {e}"),
            )
        })?;
    if out.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&out.stderr);
    let why: String = why.trim().chars().take(500).collect();
    Err(error(
        ErrorKind::Failed,
        format!("{} failed: {why}", args[0]),
    ))
}

pub async fn rename(name: &str) -> Result<(), Reply> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        return Err(error(
            ErrorKind::Invalid,
            format!("{name:?} is not a VM name"),
        ));
    }
    guest_sh(&["rename", name]).await
}

pub async fn reload(epoch: i64, seed: &str) -> Result<(), Reply> {
    if !seed.bytes().all(|b| b.is_ascii_hexdigit()) || seed.len() > 512 {
        return Err(error(ErrorKind::Invalid, "the seed is not hex"));
    }
    guest_sh(&["reload", &epoch.to_string(), seed]).await
}

/// A socket line of /proc/net/{tcp,udp}{,6}: local address, port, state,
/// inode. Pure.
pub fn parse_net_line(line: &str, v6: bool) -> Option<(String, u16, u8, u64)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 || !f[0].ends_with(':') {
        return None;
    }
    let (addr, port) = f[1].split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let state = u8::from_str_radix(f[3], 16).ok()?;
    let inode = f[9].parse().ok()?;
    let addr = if v6 {
        hex_v6(addr)?.to_string()
    } else {
        hex_v4(addr)?.to_string()
    };
    Some((addr, port, state, inode))
}

fn hex_v4(h: &str) -> Option<Ipv4Addr> {
    let n = u32::from_str_radix(h, 16).ok()?;
    Some(Ipv4Addr::from(n.swap_bytes()))
}

fn hex_v6(h: &str) -> Option<Ipv6Addr> {
    if h.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_mut(4).enumerate() {
        let word = u32::from_str_radix(&h[i * 8..i * 8 + 8], 16).ok()?;
        chunk.copy_from_slice(&word.swap_bytes().to_be_bytes());
    }
    Some(Ipv6Addr::from(bytes))
}

/// Socket inode -> (pid, process name), from /proc/*/fd.
fn socket_owners() -> HashMap<u64, (u32, String)> {
    let mut owners = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return owners;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let link = link.to_string_lossy();
            if let Some(ino) = link
                .strip_prefix("socket:[")
                .and_then(|l| l.strip_suffix(']'))
            {
                if let Ok(ino) = ino.parse() {
                    owners.entry(ino).or_insert((pid, comm.trim().to_string()));
                }
            }
        }
    }
    owners
}

/// A listening socket as /proc/net shows it: (proto, address, port, inode).
type Listening = (String, String, u16, u64);

/// The listening TCP sockets and bound UDP ones, from /proc/net alone.
fn listening() -> Vec<Listening> {
    let mut out = Vec::new();
    for (file, proto, v6) in [
        ("tcp", "tcp", false),
        ("tcp6", "tcp", true),
        ("udp", "udp", false),
        ("udp6", "udp", true),
    ] {
        let text = std::fs::read_to_string(format!("/proc/net/{file}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let Some((address, port, state, inode)) = parse_net_line(line, v6) else {
                continue;
            };
            // TCP: LISTEN (0A); UDP: bound, not connected (07).
            let listening = if proto == "tcp" {
                state == 0x0A
            } else {
                state == 0x07
            };
            if listening {
                out.push((proto.to_string(), address, port, inode));
            }
        }
    }
    out
}

/// `sockets` with the processes that own them, sorted, without duplicates.
fn with_owners(sockets: Vec<Listening>) -> Vec<ListenPort> {
    let owners = socket_owners();
    let mut out: Vec<ListenPort> = sockets
        .into_iter()
        .map(|(proto, address, port, inode)| {
            let owner = owners.get(&inode);
            ListenPort {
                proto,
                address,
                port,
                process: owner.map(|o| o.1.clone()),
                pid: owner.map(|o| o.0),
            }
        })
        .collect();
    out.sort_by(|a, b| (a.port, &a.proto, &a.address).cmp(&(b.port, &b.proto, &b.address)));
    out.dedup();
    out
}

/// The listening TCP sockets and bound UDP ones.
pub async fn ports() -> Result<Reply, Reply> {
    let ports = tokio::task::spawn_blocking(|| with_owners(listening()))
        .await
        .map_err(|e| error(ErrorKind::Failed, e.to_string()))?;
    Ok(Reply::Ports { ports })
}

/// How often a port watch looks at /proc/net.
const PORT_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// What opened and closed between two lists of sockets (by protocol,
/// address and port), opened first. Pure.
pub fn port_changes(old: &[ListenPort], new: &[ListenPort]) -> Vec<(&'static str, ListenPort)> {
    let key = |p: &ListenPort| (p.proto.clone(), p.address.clone(), p.port);
    let old_keys: std::collections::HashSet<_> = old.iter().map(key).collect();
    let new_keys: std::collections::HashSet<_> = new.iter().map(key).collect();
    let opened = new.iter().filter(|p| !old_keys.contains(&key(p)));
    let closed = old.iter().filter(|p| !new_keys.contains(&key(p)));
    opened
        .map(|p| ("open", p.clone()))
        .chain(closed.map(|p| ("close", p.clone())))
        .collect()
}

/// `watch_ports`: an `open` event for each socket listening now, then one
/// per socket opened or closed (looked for every 250 ms; the owners are
/// looked up only when something changed), until the daemon closes the
/// stream.
pub async fn watch_ports(f: &mut crate::reply::Frames) -> Result<(), Reply> {
    use futures::StreamExt;
    crate::reply::reply(f, Reply::Ok).await?;
    let mut seen: Vec<ListenPort> = Vec::new();
    let mut raw: Vec<(String, String, u16)> = vec![(String::new(), String::new(), 0)];
    let mut tick = tokio::time::interval(PORT_POLL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // The daemon closed the stream (or sent something): done.
            _ = f.next() => return Ok(()),
        }
        let now = tokio::task::spawn_blocking(listening)
            .await
            .map_err(|e| error(ErrorKind::Failed, e.to_string()))?;
        let mut keys: Vec<(String, String, u16)> = now
            .iter()
            .map(|l| (l.0.clone(), l.1.clone(), l.2))
            .collect();
        keys.sort();
        if keys == raw {
            continue;
        }
        raw = keys;
        let ports = tokio::task::spawn_blocking(move || with_owners(now))
            .await
            .map_err(|e| error(ErrorKind::Failed, e.to_string()))?;
        for (event, port) in port_changes(&seen, &ports) {
            let ev = Reply::PortEvent {
                event: event.into(),
                port,
            };
            crate::reply::reply(f, ev).await?;
        }
        seen = ports;
    }
}

/// `MemTotal`/`MemAvailable` of /proc/meminfo in bytes. Pure.
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let kb = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v.saturating_mul(1024))
            .unwrap_or(0)
    };
    (kb("MemTotal:"), kb("MemAvailable:"))
}

fn fs_usage(path: &str) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let unit = s.fragment_size();
    let total = s.blocks().saturating_mul(unit);
    let free = s.blocks_free().saturating_mul(unit);
    Some((total.saturating_sub(free), total))
}

pub async fn metrics() -> Result<Reply, Reply> {
    let m = tokio::task::spawn_blocking(|| {
        let load: Vec<f64> = std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .filter_map(|v| v.parse().ok())
            .collect();
        let (total, avail) =
            parse_meminfo(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default());
        let (root_used, root_total) = fs_usage("/").unwrap_or((0, 0));
        let work = std::fs::read_to_string(Path::new(CONFIG_DIR).join("work")).ok();
        let work = work.and_then(|w| fs_usage(w.trim()));
        let uptime = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|u| u.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0.0);
        GuestMetrics {
            load: [
                load.first().copied().unwrap_or(0.0),
                load.get(1).copied().unwrap_or(0.0),
                load.get(2).copied().unwrap_or(0.0),
            ],
            mem_total_bytes: total,
            mem_available_bytes: avail,
            root_used_bytes: root_used,
            root_total_bytes: root_total,
            work_used_bytes: work.map(|w| w.0),
            work_total_bytes: work.map(|w| w.1),
            uptime_secs: uptime,
        }
    })
    .await
    .map_err(|e| error(ErrorKind::Failed, e.to_string()))?;
    Ok(Reply::Metrics(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(proto: &str, port: u16, process: Option<&str>) -> ListenPort {
        ListenPort {
            proto: proto.into(),
            address: "0.0.0.0".into(),
            port,
            process: process.map(String::from),
            pid: None,
        }
    }

    #[test]
    fn port_changes_are_opens_then_closes_by_socket() {
        let old = [port("tcp", 22, Some("sshd")), port("tcp", 8000, None)];
        let new = [
            port("tcp", 22, Some("sshd")),
            port("tcp", 8000, Some("python3")),
            port("udp", 53, None),
        ];
        assert_eq!(
            port_changes(&old, &new),
            vec![("open", port("udp", 53, None))],
            "an owner found later is not a change"
        );
        assert_eq!(
            port_changes(&new, &old[..1]),
            vec![
                ("close", port("tcp", 8000, Some("python3"))),
                ("close", port("udp", 53, None))
            ]
        );
        assert!(port_changes(&old, &old).is_empty());
    }

    #[test]
    fn proc_net_lines_parse() {
        let tcp = "   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            parse_net_line(tcp, false),
            Some(("127.0.0.1".into(), 8000, 0x0A, 4242))
        );
        let v6 = "   1: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1";
        assert_eq!(parse_net_line(v6, true).map(|l| l.0), Some("::".into()));
        let lo6 = "   1: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 0 0 0 0 0 7 1";
        assert_eq!(parse_net_line(lo6, true).map(|l| l.0), Some("::1".into()));
        assert_eq!(
            parse_net_line("  sl  local_address rem_address", false),
            None
        );
        assert_eq!(parse_net_line("0: zz:1 0:0 0A 0 0 0 0 0 1", false), None);
    }

    #[test]
    fn meminfo_parses() {
        let t = "MemTotal:        2048 kB\nMemFree: 1 kB\nMemAvailable:    1024 kB\n";
        assert_eq!(parse_meminfo(t), (2048 * 1024, 1024 * 1024));
        assert_eq!(parse_meminfo(""), (0, 0));
    }
}
