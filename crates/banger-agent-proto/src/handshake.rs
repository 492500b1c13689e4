//! The handshake before the multiplexed session: one line each way. Pure.
//!
//! A virtio-serial port is a byte stream with no connection of its own:
//! bytes an earlier daemon left unread, or half a frame of an earlier
//! session, may still be in it. So each side scans lines of at most
//! [`MAX_LINE`] bytes and skips everything until the line it waits for,
//! reading at most [`MAX_SKIP`] bytes in all: a guest that floods the port
//! is cut off, not buffered.

/// The longest handshake line either side takes.
pub const MAX_LINE: usize = 256;
/// The most bytes the daemon reads while looking for the agent's answer.
pub const MAX_SKIP: usize = 1 << 20;

const PREFIX: &str = "BANGER-AGENT";

/// What an agent says first on a channel: a daemon still in a session
/// with an earlier agent there reads it as a broken frame and ends that
/// session; a daemon greeting skips it like any other line.
pub const RESET: &str = "BANGER-AGENT RESET\n";

/// `BANGER-AGENT HELLO <nonce>`: the daemon's greeting.
pub fn hello(nonce: &str) -> String {
    format!("{PREFIX} HELLO {nonce}\n")
}

/// The nonce of a greeting line, if it is one.
pub fn parse_hello(line: &str) -> Option<&str> {
    let mut w = line.trim_end().split(' ');
    match (w.next(), w.next(), w.next(), w.next()) {
        (Some(PREFIX), Some("HELLO"), Some(n), None) if is_nonce(n) => Some(n),
        _ => None,
    }
}

/// `BANGER-AGENT OK <nonce> <protocol> <version>`: the agent's answer.
pub fn ok(nonce: &str, version: &str) -> String {
    format!("{PREFIX} OK {nonce} {} {version}\n", crate::PROTOCOL)
}

/// What the agent said of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentHello {
    pub protocol: u32,
    pub version: String,
}

/// The answer to greeting `nonce`, if `line` is it.
pub fn parse_ok(line: &str, nonce: &str) -> Option<AgentHello> {
    let mut w = line.trim_end().split(' ');
    match (w.next(), w.next(), w.next(), w.next(), w.next(), w.next()) {
        (Some(PREFIX), Some("OK"), Some(n), Some(p), Some(v), None) if n == nonce => {
            let version_ok =
                !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic());
            Some(AgentHello {
                protocol: p.parse().ok()?,
                version: version_ok.then(|| v.to_string())?,
            })
        }
        _ => None,
    }
}

/// The shell agent of images made before banger-agent answers a greeting
/// with `err HELLO unknown request`: this says whether `line` is that.
pub fn is_legacy_answer(line: &str) -> bool {
    line.trim_end() == "err HELLO unknown request"
}

fn is_nonce(n: &str) -> bool {
    (8..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes; a longer
/// line is dropped whole (up to its newline), never buffered.
#[derive(Debug, Default)]
pub struct Lines {
    line: Vec<u8>,
    overlong: bool,
    /// Bytes taken so far.
    pub seen: usize,
}

impl Lines {
    /// Takes one byte; a complete line (without its newline) when it ends
    /// one. Lines that are not UTF-8 come back lossily converted.
    pub fn push(&mut self, b: u8) -> Option<String> {
        self.seen += 1;
        if b == b'\n' {
            let done = !std::mem::take(&mut self.overlong);
            let line = std::mem::take(&mut self.line);
            return done.then(|| String::from_utf8_lossy(&line).into_owned());
        }
        if self.overlong {
            return None;
        }
        if self.line.len() >= MAX_LINE {
            self.line.clear();
            self.overlong = true;
            return None;
        }
        self.line.push(b);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings_round_trip_and_nothing_else_passes() {
        let h = hello("abcdef0123456789");
        assert_eq!(parse_hello(&h), Some("abcdef0123456789"));
        assert_eq!(parse_hello("BANGER-AGENT HELLO short\n"), None);
        assert_eq!(parse_hello("BANGER-AGENT HELLO a-b;c-1234567\n"), None);
        assert_eq!(parse_hello("BANGER-AGENT HELLO abcdef0123 x\n"), None);
        let o = ok("abcdef0123456789", "0.1.0");
        let got = parse_ok(&o, "abcdef0123456789").expect("an answer");
        assert_eq!(got.protocol, crate::PROTOCOL);
        assert_eq!(got.version, "0.1.0");
        assert_eq!(parse_ok(&o, "another-nonce"), None);
        assert_eq!(
            parse_ok("BANGER-AGENT OK abcdef0123456789 x 1\n", "abcdef0123456789"),
            None
        );
        let spaced = "BANGER-AGENT OK abcdef0123456789 1 \u{7}bell\n";
        assert_eq!(parse_ok(spaced, "abcdef0123456789"), None);
        assert!(is_legacy_answer("err HELLO unknown request\n"));
    }

    #[test]
    fn lines_are_bounded_and_overlong_ones_dropped() {
        let mut l = Lines::default();
        let mut got = vec![];
        let long = vec![b'x'; MAX_LINE * 4];
        for b in long.iter().chain(b"\nshort\n") {
            if let Some(line) = l.push(*b) {
                got.push(line);
            }
        }
        assert_eq!(got, ["short"]);
        assert!(l.line.capacity() <= MAX_LINE * 2);
        assert_eq!(l.seen, MAX_LINE * 4 + 7);
    }
}
