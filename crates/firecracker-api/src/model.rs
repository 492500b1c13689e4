//! Request and response types of the Firecracker API that banger uses.
//! Field names follow the spec; a test validates each against it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfiguration {
    pub vcpu_count: u32,
    pub mem_size_mib: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    pub kernel_image_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    pub drive_id: String,
    pub is_root_device: bool,
    pub path_on_host: String,
    pub is_read_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logger {
    pub log_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    pub metrics_path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceActionInfo {
    pub action_type: ActionType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Paused,
    Resumed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub state: VmState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCreateParams {
    pub snapshot_path: String,
    pub mem_file_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_type: Option<String>,
}

/// `PUT /vsock`: the guest's vsock device, bridged to a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vsock {
    pub guest_cid: u32,
    pub uds_path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBackend {
    /// `File` or `Uffd`.
    pub backend_type: String,
    pub backend_path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockOverride {
    pub uds_path: String,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLoadParams {
    pub snapshot_path: String,
    pub mem_backend: MemoryBackend,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub app_name: String,
    pub id: String,
    pub state: String,
    pub vmm_version: String,
}

/// `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirecrackerVersion {
    pub firecracker_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiFault {
    pub fault_message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Spec;

    #[test]
    fn every_request_type_is_valid_against_the_spec() {
        let s = Spec::load().expect("spec");
        let v = |x: &dyn erased::Ser| x.json();
        let cases: Vec<(&str, &str, serde_json::Value)> = vec![
            (
                "PUT",
                "/machine-config",
                v(&MachineConfiguration {
                    vcpu_count: 2,
                    mem_size_mib: 1024,
                    smt: Some(false),
                    track_dirty_pages: None,
                }),
            ),
            (
                "PUT",
                "/boot-source",
                v(&BootSource {
                    kernel_image_path: "/k".into(),
                    initrd_path: Some("/i".into()),
                    boot_args: Some("console=ttyS0".into()),
                }),
            ),
            (
                "PUT",
                "/drives/rootfs",
                v(&Drive {
                    drive_id: "rootfs".into(),
                    is_root_device: true,
                    path_on_host: "/r".into(),
                    is_read_only: false,
                    cache_type: Some("Unsafe".into()),
                }),
            ),
            (
                "PUT",
                "/network-interfaces/eth0",
                v(&NetworkInterface {
                    iface_id: "eth0".into(),
                    host_dev_name: "tap0".into(),
                    guest_mac: Some("52:54:00:00:00:01".into()),
                }),
            ),
            (
                "PUT",
                "/logger",
                v(&Logger {
                    log_path: "/l".into(),
                    level: Some("Info".into()),
                    show_level: Some(true),
                }),
            ),
            (
                "PUT",
                "/metrics",
                v(&Metrics {
                    metrics_path: "/m".into(),
                }),
            ),
            (
                "PUT",
                "/actions",
                v(&InstanceActionInfo {
                    action_type: ActionType::SendCtrlAltDel,
                }),
            ),
            (
                "PATCH",
                "/vm",
                v(&Vm {
                    state: VmState::Paused,
                }),
            ),
            (
                "PUT",
                "/snapshot/create",
                v(&SnapshotCreateParams {
                    snapshot_path: "/s".into(),
                    mem_file_path: "/m".into(),
                    snapshot_type: Some("Full".into()),
                }),
            ),
        ];
        for (m, p, body) in cases {
            s.validate_request(m, p, Some(&body))
                .unwrap_or_else(|e| panic!("{m} {p} {body}: {e}"));
        }
    }

    mod erased {
        pub trait Ser {
            fn json(&self) -> serde_json::Value;
        }
        impl<T: serde::Serialize> Ser for T {
            fn json(&self) -> serde_json::Value {
                serde_json::to_value(self).unwrap_or_default()
            }
        }
    }
}
