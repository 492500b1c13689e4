//! banger's network as the VMs need it: the firewall synced from the rows,
//! and the uninstall.

use banger_api::VmState;
use rusqlite::OptionalExtension;

use crate::network;

use super::error::VmError;
use super::Vms;

impl Vms {
    /// Becomes true once the bridge exists.
    pub fn network_up(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.net_up.subscribe()
    }

    /// Takes this namespace's network for this daemon, unless it has it
    /// already (netns_lock.rs); fails naming the daemon that owns it. True
    /// when what banger left in the namespace is this daemon's own.
    pub(super) fn own_network(&self) -> Result<bool, VmError> {
        let mut held = self.inner.netns.lock().unwrap_or_else(|p| p.into_inner());
        if held.is_none() {
            let lock = crate::netns_lock::acquire(&self.inner.layout.state_dir)?;
            tracing::info!(previous = ?lock.previous, "this daemon owns banger's network in its namespace");
            *held = Some(lock);
        }
        let state_dir = &self.inner.layout.state_dir;
        Ok(held
            .as_ref()
            .is_some_and(|l| l.leftovers_are_ours(state_dir)))
    }

    /// Lets another daemon have this namespace's network (when this one
    /// has no VMs).
    pub(super) fn release_network(&self) {
        let mut held = self.inner.netns.lock().unwrap_or_else(|p| p.into_inner());
        *held = None;
    }

    /// Whether banger's network (bridge, rules) is set up in this namespace.
    pub(super) fn network_active(&self) -> bool {
        network::link_exists(&self.inner.config.bridge) || crate::firewall::installed()
    }

    /// Every VM's network identity and policy, from the store.
    pub(super) fn vm_nets(&self) -> Result<Vec<crate::firewall::VmNet>, VmError> {
        let rows: Vec<(String, String, String, String, i64, Option<String>)> =
            self.inner.store.read(|c| -> Result<_, VmError> {
                let mut stmt = c.prepare("SELECT id, ip, mac, tap, isolated, egress FROM vms")?;
                let rows = stmt.query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })?;
        let mut out = Vec::new();
        for (id, ip, mac, tap, isolated, egress) in rows {
            let (Ok(ip), true) = (ip.parse(), crate::firewall::valid_mac(&mac)) else {
                tracing::warn!(vm = %id, %ip, %mac, "bad address or MAC in the store; no rules for it");
                continue;
            };
            let egress = egress.map(|e| {
                serde_json::from_str::<Vec<String>>(&e)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|c| crate::firewall::Cidr::parse(c).ok())
                    .collect()
            });
            out.push(crate::firewall::VmNet {
                id,
                ip,
                mac,
                tap,
                isolated: isolated != 0,
                egress,
            });
        }
        Ok(out)
    }

    /// Makes banger's nftables tables match the store (one transaction)
    /// and turns IPv4 forwarding on, remembering the value it had.
    pub(super) fn sync_firewall(&self) -> Result<(), VmError> {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _held = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        self.own_network()?;
        let nets = self.vm_nets()?;
        let cfg = &self.inner.config;
        crate::firewall::apply(&crate::firewall::ruleset(&cfg.bridge, &cfg.subnet, &nets))?;
        let before = crate::firewall::ip_forward()?;
        if before != "1" {
            self.inner.store.write(|tx| {
                tx.execute(
                    "INSERT OR IGNORE INTO settings (key, value) VALUES ('ip_forward_before', ?1)",
                    [&before],
                )
                .map(|_| ())
            })?;
            crate::firewall::set_ip_forward("1")?;
            tracing::info!(before = %before, "enabled IPv4 forwarding");
        }
        Ok(())
    }

    /// Removes banger's network from this namespace: its nftables tables,
    /// TAPs and bridge; restores IPv4 forwarding to what it was. Refused
    /// while VMs run.
    pub fn uninstall_network(&self) -> Result<(), VmError> {
        if let Some(vm) = self
            .list()?
            .into_iter()
            .find(|v| v.state == VmState::Running)
        {
            return Err(VmError::WrongState {
                name: vm.name,
                state: "running",
                what: "stop every VM before removing banger's network",
            });
        }
        self.own_network()?;
        crate::firewall::apply(crate::firewall::teardown())?;
        for link in network::list_links() {
            if link.starts_with("bg-") || link.starts_with("bgp-") {
                network::delete_tap(&link);
            }
        }
        network::delete_tap(&self.inner.config.bridge);
        let before: Option<String> = self.inner.store.read(|c| {
            c.query_row(
                "SELECT value FROM settings WHERE key = 'ip_forward_before'",
                [],
                |r| r.get(0),
            )
            .optional()
        })?;
        if let Some(v) = before {
            crate::firewall::set_ip_forward(&v)?;
            self.inner.store.write(|tx| {
                tx.execute("DELETE FROM settings WHERE key = 'ip_forward_before'", [])
                    .map(|_| ())
            })?;
        }
        Ok(())
    }
}
