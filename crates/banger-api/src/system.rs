//! `GET /v1/version`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionInfo {
    /// The daemon's package version (semver).
    pub version: String,
    /// The API version it serves, e.g. `v1`.
    pub api_version: String,
    /// Process id of the daemon.
    pub pid: u32,
    /// When the daemon started (RFC 3339).
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// The state directory the daemon owns.
    pub state_dir: String,
}

/// `GET /v1/ui`: where the web dashboard is and its access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UiInfo {
    /// `http://127.0.0.1:PORT/`, or none when the dashboard is off. From
    /// `POST /v1/ui/login`, a one-time login link:
    /// `http://127.0.0.1:PORT/?code=...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// How long the login link works (once), in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
    /// Why it is off or not listening.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `DELETE /v1/ui/sessions` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UiLogout {
    /// Dashboard sessions that were live and now are ended.
    pub sessions_ended: usize,
}

/// One VM with live host figures, as `GET /v1/vms/stream` sends them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmLive {
    pub vm: crate::Vm,
    /// VMM CPU use since the previous event, percent of one core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
}

/// A `GET /v1/vms/stream` event: every VM, once a second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetSnapshot {
    pub at: chrono::DateTime<chrono::Utc>,
    pub vms: Vec<VmLive>,
}
