//! `.vm` DNS: a server in the daemon on the bridge address (UDP and TCP
//! port 53) that answers `NAME.vm` (A) and the subnet's reverse names (PTR)
//! from the store, and forwards every other question to the host's
//! upstream resolvers (from the host's namespace, so it works when bangerd
//! lives in its own; see `dns_upstream`). Answering is pure ([`respond`]);
//! the server is a thin loop around it.
//!
//! When systemd-resolved runs and the bridge is in its namespace, the
//! `.vm` domain is routed to this server on the bridge link
//! (`resolvectl dns/domain`), and reverted at shutdown.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::dns_upstream::Upstream;
use crate::network::Subnet;

/// Seconds answers may be cached (VMs come and go).
pub const TTL: u32 = 5;

/// TCP connections served at once, in all and from one address: guests
/// are untrusted, and each connection holds a descriptor of the daemon.
pub const MAX_TCP: usize = 64;
pub const MAX_TCP_PER_PEER: usize = 8;
/// UDP questions answered at once (each may wait on an upstream).
pub const MAX_UDP_IN_FLIGHT: usize = 256;
/// How long one TCP connection may take for its question and answer.
const TCP_DEADLINE: Duration = Duration::from_secs(3);

/// Counts connections, in all and per peer, and refuses beyond the limits.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    inner: Arc<Mutex<(usize, std::collections::HashMap<IpAddr, usize>)>>,
    total: usize,
    per_peer: usize,
}

/// A slot held by one connection; freed when dropped.
#[derive(Debug)]
pub struct ConnSlot {
    limits: ConnLimits,
    peer: IpAddr,
}

impl ConnLimits {
    pub fn new(total: usize, per_peer: usize) -> ConnLimits {
        ConnLimits {
            inner: Arc::default(),
            total,
            per_peer,
        }
    }

    /// A slot for a connection from `peer`, or `None` over a limit.
    pub fn try_take(&self, peer: IpAddr) -> Option<ConnSlot> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (all, by_peer) = &mut *g;
        let mine = by_peer.entry(peer).or_insert(0);
        if *all >= self.total || *mine >= self.per_peer {
            return None;
        }
        *mine += 1;
        *all += 1;
        Some(ConnSlot {
            limits: self.clone(),
            peer,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut g = self.limits.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (all, by_peer) = &mut *g;
        *all = all.saturating_sub(1);
        if let Some(n) = by_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_peer.remove(&self.peer);
            }
        }
    }
}

/// What the server knows: VM addresses by name, names by address.
pub trait Zone {
    fn lookup(&self, name: &str) -> Option<Ipv4Addr>;
    fn reverse(&self, ip: Ipv4Addr) -> Option<String>;
}

/// `D.C.B.A.in-addr.arpa.` -> A.B.C.D. Pure.
fn parse_reverse(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa.")?;
    let o: Vec<u8> = rest
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    (o.len() == 4).then(|| Ipv4Addr::new(o[3], o[2], o[1], o[0]))
}

/// The answer to a query, or `None` when it must be forwarded upstream.
/// Malformed queries get FORMERR when an id can be read, else nothing. Pure.
pub fn respond(query: &[u8], zone: &dyn Zone, subnet: &Subnet) -> Option<Vec<u8>> {
    let req = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => {
            if query.len() < 2 {
                return Some(Vec::new());
            }
            let id = u16::from_be_bytes([query[0], query[1]]);
            return Some(
                Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                    .to_vec()
                    .unwrap_or_default(),
            );
        }
    };
    if req.message_type() != MessageType::Query || req.op_code() != OpCode::Query {
        return Some(
            Message::error_msg(req.id(), req.op_code(), ResponseCode::NotImp)
                .to_vec()
                .unwrap_or_default(),
        );
    }
    let q = req.queries().first()?.clone();
    let qname = q.name().to_lowercase().to_ascii();
    let qname = if qname.ends_with('.') {
        qname
    } else {
        format!("{qname}.")
    };
    let mut resp = Message::new();
    resp.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(req.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true);
    resp.add_query(q.clone());
    if let Some(label) = qname.strip_suffix(".vm.") {
        match zone.lookup(label) {
            Some(ip) if !label.contains('.') => {
                if matches!(q.query_type(), RecordType::A | RecordType::ANY) {
                    resp.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(ip))));
                }
            }
            _ => {
                resp.set_response_code(ResponseCode::NXDomain);
            }
        }
        return resp.to_vec().ok();
    }
    if qname == "vm." {
        return resp.to_vec().ok();
    }
    if let Some(ip) = parse_reverse(&qname) {
        if subnet.contains(ip) {
            match (q.query_type(), zone.reverse(ip)) {
                (RecordType::PTR | RecordType::ANY, Some(n)) => {
                    let target = Name::from_ascii(format!("{n}.vm.")).ok()?;
                    resp.add_answer(Record::from_rdata(
                        q.name().clone(),
                        TTL,
                        RData::PTR(PTR(target)),
                    ));
                }
                (_, Some(_)) => {}
                (_, None) => {
                    resp.set_response_code(ResponseCode::NXDomain);
                }
            }
            return resp.to_vec().ok();
        }
    }
    None
}

/// IPv4 `nameserver` lines of a resolv.conf. Pure.
pub fn parse_resolv_conf(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

/// The VMs subsystem answers for its VMs (read at each question).
impl Zone for crate::vms::Vms {
    fn lookup(&self, name: &str) -> Option<Ipv4Addr> {
        self.ip_of(name)
    }
    fn reverse(&self, ip: Ipv4Addr) -> Option<String> {
        self.name_at(ip)
    }
}

/// The DNS server: started once the bridge exists.
#[derive(Clone)]
pub struct Dns {
    zone: crate::vms::Vms,
    subnet: Subnet,
    bridge: String,
    in_netns: bool,
    status: Arc<Mutex<Option<String>>>,
}

impl Dns {
    pub fn new(vms: crate::vms::Vms, subnet: Subnet, bridge: &str, in_netns: bool) -> Dns {
        Dns {
            zone: vms,
            subnet,
            bridge: bridge.into(),
            in_netns,
            status: Arc::default(),
        }
    }

    /// Records why the server could not start (shown by the doctor).
    pub fn set_failed(&self, why: String) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// What the doctor shows: `None` until started.
    pub fn status(&self) -> Option<String> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn upstreams(&self) -> Vec<SocketAddr> {
        let gw = self.subnet.gateway();
        parse_resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
            .into_iter()
            .filter(|a| *a != gw)
            .map(|a| SocketAddr::from((a, 53)))
            .collect()
    }

    fn servfail(query: &[u8]) -> Vec<u8> {
        let id = if query.len() >= 2 {
            u16::from_be_bytes([query[0], query[1]])
        } else {
            0
        };
        Message::error_msg(id, OpCode::Query, ResponseCode::ServFail)
            .to_vec()
            .unwrap_or_default()
    }

    async fn answer(&self, query: &[u8], upstream: &Upstream) -> Vec<u8> {
        match respond(query, &self.zone, &self.subnet) {
            Some(a) => a,
            None => upstream
                .forward(query)
                .await
                .unwrap_or_else(|| Self::servfail(query)),
        }
    }

    /// Binds UDP and TCP port 53 on the bridge address and serves until
    /// `stop`; routes `.vm` through systemd-resolved when it runs.
    pub async fn start(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<(), std::io::Error> {
        let addr = SocketAddr::from((self.subnet.gateway(), 53));
        let udp = Arc::new(tokio::net::UdpSocket::bind(addr).await?);
        let tcp = tokio::net::TcpListener::bind(addr).await?;
        let upstreams = self.upstreams();
        let upstream = Upstream::new(upstreams.clone());
        let resolved = if self.in_netns {
            "not routed through systemd-resolved (the bridge is in another network namespace)"
                .to_string()
        } else {
            self.route_resolved()
        };
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
            "serving .vm on {addr} (UDP, TCP), forwarding to {}; {resolved}",
            if upstreams.is_empty() {
                "no upstream (none in /etc/resolv.conf)".to_string()
            } else {
                upstreams
                    .iter()
                    .map(|u| u.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
        tracing::info!(%addr, upstreams = ?upstreams, %resolved, "DNS server started");
        let this = self.clone();
        let (u2, up2, stop2) = (udp.clone(), upstream.clone(), stop.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_UDP_IN_FLIGHT));
            loop {
                let got = tokio::select! {
                    _ = stop2.cancelled() => break,
                    r = u2.recv_from(&mut buf) => r,
                };
                let Ok((n, peer)) = got else { continue };
                // Over the limit the question is dropped: UDP clients retry.
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    continue;
                };
                let query = buf[..n].to_vec();
                let (this, sock, ups) = (this.clone(), u2.clone(), up2.clone());
                tokio::spawn(async move {
                    let a = this.answer(&query, &ups).await;
                    if !a.is_empty() {
                        let _ = sock.send_to(&a, peer).await;
                    }
                    drop(permit);
                });
            }
        });
        let this = self.clone();
        let limits = ConnLimits::new(MAX_TCP, MAX_TCP_PER_PEER);
        tokio::spawn(async move {
            loop {
                let got = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = tcp.accept() => r,
                };
                let (mut conn, peer) = match got {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors (EMFILE) and the like: back off
                        // instead of spinning on a listener that stays ready.
                        tracing::warn!(error = %e, "DNS: cannot accept a TCP connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Over a limit the connection is closed at once.
                let Some(slot) = limits.try_take(peer.ip()) else {
                    continue;
                };
                let (this, ups) = (this.clone(), upstream.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    let fut = async {
                        let len = conn.read_u16().await.ok()?;
                        let mut q = vec![0u8; usize::from(len)];
                        conn.read_exact(&mut q).await.ok()?;
                        let a = this.answer(&q, &ups).await;
                        let l = u16::try_from(a.len()).ok()?;
                        conn.write_u16(l).await.ok()?;
                        conn.write_all(&a).await.ok()
                    };
                    let _ = tokio::time::timeout(TCP_DEADLINE, fut).await;
                });
            }
            this.unroute_resolved();
        });
        Ok(())
    }

    fn resolvectl() -> Option<std::path::PathBuf> {
        std::path::Path::new("/run/systemd/resolve/stub-resolv.conf")
            .exists()
            .then(|| crate::tools::find("resolvectl"))
            .flatten()
    }

    fn route_resolved(&self) -> String {
        let Some(r) = Self::resolvectl() else {
            return "systemd-resolved is not running (query the bridge address, or use `banger vm ssh-config` for ssh NAME.vm)".into();
        };
        let gw = self.subnet.gateway().to_string();
        let dns = crate::tools::run(&r, ["dns", &self.bridge, &gw]);
        let dom = crate::tools::run(&r, ["domain", &self.bridge, "~vm"]);
        match (dns, dom) {
            (Ok(_), Ok(_)) => format!("systemd-resolved routes .vm to it on {}", self.bridge),
            (Err(e), _) | (_, Err(e)) => {
                format!("routing .vm through systemd-resolved failed: {e}")
            }
        }
    }

    fn unroute_resolved(&self) {
        if self.in_netns {
            return;
        }
        if let Some(r) = Self::resolvectl() {
            let _ = crate::tools::run(&r, ["revert", &self.bridge]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapZone(HashMap<String, Ipv4Addr>);
    impl Zone for MapZone {
        fn lookup(&self, name: &str) -> Option<Ipv4Addr> {
            self.0.get(name).copied()
        }
        fn reverse(&self, ip: Ipv4Addr) -> Option<String> {
            self.0
                .iter()
                .find(|(_, v)| **v == ip)
                .map(|(k, _)| k.clone())
        }
    }

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(4242).set_recursion_desired(true);
        m.add_query(hickory_proto::op::Query::query(
            Name::from_ascii(name).expect("name"),
            t,
        ));
        m.to_vec().expect("encode")
    }

    fn zone() -> (MapZone, Subnet) {
        let mut m = HashMap::new();
        m.insert("dev".to_string(), Ipv4Addr::new(172, 30, 0, 2));
        (MapZone(m), Subnet::parse("172.30.0.0/24").expect("subnet"))
    }

    #[test]
    fn answers_vm_names_and_reverse_names() {
        let (z, s) = zone();
        let a = Message::from_vec(
            &respond(&query("dev.vm.", RecordType::A), &z, &s).expect("answered"),
        )
        .expect("parse");
        assert_eq!(a.id(), 4242);
        assert_eq!(a.response_code(), ResponseCode::NoError);
        assert!(a.authoritative());
        assert_eq!(a.answers().len(), 1);
        assert_eq!(
            a.answers()[0].data(),
            &RData::A(A(Ipv4Addr::new(172, 30, 0, 2)))
        );
        // Case does not matter; AAAA is an empty answer, not an error.
        let a = Message::from_vec(
            &respond(&query("DEV.VM.", RecordType::AAAA), &z, &s).expect("answered"),
        )
        .expect("parse");
        assert_eq!(
            (a.response_code(), a.answers().len()),
            (ResponseCode::NoError, 0)
        );
        let a = Message::from_vec(
            &respond(&query("gone.vm.", RecordType::A), &z, &s).expect("answered"),
        )
        .expect("parse");
        assert_eq!(a.response_code(), ResponseCode::NXDomain);
        let a = Message::from_vec(
            &respond(&query("2.0.30.172.in-addr.arpa.", RecordType::PTR), &z, &s)
                .expect("answered"),
        )
        .expect("parse");
        assert_eq!(a.answers()[0].data().to_string(), "dev.vm.");
        let a = Message::from_vec(
            &respond(&query("9.0.30.172.in-addr.arpa.", RecordType::PTR), &z, &s)
                .expect("answered"),
        )
        .expect("parse");
        assert_eq!(a.response_code(), ResponseCode::NXDomain);
    }

    #[test]
    fn other_names_are_forwarded_and_garbage_is_refused() {
        let (z, s) = zone();
        assert!(respond(&query("example.com.", RecordType::A), &z, &s).is_none());
        assert!(respond(&query("1.1.168.192.in-addr.arpa.", RecordType::PTR), &z, &s).is_none());
        let a = Message::from_vec(&respond(&[0x12, 0x34, 0xff], &z, &s).expect("answered"))
            .expect("parse");
        assert_eq!((a.id(), a.response_code()), (0x1234, ResponseCode::FormErr));
    }

    #[test]
    fn reads_nameservers() {
        assert_eq!(
            parse_resolv_conf(
                "# x\nnameserver 127.0.0.53\nnameserver ::1\nsearch lan\nnameserver 10.0.0.1\n"
            ),
            [Ipv4Addr::new(127, 0, 0, 53), Ipv4Addr::new(10, 0, 0, 1)]
        );
    }

    #[test]
    fn connection_limits_hold_in_all_and_per_peer() {
        let l = ConnLimits::new(3, 2);
        let (a, b): (IpAddr, IpAddr) = (
            "172.30.0.2".parse().expect("ip"),
            "172.30.0.3".parse().expect("ip"),
        );
        let a1 = l.try_take(a).expect("a1");
        let a2 = l.try_take(a).expect("a2");
        assert!(l.try_take(a).is_none(), "per peer");
        let b1 = l.try_take(b).expect("b1");
        assert!(l.try_take(b).is_none(), "in all");
        drop(a1);
        assert!(l.try_take(b).is_some(), "a freed slot is taken again");
        drop((a2, b1));
    }
}
