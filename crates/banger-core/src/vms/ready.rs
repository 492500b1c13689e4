//! Reading a booting guest's console and its VMM's logs, both untrusted.
//!
//! [`ReadyScan`] follows the console log for banger's readiness marker: it
//! reads only what was appended since the last look, works on bytes (a
//! guest's console is not UTF-8, and one stray byte must not hide the
//! marker), and holds at most [`MAX_LINE`] bytes of a partial line.
//! [`tail_report`] gives the last lines of the console and the VMM's logs
//! when the VMM dies, bounded and stripped of control characters, for the
//! error the user sees.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::guest::READY_MARKER;

/// The longest console line kept while looking for the marker; longer
/// lines are cut (the marker line is short).
pub const MAX_LINE: usize = 4096;
/// The most console bytes read in one look.
const MAX_READ: u64 = 1 << 20;
/// The most characters of one line [`tail_report`] shows.
const MAX_SHOWN: usize = 240;
/// How much of the end of a log file [`tail_report`] reads.
const TAIL_BYTES: u64 = 16 * 1024;

/// Whether `line` is the guest's readiness marker (and not the init's
/// "gave up waiting" variant of it). Pure.
pub fn is_ready_line(line: &[u8]) -> bool {
    let start = line
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(line.len());
    let line = &line[start..];
    line.starts_with(READY_MARKER.as_bytes())
        && !line.windows(b"timeout".len()).any(|w| w == b"timeout")
}

/// Follows a console log for the readiness marker.
#[derive(Debug, Default)]
pub struct ReadyScan {
    offset: u64,
    partial: Vec<u8>,
}

impl ReadyScan {
    /// Takes the next bytes of the console; true once a complete marker
    /// line went by. Pure.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut found = false;
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            let room = MAX_LINE.saturating_sub(self.partial.len());
            let (line, complete) = match chunk.strip_suffix(b"\n") {
                Some(l) => (l, true),
                None => (chunk, false),
            };
            self.partial
                .extend_from_slice(&line[..line.len().min(room)]);
            if complete {
                found |= is_ready_line(&self.partial);
                self.partial.clear();
            }
        }
        found
    }

    /// Reads what the console log gained since the last call; true once
    /// the marker is there. A missing log is "not yet".
    pub fn poll(&mut self, console: &Path) -> bool {
        let Ok(mut f) = std::fs::File::open(console) else {
            return false;
        };
        // Shorter than what was read: rotated (vms/console.rs), read on
        // from its start.
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            self.offset = 0;
            self.partial.clear();
        }
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return false;
        }
        let mut buf = Vec::new();
        let Ok(n) = f.take(MAX_READ).read_to_end(&mut buf) else {
            return false;
        };
        self.offset += n as u64;
        self.feed(&buf)
    }
}

/// Printable text of untrusted bytes: control characters (terminal
/// escapes among them) become spaces. Pure.
pub fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// The last `n` non-empty lines of `text`, printable. Pure.
pub fn last_lines(text: &[u8], n: usize) -> Vec<String> {
    let mut lines: Vec<String> = text
        .split(|b| *b == b'\n')
        .map(printable)
        .filter(|l| !l.is_empty())
        .map(|l| match l.char_indices().nth(MAX_SHOWN) {
            Some((i, _)) => format!("{}...", &l[..i]),
            None => l,
        })
        .collect();
    let keep = lines.len().saturating_sub(n);
    lines.drain(..keep);
    lines
}

/// The lines of a VMM log worth showing: its last error lines (where the
/// VMM says why it stopped: Firecracker's `KVM_EXIT_INTERNAL_ERROR`) and
/// its last line, else its last three lines. Pure.
pub fn notable_lines(text: &[u8]) -> Vec<String> {
    let all = last_lines(text, usize::MAX);
    let mut errors: Vec<String> = all
        .iter()
        .filter(|l| l.contains("ERROR") || l.contains("error:"))
        .cloned()
        .collect();
    if errors.is_empty() {
        let keep = all.len().saturating_sub(3);
        return all[keep..].to_vec();
    }
    errors.drain(..errors.len().saturating_sub(3));
    if let Some(last) = all.last() {
        if errors.last() != Some(last) {
            errors.push(last.clone());
        }
    }
    errors
}

fn tail(path: &Path) -> Vec<u8> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)));
    let mut buf = Vec::new();
    let _ = f.take(TAIL_BYTES).read_to_end(&mut buf);
    buf
}

/// What a dead VMM left: the console's last lines and each log's, as one
/// line for an error message.
pub fn tail_report(console: &Path, logs: &[PathBuf]) -> String {
    let mut parts = Vec::new();
    // Firecracker writes its own start-up lines (tagged with its id,
    // `[banger-vm-...]`) to the console before its logger is set: only the
    // guest's lines are shown from there.
    let console_text: Vec<u8> = tail(console)
        .split(|b| *b == b'\n')
        .filter(|l| !l.windows(12).any(|w| w == b" [banger-vm-"))
        .flat_map(|l| l.iter().copied().chain([b'\n']))
        .collect();
    let console_lines = last_lines(&console_text, 5);
    if !console_lines.is_empty() {
        parts.push(format!("last console lines: {}", console_lines.join(" | ")));
    }
    for log in logs {
        let lines = notable_lines(&tail(log));
        if !lines.is_empty() {
            let name = log
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            parts.push(format!("{name}: {}", lines.join(" | ")));
        }
    }
    if parts.is_empty() {
        "it left no console output or log".into()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_found_among_bytes_that_are_not_utf8() {
        let mut s = ReadyScan::default();
        assert!(!s.feed(b"\xff\xfe garbage \x1b[31m\n[ 0.1] boot"));
        assert!(!s.feed(b"ing\nbanger-rea"));
        assert!(s.feed(b"dy 1234\n"));
    }

    #[test]
    fn the_timeout_variant_and_unfinished_lines_are_not_ready() {
        let mut s = ReadyScan::default();
        assert!(!s.feed(b"banger-ready-timeout\n"));
        assert!(!s.feed(b"banger-ready 12"), "no newline yet");
        assert!(s.feed(b"\n"));
        assert!(is_ready_line(b"  banger-ready x"));
        assert!(!is_ready_line(b"x banger-ready"));
    }

    #[test]
    fn a_huge_line_is_held_bounded() {
        let mut s = ReadyScan::default();
        let long = vec![b'a'; 10 * MAX_LINE];
        assert!(!s.feed(&long));
        assert!(s.partial.len() <= MAX_LINE);
        assert!(!s.feed(b"banger-ready\n"), "the cut line is not the marker");
        assert!(s.feed(b"banger-ready\n"));
    }

    #[test]
    fn poll_reads_only_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        let mut s = ReadyScan::default();
        assert!(!s.poll(&p), "missing log: not yet");
        std::fs::write(&p, b"boot\n").unwrap();
        assert!(!s.poll(&p));
        assert_eq!(s.offset, 5);
        std::fs::write(&p, b"boot\nbanger-ready b\n").unwrap();
        assert!(s.poll(&p));
    }

    #[test]
    fn poll_starts_again_when_the_log_was_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        let mut s = ReadyScan::default();
        std::fs::write(&p, "noise\n".repeat(100)).unwrap();
        assert!(!s.poll(&p));
        std::fs::write(&p, b"banger-ready b\n").unwrap();
        assert!(s.poll(&p), "the marker after a rotation is seen");
    }

    #[test]
    fn reports_are_bounded_and_printable() {
        assert_eq!(
            last_lines(b"a\n\nb\x1b]0;x\x07\nc\nd\n", 2),
            vec!["c".to_string(), "d".to_string()]
        );
        assert_eq!(printable(b"x\x1b[2Jy"), "x [2Jy");
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console.log");
        let log = dir.path().join("firecracker.log");
        let mut text = "l1\nl2\n".repeat(10_000);
        text.push_str("2026-12-02T05:48:11 [banger-vm-3002:main] Running Firecracker\n");
        std::fs::write(&console, text).unwrap();
        std::fs::write(&log, "KVM_EXIT_INTERNAL_ERROR\n").unwrap();
        let r = tail_report(&console, &[log, dir.path().join("none")]);
        assert!(r.starts_with("last console lines: l2 | l1 | l2"), "{r}");
        assert!(
            r.ends_with("firecracker.log: KVM_EXIT_INTERNAL_ERROR"),
            "{r}"
        );
        assert!(r.len() < 200);
        let fc = b"a INFO] start\nb fc_vcpu 0:ERROR] Received KVM_EXIT_INTERNAL_ERROR signal\n\
                   c INFO] Vmm is stopping.\nd INFO] Killing vCPU threads\ne INFO] exiting\n";
        assert_eq!(
            notable_lines(fc),
            vec![
                "b fc_vcpu 0:ERROR] Received KVM_EXIT_INTERNAL_ERROR signal".to_string(),
                "e INFO] exiting".to_string()
            ]
        );
        assert_eq!(notable_lines(b"1\n2\n3\n4\n").len(), 3);
        let long = last_lines("x".repeat(1000).as_bytes(), 1);
        assert_eq!(long[0].len(), MAX_SHOWN + 3);
        let empty = tail_report(&dir.path().join("a"), &[]);
        assert_eq!(empty, "it left no console output or log");
    }
}
