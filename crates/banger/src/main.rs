//! `banger`: the command-line client of bangerd. Parses arguments, calls the
//! API, renders the answer. It never touches state files.

use std::path::PathBuf;
use std::process::ExitCode;

use banger::client::{Client, ClientError, DEFAULT_SOCKET};
use banger::exit;
use banger::output::{self, Style};
use banger::progress::{self, Renderer};
use banger_api::{
    Capabilities, CheckStatus, DoctorReport, OpList, OpState, Operation, VersionInfo,
};
use clap::{CommandFactory, Parser, Subcommand};

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
    #[arg(long, global = true, env = "BANGER_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    /// Machine-readable JSON output (stable field names, see /v1/openapi.json).
    #[arg(long, global = true)]
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
    /// Long-running operations (image builds, VM creates, ...).
    #[command(subcommand)]
    Ops(OpsCommand),
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum OpsCommand {
    /// List operations (running ones unless --all).
    Ls {
        /// Include finished operations.
        #[arg(long, short)]
        all: bool,
        /// At most this many, newest first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one operation with its steps.
    Show { id: String },
    /// Follow an operation's progress until it ends; exits 1 unless it succeeds.
    Watch { id: String },
    /// Ask a running operation to stop.
    Cancel {
        id: String,
        /// Wait until it has stopped.
        #[arg(long)]
        wait: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "banger", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
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
    let client = Client::new(&cli.socket);
    match runtime.block_on(run(&client, cli.json, cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            report(&e, cli.json);
            ExitCode::from(e.exit_code())
        }
    }
}

fn report(e: &ClientError, json: bool) {
    if json {
        let body = match e {
            ClientError::Api(api) => serde_json::to_value(api).unwrap_or_default(),
            other => {
                serde_json::json!({ "code": "client_error", "message": other.to_string(), "hint": other.hint() })
            }
        };
        eprintln!("{body}");
        return;
    }
    eprintln!("banger: {e}");
    if let Some(h) = e.hint() {
        eprintln!("hint: {h}");
    }
}

async fn run(client: &Client, json: bool, command: Command) -> Result<u8, ClientError> {
    let style = Style::detect();
    match command {
        Command::Version => {
            let v: VersionInfo = client.get("/v1/version").await?;
            if json {
                output::print_json(
                    &serde_json::json!({ "client": { "version": env!("CARGO_PKG_VERSION") }, "daemon": v }),
                );
            } else {
                println!("banger  {}", env!("CARGO_PKG_VERSION"));
                println!(
                    "bangerd {} (api {}, pid {}, state dir {})",
                    v.version, v.api_version, v.pid, v.state_dir
                );
            }
            Ok(exit::OK)
        }
        Command::Doctor => {
            let r: DoctorReport = client.get("/v1/doctor").await?;
            if json {
                output::print_json(&r);
            } else {
                print_doctor(&style, &r);
            }
            Ok(if r.ok { exit::OK } else { exit::FAILURE })
        }
        Command::Capabilities => {
            let c: Capabilities = client.get("/v1/capabilities").await?;
            if json {
                output::print_json(&c);
            } else {
                print_capabilities(&c);
            }
            Ok(exit::OK)
        }
        Command::Ops(cmd) => ops(client, json, &style, cmd).await,
        Command::Completions { .. } => Ok(exit::OK),
    }
}

fn print_doctor(style: &Style, r: &DoctorReport) {
    for c in &r.checks {
        let mark = match c.status {
            CheckStatus::Ok => style.green("ok  "),
            CheckStatus::Warn => style.yellow("warn"),
            CheckStatus::Fail => style.red("FAIL"),
            CheckStatus::Info => style.dim("info"),
        };
        let req = if c.required { "" } else { " (optional)" };
        println!("{mark} {}{req}: {}", c.title, c.detail);
        if c.status != CheckStatus::Ok {
            if let Some(h) = &c.hint {
                println!("     hint: {h}");
            }
        }
    }
    if r.ok {
        println!("{}", style.green("All required checks passed."));
    } else {
        println!(
            "{}",
            style.red("A required check failed; see the hints above.")
        );
    }
}

fn print_capabilities(c: &Capabilities) {
    let tool = |t: &Option<banger_api::doctor::ToolInfo>| {
        t.as_ref()
            .map(|t| format!("{} ({})", t.version, t.path))
            .unwrap_or_else(|| "not installed".into())
    };
    println!(
        "backends:          {}",
        if c.backends.is_empty() {
            "none".into()
        } else {
            c.backends.join(", ")
        }
    );
    println!("qemu:              {}", tool(&c.qemu));
    println!("firecracker:       {}", tool(&c.firecracker));
    println!(
        "kvm:               {}{}",
        c.kvm_device,
        c.kvm_module
            .as_deref()
            .map(|m| format!(" ({m})"))
            .unwrap_or_default()
    );
    println!("tun:               {}", c.tun);
    println!("nftables:          {}", c.nftables);
    println!("device-mapper:     {}", c.device_mapper);
    println!("reflink:           {}", c.reflink);
    println!("clone strategies:  {}", c.clone_strategies.join(", "));
    println!(
        "bootstrapper:      {}",
        c.bootstrapper.as_deref().unwrap_or("none")
    );
    println!(
        "state dir free:    {:.1} GiB",
        c.state_dir_free_bytes as f64 / (1u64 << 30) as f64
    );
}

fn op_row(style: &Style, op: &Operation) -> Vec<String> {
    let end = op.finished_at.unwrap_or_else(chrono::Utc::now);
    let done = op
        .steps
        .iter()
        .filter(|s| {
            matches!(
                s.status,
                banger_api::StepStatus::Done | banger_api::StepStatus::Skipped
            )
        })
        .count();
    vec![
        op.id.clone(),
        op.kind.clone(),
        op.target.clone(),
        progress::state_word(style, op.state),
        format!("{done}/{}", op.steps.len()),
        op.created_at
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        output::duration(end - op.created_at),
    ]
}

async fn ops(
    client: &Client,
    json: bool,
    style: &Style,
    cmd: OpsCommand,
) -> Result<u8, ClientError> {
    match cmd {
        OpsCommand::Ls { all, limit } => {
            let list: OpList = client
                .get(&format!("/v1/ops?all={all}&limit={limit}"))
                .await?;
            if json {
                output::print_json(&list);
            } else if list.ops.is_empty() {
                println!(
                    "{}",
                    if all {
                        "No operations."
                    } else {
                        "No running operations (--all shows finished ones)."
                    }
                );
            } else {
                let rows: Vec<Vec<String>> = list.ops.iter().map(|o| op_row(style, o)).collect();
                print!(
                    "{}",
                    output::table(
                        &["id", "kind", "target", "state", "steps", "created", "duration"],
                        &rows
                    )
                );
            }
            Ok(exit::OK)
        }
        OpsCommand::Show { id } => {
            let op: Operation = client.get(&format!("/v1/ops/{id}")).await?;
            if json {
                output::print_json(&op);
            } else {
                print_op(style, &op);
            }
            Ok(exit::OK)
        }
        OpsCommand::Watch { id } => {
            let op: Operation = client.get(&format!("/v1/ops/{id}")).await?;
            let op = watch(client, json, op).await?;
            Ok(final_code(&op))
        }
        OpsCommand::Cancel { id, wait } => {
            let mut op: Operation = client.post_empty(&format!("/v1/ops/{id}/cancel")).await?;
            if wait {
                client.follow_op(&id, op.last_seq, |_| {}).await?;
                op = client.get(&format!("/v1/ops/{id}")).await?;
            }
            if json {
                output::print_json(&op);
            } else {
                println!(
                    "{}: {}",
                    op.id,
                    if op.state.is_terminal() {
                        progress::state_word(style, op.state)
                    } else {
                        "cancel requested".into()
                    }
                );
            }
            Ok(exit::OK)
        }
    }
}

/// Follows `op` to its end, rendering progress; returns the final snapshot.
async fn watch(client: &Client, json: bool, op: Operation) -> Result<Operation, ClientError> {
    let mut renderer = Renderer::detect(json, &op);
    client.follow_op(&op.id, 0, |ev| renderer.event(ev)).await?;
    let done: Operation = client.get(&format!("/v1/ops/{}", op.id)).await?;
    if !json {
        if let Some(e) = &done.error {
            eprintln!(
                "banger: {} {}: {}",
                done.kind,
                done.state.as_str(),
                e.message
            );
            if let Some(h) = &e.hint {
                eprintln!("hint: {h}");
            }
        }
    }
    Ok(done)
}

fn final_code(op: &Operation) -> u8 {
    if op.state == OpState::Succeeded {
        exit::OK
    } else {
        exit::FAILURE
    }
}

fn print_op(style: &Style, op: &Operation) {
    println!(
        "{} {} {}: {}",
        op.id,
        op.kind,
        op.target,
        progress::state_word(style, op.state)
    );
    println!(
        "created {}",
        op.created_at
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S")
    );
    for s in &op.steps {
        let mut line = format!("  {:<9} {}", s.status.as_str(), s.title);
        if let Some(p) = &s.progress {
            line.push_str(&match p.total {
                Some(t) => format!(" [{}/{} {}]", p.current, t, p.unit.as_deref().unwrap_or("")),
                None => format!(" [{} {}]", p.current, p.unit.as_deref().unwrap_or("")),
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
