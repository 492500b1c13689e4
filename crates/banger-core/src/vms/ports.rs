//! `vm ports`: the guest's listening sockets, from `ss`. Parsing is pure
//! and strict: a line banger does not understand is an error naming it.

use banger_api::VmPort;

/// The guest command: listening TCP and UDP sockets, numeric, with processes.
pub const GUEST_PORTS_COMMAND: &str = "ss -H -tulpn";

/// `users:(("sshd",pid=150,fd=3),...)` -> ("sshd", 150). Pure.
fn parse_process(s: &str) -> (Option<String>, Option<u32>) {
    let Some(rest) = s.strip_prefix("users:((\"") else {
        return (None, None);
    };
    let Some((name, rest)) = rest.split_once('"') else {
        return (None, None);
    };
    let pid = rest
        .split(',')
        .find_map(|kv| kv.strip_prefix("pid="))
        .and_then(|p| p.trim_end_matches(')').parse().ok());
    (Some(name.to_string()), pid)
}

/// `0.0.0.0:22`, `[::]:22`, `*:22`, `127.0.0.53%lo:53` -> ("0.0.0.0", 22). Pure.
fn parse_local(s: &str) -> Option<(String, u16)> {
    let (addr, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let addr = addr.split('%').next().unwrap_or(addr);
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    if addr.is_empty() {
        return None;
    }
    Some((addr.to_string(), port))
}

fn is_loopback(addr: &str) -> bool {
    addr.starts_with("127.") || addr == "::1"
}

/// Parses `ss -H -tulpn` output for VM `vm`. Pure.
pub fn parse_ss(out: &str, vm: &str) -> Result<Vec<VmPort>, String> {
    let mut ports = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 {
            return Err(format!("unexpected line from ss: {line:?}"));
        }
        let proto = match f[0] {
            "tcp" | "udp" => f[0].to_string(),
            other => return Err(format!("unexpected protocol {other:?} from ss in {line:?}")),
        };
        let (address, port) =
            parse_local(f[4]).ok_or_else(|| format!("unexpected address {:?} from ss", f[4]))?;
        let (process, pid) = f.get(6).map(|p| parse_process(p)).unwrap_or((None, None));
        let url =
            (proto == "tcp" && !is_loopback(&address)).then(|| format!("http://{vm}.vm:{port}"));
        ports.push(VmPort {
            proto,
            address,
            port,
            process,
            pid,
            url,
        });
    }
    ports.sort_by(|a, b| (a.port, &a.proto, &a.address).cmp(&(b.port, &b.proto, &b.address)));
    ports.dedup();
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ss_output() {
        let out = "udp   UNCONN 0      0      127.0.0.53%lo:53        0.0.0.0:*    users:((\"systemd-resolve\",pid=88,fd=13))\n\
tcp   LISTEN 0      128          0.0.0.0:22        0.0.0.0:*    users:((\"sshd\",pid=150,fd=3))\n\
tcp   LISTEN 0      5               [::]:8000         [::]:*    users:((\"python3\",pid=301,fd=3),(\"python3\",pid=302,fd=3))\n\
tcp   LISTEN 0      5                  *:9000            *:*\n";
        let p = parse_ss(out, "dev").expect("parses");
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].port, 22);
        assert_eq!(p[0].process.as_deref(), Some("sshd"));
        assert_eq!(p[0].pid, Some(150));
        assert_eq!(p[0].url.as_deref(), Some("http://dev.vm:22"));
        let dns = p.iter().find(|x| x.port == 53).expect("53");
        assert_eq!(
            (dns.proto.as_str(), dns.address.as_str(), dns.url.clone()),
            ("udp", "127.0.0.53", None)
        );
        let py = p.iter().find(|x| x.port == 8000).expect("8000");
        assert_eq!((py.address.as_str(), py.pid), ("::", Some(301)));
        let bare = p.iter().find(|x| x.port == 9000).expect("9000");
        assert_eq!((bare.address.as_str(), bare.process.clone()), ("*", None));
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        for bad in [
            "tcp LISTEN 0",
            "sctp LISTEN 0 5 0.0.0.0:1 0.0.0.0:*",
            "tcp LISTEN 0 5 nonsense 0.0.0.0:*",
        ] {
            assert!(parse_ss(bad, "dev").is_err(), "{bad}");
        }
    }
}
