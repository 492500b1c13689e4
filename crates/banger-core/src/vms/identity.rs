//! A VM's identity: its SSH host key and config disk.

use std::path::PathBuf;

use banger_api::Vm;
use rusqlite::params;

use crate::guest::configdisk::{self, ConfigDisk};
use crate::tools::{self};

use super::error::VmError;
use super::Vms;

/// In a VM's directory: its root disk grew, so its guest grows the root
/// filesystem at boot.
const GROW_ROOT_MARKER: &str = "grow-root";

impl Vms {
    /// Gives a new VM its SSH host key and config disk (from its row), and
    /// records the host key. Blocking.
    pub(super) fn new_identity(&self, vm: &Vm, grow_root: bool) -> Result<(), VmError> {
        let hk = self.paths(&vm.id).dir.join("ssh_host_ed25519_key");
        let _ = std::fs::remove_file(&hk);
        let _ = std::fs::remove_file(hk.with_extension("pub"));
        tools::ssh_keygen(&hk, &format!("{}.vm", vm.name))?;
        if grow_root {
            self.mark_grow_root(vm)?;
        }
        let host_pub = self.write_config_disk(vm)?;
        self.inner.store.write(|tx| {
            tx.execute(
                "UPDATE vms SET host_key = ?2 WHERE id = ?1",
                params![vm.id, host_pub],
            )
            .map(|_| ())
        })?;
        Ok(())
    }

    /// Asks the guest to grow its root filesystem to its disk at each boot
    /// from now on (a no-op once it has), through the config disk.
    pub(super) fn mark_grow_root(&self, vm: &Vm) -> Result<(), VmError> {
        let marker = self.paths(&vm.id).dir.join(GROW_ROOT_MARKER);
        std::fs::write(&marker, b"1\n").map_err(|source| VmError::Io {
            path: marker,
            source,
        })
    }

    /// Writes the VM's config disk from its row, its host key, the daemon's
    /// guest agent and guest script; returns the host public key.
    pub(super) fn write_config_disk(&self, vm: &Vm) -> Result<String, VmError> {
        let dir = self.paths(&vm.id).dir;
        let grow_root = dir.join(GROW_ROOT_MARKER).exists();
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).map_err(|source| VmError::Io { path: p, source })
        };
        let host_pub = read(dir.join("ssh_host_ed25519_key.pub"))?
            .trim()
            .to_string();
        let gateway = self.inner.config.subnet.gateway().to_string();
        let disk = ConfigDisk {
            hostname: vm.name.clone(),
            address: Some(format!("{}/{}", vm.ip, self.inner.config.subnet.prefix)),
            gateway: Some(gateway.clone()),
            mac: Some(vm.mac.clone()),
            dns: vec![gateway],
            authorized_keys: vec![self.inner.ssh.client_public_key()?],
            host_key: Some((read(dir.join("ssh_host_ed25519_key"))?, host_pub.clone())),
            env: vec![("BANGER_VM".into(), vm.name.clone())],
            machine_id: Some(vm.id.clone()),
            work_mount: Some("/work".into()),
            grow_root,
            agent_binary: self.inner.config.agent_binary.clone(),
        };
        // Made aside and renamed in: a running VMM keeps reading the old one.
        let (tmp, out) = (dir.join("config.ext4.new"), dir.join("config.ext4"));
        configdisk::write(&disk, &tmp, &dir.join("config.d")).map_err(|e| VmError::Internal {
            what: "config disk",
            reason: crate::error::error_chain(&e),
        })?;
        std::fs::rename(&tmp, &out).map_err(|source| VmError::Io { path: out, source })?;
        Ok(host_pub)
    }
}
