//! `watch`: inotify events under a path, as `event` replies, until the
//! daemon closes the stream. Recursive watches follow directories created
//! later; at most [`MAX_WATCHES`] directories are watched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use banger_agent_proto::msg::{ErrorKind, Reply, WatchEvent};
use futures::StreamExt;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;

use crate::reply::{error, reply, Frames};

const MAX_WATCHES: usize = 8192;

fn flags() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
}

/// The event name of an inotify mask, if banger reports it. Pure.
pub fn event_name(mask: AddWatchFlags) -> Option<&'static str> {
    if mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
        Some("overflow")
    } else if mask.contains(AddWatchFlags::IN_CREATE) {
        Some("create")
    } else if mask.intersects(AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CLOSE_WRITE) {
        Some("modify")
    } else if mask.intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_DELETE_SELF) {
        Some("delete")
    } else if mask.contains(AddWatchFlags::IN_MOVED_FROM) {
        Some("move_from")
    } else if mask.contains(AddWatchFlags::IN_MOVED_TO) {
        Some("move_to")
    } else {
        None
    }
}

/// An inotify instance as tokio registers descriptors.
struct InotifyFd(Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

struct Watches {
    fd: AsyncFd<InotifyFd>,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    recursive: bool,
}

impl Watches {
    fn add(&mut self, dir: &Path) {
        if self.dirs.len() >= MAX_WATCHES {
            return;
        }
        if let Ok(wd) = self.fd.get_ref().0.add_watch(dir, flags()) {
            self.dirs.insert(wd, dir.to_path_buf());
        }
        if !self.recursive {
            return;
        }
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    self.add(&e.path());
                }
            }
        }
    }
}

pub async fn run(f: &mut Frames, path: &str, recursive: bool) -> Result<(), Reply> {
    let root = PathBuf::from(path);
    if !root.is_absolute() || !root.is_dir() {
        return Err(error(
            ErrorKind::NotFound,
            format!("{path:?} is not a directory in the guest"),
        ));
    }
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(|e| error(ErrorKind::Failed, format!("inotify: {e}")))?;
    let mut w = Watches {
        fd: crate::fdio::register(InotifyFd(ino))
            .map_err(|e| error(ErrorKind::Failed, format!("inotify: {e}")))?,
        dirs: HashMap::new(),
        recursive,
    };
    w.add(&root);
    reply(f, Reply::Ok).await?;
    loop {
        tokio::select! {
            ready = w.fd.readable() => {
                let mut guard = ready.map_err(|e| error(ErrorKind::Failed, e.to_string()))?;
                let events = match guard.try_io(|i| i.get_ref().0.read_events().map_err(std::io::Error::from)) {
                    Ok(Ok(ev)) => ev,
                    Ok(Err(e)) => return Err(error(ErrorKind::Failed, e.to_string())),
                    Err(_would_block) => continue,
                };
                for ev in events {
                    let Some(name) = event_name(ev.mask) else { continue };
                    let dir = w.dirs.get(&ev.wd).cloned().unwrap_or_else(|| root.clone());
                    let p = match &ev.name {
                        Some(n) => dir.join(n),
                        None => dir.clone(),
                    };
                    let is_dir = ev.mask.contains(AddWatchFlags::IN_ISDIR);
                    if is_dir && name == "create" && w.recursive {
                        w.add(&p);
                    }
                    let event = WatchEvent { event: name.into(), path: p.display().to_string(), dir: is_dir };
                    reply(f, Reply::Event(event)).await?;
                }
            }
            // The daemon closed the stream (or sent something): done.
            _ = f.next() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_name_events() {
        assert_eq!(
            event_name(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_ISDIR),
            Some("create")
        );
        assert_eq!(event_name(AddWatchFlags::IN_CLOSE_WRITE), Some("modify"));
        assert_eq!(event_name(AddWatchFlags::IN_DELETE_SELF), Some("delete"));
        assert_eq!(event_name(AddWatchFlags::IN_MOVED_TO), Some("move_to"));
        assert_eq!(event_name(AddWatchFlags::IN_ACCESS), None);
    }
}
