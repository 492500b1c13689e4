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
