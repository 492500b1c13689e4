//! `banger session`: long-running commands in guests that outlive the
//! connection.

use std::io::Write as _;
use std::path::PathBuf;

use banger::exit;
use banger::output::{self, Style};
use banger_api::{Session, SessionStartRequest};
use clap::Subcommand;

use super::term::{stdin_chunks, term_size, RawMode};
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
        /// Run it on a pseudo-terminal (the size of yours, else 24x80):
        /// for shells, editors and REPLs; `attach` is then a real terminal.
        #[arg(long, short = 't')]
        tty: bool,
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
    /// Follow a session's output (stdout and stderr) and type into it; `~.`
    /// at the start of a line detaches (the session keeps running). A
    /// session with a terminal gets yours: raw keys (^C included), resizes.
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
            tty,
            attach: then_attach,
            command,
        } => {
            let req = SessionStartRequest {
                command,
                name,
                cwd,
                env: parse_env(&env)?,
                require,
                tty: tty
                    .then(|| term_size().unwrap_or(banger_api::TermSize { rows: 24, cols: 80 })),
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
    if s.tty {
        println!("tty:     yes (stdout and stderr are one stream)");
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

/// A log from `offset` to its present end (the daemon answers in bounded
/// chunks); the text and the next offset.
async fn read_all(
    ctx: &Ctx,
    name: &str,
    stderr: bool,
    mut offset: u64,
) -> Result<(String, u64), banger::client::ClientError> {
    let mut all = String::new();
    loop {
        let (text, next) = ctx.client.session_logs(name, stderr, offset).await?;
        all.push_str(&text);
        if next <= offset || text.is_empty() {
            return Ok((all, offset.max(next)));
        }
        offset = next;
    }
}

async fn logs(ctx: &Ctx, name: &str, follow: bool, stderr: bool, tail: Option<usize>) -> CmdResult {
    let (text, offset) = read_all(ctx, name, stderr, 0).await?;
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
    let (text, next_out) = read_all(ctx, name, false, out).await?;
    print!("{text}");
    let _ = std::io::stdout().flush();
    let (text, next_err) = read_all(ctx, name, true, err).await?;
    eprint!("{text}");
    Ok((next_out, next_err))
}

/// Where `~.` typed at the start of a line is in a stream of keys.
#[derive(Debug, Default)]
pub struct DetachScan {
    mid_line: bool,
    tilde: bool,
}

impl DetachScan {
    /// The keys to send from `input`, and whether `~.` came (the keys
    /// after it are dropped). Pure.
    pub fn scan(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.tilde {
                self.tilde = false;
                if b == b'.' {
                    return (out, true);
                }
                out.push(b'~');
            } else if b == b'~' && !self.mid_line {
                self.tilde = true;
                continue;
            }
            out.push(b);
            self.mid_line = !(b == b'\r' || b == b'\n');
        }
        (out, false)
    }
}

/// How much of a terminal session's past output `attach` shows first.
const REPLAY: u64 = 16 << 10;

/// Attach to a session on a terminal from a terminal: raw keys go to it as
/// typed (^C, arrows, tab), its output comes back as it is, and this
/// terminal's size follows to it.
async fn attach_tty(ctx: &Ctx, s: &Session) -> CmdResult {
    let name = s.name.as_str();
    eprintln!("attached to {name} (a terminal); type ~. at the start of a line to detach");
    if let Some(size) = term_size() {
        ctx.client.session_resize(name, size).await?;
    }
    let raw = RawMode::enter();
    let mut keys = stdin_chunks();
    let mut scan = DetachScan::default();
    let mut winch =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok();
    let mut offset = s.stdout_bytes.saturating_sub(REPLAY);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    let mut ticks = 0u32;
    let end = loop {
        tokio::select! {
            _ = tick.tick() => {
                let (text, next) = read_all(ctx, name, false, offset).await?;
                offset = next;
                let mut out = std::io::stdout();
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
                ticks += 1;
                if ticks % 10 == 0 {
                    let now = ctx.client.session(name).await?;
                    if now.state != "running" {
                        break Some(now);
                    }
                }
            }
            chunk = keys.recv() => match chunk.flatten() {
                Some(bytes) => {
                    let (send, detach) = scan.scan(&bytes);
                    if !send.is_empty() {
                        let text = String::from_utf8_lossy(&send).into_owned();
                        ctx.client.session_send(name, text).await?;
                    }
                    if detach {
                        break None;
                    }
                }
                None => break None,
            },
            _ = async { match winch.as_mut() { Some(w) => { w.recv().await; } None => std::future::pending().await } } => {
                if let Some(size) = term_size() {
                    ctx.client.session_resize(name, size).await?;
                }
            }
        }
    };
    drop(raw);
    match end {
        Some(now) => {
            let code = now
                .exit_code
                .map(|c| format!(" (exit code {c})"))
                .unwrap_or_default();
            eprintln!("\nsession {name} is {}{code}", now.state);
        }
        None => eprintln!("\ndetached from {name}; it keeps running"),
    }
    Ok(exit::OK)
}

/// Follows a session's output and sends what is typed, line by line, until
/// it ends or `~.` detaches.
pub async fn attach(ctx: &Ctx, name: &str) -> CmdResult {
    use std::io::IsTerminal;
    let s = ctx.client.session(name).await?;
    if s.tty && std::io::stdin().is_terminal() {
        return attach_tty(ctx, &s).await;
    }
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
    fn tilde_dot_at_the_start_of_a_line_detaches() {
        let mut d = DetachScan::default();
        assert_eq!(d.scan(b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(d.scan(b"~"), (vec![], false), "held: it may be ~.");
        assert_eq!(d.scan(b".rest"), (vec![], true));
        let mut d = DetachScan::default();
        assert_eq!(d.scan(b"a~.b"), (b"a~.b".to_vec(), false), "mid-line");
        assert_eq!(d.scan(b"\r~x"), (b"\r~x".to_vec(), false));
        assert_eq!(d.scan(b"\n~."), (b"\n".to_vec(), true));
        let mut d = DetachScan::default();
        assert_eq!(d.scan(&[3]), (vec![3], false), "^C goes through");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(last_lines("a\nb", 5), "a\nb\n");
        assert_eq!(last_lines("", 1), "");
    }
}
