//! `banger`: the command-line client of bangerd. Parses arguments, calls the
//! API, renders the answer. It never touches state files. One file per noun
//! under `cmd/`; this file is the command tree and the dispatch.

mod cmd;
mod complete;

use std::path::PathBuf;
use std::process::ExitCode;

use banger::client::{Client, ClientError, DEFAULT_SOCKET};
use banger::exit;
use banger::output::Style;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use cmd::e2b::E2bCommand;
use cmd::image::ImageCommand;
use cmd::ops::OpsCommand;
use cmd::pool::PoolCommand;
use cmd::session::SessionCommand;
use cmd::snapshot::SnapshotCommand;
use cmd::vm::VmCommand;
use cmd::workspace::{AgentCommand, AuthCommand, WorkspaceCommand};
use cmd::Ctx;

const EXIT_CODES: &str = "Exit codes:
  0  success
  1  the request or the operation failed (the message says why)
  2  bad command-line usage
  3  bangerd is not reachable (not running, or wrong --socket)
  4  permission denied (not root and not in the banger group)";

/// banger: persistent, fast, isolated Linux microVMs on your machine.
#[derive(Debug, Parser)]
#[command(name = "banger", version, about, after_help = EXIT_CODES)]
struct Cli {
    /// bangerd's API socket.
    #[arg(long, global = true, env = "BANGER_SOCKET", default_value = DEFAULT_SOCKET,
        value_name = "PATH", help_heading = "Global options")]
    socket: PathBuf,
    /// Machine-readable JSON output (stable field names, see /v1/openapi.json).
    #[arg(long, global = true, help_heading = "Global options")]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the CLI's and the daemon's versions.
    Version,
    /// Check the host's requirements; exits 1 when a required one fails.
    Doctor,
    /// Show what the host can do (backends, clone strategies, ...).
    Capabilities,
    /// VMs: create, list, start, stop, ssh, exec, remove.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Guest images: build, import, list, show, remove.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Guest sessions: long-running commands that outlive the connection.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Workspaces: push a host git repository into a VM, export its commits back.
    #[command(subcommand)]
    Workspace(WorkspaceCommand),
    /// Credentials: copy the configured host credentials into a VM.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Coding agents: run one on a prompt in a VM, on a workspace.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Snapshots (taken with `vm snapshot`): list, remove.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// The warm pool: VMs booted ahead of time so `vm create` is instant.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// The E2B-compatible listener: API keys, and the SDKs' environment.
    #[command(subcommand)]
    E2b(E2bCommand),
    /// Long-running operations (image builds, VM creates, ...).
    #[command(subcommand)]
    Ops(OpsCommand),
    /// Print a one-time login link into the web dashboard; --open opens it.
    Ui {
        /// Open it in the default browser (xdg-open), through a private
        /// file, so the link is never on a command line.
        #[arg(long, conflicts_with = "logout_all")]
        open: bool,
        /// Log every browser out of the dashboard and void unused links.
        #[arg(long)]
        logout_all: bool,
    },
    /// Print the script that gives your shell banger's completions, names of
    /// VMs, images, sessions and snapshots included, e.g.
    /// `source <(banger completions bash)` in ~/.bashrc.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// Rust ignores SIGPIPE, so writing to a closed pipe (`banger vm ls | head`)
/// would panic; a Unix command should just end, as cat does.
#[allow(unsafe_code)]
fn restore_sigpipe() {
    // SAFETY: runs first in main, before any thread exists; it only resets
    // the disposition of SIGPIPE to the default and touches no memory.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The command tree: clap's, with name completers attached and, when help
/// is asked for, the daemon's defaults in the help of `vm create`.
fn command() -> clap::Command {
    complete::attach(Cli::command())
}

fn main() -> ExitCode {
    restore_sigpipe();
    clap_complete::CompleteEnv::with_factory(command).complete();
    let mut cmd = command();
    if complete::wants_help() {
        cmd = complete::with_daemon_defaults(cmd);
    }
    let cli = match Cli::from_arg_matches(&cmd.get_matches()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("banger: cannot start: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let ctx = Ctx {
        client: Client::new(&cli.socket),
        json: cli.json,
        style: Style::detect(),
    };
    match runtime.block_on(run(&ctx, cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            report(&e, cli.json);
            ExitCode::from(e.exit_code())
        }
    }
}

/// Prints an error once, with its hint (`--json`: the error object).
fn report(e: &ClientError, json: bool) {
    if json {
        let body = match e {
            ClientError::Api(api) => serde_json::to_value(api).unwrap_or_default(),
            other => serde_json::json!({
                "code": if matches!(other, ClientError::Usage { .. }) {
                    "usage"
                } else {
                    "client_error"
                },
                "message": other.to_string(),
                "hint": other.hint(),
            }),
        };
        eprintln!("{body}");
        return;
    }
    eprintln!("banger: {e}");
    if let Some(h) = e.hint() {
        eprintln!("hint: {h}");
    }
}

async fn run(ctx: &Ctx, command: Command) -> cmd::CmdResult {
    match command {
        Command::Version => cmd::system::version(ctx).await,
        Command::Doctor => cmd::system::doctor(ctx).await,
        Command::Capabilities => cmd::system::capabilities(ctx).await,
        Command::Vm(c) => cmd::vm::run(ctx, c).await,
        Command::Image(c) => cmd::image::run(ctx, c).await,
        Command::Session(c) => cmd::session::run(ctx, c).await,
        Command::Workspace(c) => cmd::workspace::workspace(ctx, c).await,
        Command::Auth(c) => cmd::workspace::auth(ctx, c).await,
        Command::Agent(c) => cmd::workspace::agent(ctx, c).await,
        Command::Snapshot(c) => cmd::snapshot::run(ctx, c).await,
        Command::Pool(c) => cmd::pool::run(ctx, c).await,
        Command::E2b(c) => cmd::e2b::run(ctx, c).await,
        Command::Ops(c) => cmd::ops::run(ctx, c).await,
        Command::Ui { open, logout_all } => cmd::system::ui(ctx, open, logout_all).await,
        Command::Completions { shell } => cmd::system::completions(shell),
    }
}
