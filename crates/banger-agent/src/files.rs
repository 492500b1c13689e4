//! Files in the guest: streamed reads, atomic writes (a temporary file
//! beside the target, renamed over it once every byte is there), stat,
//! list, mkdir -p, remove, rename. Paths are the guest's own and must be
//! absolute.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use banger_agent_proto::frame::{Frame, Kind, MAX_PAYLOAD};
use banger_agent_proto::msg::{ErrorKind, FileStat, Reply, Request};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::reply::{error, io_error, reply, Frames};

/// Entries per `entries` reply (each reply is one bounded frame).
const ENTRIES_PER_REPLY: usize = 200;
/// The most entries a listing returns.
const MAX_ENTRIES: usize = 100_000;

fn absolute(path: &str) -> Result<PathBuf, Reply> {
    let p = Path::new(path);
    if !p.is_absolute() || path.contains('\0') {
        return Err(error(
            ErrorKind::Invalid,
            format!("{path:?} is not an absolute path"),
        ));
    }
    Ok(p.to_path_buf())
}

/// A file's metadata as the protocol sends it (`path` as given). Pure.
pub fn to_stat(path: &str, m: &std::fs::Metadata, target: Option<String>) -> FileStat {
    let ft = m.file_type();
    let kind = if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else {
        "other"
    };
    FileStat {
        path: path.to_string(),
        kind: kind.into(),
        size: m.len(),
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: m.mtime(),
        target,
    }
}

fn stat_of(path: &Path) -> std::io::Result<FileStat> {
    let m = std::fs::symlink_metadata(path)?;
    let target = m
        .file_type()
        .is_symlink()
        .then(|| std::fs::read_link(path).ok())
        .flatten()
        .map(|t| t.display().to_string());
    Ok(to_stat(&path.display().to_string(), &m, target))
}

/// The requests answered with one reply.
pub async fn simple(req: Request) -> Result<Reply, Reply> {
    tokio::task::spawn_blocking(move || simple_blocking(req))
        .await
        .map_err(|e| error(ErrorKind::Failed, e.to_string()))?
}

fn simple_blocking(req: Request) -> Result<Reply, Reply> {
    match req {
        Request::Stat { path } => {
            let p = absolute(&path)?;
            stat_of(&p)
                .map(Reply::Stat)
                .map_err(|e| io_error(&path, &e))
        }
        Request::Mkdir { path, mode } => {
            let p = absolute(&path)?;
            std::fs::create_dir_all(&p).map_err(|e| io_error(&path, &e))?;
            if let Some(m) = mode {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m))
                    .map_err(|e| io_error(&path, &e))?;
            }
            stat_of(&p)
                .map(Reply::Stat)
                .map_err(|e| io_error(&path, &e))
        }
        Request::Remove { path, recursive } => {
            let p = absolute(&path)?;
            if p == Path::new("/") {
                return Err(error(ErrorKind::Invalid, "refusing to remove /"));
            }
            let m = std::fs::symlink_metadata(&p).map_err(|e| io_error(&path, &e))?;
            let r = match (m.is_dir(), recursive) {
                (true, true) => std::fs::remove_dir_all(&p),
                (true, false) => std::fs::remove_dir(&p),
                (false, _) => std::fs::remove_file(&p),
            };
            r.map(|_| Reply::Ok).map_err(|e| io_error(&path, &e))
        }
        Request::Move { from, to } => {
            let (a, b) = (absolute(&from)?, absolute(&to)?);
            std::fs::rename(&a, &b).map_err(|e| io_error(&format!("{from} -> {to}"), &e))?;
            stat_of(&b).map(Reply::Stat).map_err(|e| io_error(&to, &e))
        }
        other => Err(error(
            ErrorKind::Invalid,
            format!("{other:?} is not a one-reply request"),
        )),
    }
}

/// `list`: `entries` replies in chunks, then `ok`.
pub async fn list(f: &mut Frames, path: &str, depth: u32) -> Result<(), Reply> {
    let p = absolute(path)?;
    let depth = depth.clamp(1, 64);
    let entries = tokio::task::spawn_blocking(move || walk(&p, depth))
        .await
        .map_err(|e| error(ErrorKind::Failed, e.to_string()))?
        .map_err(|e| io_error(path, &e))?;
    for chunk in entries.chunks(ENTRIES_PER_REPLY) {
        let r = Reply::Entries {
            entries: chunk.to_vec(),
        };
        reply(f, r).await?;
    }
    reply(f, Reply::Ok).await
}

/// The entries under `dir`, `depth` levels down, sorted, at most
/// [`MAX_ENTRIES`]; symlinks are listed, never followed.
fn walk(dir: &Path, depth: u32) -> std::io::Result<Vec<FileStat>> {
    let mut out = Vec::new();
    let mut todo = vec![(dir.to_path_buf(), 1u32)];
    while let Some((d, level)) = todo.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&d)?.flatten().map(|e| e.path()).collect();
        names.sort();
        for p in names {
            if out.len() >= MAX_ENTRIES {
                return Ok(out);
            }
            let Ok(st) = stat_of(&p) else { continue };
            if st.kind == "dir" && level < depth {
                todo.push((p.clone(), level + 1));
            }
            out.push(st);
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// `read`: the file's stat, then its bytes from `offset` (at most
/// `limit`) in `Out` frames, then `Eof`.
pub async fn read(
    f: &mut Frames,
    path: &str,
    offset: u64,
    limit: Option<u64>,
) -> Result<(), Reply> {
    let p = absolute(path)?;
    let mut file = tokio::fs::File::open(&p)
        .await
        .map_err(|e| io_error(path, &e))?;
    let m = file.metadata().await.map_err(|e| io_error(path, &e))?;
    if m.is_dir() {
        return Err(error(ErrorKind::Conflict, format!("{path} is a directory")));
    }
    reply(f, Reply::Stat(to_stat(path, &m, None))).await?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| io_error(path, &e))?;
    let mut left = limit.unwrap_or(u64::MAX);
    let mut buf = vec![0u8; MAX_PAYLOAD];
    while left > 0 {
        let want = usize::try_from(left.min(MAX_PAYLOAD as u64)).unwrap_or(MAX_PAYLOAD);
        let n = file
            .read(&mut buf[..want])
            .await
            .map_err(|e| io_error(path, &e))?;
        if n == 0 {
            break;
        }
        left -= n as u64;
        let frame = Frame::data(Kind::Out, Bytes::copy_from_slice(&buf[..n]));
        f.send(frame)
            .await
            .map_err(|e| error(ErrorKind::Failed, e.to_string()))?;
    }
    f.send(Frame::eof(Kind::Out))
        .await
        .map_err(|e| error(ErrorKind::Failed, e.to_string()))
}

/// A temporary file beside `target`, removed on drop unless kept.
struct Temp {
    path: PathBuf,
    keep: bool,
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `write`: the `In` frames up to `Eof` into a temporary file beside
/// `path`, synced, given its mode and owner (the old file's when not
/// asked), and renamed over `path`; then its stat.
pub async fn write(
    f: &mut Frames,
    path: &str,
    mode: Option<u32>,
    owner: Option<&str>,
    parents: bool,
) -> Result<(), Reply> {
    let p = absolute(path)?;
    let (dir, name) = match (p.parent(), p.file_name()) {
        (Some(d), Some(n)) => (d.to_path_buf(), n.to_string_lossy().into_owned()),
        _ => return Err(error(ErrorKind::Invalid, format!("{path} names no file"))),
    };
    if parents {
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_error(&dir.display().to_string(), &e))?;
    }
    let old = std::fs::metadata(&p).ok();
    let owner = match owner {
        Some(o) => Some(owner_ids(o)?),
        None => old.as_ref().map(|m| (m.uid(), m.gid())),
    };
    let mode = mode
        .or(old.as_ref().map(|m| m.mode() & 0o7777))
        .unwrap_or(0o644);
    let tmp = Temp {
        path: dir.join(format!(".{name}.banger-{}", std::process::id())),
        keep: false,
    };
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp.path)
        .await
        .map_err(|e| io_error(path, &e))?;
    let mut complete = false;
    while let Some(fr) = f.next().await {
        let fr = fr.map_err(|e| error(ErrorKind::Failed, e.to_string()))?;
        match fr.kind {
            Kind::In => file
                .write_all(&fr.payload)
                .await
                .map_err(|e| io_error(path, &e))?,
            Kind::Eof => {
                complete = true;
                break;
            }
            _ => return Err(error(ErrorKind::Invalid, "unexpected frame in a write")),
        }
    }
    if !complete {
        return Err(error(ErrorKind::Failed, "the write ended before its end"));
    }
    file.sync_all().await.map_err(|e| io_error(path, &e))?;
    drop(file);
    finish_write(tmp, &p, mode, owner).map_err(|e| io_error(path, &e))?;
    let st = stat_of(&p).map_err(|e| io_error(path, &e))?;
    reply(f, Reply::Stat(st)).await
}

fn finish_write(
    mut tmp: Temp,
    target: &Path,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    std::fs::set_permissions(&tmp.path, std::fs::Permissions::from_mode(mode))?;
    if let Some((u, g)) = owner {
        std::os::unix::fs::chown(&tmp.path, Some(u), Some(g))?;
    }
    std::fs::rename(&tmp.path, target)?;
    tmp.keep = true;
    Ok(())
}

/// `user` or `user:group` (names or numbers) as ids.
fn owner_ids(spec: &str) -> Result<(u32, u32), Reply> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = crate::users::load(Some(u)).map_err(|e| error(ErrorKind::NotFound, e))?;
    let gid = match g {
        None => user.gid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_id(g).ok_or_else(|| {
                error(ErrorKind::NotFound, format!("no group {g:?} in the guest"))
            })?,
        },
    };
    Ok((user.uid, gid))
}

fn group_id(name: &str) -> Option<u32> {
    std::fs::read_to_string("/etc/group")
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok())?
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute_and_listings_are_bounded_and_sorted() {
        assert!(absolute("relative/x").is_err());
        assert!(absolute("/a\0b").is_err());
        let d = std::env::temp_dir().join(format!("banger-agent-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("sub/deeper")).expect("mkdir");
        std::fs::write(d.join("b.txt"), "b").expect("write");
        std::fs::write(d.join("sub/a.txt"), "aa").expect("write");
        std::os::unix::fs::symlink("/etc", d.join("link")).expect("symlink");
        let one = walk(&d, 1).expect("walk");
        let names: Vec<&str> = one
            .iter()
            .map(|e| e.path.rsplit('/').next().unwrap_or(""))
            .collect();
        assert_eq!(names, ["b.txt", "link", "sub"]);
        let link = one.iter().find(|e| e.kind == "symlink").expect("the link");
        assert_eq!(link.target.as_deref(), Some("/etc"));
        let two = walk(&d, 2).expect("walk");
        assert_eq!(two.len(), 5, "{two:?}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
