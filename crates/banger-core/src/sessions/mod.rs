//! Guest sessions: long-running commands in a guest that outlive the
//! connection that started them.
//!
//! The guest keeps each session's truth (see [`script`]); the daemon keeps a
//! registry in SQLite, refreshed by inspection whenever a session is listed
//! or shown, so after a daemon restart or a guest reboot sessions show their
//! real state (a process that vanished without an exit code is `lost`).
//! Commands go through the VM's banger-agent (SSH for guests without it),
//! and logs are read in bounded chunks ([`LOG_CHUNK`]).

pub mod script;

use banger_api::{Session, SessionStartRequest};
use rusqlite::{params, OptionalExtension, Row};
use thiserror::Error;

use crate::names::{validate_name, NameError};
use crate::store::{Store, StoreError};
use crate::vms::{VmError, Vms};
use crate::ToApiError;
use script::{Launch, GUEST_SESSIONS_ROOT};

#[derive(Debug, Error)]
pub enum SessionError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("No session named {0:?}")]
    NotFound(String),
    #[error("A session named {0:?} already exists")]
    Exists(String),
    #[error("The working directory {0:?} does not exist in the guest")]
    MissingCwd(String),
    #[error("Required command {0:?} is not on the guest's PATH")]
    MissingCommand(String),
    #[error("Session {name:?} is {state}; {what}")]
    WrongState {
        name: String,
        state: String,
        what: &'static str,
    },
    #[error(transparent)]
    Script(#[from] script::ScriptError),
    #[error("The guest answered unexpectedly: {0}")]
    Guest(String),
    #[error(transparent)]
    Vm(Box<VmError>),
    #[error(transparent)]
    Transport(#[from] crate::vms::GuestCmdError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<VmError> for SessionError {
    fn from(e: VmError) -> Self {
        SessionError::Vm(Box::new(e))
    }
}

impl From<rusqlite::Error> for SessionError {
    fn from(e: rusqlite::Error) -> Self {
        SessionError::Store(StoreError::Sqlite(e))
    }
}

impl ToApiError for SessionError {
    fn code(&self) -> banger_api::ErrorCode {
        use banger_api::ErrorCode as C;
        match self {
            SessionError::Name(_)
            | SessionError::Script(_)
            | SessionError::MissingCwd(_)
            | SessionError::MissingCommand(_) => C::InvalidRequest,
            SessionError::NotFound(_) => C::NotFound,
            SessionError::Exists(_) | SessionError::WrongState { .. } => C::Conflict,
            SessionError::Vm(e) => e.code(),
            SessionError::Transport(e) => e.code(),
            _ => C::Internal,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            SessionError::NotFound(_) => Some("List sessions with `banger session ls`".into()),
            SessionError::Exists(_) => {
                Some("Pick another --name, or remove the old one: banger session rm NAME".into())
            }
            SessionError::MissingCommand(c) => Some(format!(
                "Install {c} in the guest (banger vm ssh VM), or use an image that has it"
            )),
            SessionError::Vm(e) => e.hint(),
            SessionError::Transport(e) => e.hint(),
            _ => None,
        }
    }
}

/// The most log bytes one read returns; callers continue from the offset
/// it gives back.
pub const LOG_CHUNK: u64 = 1 << 20;

#[derive(Clone)]
pub struct Sessions {
    store: std::sync::Arc<Store>,
    vms: Vms,
}

const COLUMNS: &str = "s.id, s.name, v.name, s.argv, s.cwd, s.state, s.exit_code, s.pid, \
    s.boot_id, s.started_at, s.stdout_size, s.stderr_size, s.tty";

fn from_row(r: &Row<'_>) -> rusqlite::Result<(Session, String)> {
    let argv: String = r.get(3)?;
    let started: String = r.get(9)?;
    let pid: Option<i64> = r.get(7)?;
    let (out, err): (i64, i64) = (r.get(10)?, r.get(11)?);
    Ok((
        Session {
            id: r.get(0)?,
            name: r.get(1)?,
            vm: r.get(2)?,
            command: serde_json::from_str(&argv).unwrap_or_default(),
            cwd: r.get(4)?,
            state: r.get(5)?,
            exit_code: r.get(6)?,
            pid: pid.and_then(|p| u32::try_from(p).ok()),
            started_at: chrono::DateTime::parse_from_rfc3339(&started)
                .map(|t| t.with_timezone(&chrono::Utc))
                .unwrap_or_default(),
            stdout_bytes: u64::try_from(out).unwrap_or(0),
            stderr_bytes: u64::try_from(err).unwrap_or(0),
            tty: r.get::<_, i64>(12)? != 0,
        },
        r.get(8)?,
    ))
}

/// A default session name: the command's base name and 4 hex digits. Pure.
pub fn default_name(argv0: &str, id: &str) -> String {
    let base: String = argv0
        .rsplit('/')
        .next()
        .unwrap_or("session")
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    let base = base.trim_matches('-');
    format!(
        "{}-{}",
        if base.is_empty() { "session" } else { base },
        &id[..4]
    )
}

impl Sessions {
    pub fn new(store: std::sync::Arc<Store>, vms: Vms) -> Sessions {
        Sessions { store, vms }
    }

    async fn run(
        &self,
        vm: &banger_api::Vm,
        script: &str,
        stdin: Option<Vec<u8>>,
    ) -> Result<std::process::Output, SessionError> {
        let command = format!("#!/bin/bash\n{script}");
        Ok(self.vms.commands(vm).await?.run(&command, stdin).await?)
    }

    /// Preflight and launch in the guest; registers the session.
    pub async fn start(
        &self,
        vm_name: &str,
        req: SessionStartRequest,
    ) -> Result<Session, SessionError> {
        let vm = self.vms.get(vm_name)?;
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let name = match &req.name {
            Some(n) => n.clone(),
            None => default_name(
                req.command.first().map(String::as_str).unwrap_or("session"),
                &id,
            ),
        };
        validate_name("session", &name)?;
        if self.lookup(&name)?.is_some() {
            return Err(SessionError::Exists(name));
        }
        let launch = Launch {
            id: id.clone(),
            cwd: req.cwd.clone(),
            env: req.env.clone().into_iter().collect(),
            requires: req.require.clone(),
            argv: req.command.clone(),
            tty: req.tty.map(|t| (t.rows, t.cols)),
        };
        if let Some(t) = req.tty {
            check_size(t)?;
        }
        let text = script::launch_script(GUEST_SESSIONS_ROOT, &launch)?;
        let out = self.run(&vm, &text, None).await?;
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        match out.status.code() {
            Some(0) => {}
            Some(script::EXIT_MISSING_CWD) => {
                return Err(SessionError::MissingCwd(
                    req.cwd.clone().unwrap_or_default(),
                ))
            }
            Some(script::EXIT_MISSING_COMMAND) => {
                let missing = stderr
                    .lines()
                    .find_map(|l| l.strip_prefix("banger-preflight: missing-command "))
                    .unwrap_or("?");
                return Err(SessionError::MissingCommand(missing.to_string()));
            }
            _ => {
                return Err(SessionError::Guest(format!(
                    "launch failed ({}): {}",
                    out.status,
                    stderr.trim()
                )))
            }
        }
        let insp = self.inspect(&vm, &id).await?;
        let (state, code) = script::derive_state(&insp, &insp.boot_id);
        let argv = serde_json::to_string(&req.command).unwrap_or_default();
        let now = chrono::Utc::now().to_rfc3339();
        self.store.write(|tx| -> Result<(), SessionError> {
            tx.execute(
                "INSERT INTO sessions (id, name, vm_id, argv, cwd, state, \
                exit_code, pid, boot_id, started_at, stdout_size, stderr_size, tty) \
                VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    id,
                    name,
                    vm.id,
                    argv,
                    req.cwd,
                    state,
                    code,
                    insp.child,
                    insp.boot_id,
                    now,
                    insp.stdout_size as i64,
                    insp.stderr_size as i64,
                    req.tty.is_some()
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    SessionError::Exists(name.clone())
                }
                other => other.into(),
            })?;
            Ok(())
        })?;
        tracing::info!(session = %name, vm = %vm.name, "session started");
        self.get(&name).await
    }

    async fn inspect(
        &self,
        vm: &banger_api::Vm,
        id: &str,
    ) -> Result<script::Inspection, SessionError> {
        let out = self
            .run(vm, &script::inspect_script(GUEST_SESSIONS_ROOT, id)?, None)
            .await?;
        script::parse_inspect(&String::from_utf8_lossy(&out.stdout)).map_err(SessionError::Guest)
    }

    fn lookup(&self, name: &str) -> Result<Option<(Session, String)>, SessionError> {
        Ok(self.store.read(|c| {
            c.query_row(
                &format!(
                    "SELECT {COLUMNS} FROM sessions s JOIN vms v ON v.id = s.vm_id \
                    WHERE s.name = ?1"
                ),
                [name],
                from_row,
            )
            .optional()
        })?)
    }

    fn require(&self, name: &str) -> Result<(Session, String), SessionError> {
        validate_name("session", name)?;
        self.lookup(name)?
            .ok_or_else(|| SessionError::NotFound(name.into()))
    }

    /// Re-reads a session's state from its guest and records it.
    async fn refresh(&self, s: Session, boot_id: &str) -> Result<Session, SessionError> {
        if s.state != "running" {
            return Ok(s);
        }
        let vm = self.vms.get(&s.vm)?;
        let (state, code, out, err) = if vm.state == banger_api::VmState::Running {
            match self.inspect(&vm, &s.id).await {
                Ok(i) => {
                    let (st, code) = script::derive_state(&i, boot_id);
                    (st.to_string(), code, i.stdout_size, i.stderr_size)
                }
                Err(e) => {
                    tracing::warn!(session = %s.name, error = %e, "cannot inspect session");
                    return Ok(s);
                }
            }
        } else {
            ("lost".to_string(), None, s.stdout_bytes, s.stderr_bytes)
        };
        let id = s.id.clone();
        let st2 = state.clone();
        self.store.write(|tx| {
            tx.execute(
                "UPDATE sessions SET state = ?2, exit_code = ?3, stdout_size = \
                ?4, stderr_size = ?5 WHERE id = ?1",
                params![id, st2, code, out as i64, err as i64],
            )
            .map(|_| ())
        })?;
        Ok(Session {
            state,
            exit_code: code,
            stdout_bytes: out,
            stderr_bytes: err,
            ..s
        })
    }

    pub async fn get(&self, name: &str) -> Result<Session, SessionError> {
        let (s, boot) = self.require(name)?;
        self.refresh(s, &boot).await
    }

    /// Sessions, of one VM or all, with fresh states.
    pub async fn list(&self, vm: Option<&str>) -> Result<Vec<Session>, SessionError> {
        let rows: Vec<(Session, String)> =
            self.store
                .read(|c| -> Result<Vec<(Session, String)>, SessionError> {
                    let mut stmt = c.prepare(&format!(
                        "SELECT {COLUMNS} FROM sessions s JOIN vms v ON v.id = s.vm_id \
                        WHERE ?1 IS NULL OR v.name = ?1 ORDER BY s.started_at"
                    ))?;
                    let rows = stmt.query_map([vm], from_row)?;
                    Ok(rows.collect::<Result<Vec<_>, _>>()?)
                })?;
        let mut out = Vec::new();
        for (s, boot) in rows {
            out.push(self.refresh(s, &boot).await?);
        }
        Ok(out)
    }

    /// At most [`LOG_CHUNK`] bytes of a log from byte `offset`; returns the
    /// text and the next offset (equal to `offset`: nothing more yet).
    pub async fn logs(
        &self,
        name: &str,
        stderr: bool,
        offset: u64,
    ) -> Result<(String, u64), SessionError> {
        let (s, _) = self.require(name)?;
        let vm = self.vms.get(&s.vm)?;
        let path = script::log_path(GUEST_SESSIONS_ROOT, &s.id, stderr)?;
        let bytes = self
            .vms
            .commands(&vm)
            .await?
            .read_range(&path, offset, LOG_CHUNK)
            .await?;
        // A chunk may end inside a UTF-8 character: stop before it (the
        // next read starts there), unless the chunk is nothing but that.
        let keep = utf8_prefix(&bytes);
        let text = String::from_utf8_lossy(&bytes[..keep]).into_owned();
        Ok((text, offset.saturating_add(keep as u64)))
    }

    /// Sets the size of a session's terminal.
    pub async fn resize(&self, name: &str, size: banger_api::TermSize) -> Result<(), SessionError> {
        check_size(size)?;
        let (s, _) = self.require(name)?;
        let vm = self.vms.get(&s.vm)?;
        let text = script::resize_script(GUEST_SESSIONS_ROOT, &s.id, size.rows, size.cols)?;
        let out = self.run(&vm, &text, None).await?;
        match out.status.code() {
            Some(0) => Ok(()),
            Some(3) => Err(SessionError::WrongState {
                name: name.into(),
                state: "not running".into(),
                what: "only a running session's terminal can be resized",
            }),
            Some(script::EXIT_NO_TTY) => Err(SessionError::WrongState {
                name: name.into(),
                state: "not on a terminal".into(),
                what: "start it with --tty to give it one",
            }),
            _ => Err(SessionError::Guest(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            )),
        }
    }

    pub async fn send(&self, name: &str, text: &str) -> Result<(), SessionError> {
        let (s, _) = self.require(name)?;
        let vm = self.vms.get(&s.vm)?;
        let out = self
            .run(
                &vm,
                &script::send_script(GUEST_SESSIONS_ROOT, &s.id)?,
                Some(text.as_bytes().to_vec()),
            )
            .await?;
        if out.status.code() == Some(3) {
            return Err(SessionError::WrongState {
                name: name.into(),
                state: "not running".into(),
                what: "input can be sent only to a running session",
            });
        }
        if !out.status.success() {
            return Err(SessionError::Guest(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok(())
    }

    pub async fn signal(&self, name: &str, signal: &str) -> Result<Session, SessionError> {
        let (s, _) = self.require(name)?;
        let vm = self.vms.get(&s.vm)?;
        let out = self
            .run(
                &vm,
                &script::signal_script(GUEST_SESSIONS_ROOT, &s.id, signal)?,
                None,
            )
            .await?;
        if out.status.code() == Some(3) {
            return Err(SessionError::WrongState {
                name: name.into(),
                state: "not running".into(),
                what: "only a running session can be signalled",
            });
        }
        if !out.status.success() {
            return Err(SessionError::Guest(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        self.get(name).await
    }

    /// Removes a session (its guest directory too, when the VM runs).
    /// Refused while it runs, unless `force` (which kills it first).
    pub async fn remove(&self, name: &str, force: bool) -> Result<(), SessionError> {
        let s = self.get(name).await?;
        let vm = self.vms.get(&s.vm)?;
        if s.state == "running" {
            if !force {
                return Err(SessionError::WrongState {
                    name: name.into(),
                    state: s.state,
                    what: "kill it first, or pass --force",
                });
            }
            let _ = self
                .run(
                    &vm,
                    &script::signal_script(GUEST_SESSIONS_ROOT, &s.id, "KILL")?,
                    None,
                )
                .await?;
            for _ in 0..100 {
                if self.get(name).await?.state != "running" {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        if vm.state == banger_api::VmState::Running {
            let _ = self
                .run(
                    &vm,
                    &script::remove_script(GUEST_SESSIONS_ROOT, &s.id)?,
                    None,
                )
                .await?;
        }
        let id = s.id.clone();
        self.store.write(|tx| {
            tx.execute("DELETE FROM sessions WHERE id = ?1", [id])
                .map(|_| ())
        })?;
        Ok(())
    }
}

/// A terminal size a session may have: 1 to 1000 rows and columns.
fn check_size(t: banger_api::TermSize) -> Result<(), SessionError> {
    if (1..=1000).contains(&t.rows) && (1..=1000).contains(&t.cols) {
        return Ok(());
    }
    Err(SessionError::Script(script::ScriptError::BadSize(
        t.rows, t.cols,
    )))
}

/// The length of `b` without a UTF-8 character cut at its end (all of it
/// when that would leave nothing, or when the end is not UTF-8 at all).
/// Pure.
fn utf8_prefix(b: &[u8]) -> usize {
    match std::str::from_utf8(b) {
        Ok(_) => b.len(),
        Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
        Err(_) => b.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_chunks_do_not_cut_a_character() {
        assert_eq!(utf8_prefix(b"abc"), 3);
        let s = "a\u{2713}".as_bytes();
        assert_eq!(
            utf8_prefix(&s[..3]),
            1,
            "the check mark is cut: stop before"
        );
        assert_eq!(utf8_prefix(&s[1..3]), 2, "nothing but a cut character");
        assert_eq!(utf8_prefix(b"a\xffb"), 3, "not UTF-8: as it is");
        assert!(check_size(banger_api::TermSize { rows: 0, cols: 80 }).is_err());
        assert!(check_size(banger_api::TermSize { rows: 24, cols: 80 }).is_ok());
    }

    #[test]
    fn default_names_are_valid() {
        assert_eq!(default_name("/usr/bin/python3", "abcd1234"), "python3-abcd");
        assert_eq!(default_name("My_Tool!", "ffff0000"), "mytool-ffff");
        assert_eq!(default_name("---", "12345678"), "session-1234");
        for n in [
            default_name("/usr/bin/python3", "abcd1234"),
            default_name("x y z", "00000000"),
        ] {
            assert!(validate_name("session", &n).is_ok(), "{n}");
        }
    }
}
