//! NAT, isolation and egress control with nftables, in banger's own tables
//! (`ip banger`, `bridge banger`); other tables are never touched.
//!
//! The whole rule set is a pure function of the network config and the VMs'
//! policies ([`ruleset`]), applied with one `nft -f` file that deletes and
//! recreates banger's tables: one kernel transaction, so a VM's rules appear
//! or vanish atomically, and applying the current state at start removes
//! whatever a previous daemon left for VMs that no longer exist.
//!
//! - `ip banger`: masquerade for guest traffic leaving the subnet; forward
//!   with a per-VM egress allow-list (`vm_egress` verdict map); input with
//!   per-VM host isolation (`vm_host`: only DNS and ping to the gateway).
//! - `bridge banger`: anti-spoofing (a port may only send IPv4 and ARP, with
//!   its VM's MAC and address)
//!   and isolation between VMs on the bridge (bridged traffic never reaches
//!   the `ip` family's hooks).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;

use thiserror::Error;

use crate::network::Subnet;
use crate::tools::{self, ToolError};

#[derive(Debug, Error)]
pub enum FirewallError {
    #[error("Invalid egress entry {0:?}: not an IPv4 address or CIDR (e.g. 192.0.2.0/24)")]
    BadCidr(String),
    #[error("Invalid egress entry {0:?}: host bits are set (did you mean {1}?)")]
    HostBits(String, String),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("Cannot set {path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl crate::ToApiError for FirewallError {
    fn code(&self) -> banger_api::ErrorCode {
        match self {
            FirewallError::BadCidr(_) | FirewallError::HostBits(..) => {
                banger_api::ErrorCode::InvalidRequest
            }
            FirewallError::Tool(e) => e.code(),
            FirewallError::Sysctl { .. } => banger_api::ErrorCode::Internal,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            FirewallError::Tool(ToolError::Missing { .. }) => {
                Some("Install nftables: sudo apt-get install nftables".into())
            }
            FirewallError::Tool(e) => e.hint(),
            _ => None,
        }
    }
}

/// An IPv4 network: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix == 32 {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

impl Cidr {
    /// `1.2.3.4` or `1.2.3.0/24`; host bits must be zero. Pure.
    pub fn parse(s: &str) -> Result<Cidr, FirewallError> {
        let bad = || FirewallError::BadCidr(s.into());
        let (a, p) = s.trim().split_once('/').unwrap_or((s.trim(), "32"));
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        };
        let net = Ipv4Addr::from(u32::from(addr) & mask);
        if net != addr {
            return Err(FirewallError::HostBits(
                s.into(),
                Cidr { addr: net, prefix }.to_string(),
            ));
        }
        Ok(Cidr { addr, prefix })
    }
}

/// One VM's network identity and policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNet {
    pub id: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub tap: String,
    /// No traffic to other VMs, and only DNS and ping to the host.
    pub isolated: bool,
    /// `Some`: outbound traffic only to these networks (none: no egress).
    pub egress: Option<Vec<Cidr>>,
}

/// `aa:bb:cc:dd:ee:ff`, lower- or upper-case hex. Pure.
pub fn valid_mac(m: &str) -> bool {
    let parts: Vec<&str> = m.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn chain_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The complete nft script for banger's tables. Pure.
pub fn ruleset(bridge: &str, subnet: &Subnet, vms: &[VmNet]) -> String {
    let net = format!("{}/{}", subnet.base, subnet.prefix);
    let gw = subnet.gateway();
    let mut vms: Vec<&VmNet> = vms.iter().collect();
    vms.sort_by(|a, b| a.id.cmp(&b.id));
    let mut s = String::new();
    let elements = |pairs: Vec<String>| {
        if pairs.is_empty() {
            String::new()
        } else {
            format!("\t\telements = {{ {} }}\n", pairs.join(", "))
        }
    };

    // ip family: NAT, egress, host isolation.
    s.push_str("table ip banger\ndelete table ip banger\ntable ip banger {\n");
    let mut egress = Vec::new();
    let mut host = Vec::new();
    for vm in &vms {
        let c = chain_id(&vm.id);
        if let Some(list) = &vm.egress {
            let _ = writeln!(s, "\tchain egress-{c} {{");
            if !list.is_empty() {
                let l: Vec<String> = list.iter().map(Cidr::to_string).collect();
                let _ = writeln!(s, "\t\tip daddr {{ {} }} accept", l.join(", "));
            }
            s.push_str("\t\tdrop\n\t}\n");
            egress.push(format!("{} : jump egress-{c}", vm.ip));
        }
        if vm.isolated {
            let _ = writeln!(s, "\tchain host-{c} {{");
            let _ = writeln!(s, "\t\tip daddr {gw} udp dport 53 accept");
            let _ = writeln!(s, "\t\tip daddr {gw} tcp dport 53 accept");
            s.push_str("\t\ticmp type echo-request accept\n\t\tdrop\n\t}\n");
            host.push(format!("{} : jump host-{c}", vm.ip));
        }
    }
    s.push_str("\tmap vm_egress {\n\t\ttype ipv4_addr : verdict\n");
    s.push_str(&elements(egress));
    s.push_str("\t}\n\tmap vm_host {\n\t\ttype ipv4_addr : verdict\n");
    s.push_str(&elements(host));
    s.push_str("\t}\n");
    let _ = writeln!(
        s,
        "\tchain input {{\n\t\ttype filter hook input priority filter; policy accept;\n\t\tiifname \"{bridge}\" ct state established,related accept\n\t\tiifname \"{bridge}\" ip saddr vmap @vm_host\n\t}}"
    );
    let _ = writeln!(
        s,
        "\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tct state established,related accept\n\t\tiifname \"{bridge}\" ip saddr != {net} drop\n\t\tiifname \"{bridge}\" ip saddr vmap @vm_egress\n\t}}"
    );
    let _ = writeln!(
        s,
        "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tip saddr {net} ip daddr != {net} masquerade\n\t}}\n}}"
    );

    // bridge family: anti-spoofing and VM-to-VM isolation.
    s.push_str("table bridge banger\ndelete table bridge banger\ntable bridge banger {\n");
    let mut ports = Vec::new();
    let mut isolated = Vec::new();
    for vm in &vms {
        let c = chain_id(&vm.id);
        let _ = writeln!(s, "\tchain port-{c} {{");
        let _ = writeln!(s, "\t\tether saddr != {} drop", vm.mac);
        // IPv4 and ARP only: no IPv6 (router adverts, spoofed sources),
        // no VLAN-tagged frames slipping past the rules below.
        s.push_str("\t\tether type != { ip, arp } drop\n");
        let _ = writeln!(s, "\t\tether type ip ip saddr != {} drop", vm.ip);
        let _ = writeln!(s, "\t\tether type arp arp saddr ip != {} drop", vm.ip);
        let _ = writeln!(s, "\t\tether type arp arp saddr ether != {} drop", vm.mac);
        if vm.isolated {
            isolated.push(format!("\"{}\"", vm.tap));
        }
        s.push_str("\t}\n");
        ports.push(format!("\"{}\" : jump port-{c}", vm.tap));
    }
    s.push_str("\tmap ports {\n\t\ttype ifname : verdict\n");
    s.push_str(&elements(ports));
    s.push_str("\t}\n\tset isolated {\n\t\ttype ifname\n");
    s.push_str(&elements(isolated));
    s.push_str("\t}\n");
    // Anti-spoofing at prerouting: before the bridge learns the sender's
    // MAC, so a guest sending as another (a VM restored from a snapshot,
    // before it took its own identity) cannot pull that VM's traffic.
    s.push_str("\tchain prerouting {\n\t\ttype filter hook prerouting priority filter; policy accept;\n\t\tiifname vmap @ports\n\t}\n");
    s.push_str("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tiifname @isolated drop\n\t\toifname @isolated drop\n\t}\n}\n");
    s
}

/// The nft script that removes banger's tables (if present). Pure.
pub fn teardown() -> &'static str {
    "table ip banger\ndelete table ip banger\ntable bridge banger\ndelete table bridge banger\n"
}

/// Feeds a script to `nft -f -`: one transaction.
pub fn apply(script: &str) -> Result<(), FirewallError> {
    let nft = tools::require("nft")?;
    let mut child = std::process::Command::new(&nft)
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| ToolError::Spawn {
            program: nft.display().to_string(),
            source,
        })?;
    if let Some(mut sin) = child.stdin.take() {
        let _ = sin.write_all(script.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| ToolError::Spawn {
            program: nft.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(ToolError::Failed {
            command: "nft -f - (banger's tables)".into(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
        .into());
    }
    Ok(())
}

/// Whether banger's `ip` table exists (in this network namespace).
pub fn installed() -> bool {
    tools::find("nft").is_some_and(|nft| {
        std::process::Command::new(nft)
            .args(["list", "table", "ip", "banger"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// The current `net.ipv4.ip_forward` of this namespace.
pub fn ip_forward() -> Result<String, FirewallError> {
    std::fs::read_to_string(IP_FORWARD)
        .map(|s| s.trim().to_string())
        .map_err(|source| FirewallError::Sysctl {
            path: IP_FORWARD.into(),
            source,
        })
}

pub fn set_ip_forward(value: &str) -> Result<(), FirewallError> {
    std::fs::write(IP_FORWARD, value).map_err(|source| FirewallError::Sysctl {
        path: IP_FORWARD.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(id: &str, ip: [u8; 4], isolated: bool, egress: Option<Vec<&str>>) -> VmNet {
        VmNet {
            id: id.into(),
            ip: Ipv4Addr::from(ip),
            mac: format!("52:54:00:00:00:{:02x}", ip[3]),
            tap: format!("bg-{id}"),
            isolated,
            egress: egress.map(|l| l.iter().map(|c| Cidr::parse(c).expect("cidr")).collect()),
        }
    }

    #[test]
    fn cidrs_parse_strictly() {
        assert_eq!(
            Cidr::parse("192.0.2.0/24").expect("ok").to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(Cidr::parse("10.1.2.3").expect("ok").to_string(), "10.1.2.3");
        assert_eq!(Cidr::parse("0.0.0.0/0").expect("ok").prefix, 0);
        for bad in ["", "10.0.0.0/33", "10.0.0/8", "x", "10.0.0.0/8/1", "::1"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        let e = Cidr::parse("10.1.2.3/8")
            .expect_err("host bits")
            .to_string();
        assert!(e.contains("10.0.0.0/8"), "{e}");
    }

    #[test]
    fn ruleset_has_nat_and_per_vm_policies() {
        let s = Subnet::parse("172.30.0.0/24").expect("subnet");
        let text = ruleset(
            "banger0",
            &s,
            &[
                vm("aaaa", [172, 30, 0, 2], false, None),
                vm(
                    "bbbb",
                    [172, 30, 0, 3],
                    true,
                    Some(vec!["192.0.2.0/24", "10.0.0.1"]),
                ),
                vm("cccc", [172, 30, 0, 4], false, Some(vec![])),
            ],
        );
        assert!(text.contains("ip saddr 172.30.0.0/24 ip daddr != 172.30.0.0/24 masquerade"));
        assert!(text.contains(
            "chain egress-bbbb {\n\t\tip daddr { 192.0.2.0/24, 10.0.0.1 } accept\n\t\tdrop\n\t}"
        ));
        assert!(
            text.contains("chain egress-cccc {\n\t\tdrop\n\t}"),
            "{text}"
        );
        assert!(!text.contains("egress-aaaa"));
        assert!(text.contains(
            "elements = { 172.30.0.3 : jump egress-bbbb, 172.30.0.4 : jump egress-cccc }"
        ));
        assert!(text.contains("elements = { 172.30.0.3 : jump host-bbbb }"));
        assert!(text.contains("ip daddr 172.30.0.1 udp dport 53 accept"));
        // Every VM's port is pinned to its address; only bbbb is isolated.
        assert!(text.contains("\"bg-aaaa\" : jump port-aaaa"));
        assert!(text.contains("ether type ip ip saddr != 172.30.0.2 drop"));
        assert!(text.contains("ether type != { ip, arp } drop"));
        assert!(text.contains("ether saddr != 52:54:00:00:00:02 drop"));
        assert!(text.contains("arp saddr ether != 52:54:00:00:00:02 drop"));
        assert!(text.contains("hook prerouting"));
        assert!(valid_mac("52:54:00:AB:cd:01"));
        assert!(!valid_mac("52:54:00:ab:cd"));
        assert!(!valid_mac("52:54:00:ab:cd:0g"));
        assert!(!valid_mac("52:54:00:ab:cd:01; drop"));
        assert!(text.contains("set isolated {\n\t\ttype ifname\n\t\telements = { \"bg-bbbb\" }"));
        // Each table is deleted and recreated in the same script.
        assert!(text.starts_with("table ip banger\ndelete table ip banger\n"));
        assert!(text.contains("table bridge banger\ndelete table bridge banger\n"));
    }

    #[test]
    fn ruleset_without_vms_keeps_the_base_chains() {
        let s = Subnet::parse("10.9.0.0/24").expect("subnet");
        let text = ruleset("br9", &s, &[]);
        assert!(!text.contains("elements"));
        assert!(text.contains("iifname \"br9\" ip saddr vmap @vm_egress"));
    }
}
