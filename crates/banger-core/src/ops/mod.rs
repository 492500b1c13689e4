//! Operations: the one mechanism for long work (image builds, VM creates, ...).
//!
//! An operation has an id, a kind, a target, and steps planned up front. The
//! work runs in a tokio task and reports through an [`OpHandle`]: a step
//! starts, reports progress and messages, and finishes. Every report is an
//! event, appended to the operation's log in the same transaction that
//! updates the operation's row, so the log and the snapshot never disagree
//! and a SIGKILL loses nothing that was reported. Live readers (SSE) follow
//! the log from the store and are woken through a `watch` channel carrying
//! the last sequence number.
//!
//! Cancellation: [`Ops::cancel`] records the request and fires the
//! operation's [`CancellationToken`]; [`OpHandle::step`] races each step's
//! future against it, so cancellation reaches the step that is running.
//! On daemon start, [`Ops::recover_interrupted`] marks operations left
//! running by a dead daemon as interrupted, with the reason.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_api::{
    ApiError, ErrorCode, OpEvent, OpEventBody, OpState, OpStep, Operation, StepStatus,
};
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row};
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::{Store, StoreError};
use crate::ToApiError;

mod handle;

use handle::BLOCKING;
pub use handle::{blocking, OpHandle, StepError};

/// Progress events closer together than this are coalesced (the last one wins
/// when the step finishes).
const PROGRESS_MIN_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Error)]
pub enum OpsError {
    #[error("No operation with id {0:?}")]
    NotFound(String),
    #[error("Operation {id} already finished ({state})")]
    AlreadyFinished { id: String, state: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A step was cancelled (by `banger ops cancel` or daemon shutdown).
    #[error("Operation cancelled")]
    Cancelled,
    /// A step's blocking task panicked or was torn down.
    #[error("A background task failed: {0}")]
    Task(String),
}

impl From<rusqlite::Error> for OpsError {
    fn from(e: rusqlite::Error) -> Self {
        OpsError::Store(StoreError::Sqlite(e))
    }
}

impl ToApiError for OpsError {
    fn code(&self) -> ErrorCode {
        match self {
            OpsError::NotFound(_) => ErrorCode::NotFound,
            OpsError::AlreadyFinished { .. } => ErrorCode::Conflict,
            OpsError::Cancelled => ErrorCode::Cancelled,
            OpsError::Store(_) | OpsError::Task(_) => ErrorCode::Internal,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            OpsError::NotFound(_) => Some("List operations with `banger ops ls`".into()),
            _ => None,
        }
    }
}

/// A step as planned when the operation starts.
#[derive(Debug, Clone)]
pub struct StepSpec {
    pub name: String,
    pub title: String,
}

impl StepSpec {
    pub fn new(name: impl Into<String>, title: impl Into<String>) -> Self {
        StepSpec {
            name: name.into(),
            title: title.into(),
        }
    }
}

/// Applies one event to an operation's snapshot. Pure; the store and the
/// in-memory copy both go through it.
pub fn apply_event(op: &mut Operation, seq: u64, at: DateTime<Utc>, body: &OpEventBody) {
    op.last_seq = seq;
    let step = |op: &mut Operation, name: &str| -> Option<usize> {
        op.steps.iter().position(|s| s.name == name)
    };
    match body {
        OpEventBody::Started { .. } => {}
        OpEventBody::StepStarted { step: name } => {
            if let Some(i) = step(op, name) {
                op.steps[i].status = StepStatus::Running;
                op.steps[i].started_at = Some(at);
            }
        }
        OpEventBody::StepProgress {
            step: name,
            progress,
        } => {
            if let Some(i) = step(op, name) {
                op.steps[i].progress = Some(progress.clone());
            }
        }
        OpEventBody::StepMessage {
            step: name,
            message,
        } => {
            if let Some(i) = step(op, name) {
                op.steps[i].message = Some(message.clone());
            }
        }
        OpEventBody::StepFinished { step: name, status } => {
            if let Some(i) = step(op, name) {
                op.steps[i].status = *status;
                op.steps[i].finished_at = Some(at);
            }
        }
        OpEventBody::CancelRequested => op.cancel_requested = true,
        OpEventBody::Finished { state, error } => {
            op.state = *state;
            op.error = error.clone();
            op.finished_at = Some(at);
            for s in &mut op.steps {
                match s.status {
                    StepStatus::Running => {
                        s.status = if *state == OpState::Cancelled {
                            StepStatus::Cancelled
                        } else {
                            StepStatus::Failed
                        };
                        s.finished_at = Some(at);
                    }
                    StepStatus::Pending => s.status = StepStatus::Skipped,
                    _ => {}
                }
            }
        }
    }
}

struct Live {
    op: Operation,
    cancel: CancellationToken,
    seq_tx: watch::Sender<u64>,
}

struct OpsInner {
    store: Arc<Store>,
    live: Mutex<HashMap<String, Live>>,
}

/// The operations subsystem. Cheap to clone.
#[derive(Clone)]
pub struct Ops {
    inner: Arc<OpsInner>,
}

impl Ops {
    pub fn new(store: Arc<Store>) -> Ops {
        Ops {
            inner: Arc::new(OpsInner {
                store,
                live: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Marks operations a previous daemon left running as interrupted.
    /// Returns their ids.
    pub fn recover_interrupted(&self, reason: &str) -> Result<Vec<String>, OpsError> {
        let ops = self
            .inner
            .store
            .write(|tx| -> Result<Vec<Operation>, OpsError> {
                let mut stmt = tx.prepare(&format!(
                    "SELECT {OP_COLUMNS} FROM ops WHERE state = 'running'"
                ))?;
                let rows = stmt.query_map([], op_from_row)?;
                let mut ops = Vec::new();
                for r in rows {
                    ops.push(r??);
                }
                drop(stmt);
                let now = Utc::now();
                for op in &mut ops {
                    let body = OpEventBody::Finished {
                        state: OpState::Interrupted,
                        error: Some(ApiError::new(ErrorCode::Internal, reason).with_hint(
                            "Run the command again; banger cleaned up what the operation left",
                        )),
                    };
                    let seq = op.last_seq + 1;
                    apply_event(op, seq, now, &body);
                    persist_event(tx, op, now, &body)?;
                }
                Ok(ops)
            })?;
        Ok(ops.into_iter().map(|o| o.id).collect())
    }

    /// Waits until the operation `id` ends; its final snapshot.
    pub async fn wait(&self, id: &str) -> Result<Operation, OpsError> {
        loop {
            let rx = self.subscribe(id);
            let op = self.get(id)?;
            if op.state != OpState::Running {
                return Ok(op);
            }
            match rx {
                Some(mut rx) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Forgets operations that ended before `older_than` ago, with their
    /// events (the table would otherwise grow with every command ever
    /// run). Running ones stay. Returns how many went.
    pub fn prune(&self, older_than: chrono::Duration) -> Result<usize, OpsError> {
        let cutoff = (Utc::now() - older_than).to_rfc3339();
        let n = self.inner.store.write(|tx| -> Result<usize, OpsError> {
            tx.execute(
                "DELETE FROM op_events WHERE op_id IN \
                (SELECT id FROM ops WHERE state != 'running' AND created_at < ?1)",
                [&cutoff],
            )?;
            let n = tx.execute(
                "DELETE FROM ops WHERE state != 'running' AND created_at < ?1",
                [&cutoff],
            )?;
            Ok(n)
        })?;
        if n > 0 {
            tracing::info!(removed = n, "forgot old operations");
        }
        Ok(n)
    }

    /// Creates an operation and returns the handle its work reports through.
    pub fn begin(
        &self,
        kind: &str,
        target: &str,
        steps: Vec<StepSpec>,
    ) -> Result<OpHandle, OpsError> {
        let now = Utc::now();
        let id = format!("op-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut op = Operation {
            id: id.clone(),
            kind: kind.into(),
            target: target.into(),
            state: OpState::Running,
            steps: steps
                .iter()
                .map(|s| OpStep {
                    name: s.name.clone(),
                    title: s.title.clone(),
                    status: StepStatus::Pending,
                    progress: None,
                    message: None,
                    started_at: None,
                    finished_at: None,
                })
                .collect(),
            created_at: now,
            finished_at: None,
            cancel_requested: false,
            result: None,
            error: None,
            last_seq: 0,
        };
        let body = OpEventBody::Started {
            kind: kind.into(),
            target: target.into(),
            steps: steps.iter().map(|s| s.name.clone()).collect(),
        };
        apply_event(&mut op, 1, now, &body);
        self.inner.store.write(|tx| -> Result<(), OpsError> {
            tx.execute(
                &format!(
                    "INSERT INTO ops ({OP_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, \
                    ?7, ?8, ?9, ?10, ?11)"
                ),
                params![
                    op.id,
                    op.kind,
                    op.target,
                    op.state.as_str(),
                    op.created_at.to_rfc3339(),
                    Option::<String>::None,
                    false,
                    to_json(&op.steps),
                    Option::<String>::None,
                    Option::<String>::None,
                    0i64
                ],
            )?;
            persist_event(tx, &op, now, &body)?;
            Ok(())
        })?;
        let cancel = CancellationToken::new();
        let (seq_tx, _) = watch::channel(op.last_seq);
        tracing::info!(op = %id, kind, target, "operation started");
        self.inner.lock_live().insert(
            id.clone(),
            Live {
                op,
                cancel: cancel.clone(),
                seq_tx,
            },
        );
        Ok(OpHandle {
            id,
            kind: kind.into(),
            ops: self.clone(),
            cancel,
            progress: Arc::new(Mutex::new(HashMap::new())),
            blocking: TaskTracker::new(),
        })
    }

    /// Creates an operation and runs `work` for it in a new task. The
    /// operation finishes with the work's result: `Ok` succeeds, an error
    /// with code `cancelled` cancels, any other error fails it.
    pub fn spawn<F, Fut, E>(
        &self,
        kind: &str,
        target: &str,
        steps: Vec<StepSpec>,
        work: F,
    ) -> Result<Operation, OpsError>
    where
        F: FnOnce(OpHandle) -> Fut,
        Fut: Future<Output = Result<serde_json::Value, E>> + Send + 'static,
        E: ToApiError,
    {
        let handle = self.begin(kind, target, steps)?;
        let snapshot = self.get(handle.id())?;
        let fut = BLOCKING.scope(handle.blocking.clone(), work(handle.clone()));
        tokio::spawn(async move {
            let result = fut.await;
            handle.finish(result.map_err(|e| e.to_api_error()));
        });
        Ok(snapshot)
    }

    /// The operation's current snapshot.
    pub fn get(&self, id: &str) -> Result<Operation, OpsError> {
        if let Some(l) = self.inner.lock_live().get(id) {
            return Ok(l.op.clone());
        }
        self.inner
            .store
            .read(|c| {
                c.query_row(
                    &format!("SELECT {OP_COLUMNS} FROM ops WHERE id = ?1"),
                    [id],
                    op_from_row,
                )
                .optional()
            })?
            .transpose()?
            .ok_or_else(|| OpsError::NotFound(id.into()))
    }

    /// The newest `limit` operations, newest first; only running ones unless `all`.
    pub fn list(&self, limit: usize, all: bool) -> Result<Vec<Operation>, OpsError> {
        let sql = format!(
            "SELECT {OP_COLUMNS} FROM ops {} ORDER BY created_at DESC, rowid DESC LIMIT ?1",
            if all { "" } else { "WHERE state = 'running'" }
        );
        let mut ops = self
            .inner
            .store
            .read(|c| -> Result<Vec<Operation>, OpsError> {
                let mut stmt = c.prepare(&sql)?;
                let rows = stmt.query_map([limit as i64], op_from_row)?;
                let mut v = Vec::new();
                for r in rows {
                    v.push(r??);
                }
                Ok(v)
            })?;
        // Live snapshots are at least as fresh as the rows.
        let live = self.inner.lock_live();
        for op in &mut ops {
            if let Some(l) = live.get(&op.id) {
                *op = l.op.clone();
            }
        }
        Ok(ops)
    }

    /// Events with a sequence number above `after`, oldest first.
    pub fn events_after(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OpEvent>, OpsError> {
        self.inner
            .store
            .read(|c| -> Result<Vec<OpEvent>, OpsError> {
                let mut stmt = c.prepare(
                    "SELECT seq, at, body FROM op_events WHERE op_id = ?1 AND seq > \
                    ?2 ORDER BY seq LIMIT ?3",
                )?;
                let rows = stmt.query_map(params![id, after as i64, limit as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })?;
                let mut v = Vec::new();
                for r in rows {
                    let (seq, at, body) = r?;
                    v.push(OpEvent {
                        op_id: id.into(),
                        seq: seq as u64,
                        at: parse_time(&at)?,
                        body: serde_json::from_str(&body)
                            .map_err(|e| corrupt("operation event", e.to_string()))?,
                    });
                }
                Ok(v)
            })
    }

    /// A receiver of the operation's last sequence number while it runs;
    /// `None` once it has finished (everything is in the store then).
    pub fn subscribe(&self, id: &str) -> Option<watch::Receiver<u64>> {
        self.inner.lock_live().get(id).map(|l| l.seq_tx.subscribe())
    }

    /// Asks a running operation to stop. Idempotent while it runs.
    pub fn cancel(&self, id: &str) -> Result<Operation, OpsError> {
        let token = {
            let live = self.inner.lock_live();
            match live.get(id) {
                Some(l) if l.op.cancel_requested => return Ok(l.op.clone()),
                Some(l) => l.cancel.clone(),
                None => {
                    drop(live);
                    let op = self.get(id)?;
                    return Err(OpsError::AlreadyFinished {
                        id: op.id,
                        state: op.state.as_str(),
                    });
                }
            }
        };
        self.inner.emit(id, OpEventBody::CancelRequested);
        token.cancel();
        tracing::info!(op = %id, "cancellation requested");
        self.get(id)
    }

    /// Asks every running operation to stop (daemon shutdown).
    pub fn cancel_all(&self) {
        let ids: Vec<String> = self.inner.lock_live().keys().cloned().collect();
        for id in ids {
            let _ = self.cancel(&id);
        }
    }

    /// How many operations are running in this daemon.
    pub fn running_count(&self) -> usize {
        self.inner.lock_live().len()
    }
}

impl OpsInner {
    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends an event: applies it, persists it with the snapshot in one
    /// transaction, then wakes readers. The live map's lock is held
    /// throughout so events of one operation are totally ordered.
    fn emit(&self, id: &str, body: OpEventBody) {
        let mut live = self.lock_live();
        let Some(l) = live.get_mut(id) else {
            tracing::warn!(op = %id, event = body.type_name(), "event for an operation that is not running");
            return;
        };
        if l.op.state.is_terminal() {
            return;
        }
        let now = Utc::now();
        let mut next = l.op.clone();
        let seq = next.last_seq + 1;
        apply_event(&mut next, seq, now, &body);
        let persisted = self.store.write(|tx| persist_event(tx, &next, now, &body));
        if let Err(e) = persisted {
            tracing::error!(op = %id, error = %crate::error::error_chain(&e), "cannot persist operation event");
        }
        let seq = next.last_seq;
        let finished = next.state.is_terminal();
        l.op = next;
        l.seq_tx.send_replace(seq);
        if finished {
            live.remove(id);
        }
    }
}

const OP_COLUMNS: &str =
    "id, kind, target, state, created_at, finished_at, cancel_requested, steps, result, error, last_seq";

fn persist_event(
    tx: &rusqlite::Transaction<'_>,
    op: &Operation,
    at: DateTime<Utc>,
    body: &OpEventBody,
) -> Result<(), OpsError> {
    tx.execute(
        "INSERT INTO op_events (op_id, seq, at, body) VALUES (?1, ?2, ?3, ?4)",
        params![op.id, op.last_seq as i64, at.to_rfc3339(), to_json(body)],
    )?;
    tx.execute(
        "UPDATE ops SET state = ?2, finished_at = ?3, cancel_requested = \
        ?4, steps = ?5, result = ?6, error = ?7, last_seq = ?8 WHERE id \
        = ?1",
        params![
            op.id,
            op.state.as_str(),
            op.finished_at.map(|t| t.to_rfc3339()),
            op.cancel_requested,
            to_json(&op.steps),
            op.result.as_ref().map(to_json),
            op.error.as_ref().map(to_json),
            op.last_seq as i64
        ],
    )?;
    Ok(())
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Serializing these plain data types cannot fail.
    serde_json::to_string(v).unwrap_or_else(|e| format!("\"<unserializable: {e}>\""))
}

fn corrupt(what: &'static str, detail: String) -> OpsError {
    OpsError::Store(StoreError::Corrupt { what, detail })
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, OpsError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| corrupt("timestamp", format!("{s:?}: {e}")))
}

fn parse_state(s: &str) -> Result<OpState, OpsError> {
    Ok(match s {
        "running" => OpState::Running,
        "succeeded" => OpState::Succeeded,
        "failed" => OpState::Failed,
        "cancelled" => OpState::Cancelled,
        "interrupted" => OpState::Interrupted,
        other => return Err(corrupt("operation state", other.into())),
    })
}

/// Maps a row to an operation; the outer error is SQLite's, the inner one a
/// corrupt value.
fn op_from_row(r: &Row<'_>) -> rusqlite::Result<Result<Operation, OpsError>> {
    let id: String = r.get(0)?;
    let kind: String = r.get(1)?;
    let target: String = r.get(2)?;
    let state: String = r.get(3)?;
    let created_at: String = r.get(4)?;
    let finished_at: Option<String> = r.get(5)?;
    let cancel_requested: bool = r.get(6)?;
    let steps: String = r.get(7)?;
    let result: Option<String> = r.get(8)?;
    let error: Option<String> = r.get(9)?;
    let last_seq: i64 = r.get(10)?;
    Ok((|| {
        Ok(Operation {
            id,
            kind,
            target,
            state: parse_state(&state)?,
            steps: serde_json::from_str(&steps)
                .map_err(|e| corrupt("operation steps", e.to_string()))?,
            created_at: parse_time(&created_at)?,
            finished_at: finished_at.as_deref().map(parse_time).transpose()?,
            cancel_requested,
            result: result
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| corrupt("operation result", e.to_string()))?,
            error: error
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| corrupt("operation error", e.to_string()))?,
            last_seq: last_seq as u64,
        })
    })())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn ops() -> (tempfile::TempDir, Arc<Store>, Ops) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(&dir.path().join("b.db")).expect("store"));
        let ops = Ops::new(store.clone());
        (dir, store, ops)
    }

    fn two_steps() -> Vec<StepSpec> {
        vec![StepSpec::new("a", "Step A"), StepSpec::new("b", "Step B")]
    }

    async fn wait_finished(ops: &Ops, id: &str) -> Operation {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let op = ops.get(id).expect("get");
            if op.state.is_terminal() {
                return op;
            }
            assert!(
                Instant::now() < deadline,
                "operation {id} did not finish within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn steps_run_in_order_and_events_are_sequenced() {
        let (_d, _s, ops) = ops();
        let op = ops
            .spawn("test.kind", "t1", two_steps(), |h| async move {
                h.step::<_, ApiError, _>("a", async { Ok(()) }).await?;
                h.message("b", "hello");
                h.step::<_, ApiError, _>("b", async {
                    h.progress("b", 5, Some(5), Some("things"));
                    Ok(())
                })
                .await?;
                Ok::<_, ApiError>(serde_json::json!({"answer": 42}))
            })
            .expect("spawn");
        let done = wait_finished(&ops, &op.id).await;
        assert_eq!(done.state, OpState::Succeeded);
        assert_eq!(done.result, Some(serde_json::json!({"answer": 42})));
        assert!(
            done.steps.iter().all(|s| s.status == StepStatus::Done),
            "{:?}",
            done.steps
        );
        assert_eq!(done.steps[1].progress.as_ref().map(|p| p.current), Some(5));
        assert_eq!(done.steps[1].message.as_deref(), Some("hello"));

        let events = ops.events_after(&op.id, 0, 100).expect("events");
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
        let types: Vec<&str> = events.iter().map(|e| e.body.type_name()).collect();
        assert_eq!(
            types,
            [
                "started",
                "step_started",
                "step_finished",
                "step_message",
                "step_started",
                "step_progress",
                "step_finished",
                "finished"
            ]
        );
        assert_eq!(done.last_seq, events.len() as u64);
        assert_eq!(ops.events_after(&op.id, 6, 100).expect("after").len(), 2);
    }

    #[tokio::test]
    async fn failure_marks_the_step_and_skips_the_rest() {
        let (_d, _s, ops) = ops();
        let op = ops
            .spawn("test.kind", "t", two_steps(), |h| async move {
                h.step::<_, ApiError, _>("a", async {
                    Err::<(), _>(ApiError::new(ErrorCode::Internal, "boom"))
                })
                .await?;
                h.step::<_, ApiError, _>("b", async { Ok(()) }).await?;
                Ok::<_, ApiError>(serde_json::Value::Null)
            })
            .expect("spawn");
        let done = wait_finished(&ops, &op.id).await;
        assert_eq!(done.state, OpState::Failed);
        assert_eq!(
            done.error.as_ref().map(|e| e.message.as_str()),
            Some("boom")
        );
        assert_eq!(done.steps[0].status, StepStatus::Failed);
        assert_eq!(done.steps[1].status, StepStatus::Skipped);
    }

    #[tokio::test]
    async fn prune_forgets_ended_operations_and_keeps_running_ones() {
        let (_d, _s, ops) = ops();
        let ended = ops.begin("test.kind", "a", two_steps()).expect("begin");
        ended.finish(Ok(serde_json::Value::Null));
        let running = ops.begin("test.kind", "b", two_steps()).expect("begin");
        assert_eq!(
            ops.prune(chrono::Duration::days(1)).expect("prune"),
            0,
            "too young"
        );
        assert_eq!(ops.prune(chrono::Duration::zero()).expect("prune"), 1);
        assert!(ops.get(ended.id()).is_err(), "forgotten");
        assert_eq!(ops.get(running.id()).expect("kept").state, OpState::Running);
    }

    #[tokio::test]
    async fn cancel_reaches_the_running_step() {
        let (_d, _s, ops) = ops();
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
        let op = ops
            .spawn("test.kind", "t", two_steps(), |h| async move {
                h.step::<_, ApiError, _>("a", async {
                    let _ = entered_tx.send(());
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(())
                })
                .await?;
                Ok::<_, ApiError>(serde_json::Value::Null)
            })
            .expect("spawn");
        entered_rx.await.expect("step entered");
        let snap = ops.cancel(&op.id).expect("cancel");
        assert!(snap.cancel_requested);
        let done = wait_finished(&ops, &op.id).await;
        assert_eq!(done.state, OpState::Cancelled);
        assert_eq!(done.steps[0].status, StepStatus::Cancelled);
        assert_eq!(done.steps[1].status, StepStatus::Skipped);
        let err = ops.cancel(&op.id).expect_err("already finished");
        assert!(matches!(err, OpsError::AlreadyFinished { .. }), "{err}");
    }

    #[tokio::test]
    async fn persisted_state_survives_reopen_and_running_ops_become_interrupted() {
        let (dir, store, ops) = ops();
        let h = ops.begin("test.kind", "t", two_steps()).expect("begin");
        h.step("a", async { Ok::<_, ApiError>(()) })
            .await
            .expect("step a");
        let id = h.id().to_string();
        // Simulate a crash: the handle is never finished; reopen the database.
        drop(h);
        drop(ops);
        drop(store);
        let store = Arc::new(Store::open(&dir.path().join("b.db")).expect("reopen"));
        let ops = Ops::new(store);
        let before = ops.get(&id).expect("get");
        assert_eq!(before.state, OpState::Running);
        assert_eq!(before.steps[0].status, StepStatus::Done);
        let ids = ops
            .recover_interrupted("bangerd stopped while it ran")
            .expect("recover");
        assert_eq!(ids, vec![id.clone()]);
        let after = ops.get(&id).expect("get");
        assert_eq!(after.state, OpState::Interrupted);
        assert!(after
            .error
            .as_ref()
            .is_some_and(|e| e.message.contains("bangerd stopped")));
        assert_eq!(after.steps[1].status, StepStatus::Skipped);
        let last = ops
            .events_after(&id, 0, 100)
            .expect("events")
            .pop()
            .expect("one event");
        assert_eq!(last.body.type_name(), "finished");
        assert!(ops
            .recover_interrupted("again")
            .expect("recover")
            .is_empty());
    }

    #[tokio::test]
    async fn list_filters_running_and_unknown_ids_are_not_found() {
        let (_d, _s, ops) = ops();
        let running = ops.begin("k", "a", two_steps()).expect("begin");
        let done = ops.begin("k", "b", two_steps()).expect("begin");
        done.finish(Ok(serde_json::Value::Null));
        let live = ops.list(10, false).expect("list");
        assert_eq!(
            live.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
            [running.id()]
        );
        assert_eq!(ops.list(10, true).expect("list").len(), 2);
        assert!(matches!(ops.get("op-nope"), Err(OpsError::NotFound(_))));
        assert!(ops.subscribe(done.id()).is_none());
        assert!(ops.subscribe(running.id()).is_some());
    }

    #[test]
    fn apply_event_finishes_running_steps_by_state() {
        let mut op = Operation {
            id: "op-x".into(),
            kind: "k".into(),
            target: "t".into(),
            state: OpState::Running,
            steps: vec![],
            created_at: Utc::now(),
            finished_at: None,
            cancel_requested: false,
            result: None,
            error: None,
            last_seq: 0,
        };
        for name in ["a", "b"] {
            op.steps.push(OpStep {
                name: name.into(),
                title: name.into(),
                status: StepStatus::Pending,
                progress: None,
                message: None,
                started_at: None,
                finished_at: None,
            });
        }
        let t = Utc::now();
        apply_event(
            &mut op,
            1,
            t,
            &OpEventBody::StepStarted { step: "a".into() },
        );
        apply_event(
            &mut op,
            2,
            t,
            &OpEventBody::Finished {
                state: OpState::Cancelled,
                error: None,
            },
        );
        assert_eq!(op.steps[0].status, StepStatus::Cancelled);
        assert_eq!(op.steps[1].status, StepStatus::Skipped);
        assert_eq!(op.last_seq, 2);
        assert_eq!(op.finished_at, Some(t));
    }
}
