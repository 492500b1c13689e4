//! The daemon's shared state: the subsystems a request handler reaches
//! (built by `daemon.rs`, served by `api` and `ui`), and the dashboard
//! listener's address and its logins.

use std::sync::Arc;

use banger_core::config::Config;
use banger_core::images::Images;
use banger_core::ops::Ops;
use banger_core::paths::Layout;
use banger_core::store::Store;
use banger_core::vms::Vms;
use tokio_util::sync::CancellationToken;

/// Everything a request handler can reach. Subsystems own their state;
/// this only holds them.
pub struct Daemon {
    pub config: Config,
    pub layout: Layout,
    pub store: Arc<Store>,
    pub ops: Ops,
    pub images: Images,
    pub vms: Vms,
    pub snapshots: banger_core::vms::Snapshots,
    pub pool: banger_core::vms::WarmPool,
    pub guests: banger_core::guests::Guests,
    pub sessions: banger_core::sessions::Sessions,
    pub workspaces: banger_core::workspaces::Workspaces,
    pub credentials: banger_core::credentials::Credentials,
    pub agent_runs: banger_core::agent_runs::AgentRuns,
    pub forwards: banger_core::forwards::Forwards,
    pub dns: banger_core::dns::Dns,
    /// Who may reach which VM (access.confine_users).
    pub access: banger_core::access::Access,
    /// E2B keys and sandboxes (the listener is e2b.rs).
    pub e2b: banger_core::e2b::E2b,
    /// Where the E2B listener listens, once it does.
    pub e2b_addr: std::sync::OnceLock<std::net::SocketAddr>,
    pub ui: UiState,
    pub socket_gid: u32,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Fired at shutdown; long-lived responses (SSE) end on it.
    pub shutdown: CancellationToken,
}

/// What every handler is given.
pub type AppState = Arc<Daemon>;

/// What the dashboard listens on, and who is logged in to it.
#[derive(Debug, Clone, Default)]
pub struct UiState {
    pub logins: Arc<crate::ui_login::Logins>,
    /// `127.0.0.1:7878`
    pub addr: Option<std::net::SocketAddr>,
    pub error: Option<String>,
}

impl UiState {
    /// Where the dashboard is, without a way in.
    pub fn url(&self) -> Option<String> {
        self.addr.map(|a| format!("http://{a}/"))
    }

    /// A one-time login link (a fresh code each call).
    pub fn login_url(&self) -> Option<String> {
        self.addr
            .map(|a| format!("http://{a}/?code={}", self.logins.code()))
    }

    /// `Host` values that name this listener.
    pub(crate) fn hosts(&self) -> Vec<String> {
        let Some(a) = self.addr else { return vec![] };
        let port = a.port();
        let mut v = vec![a.to_string(), format!("localhost:{port}")];
        if a.ip().is_ipv4() {
            v.push(format!("127.0.0.1:{port}"));
        }
        v
    }
}
