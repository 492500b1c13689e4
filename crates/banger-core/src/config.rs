//! The daemon's configuration file (TOML). Pure: parsing and validation only.
//!
//! Every key is optional; [`DEFAULT_CONFIG_TOML`] is the documented file with
//! every key at its default, and a unit test keeps it equal to
//! [`Config::default`]. Unknown keys are errors, and every error names the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// The documented default configuration, every key at its default value.
/// `bangerd --print-default-config` prints it.
pub const DEFAULT_CONFIG_TOML: &str = r#"# banger daemon configuration (/etc/banger/config.toml).
# Every key is optional; the values below are the defaults.

[daemon]
# Where bangerd keeps its database, images, disks and logs. Owned by root, mode 0700.
state_dir = "/var/lib/banger"
# Where bangerd keeps sockets and per-VM runtime files. Recreated at boot.
runtime_dir = "/run/banger"
# The API socket. Empty means "<runtime_dir>/bangerd.sock".
socket = ""
# Group that may use the API socket (socket mode 0660, owner root). The
# installer creates it; add users with `usermod -aG banger USER`.
socket_group = "banger"
# Log level for stderr and <state_dir>/logs/bangerd.DATE.log (a file a day, 14 kept): error, warn, info, debug or trace.
log_level = "info"
# On SIGTERM, how long to wait (seconds) for running operations to stop
# after they were asked to cancel. VMs keep running either way.
shutdown_grace_secs = 10

[access]
# Every member of socket_group can reach every VM: the socket is one door.
# With confine_users = true, a member who is not root sees and uses only
# the VMs, snapshots, sessions, workspaces and forwards of VMs they made
# (others answer "not found"), and cannot open the web dashboard (it shows
# every VM). Root and the daemon's own user see everything.
confine_users = false

[images]
# Package mirror for image builds. Empty: the mirror the host's apt uses,
# or http://deb.debian.org/debian when none is found.
mirror = ""

[network]
# Network namespace for the bridge, TAPs and VMM processes. Empty: the host's
# own namespace. When set, bangerd creates it if missing and enters it at
# start, so the host's namespace is never touched (the API socket still
# works from the host). Also settable with BANGER_NETNS.
netns = ""
# The bridge VMs are attached to (created when the first VM starts).
bridge = "banger0"
# VM addresses; the first host address is the bridge's (the guests' gateway).
subnet = "172.30.0.0/24"
# TAP devices kept ready on the bridge (made after the first VM starts, then
# refilled in the background), so starting a VM does not wait for one. 0: off.
tap_pool = 4
# Whether `banger vm forward` may listen on an address other than loopback
# (0.0.0.0, ::, a LAN address). Such a forward publishes a VM's port to the
# network with no authentication, so it is refused unless this is true.
public_forwards = false

[vm]
# Defaults for `banger vm create`.
default_image = "default"
cpus = 2
memory = "1G"
work_disk_size = "1G"
# A VM's serial console log is rotated past this size (the last part kept
# in console.log.1), so a guest cannot fill the disk through it.
# 64K to 1G.
console_log_size = "8M"
# QEMU acceleration: auto (KVM where it works, else TCG), kvm or tcg.
accel = "auto"
# The guest agent (banger-agent, a static binary) put on every VM's config
# disk. Empty: banger-agent next to bangerd, else
# /usr/local/lib/banger/banger-agent.
guest_agent = ""

[firecracker]
# The firecracker binary: a name on PATH or a path. `vm create --backend
# firecracker` needs it and /dev/kvm; `auto` picks Firecracker when both are
# usable (not on a nested kvm_pvm host) and the image has a vmlinux.
binary = "firecracker"
# Run Firecracker through its jailer: a path to the jailer binary, or empty
# for none. The jailer chroots Firecracker and drops it to uid/gid below.
jailer = ""
# Where jails are made. Empty: <state_dir>/jail (the same filesystem as the
# VM disks, so they are hard-linked in, not copied).
chroot_base = ""
# The user and group Firecracker runs as inside the jail.
uid = 65534
gid = 65534

[pool]
# The warm pool (`banger pool set IMAGE --size N`) keeps VMs booted so that
# `vm create` hands one out at once; its VMs take at most this much memory.
memory_budget = "4G"

[ui]
# The web dashboard: an address on the loopback (127.0.0.0/8 or ::1) and
# port, in the host's own network namespace. Empty: no dashboard. Access
# needs the per-daemon token (`banger ui` prints the URL with it).
listen = "127.0.0.1:7878"

[e2b]
# The E2B-compatible listener (control plane and envd on one port), so code
# written for E2B's SDKs runs against this daemon (docs/e2b.md): an address
# on the loopback and port. Empty: off. Every request needs an API key
# (`banger e2b key create`) or a sandbox's access token.
listen = ""

[agents]
# Agent profiles (NAME.toml) that add to or replace the built-in ones
# (opencode, claude-code, codex); read at each use, so a new file needs no
# restart. The format is in docs/agents.md.
dir = "/etc/banger/agents"

[auth]
# What `banger auth sync VM` copies into the guest user's home, every file
# mode 0600. The client reads the values as the calling user; the daemon
# writes them into the guest and never logs them.
#   kind = "file": the host file `source` (~ is the caller's home) to `dest`,
#     relative to the guest user's home; skipped when the host has no such file.
#   kind = "git-identity": the caller's git user.name and user.email.
#   kind = "env": the caller's environment variable `source`, into
#     ~/.config/banger/env/NAME in the guest, loaded by agent sessions.
items = [
  { name = "git", kind = "git-identity" },
  { name = "opencode", kind = "file", source = "~/.local/share/opencode/auth.json", dest = ".local/share/opencode/auth.json" },
  { name = "claude-code", kind = "file", source = "~/.claude/.credentials.json", dest = ".claude/.credentials.json" },
  { name = "codex", kind = "file", source = "~/.codex/auth.json", dest = ".codex/auth.json" },
  { name = "github", kind = "env", source = "GH_TOKEN" },
]

[debug]
# Serve /v1/debug/* endpoints (synthetic operations for testing the
# operations machinery). Never enable in production.
test_endpoints = false
"#;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub access: AccessConfig,
    pub images: ImagesConfig,
    pub network: NetworkConfig,
    pub vm: VmConfig,
    pub firecracker: FirecrackerConfig,
    pub pool: PoolConfig,
    pub ui: UiConfig,
    pub e2b: E2bConfig,
    pub agents: AgentsConfig,
    pub auth: AuthConfig,
    pub debug: DebugConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    pub memory_budget: String,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            memory_budget: "4G".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    pub listen: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct E2bConfig {
    pub listen: String,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig {
            listen: "127.0.0.1:7878".into(),
        }
    }
}

impl UiConfig {
    /// The address to listen on; `None`: no dashboard.
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.parse().ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    pub dir: PathBuf,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            dir: PathBuf::from("/etc/banger/agents"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthKind {
    File,
    GitIdentity,
    Env,
}

impl AuthKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthKind::File => "file",
            AuthKind::GitIdentity => "git-identity",
            AuthKind::Env => "env",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthItemConfig {
    pub name: String,
    pub kind: AuthKind,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub dest: Option<String>,
}

impl AuthItemConfig {
    fn new(name: &str, kind: AuthKind, source: Option<&str>, dest: Option<&str>) -> Self {
        AuthItemConfig {
            name: name.into(),
            kind,
            source: source.map(str::to_string),
            dest: dest.map(str::to_string),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub items: Vec<AuthItemConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        use AuthKind::*;
        AuthConfig {
            items: vec![
                AuthItemConfig::new("git", GitIdentity, None, None),
                AuthItemConfig::new(
                    "opencode",
                    File,
                    Some("~/.local/share/opencode/auth.json"),
                    Some(".local/share/opencode/auth.json"),
                ),
                AuthItemConfig::new(
                    "claude-code",
                    File,
                    Some("~/.claude/.credentials.json"),
                    Some(".claude/.credentials.json"),
                ),
                AuthItemConfig::new(
                    "codex",
                    File,
                    Some("~/.codex/auth.json"),
                    Some(".codex/auth.json"),
                ),
                AuthItemConfig::new("github", Env, Some("GH_TOKEN"), None),
            ],
        }
    }
}

/// A path relative to a home directory that stays inside it: no leading
/// `/`, no `..`, no empty or `.` components. Pure.
pub fn is_home_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\0')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// An environment variable name. Pure.
pub fn is_env_name(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirecrackerConfig {
    pub binary: String,
    pub jailer: String,
    pub chroot_base: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

impl Default for FirecrackerConfig {
    fn default() -> Self {
        FirecrackerConfig {
            binary: "firecracker".into(),
            jailer: String::new(),
            chroot_base: PathBuf::new(),
            uid: 65534,
            gid: 65534,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    pub netns: String,
    pub bridge: String,
    pub subnet: String,
    pub tap_pool: usize,
    pub public_forwards: bool,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            netns: String::new(),
            bridge: "banger0".into(),
            subnet: "172.30.0.0/24".into(),
            tap_pool: 4,
            public_forwards: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmConfig {
    pub default_image: String,
    pub cpus: u32,
    pub memory: String,
    pub work_disk_size: String,
    pub console_log_size: String,
    pub accel: String,
    pub guest_agent: String,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            default_image: "default".into(),
            cpus: 2,
            memory: "1G".into(),
            work_disk_size: "1G".into(),
            console_log_size: "8M".into(),
            accel: "auto".into(),
            guest_agent: String::new(),
        }
    }
}

fn is_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Empty: the host's apt mirror.
    pub mirror: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    /// Empty: `<runtime_dir>/bangerd.sock`.
    pub socket: PathBuf,
    pub socket_group: String,
    pub log_level: String,
    pub shutdown_grace_secs: u64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            state_dir: PathBuf::from("/var/lib/banger"),
            runtime_dir: PathBuf::from("/run/banger"),
            socket: PathBuf::new(),
            socket_group: "banger".into(),
            log_level: "info".into(),
            shutdown_grace_secs: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    pub confine_users: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    pub test_endpoints: bool,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("Cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("Config file {path}: key `{key}` is invalid: {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
}

pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

impl Config {
    /// Reads and validates the file at `path`. A missing file is an error
    /// only when `must_exist` (the user named it explicitly).
    pub fn load(path: &Path, must_exist: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                let c = Config::default();
                c.validate(path)?;
                Ok(c)
            }
            Err(source) => Err(ConfigError::Read {
                path: path.into(),
                source,
            }),
        }
    }

    /// Parses `text` (from `path`, used in messages) and validates it.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string().trim().replace('\n', " | "),
        })?;
        c.validate(path)?;
        Ok(c)
    }

    /// Checks the values that the types alone do not.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| ConfigError::Invalid {
            path: path.into(),
            key,
            reason,
        };
        let d = &self.daemon;
        if !d.state_dir.is_absolute() {
            return Err(invalid(
                "daemon.state_dir",
                format!("{:?} is not an absolute path", d.state_dir),
            ));
        }
        if !d.runtime_dir.is_absolute() {
            return Err(invalid(
                "daemon.runtime_dir",
                format!("{:?} is not an absolute path", d.runtime_dir),
            ));
        }
        if !d.socket.as_os_str().is_empty() && !d.socket.is_absolute() {
            return Err(invalid(
                "daemon.socket",
                format!("{:?} is not an absolute path", d.socket),
            ));
        }
        if !is_valid_group_name(&d.socket_group) {
            return Err(invalid(
                "daemon.socket_group",
                format!(
                    "{:?} is not a valid group name (a-z, 0-9, '_', '-', at most 32 characters)",
                    d.socket_group
                ),
            ));
        }
        if !LOG_LEVELS.contains(&d.log_level.as_str()) {
            return Err(invalid(
                "daemon.log_level",
                format!("{:?} is not one of {}", d.log_level, LOG_LEVELS.join(", ")),
            ));
        }
        let m = &self.images.mirror;
        if !(m.is_empty() || m.starts_with("http://") || m.starts_with("https://")) {
            return Err(invalid(
                "images.mirror",
                format!("{m:?} is not an http(s) URL"),
            ));
        }
        let n = &self.network;
        if !n.netns.is_empty() && !is_ifname(&n.netns) {
            return Err(invalid(
                "network.netns",
                format!(
                    "{:?} is not a valid namespace name (a-z, 0-9, '-', '_', at most 15)",
                    n.netns
                ),
            ));
        }
        if !is_ifname(&n.bridge) {
            return Err(invalid(
                "network.bridge",
                format!(
                    "{:?} is not a valid interface name (at most 15 characters)",
                    n.bridge
                ),
            ));
        }
        if n.tap_pool > 64 {
            return Err(invalid(
                "network.tap_pool",
                format!("{} is more than 64", n.tap_pool),
            ));
        }
        if let Err(e) = crate::network::Subnet::parse(&n.subnet) {
            return Err(invalid("network.subnet", e.to_string()));
        }
        let v = &self.vm;
        if crate::names::validate_name("image", &v.default_image).is_err() {
            return Err(invalid(
                "vm.default_image",
                format!("{:?} is not a valid image name", v.default_image),
            ));
        }
        if let Err(e) = crate::resources::check_cpus(v.cpus) {
            return Err(invalid("vm.cpus", e.to_string()));
        }
        for (key, val) in [
            ("vm.memory", &v.memory),
            ("vm.work_disk_size", &v.work_disk_size),
            ("vm.console_log_size", &v.console_log_size),
            ("pool.memory_budget", &self.pool.memory_budget),
        ] {
            if let Err(e) = banger_api::units::parse_size(val) {
                return Err(invalid(key, e.to_string()));
            }
        }
        // The same bounds `vm create` holds a request to: a default it would
        // refuse makes every create fail.
        let bytes = |val: &str| banger_api::units::parse_size(val).unwrap_or(0);
        if let Err(e) = crate::resources::memory_mib(bytes(&v.memory)) {
            return Err(invalid("vm.memory", e.to_string()));
        }
        if let Err(e) = crate::resources::check_work_bytes(bytes(&v.work_disk_size)) {
            return Err(invalid("vm.work_disk_size", e.to_string()));
        }
        let console = bytes(&v.console_log_size);
        if !(64 << 10..=1 << 30).contains(&console) {
            return Err(invalid(
                "vm.console_log_size",
                format!("{} is not between 64K and 1G", v.console_log_size),
            ));
        }
        if !["auto", "kvm", "tcg"].contains(&v.accel.as_str()) {
            return Err(invalid(
                "vm.accel",
                format!("{:?} is not auto, kvm or tcg", v.accel),
            ));
        }
        if self.firecracker.binary.is_empty() {
            return Err(invalid("firecracker.binary", "it is empty".into()));
        }
        let cb = &self.firecracker.chroot_base;
        if !cb.as_os_str().is_empty() && !cb.is_absolute() {
            return Err(invalid(
                "firecracker.chroot_base",
                format!("{cb:?} is not an absolute path"),
            ));
        }
        for (key, listen, what) in [
            ("ui.listen", &self.ui.listen, "the dashboard"),
            ("e2b.listen", &self.e2b.listen, "the E2B listener"),
        ] {
            if listen.is_empty() {
                continue;
            }
            match listen.parse::<std::net::SocketAddr>() {
                Ok(a) if a.ip().is_loopback() => {}
                Ok(a) => {
                    return Err(invalid(
                        key,
                        format!(
                        "{a} is not a loopback address: {what} listens on 127.0.0.1 or ::1 only"
                    ),
                    ))
                }
                Err(_) => {
                    return Err(invalid(
                        key,
                        format!("{listen:?} is not ADDRESS:PORT, e.g. 127.0.0.1:7878"),
                    ))
                }
            }
        }
        if !self.agents.dir.is_absolute() {
            return Err(invalid(
                "agents.dir",
                format!("{:?} is not an absolute path", self.agents.dir),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for item in &self.auth.items {
            let bad =
                |reason: String| invalid("auth.items", format!("item {:?}: {reason}", item.name));
            if crate::names::validate_name("auth item", &item.name).is_err() {
                return Err(bad("the name must be 1-63 of a-z, 0-9 and '-'".into()));
            }
            if !seen.insert(item.name.clone()) {
                return Err(bad("the name is used twice".into()));
            }
            match item.kind {
                AuthKind::File => {
                    if item.source.as_deref().is_none_or(str::is_empty) {
                        return Err(bad("kind \"file\" needs `source`, the host path".into()));
                    }
                    if !item.dest.as_deref().is_some_and(is_home_relative) {
                        return Err(bad("kind \"file\" needs `dest`, a path relative to the guest user's home without `..`".into()));
                    }
                }
                AuthKind::Env => {
                    if !item.source.as_deref().is_some_and(is_env_name) {
                        return Err(bad(
                            "kind \"env\" needs `source`, an environment variable name".into(),
                        ));
                    }
                    if item.dest.is_some() {
                        return Err(bad("kind \"env\" takes no `dest`".into()));
                    }
                }
                AuthKind::GitIdentity => {
                    if item.source.is_some() || item.dest.is_some() {
                        return Err(bad(
                            "kind \"git-identity\" takes no `source` or `dest`".into()
                        ));
                    }
                }
            }
        }
        if d.shutdown_grace_secs > 3600 {
            return Err(invalid(
                "daemon.shutdown_grace_secs",
                format!("{} is more than 3600", d.shutdown_grace_secs),
            ));
        }
        Ok(())
    }

    /// The API socket path, with the empty default resolved.
    pub fn socket_path(&self) -> PathBuf {
        if self.daemon.socket.as_os_str().is_empty() {
            self.daemon.runtime_dir.join("bangerd.sock")
        } else {
            self.daemon.socket.clone()
        }
    }
}

fn is_valid_group_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && !s.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/etc/banger/config.toml")
    }

    #[test]
    fn documented_defaults_match_code_defaults() {
        let parsed = Config::parse(DEFAULT_CONFIG_TOML, p()).expect("default config parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Config::parse("", p()).expect("parses"), Config::default());
    }

    #[test]
    fn missing_default_file_is_defaults_but_explicit_file_must_exist() {
        let missing = Path::new("/nonexistent/banger/config.toml");
        assert_eq!(
            Config::load(missing, false).expect("defaults"),
            Config::default()
        );
        let err = Config::load(missing, true).expect_err("must exist");
        assert!(
            err.to_string().contains("/nonexistent/banger/config.toml"),
            "{err}"
        );
    }

    #[test]
    fn bad_toml_is_an_error_naming_the_file() {
        let err = Config::parse("[daemon\nstate_dir = ", p()).expect_err("bad toml");
        let msg = err.to_string();
        assert!(
            msg.contains("/etc/banger/config.toml") && msg.contains("line"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_key_is_an_error_naming_the_key() {
        let err = Config::parse("[daemon]\nstate_dri = \"/x\"\n", p()).expect_err("unknown key");
        assert!(err.to_string().contains("state_dri"), "{err}");
        let err = Config::parse("[deamon]\n", p()).expect_err("unknown table");
        assert!(err.to_string().contains("deamon"), "{err}");
    }

    #[test]
    fn wrong_type_is_an_error_naming_the_key() {
        let err =
            Config::parse("[daemon]\nshutdown_grace_secs = \"ten\"\n", p()).expect_err("bad type");
        assert!(err.to_string().contains("shutdown_grace_secs"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("[daemon]\nstate_dir = \"relative\"\n", "daemon.state_dir"),
            ("[daemon]\nruntime_dir = \"run\"\n", "daemon.runtime_dir"),
            ("[daemon]\nsocket = \"x.sock\"\n", "daemon.socket"),
            (
                "[daemon]\nsocket_group = \"Bad Group\"\n",
                "daemon.socket_group",
            ),
            ("[daemon]\nlog_level = \"loud\"\n", "daemon.log_level"),
            ("[ui]\nlisten = \"0.0.0.0:7878\"\n", "ui.listen"),
            ("[ui]\nlisten = \"localhost\"\n", "ui.listen"),
            ("[e2b]\nlisten = \"0.0.0.0:3000\"\n", "e2b.listen"),
            (
                "[daemon]\nshutdown_grace_secs = 99999\n",
                "daemon.shutdown_grace_secs",
            ),
            ("[vm]\nmemory = \"1K\"\n", "vm.memory"),
            ("[vm]\nmemory = \"100G\"\n", "vm.memory"),
            ("[vm]\nwork_disk_size = \"1M\"\n", "vm.work_disk_size"),
            ("[vm]\nconsole_log_size = \"1K\"\n", "vm.console_log_size"),
            ("[vm]\nconsole_log_size = \"2G\"\n", "vm.console_log_size"),
        ];
        for (text, key) in cases {
            let err = Config::parse(text, p()).expect_err(text);
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn bad_auth_items_name_the_item() {
        let cases = [
            ("[[auth.items]]\nname = \"x\"\nkind = \"file\"\nsource = \"~/a\"\ndest = \"../etc/passwd\"\n", "dest"),
            ("[[auth.items]]\nname = \"x\"\nkind = \"file\"\nsource = \"~/a\"\ndest = \"/root/a\"\n", "dest"),
            ("[[auth.items]]\nname = \"x\"\nkind = \"env\"\nsource = \"A B\"\n", "source"),
            ("[[auth.items]]\nname = \"x\"\nkind = \"git-identity\"\n[[auth.items]]\nname = \"x\"\nkind = \"git-identity\"\n", "twice"),
            ("[[auth.items]]\nname = \"Bad Name\"\nkind = \"git-identity\"\n", "name"),
        ];
        for (text, what) in cases {
            let err = Config::parse(text, p()).expect_err(text).to_string();
            assert!(
                err.contains("auth.items") && err.contains(what),
                "{text}: {err}"
            );
        }
        let err = Config::parse("[[auth.items]]\nname = \"x\"\nkind = \"magic\"\n", p())
            .expect_err("kind");
        assert!(err.to_string().contains("magic"), "{err}");
    }

    #[test]
    fn home_relative_paths() {
        assert!(is_home_relative(".config/x.json"));
        for bad in ["", "/abs", "a/../b", "a//b", "./a", ".."] {
            assert!(!is_home_relative(bad), "{bad}");
        }
    }

    #[test]
    fn socket_defaults_under_runtime_dir() {
        let c = Config::parse("[daemon]\nruntime_dir = \"/tmp/r\"\n", p()).expect("parses");
        assert_eq!(c.socket_path(), PathBuf::from("/tmp/r/bangerd.sock"));
        let c = Config::parse("[daemon]\nsocket = \"/tmp/s.sock\"\n", p()).expect("parses");
        assert_eq!(c.socket_path(), PathBuf::from("/tmp/s.sock"));
    }
}
