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
    /// Guest images: build, import, list, show, remove.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
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
        Command::Image(cmd) => image(client, json, &style, cmd).await,
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
                            i.backends.join(","),
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
                println!("backends: {}", i.backends.join(", "));
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
