//! Console logs are bounded. A VMM appends its guest's serial console to
//! `console.log` (opened `O_APPEND`: QEMU's `append=on` chardev, the
//! Firecracker process's stdout), and a guest can write there as fast as it
//! likes. The keeper looks at every VM's log every [`KEEP_EVERY`]; one over
//! the limit has its last `limit` bytes moved to `console.log.1` and is
//! truncated, so the VMM's next write lands at the start again (the
//! `copytruncate` of logrotate). A VM's console takes at most about twice
//! the limit, plus what the guest writes between two looks.
//!
//! Readers follow by offset and start again from 0 when the log got
//! shorter (`console_log_from`, `ReadyScan`).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use super::Vms;

/// How often the keeper looks at the logs.
pub const KEEP_EVERY: Duration = Duration::from_secs(2);

/// The rotated part's path: `console.log.1`.
pub fn rotated(console: &Path) -> std::path::PathBuf {
    let mut s = console.as_os_str().to_owned();
    s.push(".1");
    s.into()
}

/// Rotates `console` when it is over `limit` bytes: its last `limit` bytes
/// go to `console.log.1` (replaced), then it is truncated. True when it
/// rotated. A missing log is nothing to do.
pub fn rotate_if_over(console: &Path, limit: u64) -> io::Result<bool> {
    let mut f = match OpenOptions::new().read(true).write(true).open(console) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len <= limit {
        return Ok(false);
    }
    f.seek(SeekFrom::Start(len - limit))?;
    let old = rotated(console);
    let tmp = {
        let mut s = old.as_os_str().to_owned();
        s.push(".new");
        std::path::PathBuf::from(s)
    };
    let _ = std::fs::remove_file(&tmp);
    let mut out = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    io::copy(&mut (&mut f).take(limit), &mut out)?;
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, &old)?;
    f.set_len(0)?;
    Ok(true)
}

/// Opens a new console log for a VMM to append to (its stdout).
pub fn create_for_append(console: &Path) -> io::Result<File> {
    let _ = std::fs::remove_file(console);
    let _ = std::fs::remove_file(rotated(console));
    OpenOptions::new().create(true).append(true).open(console)
}

impl Vms {
    /// Housekeeping until `stop`, for the daemon's life: keeps every VM's
    /// console log under `vm.console_log_size`, notes running VMs whose
    /// TAP is gone and drops unused per-VM locks (health.rs).
    pub fn housekeeping(&self, stop: tokio_util::sync::CancellationToken) {
        let vms = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(KEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let v = vms.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    v.rotate_consoles();
                    v.check_taps();
                    v.prune_locks();
                })
                .await;
            }
        });
    }

    fn rotate_consoles(&self) {
        let Ok(all) = self.list() else { return };
        let limit = self.inner.config.console_log_bytes;
        for vm in all {
            let console = self.paths(&vm.id).console();
            match rotate_if_over(&console, limit) {
                Ok(true) => tracing::info!(vm = %vm.name, limit, "console log rotated"),
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    vm = %vm.name, path = %console.display(), error = %e,
                    "cannot rotate the console log"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_over_the_limit_keeps_its_tail_and_starts_again_for_an_appender() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        let mut vmm = create_for_append(&log).expect("create");
        vmm.write_all(b"0123456789").expect("write");
        assert!(!rotate_if_over(&log, 10).expect("rotate"), "at the limit");
        vmm.write_all(b"abcdef").expect("write");
        assert!(rotate_if_over(&log, 10).expect("rotate"));
        let kept = std::fs::read(rotated(&log)).expect("read .1");
        assert_eq!(kept, b"6789abcdef");
        assert_eq!(std::fs::metadata(&log).expect("meta").len(), 0);
        // The appender's next bytes land at the start, with no hole.
        vmm.write_all(b"xyz").expect("write");
        assert_eq!(std::fs::read(&log).expect("read"), b"xyz");
        // A second rotation replaces the first's part.
        vmm.write_all(&[b'q'; 20]).expect("write");
        assert!(rotate_if_over(&log, 10).expect("rotate"));
        assert_eq!(std::fs::read(rotated(&log)).expect("read .1"), [b'q'; 10]);
        assert!(!rotate_if_over(&dir.path().join("none"), 1).expect("missing"));
        // A new VMM start drops both parts.
        drop(create_for_append(&log).expect("create"));
        assert!(!rotated(&log).exists());
    }
}
