//! `banger vm`: the VM lifecycle (create, list, show, start, stop, remove,
//! logs, stats, set, snapshot, fork). Networking verbs are in
//! [`super::vm_net`], SSH in [`super::vm_ssh`].

use std::io::Write as _;

use banger::exit;
use banger::output::{self, Style};
use banger_api::vms::limits;
use banger_api::{
    Backend, BackendChoice, OpState, Operation, Vm, VmCreateRequest, VmForkRequest, VmResources,
    VmSetRequest, VmSnapshotRequest, VmState, VmStopRequest,
};
use clap::{Args, Subcommand};

use super::{follow, print_json_line, print_list, print_one, CmdResult, Ctx, Row, Wait};

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create a VM and boot it (waits until SSH is ready).
    Create(CreateArgs),
    /// Snapshot a VM: its disks, and its memory and device state when it
    /// runs (it is paused meanwhile). Restore with `vm create --from-snapshot`.
    Snapshot {
        /// The VM.
        name: String,
        /// Snapshot name (default: NAME-YYYYMMDD-HHMMSS).
        snapshot: Option<String>,
        #[arg(long, value_enum, default_value = "ssh")]
        wait: Wait,
    },
    /// Fork a running VM: a copy with its memory, processes and disks, and
    /// its own name, address, MAC, host key and machine-id. Both keep running.
    Fork {
        /// The running VM to copy.
        name: String,
        /// The new VM's name.
        new: String,
        #[arg(long, value_enum, default_value = "ssh")]
        wait: Wait,
    },
    /// List VMs.
    #[command(visible_alias = "list")]
    Ls,
    /// Show a VM.
    Show {
        /// The VM.
        name: String,
    },
    /// Boot a stopped VM.
    Start {
        /// The VM.
        name: String,
        #[arg(long, value_enum, default_value = "ssh")]
        wait: Wait,
    },
    /// Stop a VM: power off gracefully, kill after --timeout seconds.
    Stop {
        /// The VM.
        name: String,
        /// Kill at once.
        #[arg(long)]
        force: bool,
        /// Seconds to wait for the guest to power off.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Stop then start.
    Restart {
        /// The VM.
        name: String,
    },
    /// Kill the VMM at once (same as stop --force).
    Kill {
        /// The VM.
        name: String,
    },
    /// Remove a VM and its disks (--force: even while it runs).
    #[command(visible_alias = "remove")]
    Rm {
        /// The VM.
        name: String,
        /// Stop it first if it runs.
        #[arg(long)]
        force: bool,
    },
    /// Print the serial console log (-f: keep following it).
    Logs {
        /// The VM.
        name: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// Host and guest figures: VMM CPU and RSS, disk use; guest load, memory, disks.
    Stats {
        /// The VM.
        name: String,
    },
    /// Change cpus or memory, or grow the root or work disk (VM stopped);
    /// change its network policy (any time).
    Set(SetArgs),
    /// Run a program in the VM through its agent, its arguments kept
    /// exactly (no shell); stdin (-i), a terminal (-t), stdout, stderr and
    /// the exit code pass through.
    Exec(super::vm_exec::ExecArgs),
    /// Copy files or directories between the host and a VM, in docker's
    /// form: `vm cp FILE NAME:PATH`, `vm cp NAME:PATH DEST`, `-` for a tar
    /// stream on stdin or stdout.
    Cp {
        /// A host path, NAME:PATH, or -.
        src: String,
        /// A host path, NAME:PATH, or -.
        dst: String,
    },
    #[command(flatten)]
    Net(super::vm_net::VmNetCommand),
    #[command(flatten)]
    Ssh(super::vm_ssh::VmSshCommand),
}

/// A VM's resources as flags (`vm create`, `vm set`).
#[derive(Debug, Clone, Default, Args)]
pub struct ResourceArgs {
    /// vCPUs, 1..=32 [default: the agent profile's, else the daemon's vm.cpus].
    #[arg(long, value_parser = cpus_arg)]
    pub cpus: Option<u32>,
    /// Memory, 128M..=64G, e.g. 1G or 512M [default: the daemon's vm.memory].
    #[arg(long, value_parser = memory_arg)]
    pub memory: Option<String>,
    /// Root disk size, e.g. 8G: at least the image's; `vm set` grows it
    /// [default: the image's size].
    #[arg(long, value_parser = size_arg)]
    pub disk_size: Option<String>,
    /// The work disk mounted at /work, e.g. 4G (64M..=16T); `vm set` grows it
    /// [default: the daemon's vm.work_disk_size].
    #[arg(long, value_parser = work_size_arg)]
    pub work_disk_size: Option<String>,
}

impl ResourceArgs {
    /// The request's resources. Pure.
    pub fn resources(&self) -> VmResources {
        VmResources {
            cpus: self.cpus,
            memory: self.memory.clone(),
            disk_size: self.disk_size.clone(),
            work_disk_size: self.work_disk_size.clone(),
        }
    }
}

/// A VM's network policy flags (`vm create`, `vm set`).
#[derive(Debug, Clone, Default, Args)]
pub struct NetPolicy {
    /// Isolate the VM: no traffic to or from other VMs, only DNS and ping to the host.
    #[arg(long)]
    pub isolate: bool,
    /// Allow outbound traffic only to these IPv4 addresses or CIDRs (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "CIDR,...",
        conflicts_with = "no_egress"
    )]
    pub egress_allow: Option<Vec<String>>,
    /// No outbound traffic at all (DNS to the host still works).
    #[arg(long)]
    pub no_egress: bool,
}

impl NetPolicy {
    /// The allow-list to send: `--no-egress` is an empty one. Pure.
    pub fn egress(&self) -> Option<Vec<String>> {
        if self.no_egress {
            Some(Vec::new())
        } else {
            self.egress_allow.clone()
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// The new VM's name: 1-63 of a-z, 0-9 and '-' (also its hostname and
    /// NAME.vm).
    pub name: String,
    /// Image [default: the daemon's vm.default_image].
    #[arg(long)]
    pub image: Option<String>,
    #[command(flatten)]
    pub resources: ResourceArgs,
    /// The VMM: auto (Firecracker where KVM runs stock kernels, else QEMU),
    /// qemu or firecracker.
    #[arg(long, value_parser = backend_arg, value_name = "auto|qemu|firecracker")]
    pub backend: Option<BackendChoice>,
    /// Set the VM up for a coding agent: opencode, claude-code, codex, or
    /// a profile in the daemon's agents.dir [default: the image's agent].
    #[arg(long)]
    pub agent: Option<String>,
    #[command(flatten)]
    pub net: NetPolicy,
    /// Create the disks but do not boot.
    #[arg(long)]
    pub no_start: bool,
    /// Restore this snapshot instead of booting (banger vm snapshot): the
    /// VM resumes where the snapshot was taken, with its own name,
    /// address, MAC, host key and machine-id.
    #[arg(long, value_name = "SNAPSHOT", conflicts_with_all = [
        "image", "cpus", "memory", "work_disk_size", "disk_size", "backend", "no_start"
    ])]
    pub from_snapshot: Option<String>,
    #[arg(long, value_enum, default_value = "ssh")]
    pub wait: Wait,
}

impl CreateArgs {
    /// The create request. Pure.
    pub fn request(&self) -> VmCreateRequest {
        VmCreateRequest {
            name: self.name.clone(),
            image: self.image.clone(),
            resources: self.resources.resources(),
            backend: self.backend,
            no_start: self.no_start,
            agent: self.agent.clone(),
            isolated: self.net.isolate,
            egress_allow: self.net.egress(),
            from_snapshot: self.from_snapshot.clone(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct SetArgs {
    /// The VM.
    pub name: String,
    #[command(flatten)]
    pub resources: ResourceArgs,
    #[command(flatten)]
    pub net: NetPolicy,
    /// Stop isolating the VM.
    #[arg(long, conflicts_with = "isolate")]
    pub no_isolate: bool,
    /// Remove the egress allow-list (outbound traffic anywhere).
    #[arg(long, conflicts_with_all = ["egress_allow", "no_egress"])]
    pub egress_all: bool,
}

impl SetArgs {
    /// The set request. Pure.
    pub fn request(&self) -> VmSetRequest {
        let isolated = match (self.net.isolate, self.no_isolate) {
            (true, _) => Some(true),
            (false, true) => Some(false),
            (false, false) => None,
        };
        VmSetRequest {
            resources: self.resources.resources(),
            isolated,
            egress_allow: self.net.egress(),
            egress_all: self.egress_all,
        }
    }
}

/// `--backend`: `auto`, `qemu` or `firecracker`. Pure.
pub fn backend_arg(s: &str) -> Result<BackendChoice, String> {
    match s {
        "auto" => Ok(BackendChoice::Auto),
        "qemu" => Ok(BackendChoice::Qemu),
        "firecracker" => Ok(BackendChoice::Firecracker),
        other => Err(format!("{other:?} is not auto, qemu or firecracker")),
    }
}

/// `--cpus`: a number in 1..=32 (a usage error otherwise). Pure.
pub fn cpus_arg(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of vCPUs (1..=32)"))?;
    if limits::CPUS.contains(&n) {
        Ok(n)
    } else {
        Err(format!("{n} is not in 1..=32"))
    }
}

/// A size such as `2G` (a usage error when it does not parse). Pure.
pub fn size_arg(s: &str) -> Result<String, String> {
    banger_api::units::parse_size(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

/// `--memory`: a size in 128M..=64G. Pure.
pub fn memory_arg(s: &str) -> Result<String, String> {
    let mib = banger_api::units::parse_size(s).map_err(|e| e.to_string())? >> 20;
    if limits::MEMORY_MIB.contains(&mib) {
        Ok(s.to_string())
    } else {
        Err(format!("{mib} MiB is not in 128 MiB..=64 GiB"))
    }
}

/// `--work-disk-size`: a size in 64M..=16T. Pure.
pub fn work_size_arg(s: &str) -> Result<String, String> {
    let b = banger_api::units::parse_size(s).map_err(|e| e.to_string())?;
    if limits::WORK_DISK_BYTES.contains(&b) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{} is not between 64 MiB and 16 TiB",
            output::size(b)
        ))
    }
}

pub fn join_backends(b: &[Backend], sep: &str) -> String {
    b.iter().map(|b| b.as_str()).collect::<Vec<_>>().join(sep)
}

impl Row for Vm {
    const HEADER: &'static [&'static str] = &[
        "name", "state", "backend", "ip", "cpus", "memory", "image", "uptime",
    ];
    fn cells(&self, style: &Style) -> Vec<String> {
        vec![
            self.name.clone(),
            state_word(style, self.state),
            format!("{}/{}", self.backend, self.accel),
            self.ip.clone(),
            self.cpus.to_string(),
            output::size(u64::from(self.memory_mib) << 20),
            self.image.clone(),
            uptime(self),
        ]
    }
}

fn state_word(style: &Style, s: VmState) -> String {
    match s {
        VmState::Running => style.green("running"),
        VmState::Stopped => style.dim("stopped"),
        s => style.yellow(s.as_str()),
    }
}

fn uptime(v: &Vm) -> String {
    match (v.state, v.started_at) {
        (VmState::Running, Some(t)) => output::duration(chrono::Utc::now() - t),
        _ => "-".into(),
    }
}

pub async fn run(ctx: &Ctx, cmd: VmCommand) -> CmdResult {
    let c = &ctx.client;
    match cmd {
        VmCommand::Create(a) => {
            let op = c.vm_create(&a.request()).await?;
            end_vm_action(ctx, follow(ctx, op, a.wait).await?).await
        }
        VmCommand::Snapshot {
            name,
            snapshot,
            wait,
        } => {
            let req = VmSnapshotRequest { name: snapshot };
            let op = c.vm_snapshot(&name, &req).await?;
            end_snapshot(ctx, follow(ctx, op, wait).await?).await
        }
        VmCommand::Fork { name, new, wait } => {
            let op = c.vm_fork(&name, &VmForkRequest { name: new }).await?;
            end_vm_action(ctx, follow(ctx, op, wait).await?).await
        }
        VmCommand::Ls => {
            let list = c.vms().await?;
            let empty = "No VMs. Create one with: banger vm create NAME";
            print_list(ctx.json, &ctx.style, &list, &list.vms, empty);
            Ok(exit::OK)
        }
        VmCommand::Show { name } => {
            print_one(ctx, &c.vm(&name).await?, |v| print_vm(&ctx.style, v))
        }
        VmCommand::Start { name, wait } => {
            let done = follow(ctx, c.vm_start(&name).await?, wait).await?;
            end_vm_action(ctx, done).await
        }
        VmCommand::Stop {
            name,
            force,
            timeout,
        } => {
            let req = VmStopRequest {
                force,
                timeout_secs: Some(timeout),
            };
            print_one(ctx, &c.vm_stop(&name, &req).await?, |v| {
                println!(
                    "{}: {}",
                    v.name,
                    v.stop_reason.as_deref().unwrap_or("stopped")
                )
            })
        }
        VmCommand::Kill { name } => {
            let req = VmStopRequest {
                force: true,
                timeout_secs: None,
            };
            print_one(ctx, &c.vm_stop(&name, &req).await?, |v| {
                println!("{}: killed", v.name)
            })
        }
        VmCommand::Restart { name } => {
            c.vm_stop(&name, &VmStopRequest::default()).await?;
            let done = follow(ctx, c.vm_start(&name).await?, Wait::Ssh).await?;
            end_vm_action(ctx, done).await
        }
        VmCommand::Rm { name, force } => {
            c.vm_rm(&name, force).await?;
            super::print_removed(ctx, "vm", &name)
        }
        VmCommand::Logs { name, follow } => logs(ctx, &name, follow).await,
        VmCommand::Stats { name } => print_one(ctx, &c.vm_stats(&name).await?, |s| {
            print_stats(&ctx.style, s)
        }),
        VmCommand::Set(a) => print_one(ctx, &c.vm_set(&a.name, &a.request()).await?, |v| {
            println!(
                "{}: {} cpus, {}, work disk {}",
                v.name,
                v.cpus,
                output::size(u64::from(v.memory_mib) << 20),
                output::size(v.work_disk_bytes)
            )
        }),
        VmCommand::Exec(a) => super::vm_exec::exec(ctx, a).await,
        VmCommand::Cp { src, dst } => super::vm_exec::cp(ctx, &src, &dst).await,
        VmCommand::Net(cmd) => super::vm_net::run(ctx, cmd).await,
        VmCommand::Ssh(cmd) => super::vm_ssh::run(ctx, cmd).await,
    }
}

/// How an action that leaves a VM running (or created) ends: the VM as
/// JSON, or a sentence with the next step.
async fn end_vm_action(ctx: &Ctx, done: Option<Operation>) -> CmdResult {
    let Some(op) = done else { return Ok(exit::OK) };
    if op.state != OpState::Succeeded {
        return Ok(exit::FAILURE);
    }
    let vm = ctx.client.vm(&op.target).await?;
    if ctx.json {
        print_json_line(&vm);
    } else {
        println!("{}", vm_sentence(&vm, &op));
    }
    Ok(exit::OK)
}

/// `box1 is running at 172.30.0.3 (booted in 6.1 s). Next: banger vm ssh box1`. Pure.
pub fn vm_sentence(vm: &Vm, op: &Operation) -> String {
    let name = &vm.name;
    if vm.state != VmState::Running {
        return format!(
            "{name} is created and {}. Start it with: banger vm start {name}",
            vm.state.as_str()
        );
    }
    let took = op
        .finished_at
        .map(|f| (f - op.created_at).num_milliseconds() as f64 / 1000.0)
        .unwrap_or(0.0);
    let how = if super::result_bool(op, "from_pool") {
        format!("from the warm pool in {took:.2} s")
    } else if let Some(src) = op.result.as_ref().and_then(|r| r.get("forked_from")) {
        format!("forked from {} in {took:.1} s", src.as_str().unwrap_or("?"))
    } else if let Some(snap) = op.result.as_ref().and_then(|r| r.get("from_snapshot")) {
        format!(
            "restored from {} in {took:.1} s",
            snap.as_str().unwrap_or("?")
        )
    } else {
        let boot = super::result_f64(op, "boot_seconds").unwrap_or(took);
        format!("booted in {boot:.1} s")
    };
    format!(
        "{name} is running at {} ({how}). Next: banger vm ssh {name}",
        vm.ip
    )
}

async fn end_snapshot(ctx: &Ctx, done: Option<Operation>) -> CmdResult {
    let Some(op) = done else { return Ok(exit::OK) };
    if op.state != OpState::Succeeded {
        return Ok(exit::FAILURE);
    }
    let name = op
        .result
        .as_ref()
        .and_then(|r| r.get("snapshot"))
        .and_then(|s| s.as_str())
        .unwrap_or_default()
        .to_string();
    let list = ctx.client.snapshots().await?;
    let Some(s) = list.snapshots.into_iter().find(|s| s.name == name) else {
        return Err(banger::client::ClientError::Protocol(format!(
            "the snapshot {name:?} the operation made is not listed"
        )));
    };
    if ctx.json {
        print_json_line(&s);
    } else {
        let of = if s.with_memory {
            "disks and memory"
        } else {
            "disks"
        };
        println!(
            "snapshot {} of {} taken ({of}, {}). Restore it with: banger vm create NEW \
             --from-snapshot {}",
            s.name,
            s.source_vm,
            output::size(s.size_bytes),
            s.name
        );
    }
    Ok(exit::OK)
}

async fn logs(ctx: &Ctx, name: &str, follow: bool) -> CmdResult {
    let mut offset = 0u64;
    loop {
        let (text, next) = ctx.client.vm_logs(name, offset).await?;
        // The console is the guest's: on a terminal, no escape sequences
        // but colours reach it.
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            print!("{}", banger::output::printable(&text));
        } else {
            print!("{text}");
        }
        let _ = std::io::stdout().flush();
        offset = next;
        if !follow {
            return Ok(exit::OK);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn print_vm(style: &Style, v: &Vm) {
    println!("{} ({})", style.bold(&v.name), state_word(style, v.state));
    println!("id:        {}", v.id);
    println!("backend:   {}/{}", v.backend, v.accel);
    println!("image:     {}", v.image);
    println!("address:   {} ({})", v.ip, v.mac);
    println!(
        "resources: {} cpus, {}, work disk {}",
        v.cpus,
        output::size(u64::from(v.memory_mib) << 20),
        output::size(v.work_disk_bytes)
    );
    if let Some(pid) = v.pid {
        println!("pid:       {pid}");
    }
    println!("uptime:    {}", uptime(v));
    let isolation = if v.isolated {
        "isolated"
    } else {
        "not isolated"
    };
    let egress = match &v.egress_allow {
        None => "egress anywhere".to_string(),
        Some(l) if l.is_empty() => "no egress".to_string(),
        Some(l) => format!("egress only to {}", l.join(", ")),
    };
    println!("network:   {isolation}, {egress}");
    if let Some(a) = &v.agent {
        println!("agent:     {a}");
    }
    if let Some(r) = &v.stop_reason {
        println!("stopped:   {r}");
    }
    if let Some(p) = &v.problem {
        println!("problem:   {}", banger::output::printable(p));
    }
}

fn print_stats(style: &Style, s: &banger_api::VmStats) {
    let dash = || "-".to_string();
    println!("{} ({})", style.bold(&s.name), s.state.as_str());
    let h = &s.host;
    println!(
        "host:  pid {}  cpu {}  rss {}  disks {}",
        h.pid.map(|p| p.to_string()).unwrap_or_else(dash),
        h.cpu_percent
            .map(|c| format!("{c:.1}%"))
            .unwrap_or_else(dash),
        h.rss_bytes.map(output::size).unwrap_or_else(dash),
        output::size(h.disk_allocated_bytes)
    );
    match (&s.guest, &s.guest_error) {
        (Some(g), _) => {
            let [a, b, c] = g.load;
            println!("guest: load {a:.2} {b:.2} {c:.2}");
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        vm: VmCommand,
    }

    fn parse(args: &[&str]) -> Result<VmCommand, clap::Error> {
        let mut argv = vec!["t"];
        argv.extend_from_slice(args);
        T::try_parse_from(argv).map(|t| t.vm)
    }

    #[test]
    fn create_arguments_become_the_request() {
        let Ok(VmCommand::Create(a)) = parse(&[
            "create",
            "box",
            "--cpus",
            "4",
            "--memory",
            "2G",
            "--no-egress",
            "--isolate",
            "--backend",
            "qemu",
        ]) else {
            panic!("parses");
        };
        let r = a.request();
        assert_eq!(r.resources.cpus, Some(4));
        assert_eq!(r.resources.memory.as_deref(), Some("2G"));
        assert_eq!(r.egress_allow, Some(vec![]));
        assert!(r.isolated);
        assert_eq!(r.backend, Some(BackendChoice::Qemu));
        assert_eq!(a.wait, Wait::Ssh);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for (args, why) in [
            (vec!["create", "x", "--cpus", "0"], "not in 1..=32"),
            (vec!["create", "x", "--cpus", "zero"], "not a number"),
            (vec!["create", "x", "--memory", "lots"], "Invalid size"),
            (vec!["create", "x", "--memory", "64M"], "not in 128 MiB"),
            (
                vec!["create", "x", "--work-disk-size", "1M"],
                "between 64 MiB",
            ),
            (vec!["set", "x", "--disk-size", "huge"], "Invalid size"),
            (vec!["create", "x", "--backend", "vmware"], "vmware"),
        ] {
            let e = parse(&args).expect_err(why);
            assert_eq!(e.exit_code(), 2, "{args:?}");
            assert!(e.to_string().contains(why), "{args:?}: {e}");
        }
    }

    #[test]
    fn set_arguments_become_the_request() {
        let Ok(VmCommand::Set(a)) = parse(&["set", "box", "--no-isolate", "--egress-all"]) else {
            panic!("parses");
        };
        let r = a.request();
        assert_eq!((r.isolated, r.egress_all), (Some(false), true));
        assert!(!r.resources.any());
    }

    #[test]
    fn the_sentence_names_the_address_and_the_next_step() {
        let vm: Vm = serde_json::from_value(serde_json::json!({
            "id": "i", "name": "box1", "image": "img", "backend": "qemu", "accel": "tcg",
            "state": "running", "cpus": 2, "memory_mib": 1024, "work_disk_bytes": 1,
            "ip": "172.30.0.3", "mac": "m", "created_at": "2026-12-07T00:00:00Z",
            "isolated": false
        }))
        .expect("a Vm");
        let op: Operation = serde_json::from_value(serde_json::json!({
            "id": "op", "kind": "vm.create", "target": "box1", "state": "succeeded",
            "created_at": "2026-12-07T00:00:00Z", "steps": [], "last_seq": 1,
            "cancel_requested": false,
            "result": { "boot_seconds": 6.08 }
        }))
        .expect("an Operation");
        assert_eq!(
            vm_sentence(&vm, &op),
            "box1 is running at 172.30.0.3 (booted in 6.1 s). Next: banger vm ssh box1"
        );
    }
}
