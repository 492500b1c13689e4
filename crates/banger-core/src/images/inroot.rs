//! Writing into an image's root filesystem without ever leaving it.
//!
//! A rootfs directory comes from somewhere banger does not trust (an
//! imported tarball, a build's output), and its symlinks are the guest's:
//! `etc -> /etc` means the guest's `/etc`, not the host's. Every path banger
//! writes under a rootfs is therefore resolved by the kernel with
//! `openat2(RESOLVE_IN_ROOT)`: symlinks are followed as the guest would
//! follow them, absolute ones from the rootfs, `..` stops at it, and nothing
//! resolves to a place outside it. The last component is never followed: a
//! file is written by unlinking whatever stands at its name and creating it
//! anew (`O_EXCL | O_NOFOLLOW`), relative to the already resolved
//! directory's descriptor. Symlink loops are an error, not a hang.

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum InRootError {
    #[error("Cannot open the root filesystem directory {0}")]
    Root(PathBuf, #[source] std::io::Error),
    #[error("Cannot resolve {path} inside the image's root filesystem")]
    Resolve {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot write {path} inside the image's root filesystem")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} is not a relative path inside the image")]
    BadPath(String),
}

/// A rootfs directory that paths are resolved inside.
pub struct InRoot {
    root: PathBuf,
    fd: OwnedFd,
}

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS
}

/// The normal components of `rel`; `..`, `/` and `.` are refused (the
/// caller's paths are banger's own, written relative to the root).
fn parts(rel: &str) -> Result<Vec<&OsStr>, InRootError> {
    let mut out = Vec::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(p) => out.push(p),
            _ => return Err(InRootError::BadPath(rel.into())),
        }
    }
    if out.is_empty() {
        return Err(InRootError::BadPath(rel.into()));
    }
    Ok(out)
}

impl InRoot {
    pub fn open(root: &Path) -> Result<InRoot, InRootError> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| InRootError::Root(root.into(), e.into()))?;
        Ok(InRoot {
            root: root.into(),
            fd,
        })
    }

    /// The directory `rel` (resolved in the root), made with its missing
    /// parents (mode 0755) like `mkdir -p`.
    fn dir(&self, rel: &[&OsStr]) -> Result<OwnedFd, InRootError> {
        let shown = |n: usize| {
            rel[..n]
                .iter()
                .map(|p| p.to_string_lossy())
                .collect::<Vec<_>>()
                .join("/")
        };
        let err = |n: usize| {
            move |e: rustix::io::Errno| InRootError::Resolve {
                path: shown(n),
                source: e.into(),
            }
        };
        let open = |n: usize| -> rustix::io::Result<OwnedFd> {
            if n == 0 {
                return rustix::fs::openat(
                    &self.fd,
                    ".",
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                );
            }
            let mut p = Vec::new();
            for (i, c) in rel[..n].iter().enumerate() {
                if i > 0 {
                    p.push(b'/');
                }
                p.extend_from_slice(c.as_bytes());
            }
            rustix::fs::openat2(
                &self.fd,
                OsStr::from_bytes(&p),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                resolve_flags(),
            )
        };
        let mut cur = open(0).map_err(err(0))?;
        for n in 1..=rel.len() {
            cur = match open(n) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => {
                    // `cur` is the resolved parent: the name is made in it,
                    // and a dangling symlink there is EEXIST, not followed.
                    match rustix::fs::mkdirat(&cur, rel[n - 1], Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(err(n)(e)),
                    }
                    open(n).map_err(err(n))?
                }
                Err(e) => return Err(err(n)(e)),
            };
        }
        Ok(cur)
    }

    /// The parent directory of `rel` (made when missing) and its last name.
    fn parent<'a>(&self, rel: &'a str) -> Result<(OwnedFd, &'a OsStr), InRootError> {
        let p = parts(rel)?;
        let (name, dirs) = p
            .split_last()
            .ok_or_else(|| InRootError::BadPath(rel.into()))?;
        Ok((self.dir(dirs)?, name))
    }

    /// Removes what stands at `name` in `dir`, unless it is a directory.
    fn clear(dir: &OwnedFd, name: &OsStr, rel: &str) -> Result<(), InRootError> {
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                Err(InRootError::Write {
                    path: rel.into(),
                    source: std::io::Error::other("a directory stands there"),
                })
            }
            Ok(_) => {
                rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(|e| InRootError::Write {
                    path: rel.into(),
                    source: e.into(),
                })
            }
            Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(InRootError::Write {
                path: rel.into(),
                source: e.into(),
            }),
        }
    }

    /// `mkdir -p rel`; returns the directory's path on the host (inside the
    /// root), for tools that need a path.
    pub fn create_dir_all(&self, rel: &str) -> Result<PathBuf, InRootError> {
        let fd = self.dir(&parts(rel)?)?;
        self.host_path(&fd, rel)
    }

    /// Writes `contents` as a new file at `rel` with `mode` (whatever
    /// stood at that name is replaced, never written through).
    pub fn write(&self, rel: &str, contents: &[u8], mode: u32) -> Result<(), InRootError> {
        let werr = |e: std::io::Error| InRootError::Write {
            path: rel.into(),
            source: e,
        };
        let (dir, name) = self.parent(rel)?;
        InRoot::clear(&dir, name, rel)?;
        let fd = rustix::fs::openat(
            &dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| werr(e.into()))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| werr(e.into()))?;
        let mut f = std::fs::File::from(fd);
        f.write_all(contents).map_err(werr)?;
        Ok(())
    }

    /// Copies the host file `src` to `rel` (see [`InRoot::write`]).
    pub fn copy_in(&self, src: &Path, rel: &str, mode: u32) -> Result<(), InRootError> {
        let data = std::fs::read(src).map_err(|e| InRootError::Write {
            path: rel.into(),
            source: e,
        })?;
        self.write(rel, &data, mode)
    }

    /// A symlink at `rel` pointing at `target` (a guest path, never
    /// resolved here), replacing what stood at that name.
    pub fn symlink(&self, target: &str, rel: &str) -> Result<(), InRootError> {
        let (dir, name) = self.parent(rel)?;
        InRoot::clear(&dir, name, rel)?;
        rustix::fs::symlinkat(target, &dir, name).map_err(|e| InRootError::Write {
            path: rel.into(),
            source: e.into(),
        })
    }

    /// Removes the entry at `rel` when it is not a directory (a missing
    /// one is fine).
    pub fn remove(&self, rel: &str) -> Result<(), InRootError> {
        let (dir, name) = self.parent(rel)?;
        InRoot::clear(&dir, name, rel)
    }

    /// The host path of a directory descriptor, checked to lie inside the
    /// root.
    fn host_path(&self, fd: &OwnedFd, rel: &str) -> Result<PathBuf, InRootError> {
        let link = format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd())
        );
        let err = |e: std::io::Error| InRootError::Resolve {
            path: rel.into(),
            source: e,
        };
        let path = std::fs::read_link(link).map_err(err)?;
        let root = std::fs::canonicalize(&self.root).map_err(err)?;
        if path.starts_with(&root) {
            Ok(path)
        } else {
            Err(err(std::io::Error::other("it resolves outside the root")))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// A root and a "host" directory beside it that must stay untouched.
    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let host = t.path().join("host");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(host.join("etc")).unwrap();
        std::fs::write(host.join("etc/fstab"), "host fstab").unwrap();
        (t, root, host)
    }

    #[test]
    fn escapes_resolve_inside_the_root_or_fail() {
        let (_t, root, host) = setup();
        // etc -> the host's etc by absolute path, usr/lib by `..`, and
        // var -> /var (itself, in the guest): none reaches the host.
        symlink(host.join("etc"), root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("usr")).unwrap();
        symlink("../../host/etc", root.join("usr/lib")).unwrap();
        symlink("/var", root.join("var")).unwrap();
        let r = InRoot::open(&root).unwrap();
        for rel in ["etc/fstab", "usr/lib/banger/init", "var/x"] {
            let e = r.write(rel, b"guest", 0o644).unwrap_err();
            assert!(matches!(e, InRootError::Resolve { .. }), "{rel}: {e}");
        }
        assert_eq!(
            std::fs::read_to_string(host.join("etc/fstab")).unwrap(),
            "host fstab"
        );
        assert_eq!(std::fs::read_dir(host.join("etc")).unwrap().count(), 1);
        // Where the guest's view has the directory, that is where it goes.
        let inside = root.join(host.strip_prefix("/").unwrap()).join("etc");
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(root.join("host/etc")).unwrap();
        r.write("etc/fstab", b"guest", 0o644).unwrap();
        r.write("usr/lib/banger/init", b"init", 0o755).unwrap();
        assert_eq!(
            std::fs::read_to_string(inside.join("fstab")).unwrap(),
            "guest"
        );
        let init = root.join("host/etc/banger/init");
        assert_eq!(std::fs::read(&init).unwrap(), b"init");
        assert_eq!(
            std::fs::metadata(&init).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            std::fs::read_to_string(host.join("etc/fstab")).unwrap(),
            "host fstab"
        );
    }

    #[test]
    fn the_last_component_is_replaced_not_followed() {
        let (_t, root, host) = setup();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        symlink(host.join("etc/fstab"), root.join("etc/fstab")).unwrap();
        let r = InRoot::open(&root).unwrap();
        r.write("etc/fstab", b"guest", 0o644).unwrap();
        assert_eq!(
            std::fs::read_to_string(host.join("etc/fstab")).unwrap(),
            "host fstab"
        );
        assert!(!std::fs::symlink_metadata(root.join("etc/fstab"))
            .unwrap()
            .file_type()
            .is_symlink());
        r.symlink("/dev/null", "etc/systemd/system/apt-daily.timer")
            .unwrap();
        assert_eq!(
            std::fs::read_link(root.join("etc/systemd/system/apt-daily.timer")).unwrap(),
            PathBuf::from("/dev/null")
        );
    }

    #[test]
    fn legit_guest_symlinks_are_followed_and_loops_fail() {
        let (_t, root, _host) = setup();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("/usr/lib", root.join("lib64")).unwrap();
        let r = InRoot::open(&root).unwrap();
        let modules = r.create_dir_all("lib/modules").unwrap();
        assert_eq!(
            modules,
            std::fs::canonicalize(root.join("usr/lib/modules")).unwrap()
        );
        r.write("lib64/x", b"x", 0o644).unwrap();
        assert!(root.join("usr/lib/x").exists());
        // A chain, then a loop.
        symlink("a2", root.join("a1")).unwrap();
        symlink("a1", root.join("a2")).unwrap();
        assert!(matches!(
            r.write("a1/f", b"", 0o644),
            Err(InRootError::Resolve { .. })
        ));
        assert!(matches!(
            r.write("../x", b"", 0o644),
            Err(InRootError::BadPath(_))
        ));
        assert!(matches!(
            r.write("/etc/x", b"", 0o644),
            Err(InRootError::BadPath(_))
        ));
    }
}
