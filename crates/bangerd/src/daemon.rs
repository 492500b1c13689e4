//! Composition root: builds each subsystem, wires them into the API, and
//! runs until SIGTERM/SIGINT.
//!
//! Shutdown: stop accepting requests, ask running operations to cancel,
//! wait up to `daemon.shutdown_grace_secs` for them, then exit. VMs are
//! never stopped by a daemon shutdown; the next daemon adopts them.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use banger_core::config::Config;
use banger_core::images::Images;
use banger_core::ops::Ops;
use banger_core::paths::Layout;
use banger_core::store::Store;
use banger_core::vms::{Vms, VmsConfig};
use tokio_util::sync::CancellationToken;

use crate::state::{Daemon, UiState};
use crate::{api, lock, logging, socket, ui};

fn create_dir(path: &std::path::Path, mode: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("Cannot create {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("Cannot set the mode of {}", path.display()))
}

/// The runtime dir: made 0755 when missing. An existing one keeps the mode
/// its admin gave it (e.g. 0750 to keep others from the socket's path)
/// unless others could write into it, which is put right with a warning.
/// Returns the loose mode it put right.
fn runtime_dir(path: &std::path::Path) -> anyhow::Result<Option<u32>> {
    use std::os::unix::fs::MetadataExt;
    if !path.exists() {
        return create_dir(path, 0o755).map(|()| None);
    }
    let mode = std::fs::metadata(path)
        .with_context(|| format!("Cannot read {}", path.display()))?
        .mode();
    if mode & 0o022 != 0 {
        create_dir(path, 0o755)?;
        return Ok(Some(mode & 0o7777));
    }
    Ok(None)
}

/// How long an ended operation is kept (its events with it).
const OPS_KEEP_DAYS: i64 = 30;

/// Forgets ended operations older than [`OPS_KEEP_DAYS`], at start and
/// every six hours until `stop`.
fn forget_old_ops(ops: Ops, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(6 * 3600));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let ops = ops.clone();
            let r = tokio::task::spawn_blocking(move || {
                ops.prune(chrono::Duration::days(OPS_KEEP_DAYS))
            })
            .await;
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "cannot forget old operations");
            }
        }
    });
}

/// `bangerd --uninstall-network`: removes banger's network from the
/// namespace and restores IPv4 forwarding; the daemon must be stopped.
pub async fn uninstall_network(config: Config) -> anyhow::Result<()> {
    let layout = Layout::new(&config.daemon.state_dir, &config.daemon.runtime_dir);
    let _lock = lock::acquire(&layout.lock_file(), &layout.state_dir)?;
    let store = Arc::new(Store::open(&layout.db())?);
    let ops = Ops::new(store.clone());
    let images = Images::new(layout.clone(), store.clone(), ops.clone(), String::new())?;
    let vms = Vms::new(layout, store, ops, images, vms_config(&config)?);
    vms.uninstall_network()
        .map_err(|e| anyhow::anyhow!("{}", banger_core::error::error_chain(&e)))?;
    eprintln!("bangerd: removed banger's network (nftables tables, TAPs, bridge {}); IPv4 forwarding restored", config.network.bridge);
    Ok(())
}

fn vms_config(config: &Config) -> anyhow::Result<VmsConfig> {
    let size = |s: &str| banger_api::units::parse_size(s).map_err(|e| anyhow::anyhow!("{e}"));
    Ok(VmsConfig {
        bridge: config.network.bridge.clone(),
        subnet: banger_core::network::Subnet::parse(&config.network.subnet)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        default_image: config.vm.default_image.clone(),
        cpus: config.vm.cpus,
        memory_mib: u32::try_from(size(&config.vm.memory)? >> 20).unwrap_or(1024),
        work_disk_bytes: size(&config.vm.work_disk_size)?,
        console_log_bytes: size(&config.vm.console_log_size)?,
        accel: config.vm.accel.clone(),
        firecracker_binary: config.firecracker.binary.clone(),
        jailer: config.firecracker.jailer.clone(),
        chroot_base: config.firecracker.chroot_base.clone(),
        jail_uid: config.firecracker.uid,
        jail_gid: config.firecracker.gid,
        agents: banger_core::agents::Agents::new(&config.agents.dir),
        tap_pool: config.network.tap_pool,
        pool_memory_budget: size(&config.pool.memory_budget)?,
        host_routes_to_vms: config.network.netns.is_empty(),
        agent_binary: agent_binary(config),
    })
}

/// The banger-agent guests get; without one they run their shell agent
/// (logged, and `banger doctor` says so).
fn agent_binary(config: &Config) -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok();
    match banger_core::guest_agent::binary::locate(&config.vm.guest_agent, exe.as_deref()) {
        Ok(p) => {
            tracing::info!(path = %p.display(), "guest agent");
            Some(p)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no guest agent: VMs run their shell agent, commands go over SSH");
            None
        }
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let layout = Layout::new(&config.daemon.state_dir, &config.daemon.runtime_dir);
    create_dir(&layout.state_dir, 0o700)?;
    let loose = runtime_dir(&layout.runtime_dir)?;
    let _lock = lock::acquire(&layout.lock_file(), &layout.state_dir)?;
    let _log_guard = logging::init(&layout.log_dir(), &config.daemon.log_level)?;
    banger_core::testhold::configure(config.debug.test_endpoints);
    if let Some(mode) = loose {
        tracing::warn!(path = %layout.runtime_dir.display(), mode = format!("{mode:o}"),
            "the runtime dir was writable by others; made 0755");
    }

    let store = Arc::new(Store::open(&layout.db())?);
    let ops = Ops::new(store.clone());
    let interrupted = ops.recover_interrupted(
        "bangerd stopped while this operation ran (the daemon was killed, crashed, or shut down before it finished)",
    )?;
    if !interrupted.is_empty() {
        tracing::warn!(ops = ?interrupted, "marked operations of the previous daemon as interrupted");
    }

    // Scratch space of operations that died with the previous daemon.
    let _ = std::fs::remove_dir_all(layout.tmp_dir());
    let mirror = if config.images.mirror.is_empty() {
        banger_core::images::host_mirror().unwrap_or_else(|| "http://deb.debian.org/debian".into())
    } else {
        config.images.mirror.clone()
    };
    let images = Images::new(layout.clone(), store.clone(), ops.clone(), mirror)?;
    let vms_config = vms_config(&config)?;
    let subnet = vms_config.subnet;
    let vms = Vms::new(
        layout.clone(),
        store.clone(),
        ops.clone(),
        images.clone(),
        vms_config,
    );
    let snapshots = banger_core::vms::Snapshots::new(vms.clone());
    let guests = banger_core::guests::Guests::new(vms.clone());
    let pool = banger_core::vms::WarmPool::new(vms.clone());
    vms.reconcile().map_err(|e| {
        use banger_core::ToApiError as _;
        with_hint(e.hint().as_deref(), e)
    })?;
    snapshots.reconcile()?;
    // After reconcile: only the VMs and snapshots that stay keep files.
    images.remove_orphans(&vms.digests_in_use()?)?;
    pool.refill();
    let sessions = banger_core::sessions::Sessions::new(store.clone(), vms.clone());
    let workspaces = banger_core::workspaces::Workspaces::new(store.clone(), vms.clone());
    let forwards = banger_core::forwards::Forwards::new(
        store.clone(),
        vms.clone(),
        config.network.public_forwards,
    );
    forwards.restore();
    let dns = banger_core::dns::Dns::new(
        vms.clone(),
        subnet,
        &config.network.bridge,
        !config.network.netns.is_empty(),
    );
    let credentials =
        banger_core::credentials::Credentials::new(config.auth.items.clone(), vms.clone());
    let agent_runs = banger_core::agent_runs::AgentRuns::new(
        banger_core::agents::Agents::new(&config.agents.dir),
        vms.clone(),
        sessions.clone(),
        workspaces.clone(),
    );

    // The dashboard's listener, bound in the host's own namespace.
    let mut ui = UiState {
        logins: Default::default(),
        addr: None,
        error: None,
    };
    let ui_listener = match config.ui.addr() {
        None => {
            ui.error = Some("the dashboard is off (ui.listen is empty)".into());
            None
        }
        Some(addr) => {
            let bound = banger_core::network::in_host_netns(move || {
                let l = std::net::TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(l)
            })
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .and_then(|l| tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string()));
            match bound {
                Ok(l) => {
                    ui.addr = l.local_addr().ok();
                    Some(l)
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot listen for the dashboard");
                    ui.error = Some(format!("cannot listen on {addr}: {e}"));
                    None
                }
            }
        }
    };

    let socket_path = config.socket_path();
    let gid = socket::group_gid(&config.daemon.socket_group).map_err(|e| with_hint(e.hint(), e))?;
    let listener = socket::bind(&socket_path, gid).map_err(|e| with_hint(e.hint(), e))?;

    let access = banger_core::access::Access::new(store.clone(), config.access.confine_users);
    let e2b = banger_core::e2b::E2b::new(
        banger_core::e2b::E2bParts {
            store: store.clone(),
            vms: vms.clone(),
            guests: guests.clone(),
            snapshots: snapshots.clone(),
            ops: ops.clone(),
            access: access.clone(),
        },
        &layout.state_dir.join("e2b.key"),
    )
    .map_err(|e| anyhow::anyhow!("{}", banger_core::error::error_chain(&e)))?;
    let daemon = Arc::new(Daemon {
        access,
        e2b,
        e2b_addr: std::sync::OnceLock::new(),
        config,
        layout,
        store,
        ops,
        images,
        vms,
        snapshots,
        pool,
        guests,
        sessions,
        workspaces,
        credentials,
        agent_runs,
        forwards,
        dns,
        ui,
        socket_gid: gid,
        started_at: chrono::Utc::now(),
        shutdown: CancellationToken::new(),
    });
    tracing::info!(
        socket = %socket_path.display(),
        state_dir = %daemon.layout.state_dir.display(),
        pid = std::process::id(),
        schema = daemon.store.schema_version()?,
        "bangerd {} listening",
        env!("CARGO_PKG_VERSION")
    );

    daemon.vms.housekeeping(daemon.shutdown.clone());
    forget_old_ops(daemon.ops.clone(), daemon.shutdown.clone());
    crate::e2b::reap(daemon.clone(), daemon.shutdown.clone());
    if !daemon.config.e2b.listen.is_empty() {
        let listen = daemon.config.e2b.listen.clone();
        match crate::e2b::serve(daemon.clone(), &listen, daemon.shutdown.clone()).await {
            Ok(addr) => {
                let _ = daemon.e2b_addr.set(addr);
            }
            // Like the dashboard: the daemon runs on without it.
            Err(e) => tracing::warn!(%listen, error = %e, "cannot start the E2B listener"),
        }
    }

    // The .vm DNS server, once the bridge exists.
    {
        let (dns, mut up, stop) = (
            daemon.dns.clone(),
            daemon.vms.network_up(),
            daemon.shutdown.clone(),
        );
        tokio::spawn(async move {
            if up.wait_for(|u| *u).await.is_err() {
                return;
            }
            if let Err(e) = dns.start(stop).await {
                tracing::warn!(error = %e, "cannot start the .vm DNS server on the bridge address");
                dns.set_failed(format!(
                    "cannot listen on port 53 of the bridge address: {e}"
                ));
            }
        });
    }

    if let Some(l) = ui_listener {
        let app = ui::router(daemon.clone());
        let stop = daemon.shutdown.clone();
        tracing::info!(addr = ?daemon.ui.addr, "dashboard listening (banger ui prints its URL)");
        tokio::spawn(async move {
            let _ = axum::serve(l, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
    }

    let app = api::router(daemon.clone());
    let shutdown = daemon.shutdown.clone();
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<api::peer::PeerCred>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await });
    let server = tokio::spawn(async move { server.await });

    wait_for_signal().await?;
    tracing::info!("shutting down; VMs keep running");
    daemon.ops.cancel_all();
    daemon.shutdown.cancel();
    let grace = Duration::from_secs(daemon.config.daemon.shutdown_grace_secs);
    let deadline = Instant::now() + grace;
    while daemon.ops.running_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if daemon.ops.running_count() > 0 {
        tracing::warn!(
            running = daemon.ops.running_count(),
            "operations still running after the grace period; the next start marks them interrupted"
        );
    }
    // In-flight requests get what is left of the grace period (at least 1 s).
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    if tokio::time::timeout(left, server).await.is_err() {
        tracing::warn!("connections still open at shutdown; closing them");
    }
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!("bangerd stopped");
    Ok(())
}

fn with_hint(hint: Option<&str>, e: impl std::error::Error) -> anyhow::Error {
    let msg = banger_core::error::error_chain(&e);
    match hint {
        Some(h) => anyhow::anyhow!("{msg}\nhint: {h}"),
        None => anyhow::anyhow!("{msg}"),
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
