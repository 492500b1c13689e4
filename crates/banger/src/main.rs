//! `banger`: the command-line client of bangerd. Parses arguments, calls the
//! API, renders the answer. It never touches state files.

use banger_api::BackendChoice;
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

mod cmd_workspace;
use cmd_workspace::{AgentCommand, AuthCommand, WorkspaceCommand};

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
    /// Guest images: build, import, list, show, remove.
    #[command(subcommand)]
    Image(ImageCommand),
    /// VMs: create, list, start, stop, ssh, remove.
    #[command(subcommand)]
    Vm(VmCommand),
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
    /// The warm pool: VMs booted ahead of time so `vm create` is instant.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Snapshots (taken with `vm snapshot`): list, remove.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Print the web dashboard's URL (with its access token); --open opens it.
    Ui {
        /// Open it in the default browser (xdg-open).
        #[arg(long)]
        open: bool,
    },
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// List snapshots.
    Ls,
    /// Remove a snapshot and its files.
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
enum PoolCommand {
    /// Pool sizes with their ready and booting VMs, and the memory budget.
    Ls,
    /// Keep SIZE VMs of an image and size booted (0: none). A `vm create`
    /// asking for the same image, cpus, memory and work disk takes one.
    Set {
        /// Image (default: the daemon's vm.default_image).
        image: Option<String>,
        #[arg(long)]
        size: u32,
        #[arg(long)]
        cpus: Option<u32>,
        /// e.g. 1G.
        #[arg(long)]
        memory: Option<String>,
        /// e.g. 1G.
        #[arg(long)]
        work_disk_size: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum SessionCommand {
    /// Start COMMAND in VM as a session (no shell: use `-- sh -c '...'` for one).
    Start {
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
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List sessions (of one VM).
    Ls { vm: Option<String> },
    /// Show a session.
    Show { name: String },
    /// Print a session's output (-f: follow it).
    Logs {
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
    /// Follow a session's output and type into it; a line `~.` detaches
    /// (the session keeps running).
    Attach { name: String },
    /// Write TEXT (and a newline) to a session's stdin, or a file's bytes with --file.
    Send {
        name: String,
        text: Option<String>,
        #[arg(long, conflicts_with = "text")]
        file: Option<PathBuf>,
    },
    /// Send a signal (TERM, INT, HUP, KILL, ...) to a session.
    Signal { name: String, signal: String },
    /// Kill a session (SIGKILL).
    Kill { name: String },
    /// Remove a session (--force: kill it first).
    Rm {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

/// A VM's network policy flags (`vm create`, `vm set`).
#[derive(Debug, clap::Args)]
struct NetPolicy {
    /// Isolate the VM: no traffic to or from other VMs, only DNS and ping to the host.
    #[arg(long)]
    isolate: bool,
    /// Allow outbound traffic only to these IPv4 addresses or CIDRs (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "CIDR,...",
        conflicts_with = "no_egress"
    )]
    egress_allow: Option<Vec<String>>,
    /// No outbound traffic at all (DNS to the host still works).
    #[arg(long)]
    no_egress: bool,
}

impl NetPolicy {
    /// The allow-list to send: `--no-egress` is an empty one.
    fn egress(&self) -> Option<Vec<String>> {
        if self.no_egress {
            Some(Vec::new())
        } else {
            self.egress_allow.clone()
        }
    }
}

#[derive(Debug, Subcommand)]
enum VmCommand {
    /// Create a VM and boot it (waits until SSH is ready).
    Create {
        name: String,
        /// Image name (default: the daemon's vm.default_image).
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        cpus: Option<u32>,
        /// e.g. 1G, 512M.
        #[arg(long)]
        memory: Option<String>,
        /// Size of the persistent work disk mounted at /work, e.g. 4G.
        #[arg(long)]
        work_disk_size: Option<String>,
        /// Root disk size (default: the image's), e.g. 8G.
        #[arg(long)]
        disk_size: Option<String>,
        /// auto, qemu or firecracker.
        #[arg(value_parser = parse_backend, long)]
        backend: Option<BackendChoice>,
        /// Set the VM up for a coding agent: opencode, claude-code, codex, or
        /// a profile in the daemon's agents.dir (default: the image's agent).
        #[arg(long)]
        agent: Option<String>,
        #[command(flatten)]
        net: NetPolicy,
        /// Create the disks but do not boot.
        #[arg(long)]
        no_start: bool,
        /// Restore this snapshot instead of booting (banger vm snapshot): the
        /// VM resumes where the snapshot was taken, with its own name,
        /// address, MAC, host key and machine-id.
        #[arg(long, value_name = "SNAPSHOT", conflicts_with_all = ["image", "cpus", "memory", "work_disk_size", "disk_size", "backend", "no_start"])]
        from_snapshot: Option<String>,
        /// ssh: wait until the guest can take a command (default); none: return the operation id at once.
        #[arg(long, default_value = "ssh", value_parser = ["ssh", "none"])]
        wait: String,
    },
    /// Snapshot a VM: its disks, and its memory and device state when it
    /// runs (it is paused meanwhile). Restore with `vm create --from-snapshot`.
    Snapshot {
        name: String,
        /// Snapshot name (default: NAME-YYYYMMDD-HHMMSS).
        snapshot: Option<String>,
        #[arg(long, default_value = "ssh", value_parser = ["ssh", "none"])]
        wait: String,
    },
    /// Fork a running VM: a copy with its memory, processes and disks, and
    /// its own name, address, MAC, host key and machine-id. Both keep running.
    Fork {
        name: String,
        /// The new VM's name.
        new: String,
        #[arg(long, default_value = "ssh", value_parser = ["ssh", "none"])]
        wait: String,
    },
    /// List VMs.
    Ls,
    /// Show a VM.
    Show { name: String },
    /// Boot a stopped VM.
    Start {
        name: String,
        #[arg(long, default_value = "ssh", value_parser = ["ssh", "none"])]
        wait: String,
    },
    /// Stop a VM: power off gracefully, kill after --timeout seconds.
    Stop {
        name: String,
        /// Kill at once.
        #[arg(long)]
        force: bool,
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Stop then start.
    Restart { name: String },
    /// Kill the VMM at once (same as stop --force).
    Kill { name: String },
    /// Remove a VM and its disks (--force: even while it runs).
    Rm {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Print the serial console log (-f: keep following it).
    Logs {
        name: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// Host and guest figures: VMM CPU and RSS, disk use; guest load, memory, disks.
    Stats { name: String },
    /// Change cpus or memory, or grow the root or work disk (VM stopped).
    Set {
        name: String,
        #[arg(long)]
        cpus: Option<u32>,
        /// e.g. 2G.
        #[arg(long)]
        memory: Option<String>,
        /// New root disk size (grow only), e.g. 8G.
        #[arg(long)]
        disk_size: Option<String>,
        /// New work disk size (grow only).
        #[arg(long)]
        work_disk_size: Option<String>,
        #[command(flatten)]
        net: NetPolicy,
        /// Stop isolating the VM.
        #[arg(long, conflicts_with = "isolate")]
        no_isolate: bool,
        /// Remove the egress allow-list (outbound traffic anywhere).
        #[arg(long, conflicts_with_all = ["egress_allow", "no_egress"])]
        egress_all: bool,
    },
    /// The guest's listening TCP and UDP sockets, with processes and URLs.
    Ports { name: String },
    /// Forward [HOST_ADDR:]HOST_PORT on the host (default 127.0.0.1; port 0:
    /// any free one) to GUEST_PORT; kept across daemon restarts. --rm removes it.
    Forward {
        name: String,
        /// [HOST_ADDR:]HOST_PORT:GUEST_PORT, or [HOST_ADDR:]HOST_PORT with --rm.
        spec: String,
        #[arg(long)]
        rm: bool,
    },
    /// List port forwards (of one VM).
    Forwards { name: Option<String> },
    /// SSH into the VM (through the daemon; pinned host key). Extra arguments run as a command.
    Ssh {
        name: String,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Splice stdin/stdout to a TCP port of the VM (for ssh's ProxyCommand).
    /// NAME may carry the `.vm` suffix.
    Proxy { name: String, port: u16 },
    /// Print the known_hosts line pinning the VM's host key (for ssh's
    /// KnownHostsCommand). NAME may carry the `.vm` suffix.
    KnownHosts { name: String },
    /// Print (or --write) an ssh config block so that `ssh NAME.vm`, scp,
    /// rsync and editors' remote-SSH modes reach every VM, present and future.
    SshConfig {
        /// Write it to this file (e.g. ~/.ssh/config.d/banger) instead of stdout;
        /// add `Include` for it to your ~/.ssh/config once.
        #[arg(long)]
        write: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build an image (Debian stable by default) with mmdebstrap.
    Build {
        name: String,
        /// A recipe file (TOML); the flags below override its fields.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// debian (default) or ubuntu (experimental).
        #[arg(long)]
        distro: Option<String>,
        /// Distribution suite, e.g. bookworm.
        #[arg(long)]
        suite: Option<String>,
        /// Package mirror URL (default: the daemon's).
        #[arg(long)]
        mirror: Option<String>,
        /// Root filesystem size, e.g. 2G.
        #[arg(long)]
        size: Option<String>,
        /// Extra packages, comma-separated.
        #[arg(long, value_delimiter = ',')]
        packages: Option<Vec<String>>,
        /// Install build-essential.
        #[arg(long)]
        build_essential: bool,
        /// light (busybox init + sshd, fastest) or systemd.
        #[arg(long)]
        init: Option<String>,
        /// Install a coding agent with npm: opencode, claude-code or codex.
        #[arg(long)]
        agent: Option<String>,
        /// Start the build and print its operation id without following it.
        #[arg(long)]
        detach: bool,
    },
    /// Import a rootfs: an ext4 image, a directory, or a tarball (e.g. `docker export`).
    Import {
        name: String,
        #[arg(long, value_name = "FILE|DIR|TARBALL")]
        rootfs: PathBuf,
        /// A bzImage (default: the kernel of the default recipe).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// An initrd for --kernel.
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// An ELF vmlinux, for Firecracker.
        #[arg(long)]
        vmlinux: Option<PathBuf>,
        /// Root filesystem size when packing a directory or tarball.
        #[arg(long)]
        size: Option<String>,
        #[arg(long)]
        detach: bool,
    },
    /// List images.
    Ls,
    /// Show an image: artifacts with sha256, packages, recipe.
    Show { name: String },
    /// Remove an image (refused while VMs use it, unless --force).
    Rm {
        name: String,
        #[arg(long)]
        force: bool,
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

fn main() -> ExitCode {
    restore_sigpipe();
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
        Command::Image(cmd) => image(client, json, &style, cmd).await,
        Command::Vm(cmd) => vm(client, json, &style, cmd).await,
        Command::Session(cmd) => session(client, json, &style, cmd).await,
        Command::Workspace(cmd) => cmd_workspace::workspace(client, json, &style, cmd).await,
        Command::Auth(cmd) => cmd_workspace::auth(client, json, cmd).await,
        Command::Agent(cmd) => cmd_workspace::agent(client, json, cmd).await,
        Command::Snapshot(SnapshotCommand::Ls) => {
            let l: banger_api::SnapshotList = client.get("/v1/snapshots").await?;
            if json {
                output::print_json(&l);
                return Ok(exit::OK);
            }
            if l.snapshots.is_empty() {
                println!("No snapshots. Take one with: banger vm snapshot VM");
                return Ok(exit::OK);
            }
            let rows: Vec<Vec<String>> = l
                .snapshots
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.source_vm.clone(),
                        s.image.clone(),
                        s.backend.to_string(),
                        if s.with_memory { "running" } else { "disks" }.into(),
                        s.cpus.to_string(),
                        output::size(u64::from(s.memory_mib) << 20),
                        output::size(s.size_bytes),
                        s.state.clone(),
                        s.created_at.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(
                    &[
                        "NAME", "VM", "IMAGE", "BACKEND", "OF", "CPUS", "MEMORY", "SIZE", "STATE",
                        "CREATED"
                    ],
                    &rows
                )
            );
            Ok(exit::OK)
        }
        Command::Snapshot(SnapshotCommand::Rm { name }) => {
            let (status, body) = client.delete_raw(&format!("/v1/snapshots/{name}")).await?;
            ClientError::check(status, &body)?;
            if !json {
                println!("removed snapshot {name}");
            }
            Ok(exit::OK)
        }
        Command::Pool(PoolCommand::Ls) => {
            let l: banger_api::PoolList = client.get("/v1/pools").await?;
            if json {
                output::print_json(&l);
                return Ok(exit::OK);
            }
            let rows: Vec<Vec<String>> = l
                .pools
                .iter()
                .map(|p| {
                    vec![
                        p.image.clone(),
                        p.cpus.to_string(),
                        output::size(u64::from(p.memory_mib) << 20),
                        output::size(p.work_disk_bytes),
                        p.size.to_string(),
                        p.ready.to_string(),
                        p.booting.to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(
                    &[
                        "IMAGE",
                        "CPUS",
                        "MEMORY",
                        "WORK DISK",
                        "SIZE",
                        "READY",
                        "BOOTING"
                    ],
                    &rows
                )
            );
            println!(
                "memory: {} of {} used",
                output::size(l.memory_used_mib << 20),
                output::size(l.memory_budget_mib << 20)
            );
            Ok(exit::OK)
        }
        Command::Pool(PoolCommand::Set {
            image,
            size,
            cpus,
            memory,
            work_disk_size,
        }) => {
            let p: banger_api::PoolStatus = client
                .post(
                    "/v1/pools",
                    &banger_api::PoolSetRequest {
                        image,
                        resources: banger_api::VmResources {
                            cpus,
                            memory,
                            work_disk_size,
                            disk_size: None,
                        },
                        size,
                    },
                )
                .await?;
            if json {
                output::print_json(&p);
            } else {
                println!(
                    "pool {}: {} VM(s) of {} cpus, {}, work disk {} (refilling in the background)",
                    p.image,
                    p.size,
                    p.cpus,
                    output::size(u64::from(p.memory_mib) << 20),
                    output::size(p.work_disk_bytes)
                );
            }
            Ok(exit::OK)
        }
        Command::Ui { open } => {
            let info: banger_api::UiInfo = client.get("/v1/ui").await?;
            if json {
                output::print_json(&info);
                return Ok(exit::OK);
            }
            let Some(url) = info.url else {
                return Err(ClientError::Local {
                    message: format!(
                        "The dashboard is not available: {}",
                        info.error.unwrap_or_else(|| "unknown reason".into())
                    ),
                    hint: Some("Set ui.listen in /etc/banger/config.toml (e.g. \"127.0.0.1:7878\") and restart bangerd".into()),
                });
            };
            println!("{url}");
            if open {
                let _ = std::process::Command::new("xdg-open").arg(&url).status();
            }
            Ok(exit::OK)
        }
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
            join_backends(&c.backends, ", ")
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

fn absolute(p: &std::path::Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// Follows an operation just started (unless `detach`), and reports it.
async fn run_op(
    client: &Client,
    json: bool,
    op: Operation,
    detach: bool,
) -> Result<u8, ClientError> {
    if detach {
        if json {
            output::print_json(&op);
        } else {
            println!("{}", op.id);
        }
        return Ok(exit::OK);
    }
    let done = watch(client, json, op).await?;
    if !json && done.state == OpState::Succeeded {
        if let Some(r) = &done.result {
            println!("{r}");
        }
    }
    Ok(final_code(&done))
}

async fn image(
    client: &Client,
    json: bool,
    style: &Style,
    cmd: ImageCommand,
) -> Result<u8, ClientError> {
    match cmd {
        ImageCommand::Build {
            name,
            from_file,
            distro,
            suite,
            mirror,
            size,
            packages,
            build_essential,
            init,
            agent,
            detach,
        } => {
            let recipe_toml = match &from_file {
                Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
                    ClientError::Api(banger_api::ApiError::new(
                        banger_api::ErrorCode::InvalidRequest,
                        format!("Cannot read recipe {}: {e}", p.display()),
                    ))
                })?),
                None => None,
            };
            let req = banger_api::ImageBuildRequest {
                name,
                recipe_toml,
                distro,
                suite,
                mirror,
                size,
                packages,
                build_essential: build_essential.then_some(true),
                init,
                agent,
            };
            let op: Operation = client.post("/v1/images/build", &req).await?;
            run_op(client, json, op, detach).await
        }
        ImageCommand::Import {
            name,
            rootfs,
            kernel,
            initrd,
            vmlinux,
            size,
            detach,
        } => {
            let req = banger_api::ImageImportRequest {
                name,
                rootfs: absolute(&rootfs),
                kernel: kernel.as_deref().map(absolute),
                initrd: initrd.as_deref().map(absolute),
                vmlinux: vmlinux.as_deref().map(absolute),
                size,
            };
            let op: Operation = client.post("/v1/images/import", &req).await?;
            run_op(client, json, op, detach).await
        }
        ImageCommand::Ls => {
            let list: banger_api::ImageList = client.get("/v1/images").await?;
            if json {
                output::print_json(&list);
            } else if list.images.is_empty() {
                println!("No images. Build one with: banger image build NAME");
            } else {
                let rows: Vec<Vec<String>> = list
                    .images
                    .iter()
                    .map(|i| {
                        let rootfs = i
                            .artifacts
                            .iter()
                            .find(|a| a.kind == "rootfs")
                            .map(|a| a.size)
                            .unwrap_or(0);
                        vec![
                            i.name.clone(),
                            i.source.clone(),
                            i.init.clone(),
                            join_backends(&i.backends, ","),
                            output::size(rootfs),
                            i.digest[..12.min(i.digest.len())].to_string(),
                            i.created_at
                                .with_timezone(&chrono::Local)
                                .format("%Y-%m-%d %H:%M")
                                .to_string(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    output::table(
                        &["name", "source", "init", "backends", "size", "digest", "created"],
                        &rows
                    )
                );
            }
            Ok(exit::OK)
        }
        ImageCommand::Show { name } => {
            let i: banger_api::Image = client.get(&format!("/v1/images/{name}")).await?;
            if json {
                output::print_json(&i);
            } else {
                println!("{} ({}, {} init)", style.bold(&i.name), i.source, i.init);
                println!("digest:   {}", i.digest);
                println!(
                    "created:  {}",
                    i.created_at
                        .with_timezone(&chrono::Local)
                        .format("%Y-%m-%d %H:%M:%S")
                );
                println!("backends: {}", join_backends(&i.backends, ", "));
                if let Some(k) = &i.kernel_version {
                    println!("kernel:   {k}");
                }
                if let Some(a) = &i.agent {
                    println!("agent:    {a}");
                }
                println!(
                    "used by:  {}",
                    if i.used_by.is_empty() {
                        "-".into()
                    } else {
                        i.used_by.join(", ")
                    }
                );
                println!("artifacts:");
                for a in &i.artifacts {
                    println!(
                        "  {:<8} {:<12} {:>10}  sha256:{}",
                        a.kind,
                        a.file,
                        output::size(a.size),
                        a.sha256
                    );
                }
                if let Some(r) = &i.recipe {
                    println!("recipe:   {r}");
                }
                if !i.packages.is_empty() {
                    println!("packages ({}): {}", i.packages.len(), i.packages.join(" "));
                }
            }
            Ok(exit::OK)
        }
        ImageCommand::Rm { name, force } => {
            let r: banger_api::ImageRemoved = client
                .delete(&format!("/v1/images/{name}?force={force}"))
                .await?;
            if json {
                output::print_json(&r);
            } else {
                println!(
                    "removed image {}{}",
                    r.name,
                    if r.artifacts_deleted {
                        ""
                    } else {
                        " (artifacts kept: another name uses them)"
                    }
                );
            }
            Ok(exit::OK)
        }
    }
}

fn vm_row(style: &Style, v: &banger_api::Vm) -> Vec<String> {
    let state = match v.state {
        banger_api::VmState::Running => style.green("running"),
        banger_api::VmState::Stopped => style.dim("stopped"),
        s => style.yellow(s.as_str()),
    };
    let uptime = match (v.state, v.started_at) {
        (banger_api::VmState::Running, Some(t)) => output::duration(chrono::Utc::now() - t),
        _ => "-".into(),
    };
    vec![
        v.name.clone(),
        state,
        format!("{}/{}", v.backend, v.accel),
        v.ip.clone(),
        v.cpus.to_string(),
        output::size(u64::from(v.memory_mib) << 20),
        v.image.clone(),
        uptime,
    ]
}

async fn vm(client: &Client, json: bool, style: &Style, cmd: VmCommand) -> Result<u8, ClientError> {
    match cmd {
        VmCommand::Create {
            name,
            image,
            cpus,
            memory,
            work_disk_size,
            disk_size,
            backend,
            agent,
            net,
            no_start,
            from_snapshot,
            wait,
        } => {
            let req = banger_api::VmCreateRequest {
                from_snapshot,
                isolated: net.isolate,
                egress_allow: net.egress(),
                name,
                image,
                resources: banger_api::VmResources {
                    cpus,
                    memory,
                    disk_size,
                    work_disk_size,
                },
                backend,
                no_start,
                agent,
            };
            let op: Operation = client.post("/v1/vms", &req).await?;
            run_op(client, json, op, wait == "none").await
        }
        VmCommand::Snapshot {
            name,
            snapshot,
            wait,
        } => {
            let op: Operation = client
                .post(
                    &format!("/v1/vms/{name}/snapshot"),
                    &banger_api::VmSnapshotRequest { name: snapshot },
                )
                .await?;
            run_op(client, json, op, wait == "none").await
        }
        VmCommand::Fork { name, new, wait } => {
            let op: Operation = client
                .post(
                    &format!("/v1/vms/{name}/fork"),
                    &banger_api::VmForkRequest { name: new },
                )
                .await?;
            run_op(client, json, op, wait == "none").await
        }
        VmCommand::Ls => {
            let list: banger_api::VmList = client.get("/v1/vms").await?;
            if json {
                output::print_json(&list);
            } else if list.vms.is_empty() {
                println!("No VMs. Create one with: banger vm create NAME");
            } else {
                let rows: Vec<Vec<String>> = list.vms.iter().map(|v| vm_row(style, v)).collect();
                print!(
                    "{}",
                    output::table(
                        &["name", "state", "backend", "ip", "cpus", "memory", "image", "uptime"],
                        &rows
                    )
                );
            }
            Ok(exit::OK)
        }
        VmCommand::Ports { name } => {
            let p: banger_api::VmPortList = client.get(&format!("/v1/vms/{name}/ports")).await?;
            if json {
                output::print_json(&p);
                return Ok(exit::OK);
            }
            let rows: Vec<Vec<String>> = p
                .ports
                .iter()
                .map(|x| {
                    vec![
                        x.proto.clone(),
                        x.address.clone(),
                        x.port.to_string(),
                        x.process.clone().unwrap_or_else(|| "-".into()),
                        x.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                        x.url.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(
                    &["PROTO", "ADDRESS", "PORT", "PROCESS", "PID", "URL"],
                    &rows
                )
            );
            Ok(exit::OK)
        }
        VmCommand::Forward { name, spec, rm } => {
            let (addr, host_port, guest_port) = parse_forward_spec(&spec, rm)?;
            if rm {
                let q = match &addr {
                    Some(a) => format!("host_addr={a}&host_port={host_port}"),
                    None => format!("host_port={host_port}"),
                };
                let (status, body) = client
                    .raw(
                        hyper::Method::DELETE,
                        &format!("/v1/vms/{name}/forwards?{q}"),
                    )
                    .await
                    .map(|(s, _, b)| (s, b))?;
                ClientError::check(status, &body)?;
                eprintln!("forward removed");
                return Ok(exit::OK);
            }
            let f: banger_api::Forward = client
                .post(
                    &format!("/v1/vms/{name}/forwards"),
                    &banger_api::ForwardRequest {
                        host_addr: addr,
                        host_port,
                        guest_port: guest_port.unwrap_or(0),
                    },
                )
                .await?;
            if json {
                output::print_json(&f);
            } else {
                println!(
                    "{}:{} -> {}:{}",
                    f.host_addr, f.host_port, f.vm, f.guest_port
                );
            }
            Ok(exit::OK)
        }
        VmCommand::Forwards { name } => {
            let path = match &name {
                Some(n) => format!("/v1/vms/{n}/forwards"),
                None => "/v1/forwards".into(),
            };
            let l: banger_api::ForwardList = client.get(&path).await?;
            if json {
                output::print_json(&l);
                return Ok(exit::OK);
            }
            let rows: Vec<Vec<String>> = l
                .forwards
                .iter()
                .map(|f| {
                    vec![
                        format!("{}:{}", f.host_addr, f.host_port),
                        f.vm.clone(),
                        f.guest_port.to_string(),
                        if f.active {
                            "listening".into()
                        } else {
                            format!("not listening: {}", f.error.clone().unwrap_or_default())
                        },
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(&["HOST", "VM", "GUEST PORT", "STATE"], &rows)
            );
            Ok(exit::OK)
        }
        VmCommand::Show { name } => {
            let v: banger_api::Vm = client.get(&format!("/v1/vms/{name}")).await?;
            if json {
                output::print_json(&v);
            } else {
                let row = vm_row(style, &v);
                println!("{} ({})", style.bold(&v.name), row[1]);
                println!("id:        {}", v.id);
                println!("backend:   {}", row[2]);
                println!("image:     {}", v.image);
                println!("address:   {} ({})", v.ip, v.mac);
                println!(
                    "resources: {} cpus, {}, work disk {}",
                    v.cpus,
                    row[5],
                    output::size(v.work_disk_bytes)
                );
                if let Some(pid) = v.pid {
                    println!("pid:       {pid}");
                }
                println!("uptime:    {}", row[7]);
                println!(
                    "network:   {}{}",
                    if v.isolated {
                        "isolated"
                    } else {
                        "not isolated"
                    },
                    match &v.egress_allow {
                        None => ", egress anywhere".to_string(),
                        Some(l) if l.is_empty() => ", no egress".to_string(),
                        Some(l) => format!(", egress only to {}", l.join(", ")),
                    }
                );
                if let Some(a) = &v.agent {
                    println!("agent:     {a}");
                }
                if let Some(r) = &v.stop_reason {
                    println!("stopped:   {r}");
                }
            }
            Ok(exit::OK)
        }
        VmCommand::Start { name, wait } => {
            let op: Operation = client.post_empty(&format!("/v1/vms/{name}/start")).await?;
            run_op(client, json, op, wait == "none").await
        }
        VmCommand::Stop {
            name,
            force,
            timeout,
        } => {
            let v: banger_api::Vm = client
                .post(
                    &format!("/v1/vms/{name}/stop"),
                    &banger_api::VmStopRequest {
                        force,
                        timeout_secs: Some(timeout),
                    },
                )
                .await?;
            if json {
                output::print_json(&v);
            } else {
                println!(
                    "{}: {}",
                    v.name,
                    v.stop_reason.as_deref().unwrap_or("stopped")
                );
            }
            Ok(exit::OK)
        }
        VmCommand::Kill { name } => {
            let v: banger_api::Vm = client
                .post(
                    &format!("/v1/vms/{name}/stop"),
                    &banger_api::VmStopRequest {
                        force: true,
                        timeout_secs: None,
                    },
                )
                .await?;
            if json {
                output::print_json(&v);
            } else {
                println!("{}: killed", v.name);
            }
            Ok(exit::OK)
        }
        VmCommand::Restart { name } => {
            let _: banger_api::Vm = client
                .post(
                    &format!("/v1/vms/{name}/stop"),
                    &banger_api::VmStopRequest::default(),
                )
                .await?;
            let op: Operation = client.post_empty(&format!("/v1/vms/{name}/start")).await?;
            run_op(client, json, op, false).await
        }
        VmCommand::Rm { name, force } => {
            let (status, body) = client
                .delete_raw(&format!("/v1/vms/{name}?force={force}"))
                .await?;
            ClientError::check(status, &body)?;
            if !json {
                println!("removed {name}");
            }
            Ok(exit::OK)
        }
        VmCommand::Logs { name, follow } => {
            use std::io::Write;
            let mut offset = 0u64;
            loop {
                let (status, next, body) = client
                    .get_text_header(
                        &format!("/v1/vms/{name}/logs?offset={offset}"),
                        "x-log-offset",
                    )
                    .await?;
                ClientError::check(status, &body)?;
                print!("{body}");
                let _ = std::io::stdout().flush();
                offset = next
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(offset + body.len() as u64);
                if !follow {
                    return Ok(exit::OK);
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        VmCommand::Stats { name } => {
            let s: banger_api::VmStats = client.get(&format!("/v1/vms/{name}/stats")).await?;
            if json {
                output::print_json(&s);
                return Ok(exit::OK);
            }
            println!("{} ({})", style.bold(&s.name), s.state.as_str());
            let h = &s.host;
            println!(
                "host:  pid {}  cpu {}  rss {}  disks {}",
                h.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                h.cpu_percent
                    .map(|c| format!("{c:.1}%"))
                    .unwrap_or_else(|| "-".into()),
                h.rss_bytes.map(output::size).unwrap_or_else(|| "-".into()),
                output::size(h.disk_allocated_bytes)
            );
            match (&s.guest, &s.guest_error) {
                (Some(g), _) => {
                    println!(
                        "guest: load {:.2} {:.2} {:.2}",
                        g.load[0], g.load[1], g.load[2]
                    );
                    println!(
                        "       memory {} available of {}",
                        output::size(g.mem_available_bytes),
                        output::size(g.mem_total_bytes)
                    );
                    println!(
                        "       / {} used of {}",
                        output::size(g.root_used_bytes),
                        output::size(g.root_total_bytes)
                    );
                    if let (Some(u), Some(t)) = (g.work_used_bytes, g.work_total_bytes) {
                        println!(
                            "       /work {} used of {}",
                            output::size(u),
                            output::size(t)
                        );
                    }
                }
                (None, Some(e)) => println!("guest: unavailable ({e})"),
                (None, None) => println!("guest: unavailable"),
            }
            Ok(exit::OK)
        }
        VmCommand::Set {
            name,
            cpus,
            memory,
            disk_size,
            work_disk_size,
            net,
            no_isolate,
            egress_all,
        } => {
            let v: banger_api::Vm = client
                .post(
                    &format!("/v1/vms/{name}/set"),
                    &banger_api::VmSetRequest {
                        resources: banger_api::VmResources {
                            cpus,
                            memory,
                            disk_size,
                            work_disk_size,
                        },
                        isolated: if net.isolate {
                            Some(true)
                        } else if no_isolate {
                            Some(false)
                        } else {
                            None
                        },
                        egress_allow: net.egress(),
                        egress_all,
                    },
                )
                .await?;
            if json {
                output::print_json(&v);
            } else {
                println!(
                    "{}: {} cpus, {}, work disk {}",
                    v.name,
                    v.cpus,
                    output::size(u64::from(v.memory_mib) << 20),
                    output::size(v.work_disk_bytes)
                );
            }
            Ok(exit::OK)
        }
        VmCommand::Ssh { name, command } => ssh(client, &name, &command).await,
        VmCommand::KnownHosts { name } => {
            let name = name.strip_suffix(".vm").unwrap_or(&name);
            let info: banger_api::VmSshInfo = client.get(&format!("/v1/vms/{name}/ssh")).await?;
            let parts: Vec<&str> = info.host_key.split_whitespace().take(2).collect();
            println!("{} {}", info.host_alias, parts.join(" "));
            Ok(exit::OK)
        }
        VmCommand::SshConfig { write } => {
            let text = ssh_config(client).await?;
            match write {
                Some(path) => {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| local_error("ssh config directory", e))?;
                    }
                    std::fs::write(&path, text).map_err(|e| local_error("ssh config", e))?;
                    eprintln!(
                        "wrote {}; add this line to ~/.ssh/config once:\n  Include {}",
                        path.display(),
                        path.display()
                    );
                }
                None => print!("{text}"),
            }
            Ok(exit::OK)
        }
        VmCommand::Proxy { name, port } => {
            let name = name.strip_suffix(".vm").unwrap_or(&name).to_string();
            let mut io = client
                .upgrade(&format!("/v1/vms/{name}/proxy/{port}"))
                .await?;
            let mut stdio = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
            let _ = tokio::io::copy_bidirectional(&mut io, &mut stdio).await;
            Ok(exit::OK)
        }
    }
}

fn session_row(s: &banger_api::Session) -> Vec<String> {
    vec![
        s.name.clone(),
        s.vm.clone(),
        match (s.state.as_str(), s.exit_code) {
            ("exited", Some(c)) => format!("exited({c})"),
            (st, _) => st.to_string(),
        },
        s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        s.started_at
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        s.command.join(" "),
    ]
}

async fn session_logs(
    client: &Client,
    name: &str,
    stderr: bool,
    offset: u64,
) -> Result<(String, u64), ClientError> {
    let stream = if stderr { "stderr" } else { "stdout" };
    let (status, next, body) = client
        .get_text_header(
            &format!("/v1/sessions/{name}/logs?stream={stream}&offset={offset}"),
            "x-log-offset",
        )
        .await?;
    ClientError::check(status, &body)?;
    let next = next
        .and_then(|n| n.parse().ok())
        .unwrap_or(offset + body.len() as u64);
    Ok((body, next))
}

pub(crate) async fn attach(client: &Client, name: &str) -> Result<u8, ClientError> {
    use std::io::Write;
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
    let mut offset = 0u64;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let (text, next) = session_logs(client, name, false, offset).await?;
                print!("{text}");
                let _ = std::io::stdout().flush();
                offset = next;
                let s: banger_api::Session = client.get(&format!("/v1/sessions/{name}")).await?;
                if s.state != "running" {
                    let (text, _) = session_logs(client, name, false, offset).await?;
                    print!("{text}");
                    eprintln!("session {name} is {}{}", s.state, s.exit_code.map(|c| format!(" (exit code {c})")).unwrap_or_default());
                    return Ok(exit::OK);
                }
            }
            line = rx.recv() => match line {
                Some(Some(l)) if l.trim_end() == "~." => {
                    eprintln!("detached from {name}; it keeps running");
                    return Ok(exit::OK);
                }
                Some(Some(l)) => {
                    let (status, _, body) = client.raw_json(hyper::Method::POST, &format!("/v1/sessions/{name}/send"), &banger_api::SessionSendRequest { text: l }).await?;
                    ClientError::check(status, &body)?;
                }
                Some(None) | None => {
                    // stdin closed: keep following until the session ends or ^C.
                    rx.close();
                    loop {
                        tick.tick().await;
                        let (text, next) = session_logs(client, name, false, offset).await?;
                        print!("{text}");
                        let _ = std::io::stdout().flush();
                        offset = next;
                        let s: banger_api::Session = client.get(&format!("/v1/sessions/{name}")).await?;
                        if s.state != "running" {
                            return Ok(exit::OK);
                        }
                    }
                }
            },
        }
    }
}

async fn session(
    client: &Client,
    json: bool,
    style: &Style,
    cmd: SessionCommand,
) -> Result<u8, ClientError> {
    let _ = style;
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
            let mut map = std::collections::BTreeMap::new();
            for kv in env {
                let Some((k, v)) = kv.split_once('=') else {
                    return Err(ClientError::Api(banger_api::ApiError::new(
                        banger_api::ErrorCode::InvalidRequest,
                        format!("--env {kv:?} is not KEY=VALUE"),
                    )));
                };
                map.insert(k.to_string(), v.to_string());
            }
            let s: banger_api::Session = client
                .post(
                    &format!("/v1/vms/{vm}/sessions"),
                    &banger_api::SessionStartRequest {
                        command,
                        name,
                        cwd,
                        env: map,
                        require,
                    },
                )
                .await?;
            if then_attach {
                return attach(client, &s.name).await;
            }
            if json {
                output::print_json(&s);
            } else {
                println!("{}", s.name);
            }
            Ok(exit::OK)
        }
        SessionCommand::Ls { vm } => {
            let path = match &vm {
                Some(v) => format!("/v1/sessions?vm={v}"),
                None => "/v1/sessions".into(),
            };
            let list: banger_api::SessionList = client.get(&path).await?;
            if json {
                output::print_json(&list);
            } else if list.sessions.is_empty() {
                println!("No sessions. Start one with: banger session start VM -- COMMAND");
            } else {
                let rows: Vec<Vec<String>> = list.sessions.iter().map(session_row).collect();
                print!(
                    "{}",
                    output::table(&["name", "vm", "state", "pid", "started", "command"], &rows)
                );
            }
            Ok(exit::OK)
        }
        SessionCommand::Show { name } => {
            let s: banger_api::Session = client.get(&format!("/v1/sessions/{name}")).await?;
            if json {
                output::print_json(&s);
            } else {
                let r = session_row(&s);
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
            Ok(exit::OK)
        }
        SessionCommand::Logs {
            name,
            follow,
            stderr,
            tail,
        } => {
            use std::io::Write;
            let (text, offset) = session_logs(client, &name, stderr, 0).await?;
            match tail {
                Some(n) => {
                    let lines: Vec<&str> = text.lines().collect();
                    for l in &lines[lines.len().saturating_sub(n)..] {
                        println!("{l}");
                    }
                }
                None => print!("{text}"),
            }
            let _ = std::io::stdout().flush();
            if follow {
                // Server-Sent Events from where the first read ended, until the session ends.
                let stream = if stderr { "stderr" } else { "stdout" };
                client
                    .follow_sse(
                        &format!("/v1/sessions/{name}/logs/stream?stream={stream}&offset={offset}"),
                        |v| {
                            if let Some(t) = v.get("text").and_then(|t| t.as_str()) {
                                print!("{t}");
                                let _ = std::io::stdout().flush();
                            }
                            v.get("type").and_then(|t| t.as_str()) != Some("end")
                        },
                    )
                    .await?;
            }
            Ok(exit::OK)
        }
        SessionCommand::Attach { name } => attach(client, &name).await,
        SessionCommand::Send { name, text, file } => {
            let text = match (text, file) {
                (Some(t), _) => format!("{t}\n"),
                (None, Some(f)) => std::fs::read_to_string(&f).map_err(|e| {
                    ClientError::Api(banger_api::ApiError::new(
                        banger_api::ErrorCode::InvalidRequest,
                        format!("Cannot read {}: {e}", f.display()),
                    ))
                })?,
                (None, None) => {
                    return Err(ClientError::Api(banger_api::ApiError::new(
                        banger_api::ErrorCode::InvalidRequest,
                        "Give TEXT or --file FILE",
                    )))
                }
            };
            let (status, _, body) = client
                .raw_json(
                    hyper::Method::POST,
                    &format!("/v1/sessions/{name}/send"),
                    &banger_api::SessionSendRequest { text },
                )
                .await?;
            ClientError::check(status, &body)?;
            Ok(exit::OK)
        }
        SessionCommand::Signal { name, signal } => {
            let s: banger_api::Session = client
                .post(
                    &format!("/v1/sessions/{name}/signal"),
                    &banger_api::SessionSignalRequest { signal },
                )
                .await?;
            if json {
                output::print_json(&s);
            }
            Ok(exit::OK)
        }
        SessionCommand::Kill { name } => {
            let s: banger_api::Session = client
                .post(
                    &format!("/v1/sessions/{name}/signal"),
                    &banger_api::SessionSignalRequest {
                        signal: "KILL".into(),
                    },
                )
                .await?;
            if json {
                output::print_json(&s);
            }
            Ok(exit::OK)
        }
        SessionCommand::Rm { name, force } => {
            let (status, body) = client
                .delete_raw(&format!("/v1/sessions/{name}?force={force}"))
                .await?;
            ClientError::check(status, &body)?;
            Ok(exit::OK)
        }
    }
}

/// `[ADDR:]HOST:GUEST` (or `[ADDR:]HOST` when removing). IPv6 addresses
/// go in brackets. Pure.
fn parse_forward_spec(
    spec: &str,
    rm: bool,
) -> Result<(Option<String>, u16, Option<u16>), ClientError> {
    let bad = |why: &str| ClientError::Local {
        message: format!("Invalid forward {spec:?}: {why}"),
        hint: Some(
            "Write [HOST_ADDR:]HOST_PORT:GUEST_PORT, e.g. 8080:80 or 127.0.0.1:0:3000".into(),
        ),
    };
    let (addr, rest) = match spec.strip_prefix('[') {
        Some(r) => {
            let (a, rest) = r.split_once("]:").ok_or_else(|| bad("unclosed ["))?;
            (Some(a.to_string()), rest.to_string())
        }
        None => {
            let parts: Vec<&str> = spec.split(':').collect();
            let want = if rm { 2 } else { 3 };
            if parts.len() == want {
                (Some(parts[0].to_string()), parts[1..].join(":"))
            } else {
                (None, spec.to_string())
            }
        }
    };
    let nums: Vec<&str> = rest.split(':').collect();
    let port = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| bad(&format!("{s:?} is not a port")))
    };
    match (rm, nums.as_slice()) {
        (true, [h]) => Ok((addr, port(h)?, None)),
        (false, [h, g]) => {
            let g = port(g)?;
            if g == 0 {
                return Err(bad("the guest port cannot be 0"));
            }
            Ok((addr, port(h)?, Some(g)))
        }
        _ => Err(bad("wrong number of parts")),
    }
}

fn local_error(what: &str, e: std::io::Error) -> ClientError {
    ClientError::Api(banger_api::ApiError::new(
        banger_api::ErrorCode::Internal,
        format!("Cannot write the {what}: {e}"),
    ))
}

/// Where the CLI keeps the SSH key it gets from the daemon: a private
/// directory of the calling user.
fn key_dir() -> Result<PathBuf, ClientError> {
    use std::os::unix::fs::PermissionsExt;
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("banger");
    std::fs::create_dir_all(&base).map_err(|e| local_error("key directory", e))?;
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| local_error("key directory", e))?;
    Ok(base)
}

/// Writes the daemon's SSH key (the one every VM authorizes) to the key
/// directory, mode 0600; returns its path.
fn write_key(private_key: &str) -> Result<PathBuf, ClientError> {
    use std::os::unix::fs::PermissionsExt;
    let path = key_dir()?.join("id_ed25519");
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, private_key).map_err(|e| local_error("key", e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| local_error("key", e))?;
    Ok(path)
}

/// The `Host *.vm` block: the daemon's key, host keys pinned per VM by
/// KnownHostsCommand, and the daemon's proxy, so it needs no per-VM entries.
async fn ssh_config(client: &Client) -> Result<String, ClientError> {
    let key: banger_api::SshClientKey = client.get("/v1/ssh/client-key").await?;
    let path = write_key(&key.private_key)?;
    let me = std::env::current_exe().map_err(|e| local_error("path of banger", e))?;
    let banger = format!("{} --socket {}", me.display(), client.socket().display());
    Ok(format!(
        "# banger: `ssh NAME.vm` for every VM (written by `banger vm ssh-config`).\n\
         Host *.vm\n\
         \x20   User {user}\n\
         \x20   IdentityFile {key}\n\
         \x20   IdentitiesOnly yes\n\
         \x20   KexAlgorithms {kex}\n\
         \x20   ProxyCommand {banger} vm proxy %n %p\n\
         \x20   KnownHostsCommand {banger} vm known-hosts %H\n\
         \x20   UserKnownHostsFile /dev/null\n\
         \x20   StrictHostKeyChecking yes\n\
         \x20   LogLevel ERROR\n",
        user = key.user,
        key = path.display(),
        kex = banger_api::vms::SSH_KEX_ALGORITHMS,
    ))
}

/// Runs the system ssh with the VM's key and pinned host key, through
/// `banger vm proxy` (so it works from any network namespace).
async fn ssh(client: &Client, name: &str, command: &[String]) -> Result<u8, ClientError> {
    use std::os::unix::process::CommandExt;
    let info: banger_api::VmSshInfo = client.get(&format!("/v1/vms/{name}/ssh")).await?;
    let key = write_key(&info.private_key)?;
    let known = key_dir()?.join(format!("{name}.known_hosts"));
    let parts: Vec<&str> = info.host_key.split_whitespace().take(2).collect();
    std::fs::write(&known, format!("{} {}\n", info.host_alias, parts.join(" ")))
        .map_err(|e| local_error("known_hosts", e))?;
    let me = std::env::current_exe().map_err(|e| local_error("path of banger", e))?;
    let proxy = format!(
        "{} --socket {} vm proxy {} 22",
        me.display(),
        client.socket().display(),
        name
    );
    let mut cmd = std::process::Command::new("ssh");
    cmd.arg("-i")
        .arg(&key)
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg("-o")
        .arg(format!(
            "KexAlgorithms={}",
            banger_api::vms::SSH_KEX_ALGORITHMS
        ))
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known.display()))
        .arg("-o")
        .arg(format!("HostKeyAlias={}", info.host_alias))
        .arg("-o")
        .arg(format!("ProxyCommand={proxy}"))
        .arg(format!("{}@{}", info.user, info.host_alias));
    if !command.is_empty() {
        cmd.arg("--").args(command);
    }
    let err = cmd.exec();
    Err(ClientError::Api(
        banger_api::ApiError::new(
            banger_api::ErrorCode::Unavailable,
            format!("Cannot run ssh: {err}"),
        )
        .with_hint("Install it with: sudo apt-get install openssh-client"),
    ))
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

/// `--backend`: `auto`, `qemu` or `firecracker`.
fn parse_backend(s: &str) -> Result<BackendChoice, String> {
    match s {
        "auto" => Ok(BackendChoice::Auto),
        "qemu" => Ok(BackendChoice::Qemu),
        "firecracker" => Ok(BackendChoice::Firecracker),
        other => Err(format!("{other:?} is not auto, qemu or firecracker")),
    }
}

fn join_backends(b: &[banger_api::Backend], sep: &str) -> String {
    b.iter().map(|b| b.as_str()).collect::<Vec<_>>().join(sep)
}
