//! `bangerd`: the banger daemon. Runs as root, owns all state, and serves the
//! `/v1` API on a Unix socket. See ARCHITECTURE.md for the map.

mod api;
mod daemon;
mod e2b;
mod lock;
mod logging;
mod socket;
mod state;
mod ui;
mod ui_login;

use std::path::PathBuf;

use clap::Parser;

use banger_core::config::{Config, DEFAULT_CONFIG_TOML};

const DEFAULT_CONFIG_PATH: &str = "/etc/banger/config.toml";

/// The banger daemon.
///
/// Flags override the config file, which overrides the defaults
/// (`bangerd --print-default-config` prints them, documented).
#[derive(Debug, Parser)]
#[command(name = "bangerd", version, about)]
struct Args {
    /// Config file (TOML). A missing default file means "all defaults";
    /// a file named here must exist.
    #[arg(long, env = "BANGER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// State directory (database, images, disks, logs) [default: /var/lib/banger]
    #[arg(long, env = "BANGER_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Runtime directory (sockets, per-VM runtime files) [default: /run/banger]
    #[arg(long, env = "BANGER_RUNTIME_DIR", value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
    /// API socket [default: <runtime-dir>/bangerd.sock]
    #[arg(long, env = "BANGER_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Network namespace for bridge, TAPs and VMMs (overrides network.netns).
    #[arg(long, env = "BANGER_NETNS", value_name = "NAME")]
    netns: Option<String>,
    /// Print the default configuration, every key documented, and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Print the OpenAPI document of the API and exit.
    #[arg(long)]
    print_openapi: bool,
    /// Remove banger's network (nftables tables, TAPs, bridge) and restore
    /// IPv4 forwarding to its value before banger, then exit. The daemon
    /// must be stopped and no VM running.
    #[arg(long)]
    uninstall_network: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.print_default_config {
        print!("{DEFAULT_CONFIG_TOML}");
        return std::process::ExitCode::SUCCESS;
    }
    if args.print_openapi {
        println!("{}", api::openapi_json());
        return std::process::ExitCode::SUCCESS;
    }
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bangerd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let mut config = Config::load(&path, explicit)?;
    if let Some(d) = args.state_dir {
        config.daemon.state_dir = d;
    }
    if let Some(d) = args.runtime_dir {
        config.daemon.runtime_dir = d;
    }
    if let Some(s) = args.socket {
        config.daemon.socket = s;
    }
    if let Some(n) = args.netns {
        config.network.netns = n;
    }
    config.validate(std::path::Path::new("command-line flags"))?;
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "bangerd must run as root: it manages network devices, disks and VMM processes. \
             Start it with sudo, or through the installed service (see README)"
        );
    }
    if !config.network.netns.is_empty() {
        // Before any other thread exists: every thread and child inherits it.
        banger_core::network::enter_netns(&config.network.netns)
            .map_err(|e| anyhow::anyhow!("{}", banger_core::error::error_chain(&e)))?;
    }
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.uninstall_network {
        return runtime.block_on(daemon::uninstall_network(config));
    }
    runtime.block_on(daemon::run(config))
}

/// Raises the soft limit on open files to the hard one (1,024 by default
/// is a few hundred VMs' sockets, logs and connections). Logged, not fatal.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            eprintln!("bangerd: cannot raise the open-file limit: {e}");
        }
    }
}
