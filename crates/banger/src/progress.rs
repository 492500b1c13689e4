//! Rendering of an operation's events while the CLI follows it: indicatif
//! bars and spinners with step names on a terminal, one plain line per event
//! otherwise, NDJSON with `--json`. Progress goes to stderr; stdout is kept
//! for the command's result.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use banger_api::{OpEvent, OpEventBody, OpState, Operation, StepStatus};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::output::Style;

pub enum Renderer {
    Tty(TtyRenderer),
    Plain(PlainRenderer),
    Json,
}

impl Renderer {
    /// Picks the renderer for this process's stderr and flags.
    pub fn detect(json: bool, op: &Operation) -> Renderer {
        if json {
            Renderer::Json
        } else if std::io::stderr().is_terminal()
            && std::env::var_os("TERM").is_some_and(|t| t != "dumb")
        {
            Renderer::Tty(TtyRenderer::new(op))
        } else {
            Renderer::Plain(PlainRenderer {
                op: op.clone(),
                last_decile: HashMap::new(),
            })
        }
    }

    pub fn event(&mut self, ev: &OpEvent) {
        match self {
            Renderer::Tty(r) => r.event(ev),
            Renderer::Plain(r) => r.event(ev),
            Renderer::Json => match serde_json::to_string(ev) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("banger: cannot encode event: {e}"),
            },
        }
    }
}

pub struct TtyRenderer {
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    titles: HashMap<String, String>,
    style: Style,
}

impl TtyRenderer {
    fn new(op: &Operation) -> TtyRenderer {
        TtyRenderer {
            multi: MultiProgress::new(),
            bars: HashMap::new(),
            titles: op
                .steps
                .iter()
                .map(|s| (s.name.clone(), s.title.clone()))
                .collect(),
            style: Style {
                color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            },
        }
    }

    fn title(&self, step: &str) -> String {
        self.titles
            .get(step)
            .cloned()
            .unwrap_or_else(|| step.to_string())
    }

    fn bar(&mut self, step: &str) -> ProgressBar {
        if let Some(b) = self.bars.get(step) {
            return b.clone();
        }
        let b = self.multi.add(ProgressBar::new_spinner());
        b.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed:.dim}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.set_message(self.title(step));
        b.enable_steady_tick(Duration::from_millis(100));
        self.bars.insert(step.to_string(), b.clone());
        b
    }

    fn event(&mut self, ev: &OpEvent) {
        match &ev.body {
            OpEventBody::StepStarted { step } => {
                self.bar(step);
            }
            OpEventBody::StepProgress { step, progress } => {
                let b = self.bar(step);
                if let Some(total) = progress.total {
                    if b.length() != Some(total) {
                        b.set_style(
                            ProgressStyle::with_template(
                                "{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed:.dim}",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> "),
                        );
                        b.set_length(total);
                    }
                }
                b.set_position(progress.current);
            }
            OpEventBody::StepMessage { step, message } => {
                let title = self.title(step);
                self.bar(step).set_message(format!("{title}: {message}"));
            }
            OpEventBody::StepFinished { step, status } => {
                let title = self.title(step);
                let b = self.bar(step);
                b.set_style(
                    ProgressStyle::with_template("{msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                let mark = match status {
                    StepStatus::Done => self.style.green("✓"),
                    StepStatus::Skipped => self.style.dim("-"),
                    StepStatus::Cancelled => self.style.yellow("✗"),
                    _ => self.style.red("✗"),
                };
                b.finish_with_message(format!("{mark} {title}"));
            }
            OpEventBody::Finished { .. } => {
                for b in self.bars.values() {
                    if !b.is_finished() {
                        b.abandon();
                    }
                }
            }
            OpEventBody::Started { .. } | OpEventBody::CancelRequested => {}
        }
    }
}

pub struct PlainRenderer {
    op: Operation,
    last_decile: HashMap<String, u64>,
}

impl PlainRenderer {
    fn event(&mut self, ev: &OpEvent) {
        if let Some(line) = self.line(ev) {
            eprintln!("{} {} {line}", ev.at.format("%H:%M:%S"), ev.op_id);
        }
    }

    fn title(&self, step: &str) -> String {
        self.op
            .steps
            .iter()
            .find(|s| s.name == step)
            .map(|s| s.title.clone())
            .unwrap_or_else(|| step.into())
    }

    /// The line for an event, or `None` for progress within the same tenth.
    pub fn line(&mut self, ev: &OpEvent) -> Option<String> {
        Some(match &ev.body {
            OpEventBody::Started { kind, target, .. } => format!("started {kind} {target}"),
            OpEventBody::StepStarted { step } => format!("{step}: started ({})", self.title(step)),
            OpEventBody::StepProgress { step, progress } => {
                let unit = progress.unit.as_deref().unwrap_or("");
                match progress.total {
                    Some(total) if total > 0 => {
                        let decile = progress.current * 10 / total;
                        if self.last_decile.get(step) == Some(&decile) {
                            return None;
                        }
                        self.last_decile.insert(step.clone(), decile);
                        format!("{step}: {}/{total} {unit}", progress.current)
                    }
                    _ => format!("{step}: {} {unit}", progress.current),
                }
            }
            OpEventBody::StepMessage { step, message } => format!("{step}: {message}"),
            OpEventBody::StepFinished { step, status } => format!("{step}: {}", status.as_str()),
            OpEventBody::CancelRequested => "cancel requested".into(),
            OpEventBody::Finished { state, error } => match error {
                Some(e) => format!("{}: {}", state.as_str(), e.message),
                None => state.as_str().to_string(),
            },
        })
    }
}

/// One-word summary of a final state, colored.
pub fn state_word(style: &Style, state: OpState) -> String {
    match state {
        OpState::Succeeded => style.green(state.as_str()),
        OpState::Running => style.bold(state.as_str()),
        OpState::Cancelled | OpState::Interrupted => style.yellow(state.as_str()),
        OpState::Failed => style.red(state.as_str()),
    }
}
