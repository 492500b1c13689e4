//! envd access tokens: HMAC-SHA256 of the sandbox id under a per-daemon
//! secret (`<state_dir>/e2b.key`, 0600, made once). No token is stored,
//! yet `connect` can hand a client its sandbox's token again.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::E2bError;

/// The prefix of an access token.
const PREFIX: &str = "ea_";

/// The daemon's token secret.
#[derive(Clone)]
pub struct Tokens {
    secret: [u8; 32],
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(..)")
    }
}

impl Tokens {
    /// The secret in `path`, made (0600) when missing.
    pub fn load(path: &Path) -> Result<Tokens, E2bError> {
        let io = |source| E2bError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Ok(bytes) = std::fs::read(path) {
            if let Ok(secret) = <[u8; 32]>::try_from(bytes.as_slice()) {
                return Ok(Tokens { secret });
            }
        }
        let mut secret = [0u8; 32];
        let a = uuid::Uuid::new_v4();
        let b = uuid::Uuid::new_v4();
        secret[..16].copy_from_slice(a.as_bytes());
        secret[16..].copy_from_slice(b.as_bytes());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(&secret).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(Tokens { secret })
    }

    /// A secret for tests. Pure.
    pub fn from_secret(secret: [u8; 32]) -> Tokens {
        Tokens { secret }
    }

    /// The access token of sandbox `id`.
    pub fn token(&self, id: &str) -> String {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.secret) {
            Ok(m) => m,
            // Any key length is accepted by HMAC.
            Err(_) => return String::new(),
        };
        mac.update(id.as_bytes());
        format!("{PREFIX}{}", hex::encode(mac.finalize().into_bytes()))
    }

    /// Whether `token` is sandbox `id`'s (compared in constant time).
    pub fn check(&self, id: &str, token: &str) -> bool {
        let Some(hexed) = token.strip_prefix(PREFIX) else {
            return false;
        };
        let Ok(bytes) = hex::decode(hexed) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.secret) else {
            return false;
        };
        mac.update(id.as_bytes());
        mac.verify_slice(&bytes).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_per_sandbox_and_checked() {
        let t = Tokens::from_secret([7; 32]);
        let a = t.token("e2b-aaa");
        assert!(a.starts_with("ea_") && a.len() == 3 + 64, "{a}");
        assert!(t.check("e2b-aaa", &a));
        assert!(!t.check("e2b-bbb", &a), "another sandbox's");
        assert!(!t.check("e2b-aaa", "ea_00"));
        assert!(!t.check("e2b-aaa", "nope"));
        assert!(
            !Tokens::from_secret([8; 32]).check("e2b-aaa", &a),
            "another daemon's"
        );
    }

    #[test]
    fn the_secret_is_made_once_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("e2b.key");
        let a = Tokens::load(&p).expect("made").token("x");
        let mode = std::fs::metadata(&p).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Tokens::load(&p).expect("read").token("x"), a);
    }
}
