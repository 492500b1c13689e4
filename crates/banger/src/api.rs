//! The typed face of bangerd's `/v1` API: one method per endpoint, so the
//! rest of the CLI never spells a path. Every name that goes into a path is
//! percent-encoded, and every query is built by `serde_urlencoded`: a name
//! such as `web?x` reaches the daemon whole (and is refused there) instead
//! of naming another resource.

use std::path::Path;

use banger_api::*;
use hyper::Method;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::client::{Client, ClientError};

/// Everything but RFC 3986's unreserved characters is encoded in a path
/// segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A path segment, percent-encoded. Pure.
pub fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// `?k=v&...` of the pairs whose value is present (empty when none). Pure.
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let kept: Vec<(&str, &str)> = pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| (*k, v)))
        .collect();
    match serde_urlencoded::to_string(kept) {
        Ok(q) if !q.is_empty() => format!("?{q}"),
        _ => String::new(),
    }
}

fn vm_path(name: &str, rest: &str) -> String {
    format!("/v1/vms/{}{rest}", seg(name))
}

fn flag(b: bool) -> Option<&'static str> {
    b.then_some("true")
}

/// `stdout` or `stderr`.
fn stream_name(stderr: bool) -> &'static str {
    if stderr {
        "stderr"
    } else {
        "stdout"
    }
}

/// The next offset of a log read: the daemon's `X-Log-Offset`, else what
/// was read.
fn next_offset(header: Option<String>, offset: u64, body: &str) -> u64 {
    header
        .and_then(|n| n.parse().ok())
        .unwrap_or(offset + body.len() as u64)
}

impl Client {
    // --- system

    pub async fn version(&self) -> Result<VersionInfo, ClientError> {
        self.get("/v1/version").await
    }

    pub async fn doctor(&self) -> Result<DoctorReport, ClientError> {
        self.get("/v1/doctor").await
    }

    pub async fn capabilities(&self) -> Result<Capabilities, ClientError> {
        self.get("/v1/capabilities").await
    }

    /// What `vm create` takes when a request leaves a field out.
    pub async fn defaults(&self) -> Result<VmDefaults, ClientError> {
        self.get("/v1/defaults").await
    }

    pub async fn ui(&self) -> Result<UiInfo, ClientError> {
        self.get("/v1/ui").await
    }

    /// A one-time login link into the dashboard.
    pub async fn ui_login(&self) -> Result<UiInfo, ClientError> {
        self.post_empty("/v1/ui/login").await
    }

    /// Logs every browser out of the dashboard.
    pub async fn ui_logout(&self) -> Result<UiLogout, ClientError> {
        self.delete("/v1/ui/sessions").await
    }

    // --- operations

    pub async fn ops(&self, all: bool, limit: usize) -> Result<OpList, ClientError> {
        let limit = limit.to_string();
        let q = query(&[
            ("all", Some(if all { "true" } else { "false" })),
            ("limit", Some(&limit)),
        ]);
        self.get(&format!("/v1/ops{q}")).await
    }

    pub async fn op(&self, id: &str) -> Result<Operation, ClientError> {
        self.get(&format!("/v1/ops/{}", seg(id))).await
    }

    pub async fn op_cancel(&self, id: &str) -> Result<Operation, ClientError> {
        self.post_empty(&format!("/v1/ops/{}/cancel", seg(id)))
            .await
    }

    /// Follows an operation's events (SSE) after `after`, calling `on_event`
    /// for each, until the `finished` event or the end of the stream.
    pub async fn follow_op(
        &self,
        id: &str,
        after: u64,
        mut on_event: impl FnMut(&OpEvent),
    ) -> Result<(), ClientError> {
        let mut bad = None;
        let path = format!("/v1/ops/{}/events?after={after}", seg(id));
        self.follow_sse(&path, |v| match serde_json::from_value::<OpEvent>(v) {
            Ok(ev) => {
                on_event(&ev);
                !matches!(ev.body, OpEventBody::Finished { .. })
            }
            Err(e) => {
                bad = Some(e.to_string());
                false
            }
        })
        .await?;
        match bad {
            Some(e) => Err(ClientError::Protocol(format!("bad operation event: {e}"))),
            None => Ok(()),
        }
    }

    // --- images

    pub async fn image_build(&self, req: &ImageBuildRequest) -> Result<Operation, ClientError> {
        self.post("/v1/images/build", req).await
    }

    pub async fn image_import(&self, req: &ImageImportRequest) -> Result<Operation, ClientError> {
        self.post("/v1/images/import", req).await
    }

    pub async fn images(&self) -> Result<ImageList, ClientError> {
        self.get("/v1/images").await
    }

    pub async fn image(&self, name: &str) -> Result<Image, ClientError> {
        self.get(&format!("/v1/images/{}", seg(name))).await
    }

    pub async fn image_rm(&self, name: &str, force: bool) -> Result<ImageRemoved, ClientError> {
        let q = query(&[("force", flag(force))]);
        self.delete(&format!("/v1/images/{}{q}", seg(name))).await
    }

    // --- VMs

    pub async fn vm_create(&self, req: &VmCreateRequest) -> Result<Operation, ClientError> {
        self.post("/v1/vms", req).await
    }

    pub async fn vms(&self) -> Result<VmList, ClientError> {
        self.get("/v1/vms").await
    }

    pub async fn vm(&self, name: &str) -> Result<Vm, ClientError> {
        self.get(&vm_path(name, "")).await
    }

    pub async fn vm_start(&self, name: &str) -> Result<Operation, ClientError> {
        self.post_empty(&vm_path(name, "/start")).await
    }

    pub async fn vm_stop(&self, name: &str, req: &VmStopRequest) -> Result<Vm, ClientError> {
        self.post(&vm_path(name, "/stop"), req).await
    }

    pub async fn vm_rm(&self, name: &str, force: bool) -> Result<(), ClientError> {
        let q = query(&[("force", flag(force))]);
        self.delete_empty(&vm_path(name, &q)).await
    }

    pub async fn vm_set(&self, name: &str, req: &VmSetRequest) -> Result<Vm, ClientError> {
        self.post(&vm_path(name, "/set"), req).await
    }

    pub async fn vm_snapshot(
        &self,
        name: &str,
        req: &VmSnapshotRequest,
    ) -> Result<Operation, ClientError> {
        self.post(&vm_path(name, "/snapshot"), req).await
    }

    pub async fn vm_fork(&self, name: &str, req: &VmForkRequest) -> Result<Operation, ClientError> {
        self.post(&vm_path(name, "/fork"), req).await
    }

    /// The console log from `offset`; returns the text and the next offset.
    pub async fn vm_logs(&self, name: &str, offset: u64) -> Result<(String, u64), ClientError> {
        let path = vm_path(name, &format!("/logs?offset={offset}"));
        let (next, body) = self.get_text_with_header(&path, "x-log-offset").await?;
        let next = next_offset(next, offset, &body);
        Ok((body, next))
    }

    pub async fn vm_stats(&self, name: &str) -> Result<VmStats, ClientError> {
        self.get(&vm_path(name, "/stats")).await
    }

    pub async fn vm_ports(&self, name: &str) -> Result<VmPortList, ClientError> {
        self.get(&vm_path(name, "/ports")).await
    }

    /// Follows the guest's sockets opening and closing, calling `on_event`
    /// with each, until the stream ends.
    pub async fn follow_port_events(
        &self,
        name: &str,
        mut on_event: impl FnMut(banger_api::VmPortEvent),
    ) -> Result<(), ClientError> {
        let mut bad = None;
        self.follow_sse(
            &vm_path(name, "/ports/watch"),
            |v| match serde_json::from_value::<banger_api::VmPortEvent>(v) {
                Ok(e) => {
                    on_event(e);
                    true
                }
                Err(e) => {
                    bad = Some(ClientError::Protocol(format!("bad port event: {e}")));
                    false
                }
            },
        )
        .await?;
        bad.map_or(Ok(()), Err)
    }

    pub async fn forward_add(
        &self,
        name: &str,
        req: &ForwardRequest,
    ) -> Result<Forward, ClientError> {
        self.post(&vm_path(name, "/forwards"), req).await
    }

    pub async fn forward_rm(
        &self,
        name: &str,
        addr: Option<&str>,
        port: u16,
    ) -> Result<(), ClientError> {
        let port = port.to_string();
        let q = query(&[("host_addr", addr), ("host_port", Some(&port))]);
        self.delete_empty(&vm_path(name, &format!("/forwards{q}")))
            .await
    }

    /// Forwards of one VM, or of all.
    pub async fn forwards(&self, vm: Option<&str>) -> Result<ForwardList, ClientError> {
        match vm {
            Some(v) => self.get(&vm_path(v, "/forwards")).await,
            None => self.get("/v1/forwards").await,
        }
    }

    pub async fn vm_ssh(&self, name: &str) -> Result<VmSshInfo, ClientError> {
        self.get(&vm_path(name, "/ssh")).await
    }

    pub async fn ssh_client_key(&self) -> Result<SshClientKey, ClientError> {
        self.get("/v1/ssh/client-key").await
    }

    /// A byte stream to a TCP port of the VM.
    pub async fn vm_proxy(
        &self,
        name: &str,
        port: u16,
    ) -> Result<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>, ClientError> {
        self.upgrade(&vm_path(name, &format!("/proxy/{port}")))
            .await
    }

    /// A program run to its end (one-shot exec).
    pub async fn vm_exec(
        &self,
        name: &str,
        req: &VmExecRequest,
    ) -> Result<VmExecResult, ClientError> {
        self.post(&vm_path(name, "/exec"), req).await
    }

    /// A streamed exec: the connection after the upgrade, carrying frames.
    pub async fn vm_exec_stream(
        &self,
        name: &str,
        req: &VmExecRequest,
    ) -> Result<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.upgrade_with(
            Method::POST,
            &vm_path(name, "/exec"),
            "banger-exec",
            Some(body),
        )
        .await
    }

    /// A guest file's bytes, streamed into `out`; returns its size.
    pub async fn guest_read(
        &self,
        name: &str,
        path: &str,
        out: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    ) -> Result<u64, ClientError> {
        let q = query(&[("path", Some(path))]);
        self.download(&vm_path(name, &format!("/files{q}")), out)
            .await
    }

    /// Writes a guest file from a host file (streamed).
    pub async fn guest_write(
        &self,
        name: &str,
        path: &str,
        mode: Option<u32>,
        from: &Path,
    ) -> Result<GuestFile, ClientError> {
        let mode = mode.map(|m| format!("{m:o}"));
        let q = query(&[("path", Some(path)), ("mode", mode.as_deref())]);
        let url = vm_path(name, &format!("/files{q}"));
        self.upload_with(Method::PUT, &url, "application/octet-stream", from)
            .await
    }

    pub async fn guest_stat(&self, name: &str, path: &str) -> Result<GuestFile, ClientError> {
        let q = query(&[("path", Some(path))]);
        self.get(&vm_path(name, &format!("/files/stat{q}"))).await
    }

    // --- snapshots and the pool

    pub async fn snapshots(&self) -> Result<SnapshotList, ClientError> {
        self.get("/v1/snapshots").await
    }

    // --- e2b

    pub async fn e2b_info(&self) -> Result<banger_api::E2bInfo, ClientError> {
        self.get("/v1/e2b").await
    }

    pub async fn e2b_keys(&self) -> Result<banger_api::E2bKeyList, ClientError> {
        self.get("/v1/e2b/keys").await
    }

    pub async fn e2b_key_create(
        &self,
        name: &str,
    ) -> Result<banger_api::E2bKeyCreated, ClientError> {
        let req = banger_api::E2bKeyCreate { name: name.into() };
        self.post("/v1/e2b/keys", &req).await
    }

    pub async fn e2b_key_rm(&self, id: &str) -> Result<(), ClientError> {
        self.delete_empty(&format!("/v1/e2b/keys/{}", seg(id)))
            .await
    }

    pub async fn snapshot_rm(&self, name: &str) -> Result<(), ClientError> {
        self.delete_empty(&format!("/v1/snapshots/{}", seg(name)))
            .await
    }

    pub async fn pools(&self) -> Result<PoolList, ClientError> {
        self.get("/v1/pools").await
    }

    pub async fn pool_set(&self, req: &PoolSetRequest) -> Result<PoolStatus, ClientError> {
        self.post("/v1/pools", req).await
    }

    // --- sessions

    pub async fn session_start(
        &self,
        vm: &str,
        req: &SessionStartRequest,
    ) -> Result<Session, ClientError> {
        self.post(&vm_path(vm, "/sessions"), req).await
    }

    pub async fn sessions(&self, vm: Option<&str>) -> Result<SessionList, ClientError> {
        self.get(&format!("/v1/sessions{}", query(&[("vm", vm)])))
            .await
    }

    pub async fn session(&self, name: &str) -> Result<Session, ClientError> {
        self.get(&format!("/v1/sessions/{}", seg(name))).await
    }

    /// A session's output from `offset`; returns the text and the next offset.
    pub async fn session_logs(
        &self,
        name: &str,
        stderr: bool,
        offset: u64,
    ) -> Result<(String, u64), ClientError> {
        let off = offset.to_string();
        let q = query(&[
            ("stream", Some(stream_name(stderr))),
            ("offset", Some(&off)),
        ]);
        let path = format!("/v1/sessions/{}/logs{q}", seg(name));
        let (next, body) = self.get_text_with_header(&path, "x-log-offset").await?;
        let next = next_offset(next, offset, &body);
        Ok((body, next))
    }

    /// Follows a session's output from `offset` (SSE) until it ends,
    /// calling `on_text` with each piece.
    pub async fn follow_session_logs(
        &self,
        name: &str,
        stderr: bool,
        offset: u64,
        mut on_text: impl FnMut(&str),
    ) -> Result<(), ClientError> {
        let off = offset.to_string();
        let q = query(&[
            ("stream", Some(stream_name(stderr))),
            ("offset", Some(&off)),
        ]);
        let path = format!("/v1/sessions/{}/logs/stream{q}", seg(name));
        self.follow_sse(&path, |v| {
            if let Some(t) = v.get("text").and_then(|t| t.as_str()) {
                on_text(t);
            }
            v.get("type").and_then(|t| t.as_str()) != Some("end")
        })
        .await
    }

    pub async fn session_send(&self, name: &str, text: String) -> Result<(), ClientError> {
        let path = format!("/v1/sessions/{}/send", seg(name));
        self.post_no_answer(&path, &SessionSendRequest { text })
            .await
    }

    /// Sets the size of a session's terminal.
    pub async fn session_resize(
        &self,
        name: &str,
        size: banger_api::TermSize,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/sessions/{}/resize", seg(name));
        self.post_no_answer(&path, &size).await
    }

    pub async fn session_signal(&self, name: &str, signal: &str) -> Result<Session, ClientError> {
        let req = SessionSignalRequest {
            signal: signal.to_string(),
        };
        self.post(&format!("/v1/sessions/{}/signal", seg(name)), &req)
            .await
    }

    pub async fn session_rm(&self, name: &str, force: bool) -> Result<(), ClientError> {
        let q = query(&[("force", flag(force))]);
        self.delete_empty(&format!("/v1/sessions/{}{q}", seg(name)))
            .await
    }

    // --- workspaces, credentials, agents

    /// Uploads a packed repository (a tar file) as workspace `q.name`.
    pub async fn workspace_push(
        &self,
        vm: &str,
        q: &WorkspacePush<'_>,
        archive: &Path,
    ) -> Result<Workspace, ClientError> {
        let query = query(&[
            ("name", Some(q.name)),
            ("dest", q.dest),
            ("host_path", Some(q.host_path)),
            ("base", Some(q.base)),
            ("branch", q.branch),
            ("force", flag(q.force)),
        ]);
        let path = vm_path(vm, &format!("/workspaces{query}"));
        self.upload_file(&path, "application/x-tar", archive).await
    }

    pub async fn workspaces(&self, vm: Option<&str>) -> Result<WorkspaceList, ClientError> {
        match vm {
            Some(v) => self.get(&vm_path(v, "/workspaces")).await,
            None => self.get("/v1/workspaces").await,
        }
    }

    fn ws_path(vm: &str, name: &str, rest: &str) -> String {
        vm_path(vm, &format!("/workspaces/{}{rest}", seg(name)))
    }

    pub async fn workspace(&self, vm: &str, name: &str) -> Result<Workspace, ClientError> {
        self.get(&Self::ws_path(vm, name, "")).await
    }

    pub async fn workspace_changes(
        &self,
        vm: &str,
        name: &str,
    ) -> Result<WorkspaceChanges, ClientError> {
        self.get(&Self::ws_path(vm, name, "/changes")).await
    }

    /// The git bundle of the guest's commits up to `head`.
    pub async fn workspace_bundle(
        &self,
        vm: &str,
        name: &str,
        head: &str,
    ) -> Result<Vec<u8>, ClientError> {
        let q = query(&[("head", Some(head))]);
        self.get_bytes(&Self::ws_path(vm, name, &format!("/bundle{q}")))
            .await
    }

    pub async fn workspace_exported(
        &self,
        vm: &str,
        name: &str,
        commit: String,
    ) -> Result<Workspace, ClientError> {
        let path = Self::ws_path(vm, name, "/exported");
        self.post(&path, &WorkspaceExported { commit }).await
    }

    pub async fn workspace_rm(&self, vm: &str, name: &str) -> Result<(), ClientError> {
        self.delete_empty(&Self::ws_path(vm, name, "")).await
    }

    pub async fn auth_items(&self) -> Result<AuthItemList, ClientError> {
        self.get("/v1/auth/items").await
    }

    pub async fn auth_sync(
        &self,
        vm: &str,
        req: &AuthSyncRequest,
    ) -> Result<AuthSyncReport, ClientError> {
        self.post(&vm_path(vm, "/auth"), req).await
    }

    pub async fn agents(&self) -> Result<AgentList, ClientError> {
        self.get("/v1/agents").await
    }

    pub async fn agent_run(&self, vm: &str, req: &AgentRunRequest) -> Result<Session, ClientError> {
        self.post(&vm_path(vm, "/agent/run"), req).await
    }

    /// A plain GET whose answer's status is checked and whose body is
    /// returned with one header's value.
    async fn get_text_with_header(
        &self,
        path: &str,
        header: &str,
    ) -> Result<(Option<String>, String), ClientError> {
        let (status, headers, body) = self.raw(Method::GET, path).await?;
        ClientError::check(status, &body)?;
        let value = headers
            .get(header)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok((value, body))
    }
}

/// What a workspace push names (the query of `POST .../workspaces`).
#[derive(Debug, Clone, Copy)]
pub struct WorkspacePush<'a> {
    pub name: &'a str,
    pub dest: Option<&'a str>,
    pub host_path: &'a str,
    pub base: &'a str,
    pub branch: Option<&'a str>,
    pub force: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_whole_into_paths_and_queries() {
        assert_eq!(seg("dev-1.x_y~"), "dev-1.x_y~");
        assert_eq!(seg("web?x"), "web%3Fx");
        assert_eq!(seg("a/b"), "a%2Fb");
        assert_eq!(seg("../x"), "..%2Fx");
        assert_eq!(vm_path("web?", "/ssh"), "/v1/vms/web%3F/ssh");
        assert_eq!(query(&[("vm", Some("a&b")), ("x", None)]), "?vm=a%26b");
        assert_eq!(query(&[("x", None)]), "");
    }

    #[test]
    fn a_log_offset_comes_from_the_header_or_what_was_read() {
        assert_eq!(next_offset(Some("42".into()), 0, "abc"), 42);
        assert_eq!(next_offset(Some("junk".into()), 10, "abc"), 13);
        assert_eq!(next_offset(None, 10, ""), 10);
    }
}
