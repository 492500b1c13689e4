//! Finding the `banger-agent` binary the daemon ships to guests, and
//! checking that it can run in any guest (a static x86-64 ELF: no program
//! interpreter, so no dependency on the guest's libc).

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Where an installed banger keeps it.
pub const INSTALLED: &str = "/usr/local/lib/banger/banger-agent";

#[derive(Debug, Error)]
pub enum AgentBinaryError {
    #[error("No banger-agent binary: looked at {}", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Missing(Vec<PathBuf>),
    #[error(
        "{path} is not a static x86-64 executable ({why}); build it with scripts/build-agent.sh"
    )]
    NotStatic { path: PathBuf, why: &'static str },
    #[error("Cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The places looked at, in order: the configured path (alone, when
/// given); else beside the running bangerd, `$PREFIX/lib/banger` of its
/// prefix, the static build of a source tree whose `target/<profile>/`
/// holds bangerd, and the default install path. Pure.
pub fn candidates(configured: &str, exe: Option<&Path>) -> Vec<PathBuf> {
    if !configured.is_empty() {
        return vec![PathBuf::from(configured)];
    }
    let mut c = Vec::new();
    if let Some(dir) = exe.and_then(|e| e.parent()) {
        c.push(dir.join("banger-agent"));
        if let Some(up) = dir.parent() {
            // $PREFIX/bin/bangerd -> $PREFIX/lib/banger/banger-agent
            c.push(up.join("lib/banger/banger-agent"));
            // target/<profile>/bangerd -> target/<triple>/release/banger-agent
            c.push(up.join("x86_64-unknown-linux-gnu/release/banger-agent"));
        }
    }
    let installed = PathBuf::from(INSTALLED);
    if !c.contains(&installed) {
        c.push(installed);
    }
    c
}

/// Whether `elf` is a 64-bit x86-64 executable without a program
/// interpreter (static). Pure.
pub fn check_static(elf: &[u8]) -> Result<(), &'static str> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        return Err("not an ELF file");
    }
    if elf[4] != 2 || elf[5] != 1 {
        return Err("not a 64-bit little-endian ELF");
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]);
    if u16_at(18) != 62 {
        return Err("not x86-64");
    }
    let phoff = u64::from_le_bytes(elf[32..40].try_into().map_err(|_| "bad header")?);
    let (entsize, num) = (usize::from(u16_at(54)), usize::from(u16_at(56)));
    let phoff = usize::try_from(phoff).map_err(|_| "bad program headers")?;
    for i in 0..num {
        let at = phoff + i * entsize;
        let Some(ty) = elf.get(at..at + 4) else {
            return Err("truncated program headers");
        };
        // PT_INTERP: a dynamic loader is needed.
        if u32::from_le_bytes([ty[0], ty[1], ty[2], ty[3]]) == 3 {
            return Err("it is dynamically linked");
        }
    }
    Ok(())
}

/// The first candidate that is a static executable (a development build
/// beside bangerd is dynamic, and skipped for the static one).
pub fn locate(configured: &str, exe: Option<&Path>) -> Result<PathBuf, AgentBinaryError> {
    let cands = candidates(configured, exe);
    let mut refused = None;
    for path in cands.iter().filter(|p| p.is_file()) {
        let bytes = std::fs::read(path).map_err(|source| AgentBinaryError::Io {
            path: path.clone(),
            source,
        })?;
        match check_static(&bytes) {
            Ok(()) => return Ok(path.clone()),
            Err(why) => {
                refused.get_or_insert(AgentBinaryError::NotStatic {
                    path: path.clone(),
                    why,
                });
            }
        }
    }
    Err(refused.unwrap_or(AgentBinaryError::Missing(cands)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_the_order() {
        let c = candidates("", Some(Path::new("/src/target/debug/bangerd")));
        assert_eq!(
            c,
            [
                PathBuf::from("/src/target/debug/banger-agent"),
                PathBuf::from("/src/target/lib/banger/banger-agent"),
                PathBuf::from("/src/target/x86_64-unknown-linux-gnu/release/banger-agent"),
                PathBuf::from(INSTALLED),
            ]
        );
        let c = candidates("", Some(Path::new("/usr/local/bin/bangerd")));
        assert_eq!(c[1], PathBuf::from(INSTALLED));
        assert_eq!(c.len(), 3);
        assert_eq!(candidates("/opt/a", None), [PathBuf::from("/opt/a")]);
        assert_eq!(candidates("", None), [PathBuf::from(INSTALLED)]);
    }

    #[test]
    fn dynamic_executables_and_junk_are_refused() {
        // The test binary itself is dynamically linked.
        let me = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
        assert_eq!(check_static(&me), Err("it is dynamically linked"));
        assert!(check_static(b"#!/bin/sh\necho hi\n").is_err());
        let mut fake = me[..64].to_vec();
        fake[56] = 0;
        fake[57] = 0;
        assert_eq!(
            check_static(&fake),
            Ok(()),
            "no program headers: no interpreter"
        );
        fake[18] = 40;
        assert_eq!(check_static(&fake), Err("not x86-64"));
    }
}
