//! Operations: long-running work (image build, VM create, ...) with ordered
//! steps, progress and a persisted event log.
//!
//! State machine of an operation:
//! `running -> succeeded | failed | cancelled`, and `running -> interrupted`
//! when the daemon died while it ran (set on the next start). Each step goes
//! `pending -> running -> done | failed | cancelled | skipped`. Events carry a
//! per-operation sequence number starting at 1; a client that reconnects
//! asks for the events after the last one it saw.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// The daemon stopped (crash, kill) while the operation ran.
    Interrupted,
}

impl OpState {
    pub fn is_terminal(self) -> bool {
        !matches!(self, OpState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OpState::Running => "running",
            OpState::Succeeded => "succeeded",
            OpState::Failed => "failed",
            OpState::Cancelled => "cancelled",
            OpState::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Done,
    Failed,
    Cancelled,
    Skipped,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Done => "done",
            StepStatus::Failed => "failed",
            StepStatus::Cancelled => "cancelled",
            StepStatus::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    pub current: u64,
    /// Unknown totals render as a spinner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Unit of `current`/`total`, e.g. `bytes`, `packages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpStep {
    /// Stable machine name, e.g. `clone_disk`.
    pub name: String,
    /// Human title, e.g. `Clone root disk`.
    pub title: String,
    pub status: StepStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Last message the step reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    /// Opaque id, e.g. `op-3f2a...`.
    pub id: String,
    /// What it does, e.g. `image.build`, `vm.create`.
    pub kind: String,
    /// What it acts on, e.g. the VM or image name.
    pub target: String,
    pub state: OpState,
    pub steps: Vec<OpStep>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Set once someone asked for cancellation.
    pub cancel_requested: bool,
    /// The operation's result on success (shape depends on `kind`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Why it failed, was cancelled or interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    /// Sequence number of the last event.
    pub last_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpList {
    pub ops: Vec<Operation>,
}

/// One entry of an operation's event log, as sent over Server-Sent Events
/// (`event: <type>`, `id: <seq>`, `data: <this object as JSON>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpEvent {
    pub op_id: String,
    pub seq: u64,
    pub at: chrono::DateTime<chrono::Utc>,
    pub body: OpEventBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OpEventBody {
    /// The operation was created, with its planned steps.
    Started {
        kind: String,
        target: String,
        steps: Vec<String>,
    },
    StepStarted {
        step: String,
    },
    StepProgress {
        step: String,
        progress: Progress,
    },
    StepMessage {
        step: String,
        message: String,
    },
    StepFinished {
        step: String,
        status: StepStatus,
    },
    CancelRequested,
    /// Last event of every operation.
    Finished {
        state: OpState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ApiError>,
    },
}

impl OpEventBody {
    /// The SSE `event:` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            OpEventBody::Started { .. } => "started",
            OpEventBody::StepStarted { .. } => "step_started",
            OpEventBody::StepProgress { .. } => "step_progress",
            OpEventBody::StepMessage { .. } => "step_message",
            OpEventBody::StepFinished { .. } => "step_finished",
            OpEventBody::CancelRequested => "cancel_requested",
            OpEventBody::Finished { .. } => "finished",
        }
    }
}

/// `POST /v1/debug/ops`: start a synthetic operation. Only served when the
/// daemon runs with `debug.test_endpoints = true`; used by tests of the
/// operations machinery itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DebugOpRequest {
    /// Number of steps (1..=20).
    pub steps: u32,
    /// How long each step takes, in milliseconds (at most 600000).
    pub step_ms: u64,
    /// Fail at this step (1-based) instead of finishing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_at: Option<u32>,
}
