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

/// How the host reaches a VM's ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// The VM's address, when the host's own network namespace routes to
    /// it (the daemon runs there, not in `network.netns`).
    pub direct: Option<String>,
    /// Forwards: guest port -> the host's `addr:port` that reaches it.
    pub forwarded: Vec<(u16, String)>,
}

/// Ports whose listener speaks something other than HTTP (ssh, smtp, dns,
/// databases): no link is offered for them.
const NOT_HTTP: &[u16] = &[22, 25, 53, 3306, 5432, 6379, 27017];

/// The `http://` link the host can open for a guest socket, if any: only a
/// TCP listener reachable from outside the guest, not a known non-HTTP
/// service, and through a forward when there is one, else the VM's address
/// when the host routes to it. Pure.
pub fn url_for(port: &VmPort, reach: &Reach) -> Option<String> {
    let http_like = port.proto == "tcp"
        && !is_loopback(&port.address)
        && !NOT_HTTP.contains(&port.port)
        && port.process.as_deref() != Some("sshd");
    if !http_like {
        return None;
    }
    if let Some((_, host)) = reach.forwarded.iter().find(|(g, _)| *g == port.port) {
        return Some(format!("http://{host}/"));
    }
    reach
        .direct
        .as_ref()
        .map(|ip| format!("http://{ip}:{}/", port.port))
}

/// Parses `ss -H -tulpn` output; links from [`url_for`]. Pure.
pub fn parse_ss(out: &str, reach: &Reach) -> Result<Vec<VmPort>, String> {
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
        let mut p = VmPort {
            proto,
            address,
            port,
            process,
            pid,
            url: None,
        };
        p.url = url_for(&p, reach);
        ports.push(p);
    }
    ports.sort_by(|a, b| (a.port, &a.proto, &a.address).cmp(&(b.port, &b.proto, &b.address)));
    ports.dedup();
    Ok(ports)
}

/// The agent's listening sockets (from /proc/net) as the API's, with
/// links. Pure.
pub fn from_agent(
    listening: Vec<banger_agent_proto::msg::ListenPort>,
    reach: &Reach,
) -> Vec<VmPort> {
    let mut ports: Vec<VmPort> = listening
        .into_iter()
        .map(|l| {
            let mut p = VmPort {
                proto: l.proto,
                address: l.address,
                port: l.port,
                process: l.process,
                pid: l.pid,
                url: None,
            };
            p.url = url_for(&p, reach);
            p
        })
        .collect();
    ports.sort_by(|a, b| (a.port, &a.proto, &a.address).cmp(&(b.port, &b.proto, &b.address)));
    ports.dedup();
    ports
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
        let direct = Reach {
            direct: Some("172.30.0.3".into()),
            forwarded: vec![],
        };
        let p = parse_ss(out, &direct).expect("parses");
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].port, 22);
        assert_eq!(p[0].process.as_deref(), Some("sshd"));
        assert_eq!(p[0].pid, Some(150));
        assert_eq!(p[0].url, None, "sshd is not an http link");
        let dns = p.iter().find(|x| x.port == 53).expect("53");
        assert_eq!(
            (dns.proto.as_str(), dns.address.as_str(), dns.url.clone()),
            ("udp", "127.0.0.53", None)
        );
        let py = p.iter().find(|x| x.port == 8000).expect("8000");
        assert_eq!((py.address.as_str(), py.pid), ("::", Some(301)));
        assert_eq!(py.url.as_deref(), Some("http://172.30.0.3:8000/"));
        // In a netns the host reaches a VM only through its forwards.
        let netns = Reach {
            direct: None,
            forwarded: vec![(8000, "127.0.0.1:18000".into())],
        };
        let p = parse_ss(out, &netns).expect("parses");
        let link = |port: u16| {
            p.iter()
                .find(|x| x.port == port)
                .and_then(|x| x.url.clone())
        };
        assert_eq!(link(8000).as_deref(), Some("http://127.0.0.1:18000/"));
        assert_eq!(link(9000), None);
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
            assert!(parse_ss(bad, &Reach::default()).is_err(), "{bad}");
        }
    }
}
