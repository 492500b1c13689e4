//! The protocol between bangerd and `banger-agent`, the program every guest
//! runs. Pure: no I/O here, so the daemon, the agent and the tests share one
//! definition and its bounds.
//!
//! On one byte stream per VM (a virtio-serial port under QEMU, vsock under
//! Firecracker):
//!
//! 1. **Handshake** ([`handshake`]): the daemon writes `BANGER-AGENT HELLO
//!    <nonce>`; the agent answers `BANGER-AGENT OK <nonce> <protocol>
//!    <version>`. Lines are bounded and anything else is skipped, so stale
//!    bytes of an earlier connection (a virtio-serial port keeps them) never
//!    desynchronise the next one, and a guest that sends garbage is found
//!    out within a bounded read.
//! 2. **yamux** ([`yamux`](https://docs.rs/yamux) over the same stream, the
//!    daemon as client): one stream per request, each with its own flow
//!    control window, so a slow reader of one exec never stalls another.
//! 3. **Frames on a stream** ([`frame`]): `u32` length, a kind byte and a
//!    payload of at most [`frame::MAX_PAYLOAD`] bytes. The first frame is a
//!    JSON [`msg::Request`]; then JSON replies and controls, and raw data
//!    (stdin, stdout, stderr, file bytes) in frames of their own.

pub mod frame;
pub mod handshake;
pub mod msg;

/// The protocol this crate speaks (the `<protocol>` of the handshake).
pub const PROTOCOL: u32 = 1;

/// The agent's vsock port (Firecracker).
pub const VSOCK_PORT: u32 = 1024;

/// The name of the agent's virtio-serial port (QEMU).
pub const PORT_NAME: &str = "org.banger.agent";
