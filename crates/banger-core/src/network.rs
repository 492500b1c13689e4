//! Basic VM networking: a daemon-owned bridge, a TAP per VM, addresses from
//! the store (IPAM). Pure address math and naming here; the effects go
//! through rtnetlink ([`crate::netlink`]) inside the daemon's network
//! namespace.
//!
//! The bridge is set up lazily, when the first VM needs it, so a daemon used
//! only for images or doctor changes no network state. With
//! `network.netns`, bangerd enters that namespace before anything else
//! (see bangerd's main), so the bridge, TAPs and VMM processes all live
//! there and the host's namespace is left untouched.
//!
//! The VM network is IPv4 only: IPv6 is off on the bridge and every TAP (no
//! link-local address the guests could reach the host's `::` services
//! through), and the bridge firewall lets a VM's port send only IPv4 and
//! ARP (`firewall::ruleset`).

use std::net::Ipv4Addr;

use thiserror::Error;

use crate::tools::{self, ToolError};

#[derive(Debug, Error)]
pub enum NetworkError {
    #[error("Invalid subnet {0:?}: use an IPv4 CIDR with a prefix between /16 and /29, e.g. 172.30.0.0/24")]
    BadSubnet(String),
    #[error("No free address left in {0}")]
    Exhausted(String),
    #[error("Network setup failed")]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Netlink(#[from] crate::netlink::NetlinkError),
    #[error("Cannot turn IPv6 off on {link} ({path}): {source}")]
    Ipv6Off {
        link: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl crate::ToApiError for NetworkError {
    fn code(&self) -> banger_api::ErrorCode {
        match self {
            NetworkError::BadSubnet(_) => banger_api::ErrorCode::InvalidRequest,
            NetworkError::Exhausted(_) => banger_api::ErrorCode::Conflict,
            NetworkError::Tool(t) => t.code(),
            NetworkError::Netlink(_) | NetworkError::Ipv6Off { .. } => {
                banger_api::ErrorCode::Internal
            }
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            NetworkError::Exhausted(_) => {
                Some("Remove VMs, or configure a larger network.subnet".into())
            }
            NetworkError::Tool(t) => t.hint(),
            _ => None,
        }
    }
}

/// A parsed IPv4 subnet. The first host address is the bridge (gateway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(s: &str) -> Result<Subnet, NetworkError> {
        let bad = || NetworkError::BadSubnet(s.into());
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(16..=29).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(ip) & !mask != 0 {
            return Err(bad());
        }
        Ok(Subnet { base: ip, prefix })
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1)
    }

    /// Addresses VMs may get: after the gateway, before broadcast.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.base);
        let size = 1u32 << (32 - self.prefix);
        (base + 2..base + size - 1).map(Ipv4Addr::from)
    }

    /// Whether `ip` is in the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.base)
    }

    /// The lowest host address not in `used`.
    pub fn allocate(&self, used: &[Ipv4Addr]) -> Result<Ipv4Addr, NetworkError> {
        self.hosts()
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| NetworkError::Exhausted(self.to_string()))
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// The TAP device name of a VM: `bg-` and 12 characters of its id (IFNAMSIZ is 16).
pub fn tap_name(vm_id: &str) -> String {
    format!("bg-{}", &vm_id[..vm_id.len().min(12)])
}

/// A locally administered unicast MAC derived from the VM id.
pub fn mac_for(vm_id: &str) -> String {
    let mut x = [0u8; 4];
    for (i, c) in vm_id.bytes().enumerate() {
        x[i % 4] = x[i % 4].wrapping_mul(31).wrapping_add(c);
    }
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", x[0], x[1], x[2], x[3])
}

fn ip(args: &[&str]) -> Result<(), ToolError> {
    let ip = tools::require("ip")?;
    tools::run(&ip, args).map(|_| ())
}

/// Creates the bridge with the gateway address if it does not exist. Idempotent.
pub fn ensure_bridge(bridge: &str, subnet: &Subnet) -> Result<(), NetworkError> {
    // Creates run in parallel; the bridge is set up once.
    static BRIDGE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _held = BRIDGE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    crate::netlink::ensure_bridge(bridge, subnet.gateway(), subnet.prefix)?;
    ipv6_off(bridge)
}

/// Turns IPv6 off on `link` (its addresses go with it). A kernel without
/// IPv6 has nothing to turn off.
pub fn ipv6_off(link: &str) -> Result<(), NetworkError> {
    let path = format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6");
    if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
        return Ok(());
    }
    std::fs::write(&path, "1").map_err(|source| NetworkError::Ipv6Off {
        link: link.to_string(),
        path,
        source,
    })
}

/// Creates a TAP attached to the bridge, up (replacing a stale one).
pub fn create_tap(tap: &str, bridge: &str, owner: Option<(u32, u32)>) -> Result<(), NetworkError> {
    delete_tap(tap);
    crate::netlink::create_tap(tap, owner)?;
    ipv6_off(tap)?;
    crate::netlink::attach_up(tap, bridge)?;
    Ok(())
}

/// Forgets the neighbor (ARP) entry of an address, so a VM reusing the
/// address of a removed one (with another MAC) is reachable at once.
pub fn flush_neighbor(ip_addr: &str, bridge: &str) {
    if let Ok(ip) = ip_addr.parse() {
        if let Err(e) = crate::netlink::flush_neighbour(ip, bridge) {
            tracing::debug!(error = %e, "cannot flush the neighbour entry");
        }
    }
}

/// Removes a link (TAP or bridge); a missing one is fine.
pub fn delete_tap(tap: &str) {
    if let Err(e) = crate::netlink::delete_link(tap) {
        tracing::warn!(link = tap, error = %e, "cannot delete link");
    }
}

/// Names of the network interfaces in the current namespace.
pub fn list_links() -> Vec<String> {
    crate::netlink::link_names().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot list links");
        Vec::new()
    })
}

/// Whether a network interface exists in the current network namespace.
/// (Asks netlink: /sys/class/net shows the namespace sysfs was mounted in,
/// which after `setns` is not ours.)
pub fn link_exists(name: &str) -> bool {
    matches!(crate::netlink::link_index(name), Ok(Some(_)))
}

static HOST_NETNS: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();

/// A command for `program` that runs in the host's network namespace: the
/// one bangerd started in, before [`enter_netns`]. Image builds use it to
/// reach the package mirror when VMs are fenced off in a namespace.
pub fn host_net_command(program: &std::path::Path) -> std::process::Command {
    use std::os::fd::AsRawFd;
    match (HOST_NETNS.get(), tools::find("nsenter")) {
        (Some(f), Some(nsenter)) => {
            let mut c = std::process::Command::new(nsenter);
            c.arg(format!(
                "--net=/proc/{}/fd/{}",
                std::process::id(),
                f.as_raw_fd()
            ))
            .arg("--")
            .arg(program);
            c
        }
        _ => std::process::Command::new(program),
    }
}

/// Runs `f` on a thread in the host's network namespace (the one bangerd
/// started in; the current one when bangerd did not enter another). Sockets
/// keep the namespace they were made in, so a listener bound here serves
/// the host's addresses while the daemon lives in its own namespace.
pub fn in_host_netns<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetworkError> {
    let Some(host) = HOST_NETNS.get() else {
        return Ok(f());
    };
    let fd = host.try_clone().map_err(|source| {
        NetworkError::Tool(ToolError::Spawn {
            program: "dup of the host namespace".into(),
            source,
        })
    })?;
    std::thread::spawn(move || {
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| e.to_string())
            .map(|_| f())
    })
    .join()
    .map_err(|_| "the thread panicked".to_string())
    .and_then(|r| r)
    .map_err(|stderr| {
        NetworkError::Tool(ToolError::Failed {
            command: "setns into the host's network namespace".into(),
            status: "error".into(),
            stderr,
        })
    })
}

/// Enters the named network namespace (creating it if missing) on the
/// calling thread. Call before starting any other thread: threads and
/// processes created afterwards inherit it.
pub fn enter_netns(name: &str) -> Result<(), NetworkError> {
    // Keep the host's namespace at hand for work that needs the outside
    // world (package downloads for image builds).
    if let Ok(f) = std::fs::File::open("/proc/thread-self/ns/net") {
        let _ = HOST_NETNS.set(f);
    }
    let path = std::path::Path::new("/run/netns").join(name);
    if !path.exists() {
        ip(&["netns", "add", name])?;
    }
    let f = std::fs::File::open(&path).map_err(|source| {
        NetworkError::Tool(ToolError::Spawn {
            program: format!("open {}", path.display()),
            source,
        })
    })?;
    let fail = |stderr: String| {
        NetworkError::Tool(ToolError::Failed {
            command: format!("setns {}", path.display()),
            status: "error".into(),
            stderr,
        })
    };
    let target = std::fs::metadata(&path).map_err(|e| fail(e.to_string()))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| fail(e.to_string()))?;
    // Never run on in the wrong namespace: check the thread's net ns inode.
    let now = std::fs::metadata("/proc/thread-self/ns/net").map_err(|e| fail(e.to_string()))?;
    use std::os::unix::fs::MetadataExt;
    if now.ino() != target.ino() {
        return Err(fail(format!(
            "still in another network namespace (inode {} instead of {})",
            now.ino(),
            target.ino()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_math() {
        let s = Subnet::parse("172.30.0.0/24").expect("parses");
        assert_eq!(s.gateway(), Ipv4Addr::new(172, 30, 0, 1));
        let hosts: Vec<Ipv4Addr> = s.hosts().collect();
        assert_eq!(hosts.first(), Some(&Ipv4Addr::new(172, 30, 0, 2)));
        assert_eq!(hosts.last(), Some(&Ipv4Addr::new(172, 30, 0, 254)));
        assert_eq!(hosts.len(), 253);
    }

    #[test]
    fn allocation_takes_the_lowest_free_and_reports_exhaustion() {
        let s = Subnet::parse("10.9.0.0/29").expect("parses");
        let a = s.allocate(&[]).expect("first");
        assert_eq!(a, Ipv4Addr::new(10, 9, 0, 2));
        let used = vec![a, Ipv4Addr::new(10, 9, 0, 3)];
        assert_eq!(s.allocate(&used).expect("next"), Ipv4Addr::new(10, 9, 0, 4));
        let all: Vec<Ipv4Addr> = s.hosts().collect();
        assert!(matches!(s.allocate(&all), Err(NetworkError::Exhausted(_))));
    }

    #[test]
    fn rejects_bad_subnets() {
        for s in [
            "",
            "172.30.0.0",
            "172.30.0.1/24",
            "1.2.3.4/8",
            "1.2.3.0/30",
            "x/24",
            "300.1.1.0/24",
        ] {
            assert!(Subnet::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn names_fit_ifnamsiz_and_macs_are_local_unicast() {
        let t = tap_name("0123456789abcdef0123");
        assert!(t.len() <= 15, "{t}");
        let m = mac_for("0123456789abcdef");
        assert!(m.starts_with("52:54:"));
        assert_eq!(m.len(), 17);
        assert_ne!(mac_for("a"), mac_for("b"));
    }
}
