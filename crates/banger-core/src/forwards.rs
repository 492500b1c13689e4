//! Port forwards: a TCP listener on a host address (default 127.0.0.1, in
//! the host's own network namespace even when bangerd lives in another)
//! that splices each connection to a port of a VM. Forwards are rows in
//! the store, so they are listened on again when the daemon restarts; they
//! go with their VM (the row cascades; a sweep closes the listener).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_api::{Forward, ForwardRequest};
use rusqlite::params;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreError};
use crate::vms::{VmError, Vms};
use crate::ToApiError;

#[derive(Debug, Error)]
pub enum ForwardError {
    #[error("Invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("Cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("No forward on {0}")]
    NotFound(String),
    #[error("A forward may not listen on {0}: it would publish the VM's port to the network")]
    Public(IpAddr),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error(transparent)]
    Vm(Box<VmError>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<VmError> for ForwardError {
    fn from(e: VmError) -> Self {
        ForwardError::Vm(Box::new(e))
    }
}

impl From<rusqlite::Error> for ForwardError {
    fn from(e: rusqlite::Error) -> Self {
        ForwardError::Store(StoreError::Sqlite(e))
    }
}

impl ToApiError for ForwardError {
    fn code(&self) -> banger_api::ErrorCode {
        use banger_api::ErrorCode as C;
        match self {
            ForwardError::Invalid { .. } | ForwardError::Public(_) => C::InvalidRequest,
            ForwardError::Bind { .. } => C::Conflict,
            ForwardError::NotFound(_) => C::NotFound,
            ForwardError::Vm(e) => e.code(),
            _ => C::Internal,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            ForwardError::Bind { .. } => Some(
                "Is the port taken (ss -ltnp)? Pick another host port, or 0 for any free one"
                    .into(),
            ),
            ForwardError::NotFound(_) => Some("List forwards with `banger vm forwards`".into()),
            ForwardError::Public(_) => Some(
                "Listen on loopback (the default, 127.0.0.1 or ::1) and reach it through an SSH \
                 tunnel or a proxy of your own; to allow it anyway, set \
                 network.public_forwards = true in the daemon's config"
                    .into(),
            ),
            ForwardError::Vm(e) => e.hint(),
            _ => None,
        }
    }
}

/// Refuses a listening address beyond loopback unless `public`. Pure.
pub fn check_listen_addr(addr: IpAddr, public: bool) -> Result<(), ForwardError> {
    let loopback = match addr {
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        IpAddr::V4(v4) => v4.is_loopback(),
    };
    if loopback || public {
        Ok(())
    } else {
        Err(ForwardError::Public(addr))
    }
}

/// A stored forward: host address, host port, VM id, VM name, guest port.
type Row = (String, u16, String, String, u16);

#[derive(Clone)]
pub struct Forwards {
    store: Arc<Store>,
    vms: Vms,
    /// `network.public_forwards`: listening beyond loopback is allowed.
    public: bool,
    /// Live listeners by `addr:port`, with why a stored one is not live.
    live: Arc<Mutex<HashMap<String, CancellationToken>>>,
    failed: Arc<Mutex<HashMap<String, String>>>,
}

fn key(addr: &str, port: u16) -> String {
    SocketAddr::new(addr.parse().unwrap_or(IpAddr::from([127, 0, 0, 1])), port).to_string()
}

impl Forwards {
    pub fn new(store: Arc<Store>, vms: Vms, public: bool) -> Forwards {
        Forwards {
            store,
            vms,
            public,
            live: Arc::default(),
            failed: Arc::default(),
        }
    }

    /// Binds `addr:port` in the host's namespace.
    fn bind(addr: IpAddr, port: u16) -> Result<tokio::net::TcpListener, ForwardError> {
        let sa = SocketAddr::new(addr, port);
        let l = crate::network::in_host_netns(move || {
            let l = std::net::TcpListener::bind(sa)?;
            l.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(l)
        })?
        .map_err(|source| ForwardError::Bind {
            addr: sa.to_string(),
            source,
        })?;
        tokio::net::TcpListener::from_std(l).map_err(|source| ForwardError::Bind {
            addr: sa.to_string(),
            source,
        })
    }

    /// Serves a listener until cancelled: each connection goes to the
    /// VM's port (the VM is looked up per connection, by id).
    fn serve(&self, listener: tokio::net::TcpListener, vm_id: String, guest_port: u16, k: String) {
        let token = CancellationToken::new();
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(k.clone(), token.clone());
        let vms = self.vms.clone();
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    _ = token.cancelled() => break,
                    c = listener.accept() => c,
                };
                let Ok((mut inbound, peer)) = conn else {
                    continue;
                };
                let vms = vms.clone();
                let vm_id = vm_id.clone();
                tokio::spawn(async move {
                    let Some(name) = vms.name_of(&vm_id) else {
                        return;
                    };
                    match vms.connect(&name, guest_port).await {
                        Ok(mut outbound) => {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                        Err(e) => {
                            tracing::debug!(vm = %name, %peer, error = %e, "forwarded connection refused");
                        }
                    }
                });
            }
            tracing::info!(forward = %k, "forward closed");
        });
    }

    /// Adds a forward and starts listening.
    pub fn add(&self, vm_name: &str, req: &ForwardRequest) -> Result<Forward, ForwardError> {
        let vm = self.vms.get(vm_name)?;
        let addr: IpAddr = req
            .host_addr
            .as_deref()
            .unwrap_or("127.0.0.1")
            .parse()
            .map_err(|_| ForwardError::Invalid {
                what: "host address",
                reason: format!(
                    "{:?} is not an IP address",
                    req.host_addr.as_deref().unwrap_or("")
                ),
            })?;
        check_listen_addr(addr, self.public)?;
        if req.guest_port == 0 {
            return Err(ForwardError::Invalid {
                what: "guest port",
                reason: "0 is not a port".into(),
            });
        }
        let listener = Self::bind(addr, req.host_port)?;
        let port = listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(req.host_port);
        let addr_s = addr.to_string();
        let now = chrono::Utc::now().to_rfc3339();
        self.store.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO forwards (host_addr, host_port, vm_id, \
                guest_port, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![addr_s, port, vm.id, req.guest_port, now],
            )
            .map(|_| ())
        })?;
        let k = key(&addr_s, port);
        self.serve(listener, vm.id.clone(), req.guest_port, k.clone());
        tracing::info!(vm = %vm.name, forward = %k, guest_port = req.guest_port, "forward added");
        Ok(Forward {
            vm: vm.name,
            host_addr: addr_s,
            host_port: port,
            guest_port: req.guest_port,
            active: true,
            error: None,
        })
    }

    fn rows(&self) -> Result<Vec<Row>, ForwardError> {
        Ok(self.store.read(|c| -> rusqlite::Result<Vec<_>> {
            let mut stmt = c.prepare(
                "SELECT f.host_addr, f.host_port, f.vm_id, v.name, f.guest_port \
                FROM forwards f JOIN vms v ON v.id = f.vm_id ORDER BY \
                f.host_addr, f.host_port",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?;
            rows.collect()
        })?)
    }

    /// The VM's listening sockets, with links through its forwards (or its
    /// address, where the host routes to it).
    pub async fn ports(&self, vm: &str) -> Result<banger_api::VmPortList, ForwardError> {
        Ok(self.vms.ports(vm, self.forwarded(vm)?).await?)
    }

    /// [`Vms::watch_ports`] with links through the VM's forwards.
    pub async fn watch_ports(
        &self,
        vm: &str,
    ) -> Result<impl futures::Stream<Item = banger_api::VmPortEvent> + Send, ForwardError> {
        Ok(self.vms.watch_ports(vm, self.forwarded(vm)?).await?)
    }

    /// The VM's active forwards: guest port -> host `addr:port`.
    fn forwarded(&self, vm: &str) -> Result<Vec<(u16, String)>, ForwardError> {
        let forwarded = self
            .list(Some(vm))?
            .into_iter()
            .filter(|f| f.active)
            .map(|f| {
                (
                    f.guest_port,
                    SocketAddr::new(
                        f.host_addr.parse().unwrap_or(IpAddr::from([127, 0, 0, 1])),
                        f.host_port,
                    )
                    .to_string(),
                )
            })
            .collect();
        Ok(forwarded)
    }

    /// Forwards (of one VM), with whether each listens.
    pub fn list(&self, vm: Option<&str>) -> Result<Vec<Forward>, ForwardError> {
        if let Some(v) = vm {
            self.vms.get(v)?;
        }
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(self
            .rows()?
            .into_iter()
            .filter(|r| vm.is_none_or(|v| v == r.3))
            .map(|(addr, port, _, name, guest_port)| {
                let k = key(&addr, port);
                Forward {
                    vm: name,
                    active: live.contains_key(&k),
                    error: failed.get(&k).cloned(),
                    host_addr: addr,
                    host_port: port,
                    guest_port,
                }
            })
            .collect())
    }

    /// Removes a forward of a VM.
    pub fn remove(
        &self,
        vm_name: &str,
        host_addr: Option<&str>,
        host_port: u16,
    ) -> Result<(), ForwardError> {
        let vm = self.vms.get(vm_name)?;
        let addr = host_addr.unwrap_or("127.0.0.1").to_string();
        let n = self.store.write(|tx| {
            tx.execute(
                "DELETE FROM forwards WHERE host_addr = ?1 AND host_port = ?2 AND vm_id = ?3",
                params![addr, host_port, vm.id],
            )
        })?;
        let k = key(&addr, host_port);
        if n == 0 {
            return Err(ForwardError::NotFound(format!("{k} for VM {vm_name:?}")));
        }
        self.close(&k);
        Ok(())
    }

    fn close(&self, k: &str) {
        if let Some(t) = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(k)
        {
            t.cancel();
        }
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(k);
    }

    /// At start: listens on every stored forward; then, every 2 s, closes
    /// listeners whose forward is gone (with its VM).
    pub fn restore(&self) {
        match self.rows() {
            Ok(rows) => {
                for (addr, port, vm_id, name, guest_port) in rows {
                    let k = key(&addr, port);
                    let bound = addr
                        .parse()
                        .map_err(|_| ForwardError::Invalid {
                            what: "host address",
                            reason: addr.clone(),
                        })
                        .and_then(|a| check_listen_addr(a, self.public).map(|()| a))
                        .and_then(|a| Self::bind(a, port));
                    match bound {
                        Ok(l) => {
                            self.serve(l, vm_id, guest_port, k.clone());
                            tracing::info!(vm = %name, forward = %k, "forward restored");
                        }
                        Err(e) => {
                            tracing::warn!(vm = %name, forward = %k, error = %e, "cannot restore forward");
                            self.failed
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(k, e.to_string());
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read forwards"),
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let Ok(rows) = this.rows() else { continue };
                let keep: std::collections::HashSet<String> =
                    rows.iter().map(|r| key(&r.0, r.1)).collect();
                let gone: Vec<String> = this
                    .live
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .keys()
                    .filter(|k| !keep.contains(*k))
                    .cloned()
                    .collect();
                for k in gone {
                    this.close(&k);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_listens_unless_public_forwards_is_on() {
        let ok = ["127.0.0.1", "127.8.9.1", "::1", "::ffff:127.0.0.1"];
        for a in ok {
            assert!(
                check_listen_addr(a.parse().expect("ip"), false).is_ok(),
                "{a}"
            );
        }
        for a in ["0.0.0.0", "::", "192.168.1.5", "10.0.0.1", "::ffff:0.0.0.0"] {
            let ip: IpAddr = a.parse().expect("ip");
            let e = check_listen_addr(ip, false).expect_err(a);
            assert_eq!(e.code(), banger_api::ErrorCode::InvalidRequest);
            assert!(e.hint().unwrap_or_default().contains("public_forwards"));
            assert!(
                check_listen_addr(ip, true).is_ok(),
                "{a} with public_forwards"
            );
        }
    }
}
