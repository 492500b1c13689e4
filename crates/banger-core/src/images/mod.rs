//! Guest images: build (mmdebstrap), import (ext4 file, directory, tarball),
//! list, show, remove.
//!
//! An image is a directory `images/DIGEST/` of immutable artifacts
//! (`rootfs.ext4`, `vmlinuz`, `initrd.img`, optional `vmlinux`) plus
//! `manifest.json`, and one or more names in the `images` table pointing at
//! it. Built images are content-addressed by their recipe, so building the
//! same recipe again (under any name) reuses the artifacts; imported images by
//! the hash of their artifacts. Every build or import works in the
//! operation's scratch dir and moves the finished directory into place with
//! one rename, so a failed, cancelled or interrupted one leaves nothing.

pub mod build;
pub mod import;
pub mod inroot;
pub mod kernel;
pub mod recipe;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_api::{Artifact, Backend, ErrorCode, Image, ImageRemoved};
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::names::{validate_name, NameError};
use crate::ops::Ops;
use crate::paths::Layout;
use crate::store::{Store, StoreError};
use crate::tools::ToolError;
use crate::ToApiError;

pub use recipe::{Recipe, RecipeError, RecipeFile};

#[derive(Debug, Error)]
pub enum ImageError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("An image named {0:?} already exists")]
    Exists(String),
    #[error("No image named {0:?}")]
    NotFound(String),
    #[error("The image files of digest {0} are gone from the state dir")]
    Gone(String),
    #[error("Image {name:?} is used by VM(s) {}", vms.join(", "))]
    InUse { name: String, vms: Vec<String> },
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error("Cannot import {path}: {reason}")]
    BadInput { path: String, reason: String },
    #[error("Image I/O failed on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ops(#[from] crate::ops::OpsError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    InRoot(#[from] inroot::InRootError),
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// mmdebstrap failed; the mirror and suite say where to look.
    #[error("Bootstrapping the root filesystem failed")]
    Bootstrap {
        #[source]
        source: ToolError,
        mirror: String,
        suite: String,
    },
}

impl From<rusqlite::Error> for ImageError {
    fn from(e: rusqlite::Error) -> Self {
        ImageError::Store(StoreError::Sqlite(e))
    }
}

impl ToApiError for ImageError {
    fn code(&self) -> ErrorCode {
        match self {
            ImageError::Name(_) | ImageError::Recipe(_) | ImageError::BadInput { .. } => {
                ErrorCode::InvalidRequest
            }
            ImageError::Exists(_) | ImageError::InUse { .. } => ErrorCode::Conflict,
            ImageError::NotFound(_) => ErrorCode::NotFound,
            ImageError::Tool(t) | ImageError::Bootstrap { source: t, .. } => t.code(),
            ImageError::Ops(e) => e.code(),
            ImageError::Kernel(e) => e.code(),
            ImageError::Storage(e) => e.code(),
            // The image's own symlinks lead out of it or loop.
            ImageError::InRoot(inroot::InRootError::Resolve { .. }) => ErrorCode::InvalidRequest,
            _ => ErrorCode::Internal,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            ImageError::Name(e) => e.hint(),
            ImageError::Exists(n) => Some(format!(
                "Pick another name, or remove it first: banger image rm {n}"
            )),
            ImageError::NotFound(_) => Some("List images with `banger image ls`".into()),
            ImageError::Gone(_) => Some(
                "The VM cannot start without them: remove it (`banger vm rm NAME`) and create it \
                 again from an image"
                    .into(),
            ),
            ImageError::InUse { .. } => Some("Remove those VMs first, or pass --force".into()),
            ImageError::Tool(t) => t.hint(),
            ImageError::Kernel(e) => e.hint(),
            ImageError::Bootstrap { mirror, suite, .. } => Some(format!(
                "The lines above say which step failed: apt (is the mirror {mirror} reachable, \
                 does it serve suite {suite:?}?) or a customize hook (the agent's npm install)"
            )),
            ImageError::InRoot(inroot::InRootError::Resolve { .. }) => Some(
                "The root filesystem's symlinks must resolve inside it as the guest sees them \
                 (an absolute target such as etc -> /etc names the guest's own path); fix the \
                 tarball or directory and import it again"
                    .into(),
            ),
            _ => None,
        }
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.into(),
        source,
    }
}

/// Removes a directory when dropped (scratch space of an operation).
pub(crate) struct TmpDir(pub PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct ImagesInner {
    layout: Layout,
    store: Arc<Store>,
    ops: Ops,
    default_mirror: String,
    /// Builds and imports run one at a time: they are CPU- and disk-bound.
    build_lock: tokio::sync::Mutex<()>,
    /// Artifacts whose sha256 was checked, by (path, size, mtime, inode).
    verified: std::sync::Mutex<std::collections::HashSet<(PathBuf, u64, i64, u64)>>,
}

/// The images subsystem. Cheap to clone.
#[derive(Clone)]
pub struct Images {
    inner: Arc<ImagesInner>,
}

impl Images {
    /// `default_mirror` is the package mirror for recipes that name none.
    pub fn new(
        layout: Layout,
        store: Arc<Store>,
        ops: Ops,
        default_mirror: String,
    ) -> Result<Images, ImageError> {
        let images = Images {
            inner: Arc::new(ImagesInner {
                layout,
                store,
                ops,
                default_mirror,
                build_lock: tokio::sync::Mutex::new(()),
                verified: std::sync::Mutex::new(std::collections::HashSet::new()),
            }),
        };
        Ok(images)
    }

    /// Removes image directories that no name points at and no VM or
    /// snapshot uses (`in_use`: their digests): a crash between the rename
    /// and the insert, or the last user of an image removed with `image rm
    /// --force`. Called by the daemon at start, once the VMs are known.
    pub fn remove_orphans(
        &self,
        in_use: &std::collections::HashSet<String>,
    ) -> Result<(), ImageError> {
        let dir = self.inner.layout.images_dir();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for e in entries.filter_map(Result::ok) {
            let digest = e.file_name().to_string_lossy().into_owned();
            let used: i64 = self.inner.store.read(|c| {
                c.query_row(
                    "SELECT count(*) FROM images WHERE digest = ?1",
                    [&digest],
                    |r| r.get(0),
                )
            })?;
            if used == 0 && !in_use.contains(&digest) {
                tracing::warn!(
                    digest,
                    "removing image artifacts no image name or VM refers to"
                );
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(())
    }

    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    pub fn default_mirror(&self) -> &str {
        &self.inner.default_mirror
    }

    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        self.inner
            .store
            .read(|c| -> Result<Vec<Image>, ImageError> {
                let mut stmt = c.prepare("SELECT manifest FROM images ORDER BY name")?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
                let mut v = Vec::new();
                for r in rows {
                    v.push(parse_manifest(&r?)?);
                }
                Ok(v)
            })
    }

    pub fn get(&self, name: &str) -> Result<Image, ImageError> {
        validate_name("image", name)?;
        let m: Option<String> = self.inner.store.read(|c| {
            c.query_row("SELECT manifest FROM images WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
        })?;
        parse_manifest(&m.ok_or_else(|| ImageError::NotFound(name.into()))?)
    }

    /// Path of one of the image's artifacts.
    pub fn artifact_path(&self, image: &Image, kind: &str) -> Option<PathBuf> {
        image
            .artifacts
            .iter()
            .find(|a| a.kind == kind)
            .map(|a| self.inner.layout.image_dir(&image.digest).join(&a.file))
    }

    /// Checks that every artifact is present and matches its recorded
    /// sha256. A file is hashed once per (size, mtime, inode): later checks
    /// of an unchanged file are free. Blocking.
    pub fn verify(&self, image: &Image) -> Result<(), ImageError> {
        use std::os::unix::fs::MetadataExt;
        for a in &image.artifacts {
            let p = self.inner.layout.image_dir(&image.digest).join(&a.file);
            let m = std::fs::metadata(&p).map_err(|e| ImageError::BadInput {
                path: p.display().to_string(),
                reason: format!("artifact {} of image {:?} is missing ({e}); remove the image and build or import it again", a.kind, image.name),
            })?;
            let key = (p.clone(), m.len(), m.mtime(), m.ino());
            if self
                .inner
                .verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&key)
            {
                continue;
            }
            let sha = sha256_file(&p)?;
            if m.len() != a.size || sha != a.sha256 {
                return Err(ImageError::BadInput {
                    path: p.display().to_string(),
                    reason: format!(
                        "artifact {} of image {:?} changed on disk (sha256 {sha}, recorded {}); remove the image and build or import it again",
                        a.kind, image.name, a.sha256
                    ),
                });
            }
            self.inner
                .verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key);
        }
        Ok(())
    }

    fn exists(&self, name: &str) -> Result<bool, ImageError> {
        Ok(self
            .inner
            .store
            .read(|c| {
                c.query_row("SELECT 1 FROM images WHERE name = ?1", [name], |_| Ok(()))
                    .optional()
            })?
            .is_some())
    }

    /// Removes the name; the artifacts go when no other name uses them.
    /// `users` are the VMs using it (refused unless `force`).
    pub fn remove(
        &self,
        name: &str,
        force: bool,
        users: Vec<String>,
    ) -> Result<ImageRemoved, ImageError> {
        let image = self.get(name)?;
        if !users.is_empty() && !force {
            return Err(ImageError::InUse {
                name: name.into(),
                vms: users,
            });
        }
        let remaining: i64 = self.inner.store.write(|tx| -> Result<i64, ImageError> {
            tx.execute("DELETE FROM images WHERE name = ?1", [name])?;
            Ok(tx.query_row(
                "SELECT count(*) FROM images WHERE digest = ?1",
                [&image.digest],
                |r| r.get(0),
            )?)
        })?;
        let artifacts_deleted = remaining == 0 && users.is_empty();
        if artifacts_deleted {
            let dir = self.inner.layout.image_dir(&image.digest);
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        tracing::info!(image = name, artifacts_deleted, "image removed");
        Ok(ImageRemoved {
            name: name.into(),
            artifacts_deleted,
        })
    }

    /// Registers `name` for the finished directory `digest`.
    fn register(&self, image: &Image) -> Result<(), ImageError> {
        let manifest = serde_json::to_string(image).map_err(|e| ImageError::BadInput {
            path: image.name.clone(),
            reason: e.to_string(),
        })?;
        self.inner.store.write(|tx| -> Result<(), ImageError> {
            let taken = tx
                .query_row(
                    "SELECT 1 FROM images WHERE name = ?1",
                    [&image.name],
                    |_| Ok(()),
                )
                .optional()?;
            if taken.is_some() {
                return Err(ImageError::Exists(image.name.clone()));
            }
            tx.execute(
                "INSERT INTO images (name, digest, source, created_at, manifest) \
                VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    image.name,
                    image.digest,
                    image.source,
                    image.created_at.to_rfc3339(),
                    manifest
                ],
            )?;
            Ok(())
        })
    }

    /// The image stored under `digest`, whatever its name is now (or
    /// without one).
    pub fn by_digest(&self, digest: &str) -> Result<Image, ImageError> {
        self.stored_manifest(digest)
            .ok_or_else(|| ImageError::Gone(digest.into()))
    }

    /// The manifest stored with the artifacts of `digest`, if complete.
    fn stored_manifest(&self, digest: &str) -> Option<Image> {
        let text =
            std::fs::read_to_string(self.inner.layout.image_dir(digest).join("manifest.json"))
                .ok()?;
        serde_json::from_str(&text).ok()
    }

    fn ops(&self) -> &Ops {
        &self.inner.ops
    }
}

fn parse_manifest(s: &str) -> Result<Image, ImageError> {
    serde_json::from_str(s).map_err(|e| {
        ImageError::Store(StoreError::Corrupt {
            what: "image manifest",
            detail: e.to_string(),
        })
    })
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Describes the artifacts in `dir` (sha256 of each).
pub(crate) fn describe_artifacts(dir: &Path) -> Result<Vec<Artifact>, ImageError> {
    let mut v = Vec::new();
    for (kind, file) in [
        ("rootfs", "rootfs.ext4"),
        ("kernel", "vmlinuz"),
        ("initrd", "initrd.img"),
        ("vmlinux", "vmlinux"),
    ] {
        let p = dir.join(file);
        if let Ok(m) = std::fs::metadata(&p) {
            v.push(Artifact {
                kind: kind.into(),
                file: file.into(),
                size: m.len(),
                sha256: sha256_file(&p)?,
            });
        }
    }
    Ok(v)
}

/// Which backends can boot the artifacts: QEMU needs kernel + rootfs;
/// Firecracker needs a vmlinux and virtio-mmio (built in, or in the initrd).
pub(crate) fn backends_for(artifacts: &[Artifact], virtio_mmio: bool) -> Vec<Backend> {
    let has = |k: &str| artifacts.iter().any(|a| a.kind == k);
    let mut b = Vec::new();
    if has("vmlinux") && has("rootfs") && virtio_mmio {
        b.push(Backend::Firecracker);
    }
    if has("kernel") && has("rootfs") {
        b.push(Backend::Qemu);
    }
    b
}

/// The mirror the host's apt uses (deb822 sources first, then sources.list).
pub fn host_mirror() -> Option<String> {
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        paths.sort();
        for p in paths
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "sources"))
        {
            if let Ok(text) = std::fs::read_to_string(p) {
                if let Some(u) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("URIs:"))
                    .and_then(|u| u.split_whitespace().next())
                {
                    if u.contains("debian") || u.contains("ubuntu") {
                        return Some(u.to_string());
                    }
                }
            }
        }
    }
    let text = std::fs::read_to_string("/etc/apt/sources.list").ok()?;
    text.lines()
        .filter(|l| l.trim_start().starts_with("deb "))
        .flat_map(|l| l.split_whitespace())
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .map(str::to_string)
}
