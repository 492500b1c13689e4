//! banger's core: every subsystem the daemon composes, with no HTTP in it.
//!
//! Each module owns one subsystem's state and locks and splits its pure
//! logic (parsing, validation, layout) from its effects (files, processes):
//!
//! - [`config`]: the daemon's TOML configuration (pure).
//! - [`paths`]: where everything lives under the state and runtime dirs (pure).
//! - [`store`]: SQLite with migrations; the only place state is persisted.
//! - [`ops`]: long-running operations with steps, progress and events.
//! - [`doctor`]: host checks and capabilities.
//! - [`tools`]: locating and running external programs.
//! - [`names`]: validation of user-supplied names.
//! - [`images`]: building and importing guest images (recipes, kernels, initrds).
//! - [`guest`]: what runs in the guest (initrd, guest init, config disk).
//! - [`guest_ssh`], [`guest_agent`]: the transports commands reach a guest by
//!   (SSH, and the guest agent's channel); [`guests`]: programs and files in
//!   running VMs (exec, read, write, list, watch).
//! - [`vms`]: VM lifecycle; [`sessions`], [`workspaces`], [`credentials`],
//!   [`agents`] (profiles), [`agent_runs`]: what runs in VMs; [`firewall`], [`dns`], [`forwards`],
//!   [`network`], [`netlink`], [`taps`]: the VM network.
//! - [`storage`]: disk clones and work seeds.
//! - [`shell`]: quoting for sh (sizes are `banger_api::units`); [`resources`]: a VM's
//!   resources, their bounds and the one update step (pure).

pub mod access;
pub mod agent_runs;
pub mod agents;
pub mod carried_workspaces;
pub mod config;
pub mod credentials;
pub mod dns;
pub mod dns_upstream;
pub mod doctor;
pub mod e2b;
pub mod error;
pub mod firewall;
pub mod forwards;
pub mod guest;
pub mod guest_agent;
pub mod guest_ssh;
pub mod guests;
pub mod images;
pub mod names;
pub mod netlink;
pub mod netns_lock;
pub mod network;
pub mod ops;
pub mod paths;
pub mod resources;
pub mod sessions;

pub mod shell;
pub mod storage;
pub mod store;
pub mod taps;
pub mod testhold;
pub mod tools;
pub mod vms;
pub mod workspaces;

pub use error::ToApiError;
