//! Dashboard logins. The dashboard has no long-lived secret a URL could
//! carry: `banger ui` (over the peer-checked Unix socket) asks for a
//! one-time login code, good for [`CODE_TTL`] and for one use; the browser
//! trades it for a session cookie good for [`SESSION_TTL`]. A code seen in
//! a process list or a shell history is worth nothing once used or a
//! minute old, and `banger ui --logout-all` ends every session.
//!
//! Codes and sessions are kept as SHA-256 digests, so a lookup's timing
//! says nothing about a secret and a memory dump holds none. The book is
//! bounded: the oldest codes and sessions make room for new ones.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a login code can be used.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// How long a dashboard session lasts after its login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const MAX_CODES: usize = 16;
const MAX_SESSIONS: usize = 64;

type Digest32 = [u8; 32];

fn digest(secret: &str) -> Digest32 {
    Sha256::digest(secret.as_bytes()).into()
}

/// What a login is worth, with time passed in (pure, unit-tested).
#[derive(Debug, Default)]
struct Book {
    /// Digest of a code → when it expires.
    codes: HashMap<Digest32, Instant>,
    /// Digest of a session → when it expires.
    sessions: HashMap<Digest32, Instant>,
}

/// Drops expired entries, then the soonest to expire until `max - 1` are
/// left, so one more fits.
fn make_room(map: &mut HashMap<Digest32, Instant>, now: Instant, max: usize) {
    map.retain(|_, exp| *exp > now);
    while map.len() >= max {
        let Some(oldest) = map.iter().min_by_key(|(_, exp)| **exp).map(|(k, _)| *k) else {
            break;
        };
        map.remove(&oldest);
    }
}

impl Book {
    fn add_code(&mut self, code: &str, now: Instant) {
        make_room(&mut self.codes, now, MAX_CODES);
        self.codes.insert(digest(code), now + CODE_TTL);
    }

    /// Uses `code` up; on success `session` is good from now on.
    fn redeem(&mut self, code: &str, session: &str, now: Instant) -> bool {
        match self.codes.remove(&digest(code)) {
            Some(exp) if exp > now => {
                make_room(&mut self.sessions, now, MAX_SESSIONS);
                self.sessions.insert(digest(session), now + SESSION_TTL);
                true
            }
            _ => false,
        }
    }

    fn valid(&self, session: &str, now: Instant) -> bool {
        self.sessions
            .get(&digest(session))
            .is_some_and(|exp| *exp > now)
    }

    /// Ends every session and unused code; how many sessions there were.
    fn clear(&mut self, now: Instant) -> usize {
        let live = self.sessions.values().filter(|e| **e > now).count();
        self.sessions.clear();
        self.codes.clear();
        live
    }
}

/// The dashboard's logins, shared by the API (which hands out codes) and
/// the dashboard's guard (which redeems them and checks sessions).
#[derive(Debug, Default)]
pub struct Logins {
    book: Mutex<Book>,
}

impl Logins {
    fn with<T>(&self, f: impl FnOnce(&mut Book) -> T) -> T {
        // A poisoned lock only means a panic elsewhere; the book is still
        // consistent (every method leaves it so).
        let mut b = self.book.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut b)
    }

    /// A fresh one-time login code.
    pub fn code(&self) -> String {
        let code = new_secret();
        self.with(|b| b.add_code(&code, Instant::now()));
        code
    }

    /// Trades `code` for a new session's secret, or `None` when the code
    /// was used, expired or never issued.
    pub fn redeem(&self, code: &str) -> Option<String> {
        let session = new_secret();
        self.with(|b| b.redeem(code, &session, Instant::now()))
            .then_some(session)
    }

    pub fn valid(&self, session: &str) -> bool {
        self.with(|b| b.valid(session, Instant::now()))
    }

    /// Logs every browser out; how many sessions were live.
    pub fn logout_all(&self) -> usize {
        self.with(|b| b.clear(Instant::now()))
    }
}

/// A fresh random secret: 32 hex digits from the kernel's generator.
pub fn new_secret() -> String {
    let mut b = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_ok();
    if ok {
        hex::encode(b)
    } else {
        uuid::Uuid::new_v4().simple().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_works_once_and_only_while_fresh() {
        let t0 = Instant::now();
        let mut b = Book::default();
        b.add_code("c1", t0);
        assert!(!b.redeem("nope", "s0", t0), "a code never issued");
        assert!(b.redeem("c1", "s1", t0 + Duration::from_secs(1)));
        assert!(!b.redeem("c1", "s2", t0 + Duration::from_secs(2)), "twice");
        assert!(b.valid("s1", t0 + Duration::from_secs(3)));
        assert!(!b.valid("s2", t0 + Duration::from_secs(3)));
        assert!(
            !b.valid("c1", t0 + Duration::from_secs(3)),
            "a code is no session"
        );

        b.add_code("c2", t0);
        assert!(!b.redeem("c2", "s3", t0 + CODE_TTL), "expired");
    }

    #[test]
    fn sessions_expire_and_are_ended_together() {
        let t0 = Instant::now();
        let mut b = Book::default();
        b.add_code("a", t0);
        b.add_code("b", t0);
        assert!(b.redeem("a", "sa", t0));
        assert!(b.redeem("b", "sb", t0 + Duration::from_secs(10)));
        let late = t0 + SESSION_TTL + Duration::from_secs(1);
        assert!(!b.valid("sa", late));
        assert!(b.valid("sb", late));
        b.add_code("c", late);
        assert_eq!(b.clear(late), 1);
        assert!(!b.valid("sb", late));
        assert!(!b.redeem("c", "sc", late), "codes go too");
    }

    #[test]
    fn the_book_is_bounded_and_the_oldest_make_room() {
        let t0 = Instant::now();
        let mut b = Book::default();
        for i in 0..MAX_CODES + 5 {
            b.add_code(&format!("c{i}"), t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(b.codes.len(), MAX_CODES);
        assert!(!b.redeem("c0", "x", t0), "the oldest code went");
        let last = format!("c{}", MAX_CODES + 4);
        for i in 0..MAX_SESSIONS + 3 {
            b.add_code("k", t0);
            assert!(b.redeem("k", &format!("s{i}"), t0 + Duration::from_millis(i as u64)));
        }
        assert_eq!(b.sessions.len(), MAX_SESSIONS);
        assert!(!b.valid("s0", t0));
        assert!(b.valid(&format!("s{}", MAX_SESSIONS + 2), t0));
        assert!(b.redeem(&last, "y", t0));
    }

    #[test]
    fn secrets_are_random_hex() {
        let a = new_secret();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_secret());
    }
}
