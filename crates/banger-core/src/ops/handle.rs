//! The handle an operation's work reports through: steps (raced against
//! cancellation, waiting for their blocking work when cancelled), progress,
//! messages and the end; and [`blocking`], the tracked way to run blocking
//! work in a step.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use banger_api::{ApiError, ErrorCode, OpEventBody, OpState, Progress, StepStatus};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Ops, OpsError, PROGRESS_MIN_INTERVAL};
use crate::ToApiError;

/// What the work of one operation reports through. Cheap to clone.
#[derive(Clone)]
pub struct OpHandle {
    pub(super) id: String,
    pub(super) kind: String,
    pub(super) ops: Ops,
    pub(super) cancel: CancellationToken,
    pub(super) progress: Arc<Mutex<HashMap<String, ProgressState>>>,
    /// The operation's blocking work ([`blocking`]): a cancelled step ends
    /// only once it has, so a rollback never races work still running.
    pub(super) blocking: TaskTracker,
}

pub(super) struct ProgressState {
    last: Option<Instant>,
    pending: Option<Progress>,
}

impl OpHandle {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Fires when someone cancels the operation.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Runs one step: marks it running, races `fut` against cancellation,
    /// and marks it done, failed or cancelled. A cancelled step's future is
    /// dropped, which is where effectful steps must clean up (or leave work
    /// for the operation's rollback).
    ///
    /// Steps speak their subsystem's error type; it becomes the wire form
    /// once, when the operation finishes.
    pub async fn step<T, E, F>(&self, name: &str, fut: F) -> Result<T, E>
    where
        E: StepError,
        F: Future<Output = Result<T, E>>,
    {
        if self.cancel.is_cancelled() {
            return Err(OpsError::Cancelled.into());
        }
        self.ops
            .inner
            .emit(&self.id, OpEventBody::StepStarted { step: name.into() });
        let r = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => None,
            r = fut => Some(r),
        };
        let r = match r {
            Some(r) => {
                self.hold(name).await;
                r
            }
            None => {
                // The step's future is dropped; blocking work it started
                // cannot be: wait for it, so what it makes (a VMM, a TAP)
                // exists before the rollback looks for it.
                self.settle().await;
                Err(OpsError::Cancelled.into())
            }
        };
        self.end_step(name, &r);
        r
    }

    /// Waits until the operation's blocking work has all ended.
    pub async fn settle(&self) {
        self.blocking.close();
        self.blocking.wait().await;
        self.blocking.reopen();
    }

    /// The test hold after a step's work (testhold.rs).
    async fn hold(&self, step: &str) {
        crate::testhold::point(&format!("op:{}:{step}", self.kind)).await;
    }

    /// Reports a step's end from its result.
    fn end_step<T, E: StepError>(&self, name: &str, r: &Result<T, E>) {
        self.flush_progress(name);
        let status = match r {
            Ok(_) => StepStatus::Done,
            Err(e) if e.code() == ErrorCode::Cancelled => StepStatus::Cancelled,
            Err(_) => StepStatus::Failed,
        };
        self.ops.inner.emit(
            &self.id,
            OpEventBody::StepFinished {
                step: name.into(),
                status,
            },
        );
    }

    /// Runs one step to its end even if the operation is cancelled
    /// meanwhile: for work that must not be abandoned halfway (a VM paused
    /// for a snapshot is resumed whatever happens). The caller checks
    /// [`OpHandle::cancel_token`] afterwards.
    pub async fn step_to_end<T, E, F>(&self, name: &str, fut: F) -> Result<T, E>
    where
        E: StepError,
        F: Future<Output = Result<T, E>>,
    {
        self.ops
            .inner
            .emit(&self.id, OpEventBody::StepStarted { step: name.into() });
        let r = fut.await;
        self.hold(name).await;
        self.end_step(name, &r);
        r
    }

    /// Marks a planned step as not needed.
    pub fn skip(&self, name: &str) {
        self.ops.inner.emit(
            &self.id,
            OpEventBody::StepFinished {
                step: name.into(),
                status: StepStatus::Skipped,
            },
        );
    }

    /// Reports progress of a step (coalesced to one event per 100 ms; the
    /// last value is always reported when the step ends).
    pub fn progress(&self, step: &str, current: u64, total: Option<u64>, unit: Option<&str>) {
        let progress = Progress {
            current,
            total,
            unit: unit.map(Into::into),
        };
        {
            let mut map = self.progress.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let entry = map.entry(step.into()).or_insert(ProgressState {
                last: None,
                pending: None,
            });
            let due = entry
                .last
                .is_none_or(|t| now.duration_since(t) >= PROGRESS_MIN_INTERVAL)
                || total == Some(current);
            if !due {
                entry.pending = Some(progress);
                return;
            }
            entry.last = Some(now);
            entry.pending = None;
        }
        self.ops.inner.emit(
            &self.id,
            OpEventBody::StepProgress {
                step: step.into(),
                progress,
            },
        );
    }

    fn flush_progress(&self, step: &str) {
        let pending = {
            let mut map = self.progress.lock().unwrap_or_else(|p| p.into_inner());
            map.get_mut(step).and_then(|e| e.pending.take())
        };
        if let Some(progress) = pending {
            self.ops.inner.emit(
                &self.id,
                OpEventBody::StepProgress {
                    step: step.into(),
                    progress,
                },
            );
        }
    }

    /// Reports a message from a step (e.g. a line of a tool's output).
    pub fn message(&self, step: &str, message: impl Into<String>) {
        self.ops.inner.emit(
            &self.id,
            OpEventBody::StepMessage {
                step: step.into(),
                message: message.into(),
            },
        );
    }

    /// Ends the operation with the work's result.
    pub fn finish(&self, result: Result<serde_json::Value, ApiError>) {
        let (state, error) = match result {
            Ok(v) => {
                let mut live = self.ops.inner.lock_live();
                if let Some(l) = live.get_mut(&self.id) {
                    l.op.result = Some(v);
                }
                (OpState::Succeeded, None)
            }
            Err(e) if e.code == ErrorCode::Cancelled => (OpState::Cancelled, Some(e)),
            Err(e) => (OpState::Failed, Some(e)),
        };
        tracing::info!(op = %self.id, state = state.as_str(), "operation finished");
        self.ops
            .inner
            .emit(&self.id, OpEventBody::Finished { state, error });
    }
}

tokio::task_local! {
    /// The blocking work of the operation this task runs.
    pub(super) static BLOCKING: TaskTracker;
}

/// Runs blocking work (processes, file copies, hashing) of an operation's
/// step on the blocking pool. Inside an operation it is tracked: a
/// cancelled step waits for it to end ([`OpHandle::step`]).
pub async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<OpsError> + Send + 'static,
{
    let task = match BLOCKING.try_with(Clone::clone) {
        Ok(tracker) => tracker.spawn_blocking(f),
        Err(_) => tokio::task::spawn_blocking(f),
    };
    task.await
        .map_err(|e| E::from(OpsError::Task(e.to_string())))?
}

/// What a step may fail with: a subsystem error that maps onto the wire
/// and can say "cancelled" and "the task failed".
pub trait StepError: ToApiError + From<OpsError> {}
impl<E: ToApiError + From<OpsError>> StepError for E {}

/// The wire error is a step error too (steps that already hold one).
impl ToApiError for ApiError {
    fn code(&self) -> ErrorCode {
        self.code
    }
    fn hint(&self) -> Option<String> {
        self.hint.clone()
    }
    fn to_api_error(&self) -> ApiError {
        self.clone()
    }
}

impl From<OpsError> for ApiError {
    fn from(e: OpsError) -> Self {
        e.to_api_error()
    }
}
