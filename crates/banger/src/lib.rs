//! The banger CLI as a library: the API client ([`client`]: the transport;
//! [`api`]: one typed method per endpoint, the only place a `/v1/` path is
//! spelled) and the output helpers ([`output`], [`progress`]). The commands
//! live in the binary (`main.rs`, `cmd/`). The client is also what the
//! integration tests use to call the API directly.

pub mod api;
pub mod client;
pub mod output;
pub mod progress;
pub mod workspace;

/// Exit codes of the `banger` command (documented in `banger --help`).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The request or the operation failed; the message says why.
    pub const FAILURE: u8 = 1;
    /// Bad command-line usage.
    pub const USAGE: u8 = 2;
    /// The daemon is not reachable (not running, or wrong --socket).
    pub const UNREACHABLE: u8 = 3;
    /// The daemon refused the caller (not root and not in the banger group).
    pub const PERMISSION: u8 = 4;
}
