//! Credential sync: the configured `auth.items` written into a guest user's
//! home, each file mode 0600.
//!
//! The client reads the values as the calling user and sends them; the
//! daemon checks each against the configured item and writes it over the
//! VM's SSH connection with the value on stdin (never on a command line).
//! Values never reach a log, an operation message or an API response:
//! [`banger_api::AuthValue`]'s `Debug` is redacted, and the report names
//! only items and paths.

use std::time::Duration;

use banger_api::{AuthItem, AuthSyncReport, AuthSynced, AuthValue};
use base64::Engine;
use thiserror::Error;

use crate::config::{AuthItemConfig, AuthKind};
use crate::guest_ssh::GuestInput;
use crate::shell::quote;
use crate::vms::{VmError, Vms};
use crate::ToApiError;

/// The guest user credentials go to, and its home.
pub const GUEST_USER: &str = "root";
pub const GUEST_HOME: &str = "/root";
/// Where `env` items go in the guest; agent sessions load every file here.
pub const GUEST_ENV_DIR: &str = "/root/.config/banger/env";

#[derive(Debug, Error)]
pub enum CredentialError {
    #[error("No auth item named {name:?} in the daemon's config (auth.items has: {})", known.join(", "))]
    Unknown { name: String, known: Vec<String> },
    #[error("Auth item {name:?} is of kind {configured}, not {sent}")]
    WrongKind {
        name: String,
        configured: &'static str,
        sent: &'static str,
    },
    #[error("Invalid value for auth item {name:?}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("Writing auth item {name:?} into the guest failed: {stderr}")]
    Guest { name: String, stderr: String },
    #[error(transparent)]
    Vm(Box<VmError>),
    #[error(transparent)]
    Transport(#[from] crate::vms::GuestCmdError),
}

impl From<VmError> for CredentialError {
    fn from(e: VmError) -> Self {
        CredentialError::Vm(Box::new(e))
    }
}

impl ToApiError for CredentialError {
    fn code(&self) -> banger_api::ErrorCode {
        use banger_api::ErrorCode as C;
        match self {
            CredentialError::Unknown { .. }
            | CredentialError::WrongKind { .. }
            | CredentialError::Invalid { .. } => C::InvalidRequest,
            CredentialError::Vm(e) => e.code(),
            CredentialError::Transport(e) => e.code(),
            CredentialError::Guest { .. } => C::Internal,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            CredentialError::Unknown { .. } => Some(
                "See the configured items with `banger auth ls`; add items under [auth] in /etc/banger/config.toml".into(),
            ),
            CredentialError::Vm(e) => e.hint(),
            CredentialError::Transport(e) => e.hint(),
            _ => None,
        }
    }
}

/// Writes stdin to `path` (mode 0600, parents 0700), atomically. Pure.
pub fn write_file_script(path: &str) -> String {
    format!(
        "set -eu; umask 077; p={p}; mkdir -p -- \"$(dirname -- \"$p\")\"; cat > \"$p.banger-new\"; chmod 600 \"$p.banger-new\"; chown {u}: \"$p.banger-new\"; mv -f -- \"$p.banger-new\" \"$p\"",
        p = quote(path),
        u = GUEST_USER,
    )
}

/// Sets the guest user's git identity. Pure.
pub fn git_identity_script(name: &str, email: &str) -> String {
    format!(
        "set -eu; umask 077; HOME={home}; export HOME; git config --global user.name {n}; git config --global user.email {e}; chmod 600 {home}/.gitconfig",
        home = GUEST_HOME,
        n = quote(name),
        e = quote(email),
    )
}

/// An env item's file: one `export` line. Pure.
pub fn env_file(var: &str, value: &str) -> String {
    format!("export {var}={}\n", quote(value))
}

/// One checked write into the guest.
struct Write {
    name: String,
    kind: &'static str,
    path: String,
    script: String,
    input: Option<Vec<u8>>,
}

#[derive(Clone)]
pub struct Credentials {
    items: Vec<AuthItemConfig>,
    vms: Vms,
}

impl Credentials {
    pub fn new(items: Vec<AuthItemConfig>, vms: Vms) -> Credentials {
        Credentials { items, vms }
    }

    pub fn items(&self) -> Vec<AuthItem> {
        self.items
            .iter()
            .map(|i| AuthItem {
                name: i.name.clone(),
                kind: i.kind.as_str().into(),
                source: i.source.clone(),
                dest: i.dest.clone(),
            })
            .collect()
    }

    /// Checks every value first (nothing is written when one is bad), then
    /// writes each into the guest.
    pub async fn sync(
        &self,
        vm_name: &str,
        values: &[AuthValue],
    ) -> Result<AuthSyncReport, CredentialError> {
        let vm = self.vms.get(vm_name)?;
        let mut plan: Vec<Write> = Vec::new();
        for v in values {
            let item = self
                .items
                .iter()
                .find(|i| i.name == v.name())
                .ok_or_else(|| CredentialError::Unknown {
                    name: v.name().into(),
                    known: self.items.iter().map(|i| i.name.clone()).collect(),
                })?;
            if item.kind.as_str() != v.kind() {
                return Err(CredentialError::WrongKind {
                    name: item.name.clone(),
                    configured: item.kind.as_str(),
                    sent: v.kind(),
                });
            }
            let invalid = |reason: &str| CredentialError::Invalid {
                name: item.name.clone(),
                reason: reason.into(),
            };
            let (path, script, input) = match (v, item.kind) {
                (AuthValue::File { content_base64, .. }, AuthKind::File) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(content_base64)
                        .map_err(|_| invalid("content_base64 is not base64"))?;
                    if bytes.len() > 1 << 20 {
                        return Err(invalid("the file is larger than 1 MiB"));
                    }
                    let path = format!("{GUEST_HOME}/{}", item.dest.as_deref().unwrap_or(""));
                    let script = write_file_script(&path);
                    (path, script, Some(bytes))
                }
                (
                    AuthValue::GitIdentity {
                        user_name,
                        user_email,
                        ..
                    },
                    AuthKind::GitIdentity,
                ) => {
                    if user_name.trim().is_empty() || user_email.trim().is_empty() {
                        return Err(invalid("user.name and user.email must both be set"));
                    }
                    if user_name.contains('\n') || user_email.contains('\n') {
                        return Err(invalid("a line break in user.name or user.email"));
                    }
                    (
                        format!("{GUEST_HOME}/.gitconfig"),
                        git_identity_script(user_name, user_email),
                        None,
                    )
                }
                (AuthValue::Env { value, .. }, AuthKind::Env) => {
                    let var = item.source.as_deref().unwrap_or("");
                    let path = format!("{GUEST_ENV_DIR}/{}", item.name);
                    let script = write_file_script(&path);
                    (path, script, Some(env_file(var, value).into_bytes()))
                }
                _ => return Err(invalid("the value does not match the item's kind")),
            };
            plan.push(Write {
                name: item.name.clone(),
                kind: item.kind.as_str(),
                path,
                script,
                input,
            });
        }
        let mut synced = Vec::new();
        for Write {
            name,
            kind,
            path,
            script,
            input,
        } in plan
        {
            let out = self
                .vms
                .commands(&vm)
                .await?
                .exec(
                    &script,
                    input.map_or(GuestInput::None, GuestInput::Bytes),
                    Duration::from_secs(60),
                )
                .await?;
            if !out.status.success() {
                return Err(CredentialError::Guest {
                    name,
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            synced.push(AuthSynced {
                name,
                kind: kind.into(),
                guest_path: path,
            });
        }
        tracing::info!(vm = %vm.name, items = ?synced.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), "credentials synced");
        Ok(AuthSyncReport { synced })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_write_0600_files_with_hostile_paths_and_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a dir/$(touch pwned)/x'y.json");
        let script = write_file_script(&path.display().to_string())
            .replace(&format!("chown {GUEST_USER}: "), "true ");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        {
            use std::io::Write;
            let mut sin = child.stdin.take().expect("stdin");
            sin.write_all(b"secret\n").expect("write");
        }
        assert!(child.wait().expect("wait").success());
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&path).expect("written");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).expect("read"), b"secret\n");
        assert!(!dir.path().join("pwned").exists());
        let env = env_file("GH_TOKEN", "a'b $(x)");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{env}printf %s \"$GH_TOKEN\""))
            .output()
            .expect("sh");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a'b $(x)");
    }

    #[test]
    fn values_are_redacted_in_debug() {
        let v = AuthValue::Env {
            name: "github".into(),
            value: "ghp_topsecret".into(),
        };
        assert!(!format!("{v:?}").contains("topsecret"));
    }
}
