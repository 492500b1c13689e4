//! `banger session`: long-running commands in guests that outlive the
//! connection.

use std::io::Write as _;
use std::path::PathBuf;

use banger::exit;
use banger::output::{self, Style};
use banger_api::{Session, SessionStartRequest};
use clap::Subcommand;

use super::{parse_env, print_list, usage, CmdResult, Ctx, Row};

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Start COMMAND in VM as a session (no shell: use `-- sh -c '...'` for one).
    Start {
        /// The VM.
        vm: String,
        /// Session name (default: the command's name and a short id).
        #[arg(long)]
        name: Option<String>,
        /// Working directory in the guest.
        #[arg(long)]
        cwd: Option<String>,
        /// KEY=VALUE environment (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// A command that must be on the guest's PATH (repeatable).
        #[arg(long = "require", value_name = "CMD")]
        require: Vec<String>,
        /// Attach right after starting.
        #[arg(long)]
        attach: bool,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List sessions (of one VM).
    #[command(visible_alias = "list")]
    Ls {
        /// Only this VM's.
        vm: Option<String>,
    },
    /// Show a session.
    Show {
        /// The session.
        name: String,
    },
    /// Print a session's output (-f: follow it).
    Logs {
        /// The session.
        name: String,
        #[arg(long, short)]
        follow: bool,
        /// stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
    },
    /// Follow a session's output (stdout and stderr) and type into it; a
    /// line `~.` detaches (the session keeps running).
    Attach {
        /// The session.
        name: String,
    },
    /// Write TEXT (and a newline) to a session's stdin, or a file's bytes with --file.
    Send {
        /// The session.
        name: String,
        text: Option<String>,
        #[arg(long, conflicts_with = "text")]
        file: Option<PathBuf>,
    },
    /// Send a signal (TERM, INT, HUP, KILL, ...) to a session.
    Signal {
        /// The session.
        name: String,
        signal: String,
    },
    /// Kill a session (SIGKILL).
    Kill {
        /// The session.
        name: String,
    },
    /// Remove a session (--force: kill it first).
    #[command(visible_alias = "remove")]
    Rm {
        /// The session.
        name: String,
        #[arg(long)]
        force: bool,
    },
}

impl Row for Session {
    const HEADER: &'static [&'static str] = &["name", "vm", "state", "pid", "started", "command"];
    fn cells(&self, _: &Style) -> Vec<String> {
        let state = match (self.state.as_str(), self.exit_code) {
            ("exited", Some(c)) => format!("exited({c})"),
            (st, _) => st.to_string(),
        };
        vec![
            self.name.clone(),
            self.vm.clone(),
            state,
            self.pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            super::ops::local_time(self.started_at),
            self.command.join(" "),
        ]
    }
}

pub async fn run(ctx: &Ctx, cmd: SessionCommand) -> CmdResult {
    let c = &ctx.client;
    match cmd {
        SessionCommand::Start {
            vm,
            name,
            cwd,
            env,
            require,
            attach: then_attach,
            command,
        } => {
            let req = SessionStartRequest {
                command,
                name,
                cwd,
                env: parse_env(&env)?,
                require,
            };
            let s = c.session_start(&vm, &req).await?;
            if then_attach {
                return attach(ctx, &s.name).await;
            }
            super::print_one(ctx, &s, |s| println!("{}", s.name))
        }
        SessionCommand::Ls { vm } => {
            let list = c.sessions(vm.as_deref()).await?;
            let empty = "No sessions. Start one with: banger session start VM -- COMMAND";
            print_list(ctx.json, &ctx.style, &list, &list.sessions, empty);
            Ok(exit::OK)
        }
        SessionCommand::Show { name } => super::print_one(ctx, &c.session(&name).await?, |s| {
            print_session(&ctx.style, s)
        }),
        SessionCommand::Logs {
            name,
            follow,
            stderr,
            tail,
        } => logs(ctx, &name, follow, stderr, tail).await,
        SessionCommand::Attach { name } => attach(ctx, &name).await,
        SessionCommand::Send { name, text, file } => {
            let text = match (text, file) {
                (Some(t), _) => format!("{t}\n"),
                (None, Some(f)) => std::fs::read_to_string(&f).map_err(|e| {
                    usage(
                        format!("Cannot read {}: {e}", f.display()),
                        "Give --file a readable text file",
                    )
                })?,
                (None, None) => {
                    return Err(usage("Nothing to send", "Give TEXT or --file FILE"));
                }
            };
            c.session_send(&name, text).await?;
            Ok(exit::OK)
        }
        SessionCommand::Signal { name, signal } => {
            let s = c.session_signal(&name, &signal).await?;
            end_signal(ctx, &s)
        }
        SessionCommand::Kill { name } => {
            let s = c.session_signal(&name, "KILL").await?;
            end_signal(ctx, &s)
        }
        SessionCommand::Rm { name, force } => {
            c.session_rm(&name, force).await?;
            super::print_removed(ctx, "session", &name)
        }
    }
}

fn end_signal(ctx: &Ctx, s: &Session) -> CmdResult {
    if ctx.json {
        output::print_json(s);
    }
    Ok(exit::OK)
}

fn print_session(style: &Style, s: &Session) {
    let r = s.cells(style);
    println!("{} on {}: {}", s.name, s.vm, r[2]);
    println!("command: {}", r[5]);
    if let Some(c) = &s.cwd {
        println!("cwd:     {c}");
    }
    println!("pid:     {}", r[3]);
    println!("started: {}", r[4]);
    println!(
        "output:  {} stdout, {} stderr",
        output::size(s.stdout_bytes),
        output::size(s.stderr_bytes)
    );
}

/// The last `n` lines of `text` (each with its newline). Pure.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for l in &lines[lines.len().saturating_sub(n)..] {
        out.push_str(l);
        out.push('\n');
    }
    out
}

async fn logs(ctx: &Ctx, name: &str, follow: bool, stderr: bool, tail: Option<usize>) -> CmdResult {
    let (text, offset) = ctx.client.session_logs(name, stderr, 0).await?;
    match tail {
        Some(n) => print!("{}", last_lines(&text, n)),
        None => print!("{text}"),
    }
    let _ = std::io::stdout().flush();
    if follow {
        // Server-Sent Events from where the first read ended, until the session ends.
        ctx.client
            .follow_session_logs(name, stderr, offset, |t| {
                print!("{t}");
                let _ = std::io::stdout().flush();
            })
            .await?;
    }
    Ok(exit::OK)
}

/// Prints what a session wrote to stdout (to ours) and stderr (to ours)
/// after the offsets; returns the next offsets.
async fn print_from(
    ctx: &Ctx,
    name: &str,
    (out, err): (u64, u64),
) -> Result<(u64, u64), banger::client::ClientError> {
    let (text, next_out) = ctx.client.session_logs(name, false, out).await?;
    print!("{text}");
    let _ = std::io::stdout().flush();
    let (text, next_err) = ctx.client.session_logs(name, true, err).await?;
    eprint!("{text}");
    Ok((next_out, next_err))
}

/// Follows a session's output and sends what is typed, line by line, until
/// it ends or `~.` detaches.
pub async fn attach(ctx: &Ctx, name: &str) -> CmdResult {
    eprintln!("attached to {name}; type ~. on a line of its own to detach");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            line.clear();
            match stdin.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
                Ok(_) => {
                    if tx.send(Some(line.clone())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut offset = (0u64, 0u64);
    let mut stdin_open = true;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                offset = print_from(ctx, name, offset).await?;
                let s = ctx.client.session(name).await?;
                if s.state != "running" {
                    print_from(ctx, name, offset).await?;
                    let code = s.exit_code.map(|c| format!(" (exit code {c})")).unwrap_or_default();
                    eprintln!("session {name} is {}{code}", s.state);
                    return Ok(exit::OK);
                }
            }
            line = rx.recv(), if stdin_open => match line {
                Some(Some(l)) if l.trim_end() == "~." => {
                    eprintln!("detached from {name}; it keeps running");
                    return Ok(exit::OK);
                }
                Some(Some(l)) => ctx.client.session_send(name, l).await?,
                // stdin closed: keep following until the session ends or ^C.
                Some(None) | None => stdin_open = false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(last_lines("a\nb", 5), "a\nb\n");
        assert_eq!(last_lines("", 1), "");
    }
}
