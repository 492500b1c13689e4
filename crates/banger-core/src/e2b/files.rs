//! envd's files: `/files` download and upload, and the unary
//! `filesystem.Filesystem` RPCs (Stat, ListDir, MakeDir, Move, Remove),
//! over banger's own guest file API (the agent reads and writes).

use banger_api::{GuestFile, GuestFileOp};
use futures::{SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use super::connect::Code;
use super::{E2b, E2bError, DEFAULT_USER};
use crate::ToApiError;

/// A path as envd takes it: absolute, or relative to `user`'s home.
/// Pure.
pub fn resolve(path: &str, user: &str) -> String {
    if path.starts_with('/') {
        return path.to_string();
    }
    let home = if user == "root" {
        "/root".to_string()
    } else {
        format!("/home/{user}")
    };
    let rel = path.trim_start_matches("./");
    if rel.is_empty() || rel == "." {
        home
    } else {
        format!("{home}/{rel}")
    }
}

/// The name envd gives an owner uid. Pure.
fn owner_name(uid: u32) -> String {
    match uid {
        0 => "root".into(),
        1000 => DEFAULT_USER.into(),
        u => u.to_string(),
    }
}

/// `ls -l`'s permission string of `mode` for `kind`. Pure.
pub fn permissions(kind: &str, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        "dir" => 'd',
        "symlink" => 'l',
        _ => '-',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// A `filesystem.EntryInfo` in proto3 JSON (int64 as a string). Pure.
pub fn entry_info(f: &GuestFile) -> Value {
    let name = f.path.rsplit('/').next().unwrap_or(&f.path).to_string();
    let kind = match f.kind.as_str() {
        "file" => "FILE_TYPE_FILE",
        "dir" => "FILE_TYPE_DIRECTORY",
        "symlink" => "FILE_TYPE_SYMLINK",
        _ => "FILE_TYPE_UNSPECIFIED",
    };
    let modified = chrono::DateTime::from_timestamp(f.mtime, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut v = json!({
        "name": name,
        "type": kind,
        "path": f.path,
        "size": f.size.to_string(),
        "mode": f.mode,
        "permissions": permissions(&f.kind, f.mode),
        "owner": owner_name(f.uid),
        "group": owner_name(f.gid),
        "modifiedTime": modified,
    });
    if let Some(t) = &f.target {
        v["symlinkTarget"] = json!(t);
    }
    v
}

/// The Connect code for a failed file call.
pub fn code_of(e: &E2bError) -> Code {
    match e.code() {
        banger_api::ErrorCode::NotFound => Code::NotFound,
        banger_api::ErrorCode::InvalidRequest => Code::InvalidArgument,
        banger_api::ErrorCode::Unavailable => Code::Unavailable,
        banger_api::ErrorCode::Forbidden => Code::PermissionDenied,
        _ => Code::Internal,
    }
}

#[derive(Debug, Deserialize)]
struct PathReq {
    #[serde(default)]
    path: String,
    #[serde(default)]
    depth: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct MoveReq {
    source: String,
    destination: String,
}

impl E2b {
    /// One unary `filesystem.Filesystem` call: its JSON answer.
    pub async fn filesystem(
        &self,
        vm: &str,
        method: &str,
        user: &str,
        body: &[u8],
    ) -> Result<Value, (Code, String)> {
        let bad = |e: serde_json::Error| (Code::InvalidArgument, format!("bad request: {e}"));
        let fail = |e: E2bError| (code_of(&e), crate::error::error_chain(&e));
        match method {
            "Stat" => {
                let r: PathReq = serde_json::from_slice(body).map_err(bad)?;
                let f = self.stat(vm, &resolve(&r.path, user)).await.map_err(fail)?;
                Ok(json!({ "entry": entry_info(&f) }))
            }
            "ListDir" => {
                let r: PathReq = serde_json::from_slice(body).map_err(bad)?;
                let path = resolve(&r.path, user);
                let depth = r.depth.unwrap_or(1).max(1);
                let entries = self
                    .guests
                    .list(vm, &path, depth)
                    .await
                    .map_err(|e| fail(e.into()))?;
                let v: Vec<Value> = entries.iter().map(entry_info).collect();
                Ok(json!({ "entries": v }))
            }
            "MakeDir" => {
                let r: PathReq = serde_json::from_slice(body).map_err(bad)?;
                let path = resolve(&r.path, user);
                if self.stat(vm, &path).await.is_ok() {
                    return Err((Code::AlreadyExists, format!("{path} already exists")));
                }
                let op = GuestFileOp::Mkdir {
                    path: path.clone(),
                    mode: None,
                };
                self.guests.op(vm, op).await.map_err(|e| fail(e.into()))?;
                self.chown(vm, &path, user).await.map_err(fail)?;
                let f = self.stat(vm, &path).await.map_err(fail)?;
                Ok(json!({ "entry": entry_info(&f) }))
            }
            "Move" => {
                let r: MoveReq = serde_json::from_slice(body).map_err(bad)?;
                let (from, to) = (resolve(&r.source, user), resolve(&r.destination, user));
                let op = GuestFileOp::Move {
                    from,
                    to: to.clone(),
                };
                self.guests.op(vm, op).await.map_err(|e| fail(e.into()))?;
                let f = self.stat(vm, &to).await.map_err(fail)?;
                Ok(json!({ "entry": entry_info(&f) }))
            }
            "Remove" => {
                let r: PathReq = serde_json::from_slice(body).map_err(bad)?;
                let op = GuestFileOp::Remove {
                    path: resolve(&r.path, user),
                    recursive: true,
                };
                self.guests.op(vm, op).await.map_err(|e| fail(e.into()))?;
                Ok(json!({}))
            }
            other => Err((
                Code::Unimplemented,
                format!("banger's envd does not implement filesystem.Filesystem/{other} yet"),
            )),
        }
    }

    async fn stat(&self, vm: &str, path: &str) -> Result<GuestFile, E2bError> {
        Ok(self.guests.stat(vm, path).await?)
    }

    /// Gives `path` to `user` (as envd makes files the user's).
    async fn chown(&self, vm: &str, path: &str, user: &str) -> Result<(), E2bError> {
        if user == "root" {
            return Ok(());
        }
        let req = banger_api::VmExecRequest {
            argv: vec!["chown".into(), format!("{user}:"), "--".into(), path.into()],
            ..banger_api::VmExecRequest::default()
        };
        let out = self.guests.exec(vm, req).await?;
        if out.exit_code != Some(0) {
            return Err(E2bError::Invalid {
                what: "user",
                reason: format!("cannot give {path} to {user}: {}", out.stderr.trim()),
            });
        }
        Ok(())
    }

    /// A file's bytes as they are read from the guest.
    pub async fn download(
        &self,
        vm: &str,
        path: &str,
        user: &str,
    ) -> Result<
        (
            u64,
            impl Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send,
        ),
        E2bError,
    > {
        let path = resolve(path, user);
        let (stat, frames) = self.guests.read(vm, &path, 0, None).await?;
        if stat.kind != "file" {
            return Err(E2bError::Invalid {
                what: "path",
                reason: format!("{path} is a {}, not a file", stat.kind),
            });
        }
        Ok((stat.size, crate::guests::read_stream(frames)))
    }

    /// Writes `body` to the guest file `path` (parents made), owned by
    /// `user`; its entry as envd's upload answers it.
    pub async fn upload<S>(
        &self,
        vm: &str,
        path: &str,
        user: &str,
        mut body: S,
    ) -> Result<Value, E2bError>
    where
        S: Stream<Item = Result<bytes::Bytes, String>> + Unpin,
    {
        use banger_agent_proto::frame::{Frame, Kind, MAX_PAYLOAD};
        let path = resolve(path, user);
        let owner = (user != "root").then(|| user.to_string());
        let mut f = self.guests.write_as(vm, &path, None, true, owner).await?;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| E2bError::Invalid {
                what: "upload",
                reason: e,
            })?;
            for part in chunk.chunks(MAX_PAYLOAD) {
                let fr = Frame::data(Kind::In, bytes::Bytes::copy_from_slice(part));
                f.send(fr)
                    .await
                    .map_err(|e| E2bError::Create(format!("writing {path}: {e}")))?;
            }
        }
        f.send(Frame::eof(Kind::In))
            .await
            .map_err(|e| E2bError::Create(format!("writing {path}: {e}")))?;
        let st = crate::guests::finish_write(&mut f).await?;
        let name = st.path.rsplit('/').next().unwrap_or(&st.path).to_string();
        Ok(json!({ "name": name, "type": "file", "path": st.path }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_against_the_user_s_home() {
        assert_eq!(resolve("/etc/x", "user"), "/etc/x");
        assert_eq!(resolve("a/b.txt", "user"), "/home/user/a/b.txt");
        assert_eq!(resolve("./c", "root"), "/root/c");
        assert_eq!(resolve("", "user"), "/home/user");
    }

    #[test]
    fn entries_are_envd_s_json() {
        let f = GuestFile {
            path: "/home/user/a.txt".into(),
            kind: "file".into(),
            size: 5,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            mtime: 0,
            target: None,
        };
        let v = entry_info(&f);
        assert_eq!(v["name"], "a.txt");
        assert_eq!(v["type"], "FILE_TYPE_FILE");
        assert_eq!(v["size"], "5");
        assert_eq!(v["permissions"], "-rw-r--r--");
        assert_eq!(v["owner"], "user");
        assert_eq!(permissions("dir", 0o755), "drwxr-xr-x");
    }
}
