//! `banger ops`: long-running operations.

use banger::exit;
use banger::output::{self, Style};
use banger::progress;
use banger_api::{Operation, StepStatus};
use clap::Subcommand;

use super::{final_code, print_list, watch, CmdResult, Ctx, Row};

#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// List operations (running ones unless --all).
    #[command(visible_alias = "list")]
    Ls {
        /// Include finished operations.
        #[arg(long, short)]
        all: bool,
        /// At most this many, newest first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one operation with its steps.
    Show {
        /// The operation's id (`banger ops ls`).
        id: String,
    },
    /// Follow an operation's progress until it ends; exits 1 unless it succeeds.
    Watch {
        /// The operation's id.
        id: String,
    },
    /// Ask a running operation to stop.
    Cancel {
        /// The operation's id.
        id: String,
        /// Wait until it has stopped.
        #[arg(long)]
        wait: bool,
    },
}

struct OpRow<'a>(&'a Operation);

impl Row for OpRow<'_> {
    const HEADER: &'static [&'static str] = &[
        "id", "kind", "target", "state", "steps", "created", "duration",
    ];
    fn cells(&self, style: &Style) -> Vec<String> {
        let op = self.0;
        let end = op.finished_at.unwrap_or_else(chrono::Utc::now);
        let done = op
            .steps
            .iter()
            .filter(|s| matches!(s.status, StepStatus::Done | StepStatus::Skipped))
            .count();
        vec![
            op.id.clone(),
            op.kind.clone(),
            op.target.clone(),
            progress::state_word(style, op.state),
            format!("{done}/{}", op.steps.len()),
            local_time(op.created_at),
            output::duration(end - op.created_at),
        ]
    }
}

/// `2026-12-07 14:07:35` in the local time zone.
pub fn local_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

pub async fn run(ctx: &Ctx, cmd: OpsCommand) -> CmdResult {
    match cmd {
        OpsCommand::Ls { all, limit } => {
            let list = ctx.client.ops(all, limit).await?;
            let rows: Vec<OpRow> = list.ops.iter().map(OpRow).collect();
            let empty = if all {
                "No operations."
            } else {
                "No running operations (--all shows finished ones)."
            };
            print_list(ctx.json, &ctx.style, &list, &rows, empty);
            Ok(exit::OK)
        }
        OpsCommand::Show { id } => {
            let op = ctx.client.op(&id).await?;
            if ctx.json {
                output::print_json(&op);
            } else {
                print_op(&ctx.style, &op);
            }
            Ok(exit::OK)
        }
        OpsCommand::Watch { id } => {
            let op = ctx.client.op(&id).await?;
            let op = watch(ctx, op).await?;
            Ok(final_code(&op))
        }
        OpsCommand::Cancel { id, wait } => {
            let mut op = ctx.client.op_cancel(&id).await?;
            if wait {
                ctx.client.follow_op(&id, op.last_seq, |_| {}).await?;
                op = ctx.client.op(&id).await?;
            }
            if ctx.json {
                output::print_json(&op);
            } else {
                let state = if op.state.is_terminal() {
                    progress::state_word(&ctx.style, op.state)
                } else {
                    "cancel requested".into()
                };
                println!("{}: {state}", op.id);
            }
            Ok(exit::OK)
        }
    }
}

fn print_op(style: &Style, op: &Operation) {
    let state = progress::state_word(style, op.state);
    println!("{} {} {}: {state}", op.id, op.kind, op.target);
    println!("created {}", local_time(op.created_at));
    for s in &op.steps {
        let mut line = format!("  {:<9} {}", s.status.as_str(), s.title);
        if let Some(p) = &s.progress {
            let unit = p.unit.as_deref().unwrap_or("");
            line.push_str(&match p.total {
                Some(t) => format!(" [{}/{t} {unit}]", p.current),
                None => format!(" [{} {unit}]", p.current),
            });
        }
        if let Some(m) = &s.message {
            line.push_str(&format!(" - {m}"));
        }
        println!("{}", line.trim_end());
    }
    if let Some(e) = &op.error {
        println!("error: {}", e.message);
        if let Some(h) = &e.hint {
            println!("hint: {h}");
        }
    }
    if let Some(r) = &op.result {
        println!("result: {r}");
    }
}
