//! `fake-firecracker`: stands in for the `firecracker` binary where it cannot
//! run (no KVM able to boot real kernels). It serves Firecracker's API on
//! `--api-sock` and behaves as Firecracker v1.16.1 does towards a client:
//!
//! - every request is checked against the vendored spec (operation exists,
//!   body matches its schema, no unknown fields); failures are `400` with
//!   `{"fault_message": ...}`;
//! - the state machine: pre-boot-only calls are refused after
//!   `InstanceStart`, post-boot-only calls before it, `InstanceStart` needs a
//!   boot source, snapshots need a paused VM, `snapshot/load` only on a
//!   fresh process;
//! - after `InstanceStart` it prints a boot banner and banger's readiness
//!   marker on stdout (Firecracker's serial console), and `SendCtrlAltDel`
//!   makes it exit as a powered-off guest would;
//! - snapshots: `snapshot/create` writes the VM's configuration as the
//!   state file; `snapshot/load` (only logger and metrics may come before
//!   it, as in Firecracker) reads it back and fails as Firecracker would
//!   when the state is not a snapshot, the memory file is missing, a
//!   network override names an unknown interface, a drive path recorded in
//!   the snapshot does not open from this process (relative paths resolve
//!   from its working directory), or the vsock socket path is taken;
//! - with a vsock device, a stand-in for banger's guest agent (agent.rs:
//!   banger-agent's protocol) listens on its Unix socket once the "guest"
//!   runs (Firecracker's `CONNECT <port>`
//!   handshake, then `ok NONCE` to every request), logging each request to
//!   `FAKE_FC_AGENT_LOG` when set.
//!
//! Under `fake-jailer`, `FAKE_FC_CHROOT=DIR` makes host paths in requests
//! resolve inside DIR, as they would in the jail.
//!
//! For tests, through the environment: `FAKE_FC_REQUEST_LOG=FILE` appends
//! each request as a JSON line; `FAKE_FC_FAIL="PUT /drives/rootfs"` answers
//! that call with a fault; `FAKE_FC_DIE_ON="PUT /actions"` exits the process
//! abruptly when it arrives; `FAKE_FC_DELAY="PUT /snapshot/create=3000"`
//! answers that call after so many milliseconds; `FAKE_FC_CONSOLE_FLOOD=N`
//! makes the started "guest" write about N bytes a second of numbered
//! lines (`flood 12`) to its serial console, for ever.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use firecracker_api::spec::{Spec, SpecError};
use http::{Reply, Request};
use serde_json::{json, Value};

mod agent;
mod http;

const VERSION: &str = "1.16.1";

#[derive(Default)]
struct Vmm {
    started: bool,
    paused: bool,
    configured: bool,
    boot_source: Option<Value>,
    machine: Option<Value>,
    drives: BTreeMap<String, Value>,
    nets: BTreeMap<String, Value>,
    vsock: Option<Value>,
}

struct Fake {
    spec: Spec,
    id: String,
    vmm: Mutex<Vmm>,
    log: Option<Mutex<std::fs::File>>,
    fail: Option<String>,
    die_on: Option<String>,
    delay: Option<String>,
}

/// A path from a request, as the process sees it (inside its "chroot").
fn host_path(p: &str) -> std::path::PathBuf {
    match std::env::var_os("FAKE_FC_CHROOT") {
        Some(root) => std::path::Path::new(&root).join(p.trim_start_matches('/')),
        None => std::path::PathBuf::from(p),
    }
}

fn fault(msg: impl Into<String>) -> Reply {
    Reply {
        status: 400,
        body: Some(json!({ "fault_message": msg.into() }).to_string()),
    }
}

fn ok_json(v: Value) -> Reply {
    Reply {
        status: 200,
        body: Some(v.to_string()),
    }
}

const PRE_BOOT: &[&str] = &[
    "/boot-source",
    "/drives/{drive_id}",
    "/network-interfaces/{iface_id}",
    "/machine-config",
    "/logger",
    "/metrics",
    "/vsock",
    "/balloon",
    "/entropy",
    "/serial",
    "/mmds/config",
    "/cpu-config",
    "/pmem/{id}",
];

async fn handle(f: Arc<Fake>, req: Request) -> Reply {
    let Request { method, path, body } = req;
    let path = path.split('?').next().unwrap_or_default().to_string();
    if method == "PUT" && body.is_empty() {
        return fault("Empty PUT request.");
    }
    if method == "PATCH" && body.is_empty() {
        return fault("Empty PATCH request.");
    }
    let body_json: Option<Value> = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => Some(v),
            Err(e) => {
                return fault(format!(
                    "An error occurred when deserializing the json body of a request: {e}"
                ))
            }
        }
    };
    let call = format!("{method} {path}");
    if let Some(log) = &f.log {
        let mut file = log.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            file,
            "{}",
            json!({ "method": method, "path": path, "body": body_json })
        );
    }
    if f.die_on.as_deref() == Some(call.as_str()) {
        eprintln!("fake-firecracker: dying on {call} as told");
        std::process::exit(1);
    }
    if let Some(ms) = f
        .delay
        .as_deref()
        .and_then(|d| d.split_once('='))
        .filter(|(c, _)| *c == call)
        .and_then(|(_, ms)| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    if f.fail.as_deref() == Some(call.as_str()) {
        return fault(format!("Injected failure of {call}"));
    }
    let tmpl = match f.spec.validate_request(&method, &path, body_json.as_ref()) {
        Ok(t) => t,
        Err(SpecError::NoOperation { .. }) => {
            return fault(format!(
                "Invalid request method and/or path: {method} {}.",
                path.trim_start_matches('/')
            ))
        }
        // Firecracker deserializes out-of-bound numbers and refuses them in
        // the resource's own validation, with its message.
        Err(SpecError::Bound(e)) => {
            let semantic = (path == "/machine-config")
                .then(|| body_json.as_ref().and_then(machine_config_fault))
                .flatten();
            return fault(semantic.map(String::from).unwrap_or_else(|| {
                format!("An error occurred when deserializing the json body of a request: {e}.")
            }));
        }
        Err(e) => {
            return fault(format!(
                "An error occurred when deserializing the json body of a request: {e}."
            ))
        }
    };
    let body = body_json.unwrap_or(Value::Null);
    let mut vmm = f.vmm.lock().unwrap_or_else(|p| p.into_inner());
    if method == "PUT" && PRE_BOOT.contains(&tmpl.as_str()) {
        if vmm.started {
            return fault("The requested operation is not supported after starting the microVM.");
        }
        // Only logger and metrics may precede a snapshot load.
        if tmpl != "/logger" && tmpl != "/metrics" {
            vmm.configured = true;
        }
    }
    if method == "PATCH"
        && (tmpl.starts_with("/drives/") || tmpl.starts_with("/network-interfaces/"))
        && !vmm.started
    {
        return fault("The requested operation is not supported before starting the microVM.");
    }
    let id_of = |key: &str| {
        path.rsplit('/')
            .next()
            .map(String::from)
            .filter(|id| body.get(key).and_then(Value::as_str) == Some(id.as_str()))
    };
    match (method.as_str(), tmpl.as_str()) {
        ("GET", "/") => {
            let state = if !vmm.started {
                "Not started"
            } else if vmm.paused {
                "Paused"
            } else {
                "Running"
            };
            return ok_json(json!({
                "id": f.id, "state": state, "vmm_version": VERSION, "app_name": "Firecracker",
            }));
        }
        ("GET", "/version") => return ok_json(json!({ "firecracker_version": VERSION })),
        ("GET", "/machine-config") => {
            let default = json!({ "vcpu_count": 1, "mem_size_mib": 128, "smt": false });
            return ok_json(vmm.machine.clone().unwrap_or(default));
        }
        ("GET", "/vm/config") => {
            return ok_json(json!({
                "boot-source": vmm.boot_source,
                "machine-config": vmm.machine,
                "drives": vmm.drives.values().collect::<Vec<_>>(),
                "network-interfaces": vmm.nets.values().collect::<Vec<_>>(),
            }))
        }
        ("PUT", "/boot-source") => {
            let kernel = body.get("kernel_image_path").and_then(Value::as_str);
            if kernel.is_some_and(|k| !host_path(k).exists()) {
                return fault(
                    "Boot source error: The kernel file cannot be opened: \
                     No such file or directory (os error 2)",
                );
            }
            vmm.boot_source = Some(body);
        }
        ("PUT", "/machine-config") => {
            if let Some(msg) = machine_config_fault(&body) {
                return fault(msg);
            }
            vmm.machine = Some(body);
        }
        ("PUT", "/drives/{drive_id}") => {
            let Some(id) = id_of("drive_id") else {
                return fault("The id from the path does not match the id from the body!");
            };
            if let Some(p) = body.get("path_on_host").and_then(Value::as_str) {
                if !host_path(p).exists() {
                    return fault(format!(
                        "Drive config error: Unable to create the virtio block device: \
                         Virtio backend error: Error manipulating the backing file: \
                         No such file or directory (os error 2) {p}"
                    ));
                }
            }
            vmm.drives.insert(id, body);
        }
        ("PUT", "/vsock") => vmm.vsock = Some(body),
        ("PUT", "/network-interfaces/{iface_id}") => {
            let Some(id) = id_of("iface_id") else {
                return fault("The id from the path does not match the id from the body!");
            };
            vmm.nets.insert(id, body);
        }
        ("PUT", "/actions") => {
            if let Some(r) = action(&f, &mut vmm, &body) {
                return r;
            }
        }
        ("PATCH", "/vm") => {
            if !vmm.started {
                return fault(
                    "The requested operation is not supported before starting the microVM.",
                );
            }
            vmm.paused = body.get("state").and_then(Value::as_str) == Some("Paused");
        }
        ("PUT", "/snapshot/create") => {
            if !vmm.started {
                return fault(
                    "The requested operation is not supported before starting the microVM.",
                );
            }
            if !vmm.paused {
                return fault("Create snapshot error: the microVM is not paused.");
            }
            let state = json!({
                "fake_firecracker_snapshot_of": f.id,
                "machine": vmm.machine, "boot_source": vmm.boot_source,
                "drives": vmm.drives.values().collect::<Vec<_>>(),
                "nets": vmm.nets.values().collect::<Vec<_>>(),
                "vsock": vmm.vsock,
            });
            for (key, text) in [
                ("snapshot_path", state.to_string()),
                (
                    "mem_file_path",
                    format!("fake-firecracker memory of {}\n", f.id),
                ),
            ] {
                if let Some(p) = body.get(key).and_then(Value::as_str) {
                    // A compromised VMM: the memory file is a link to a
                    // host file of the test's choosing.
                    if let (Ok(target), "mem_file_path") =
                        (std::env::var("FAKE_FC_HOSTILE_SNAPSHOT"), key)
                    {
                        if let Err(e) = std::os::unix::fs::symlink(target, host_path(p)) {
                            return fault(format!("Cannot link {p}: {e}"));
                        }
                        continue;
                    }
                    if let Err(e) = std::fs::write(host_path(p), text) {
                        return fault(format!("Cannot write {p}: {e}"));
                    }
                }
            }
        }
        ("PUT", "/snapshot/load") => {
            if vmm.started || vmm.configured {
                return fault(
                    "Load snapshot error: Loading a microVM snapshot not allowed after \
                     configuring boot-specific resources.",
                );
            }
            if let Err(e) = load_snapshot(&body, &mut vmm) {
                return fault(format!("Load snapshot error: {e}"));
            }
            vmm.started = true;
            vmm.paused = body.get("resume_vm").and_then(Value::as_bool) != Some(true);
            if !vmm.paused {
                println!("banger-ready fake-{}", f.id);
                let _ = std::io::stdout().flush();
            }
        }
        _ => {}
    }
    Reply {
        status: 204,
        body: None,
    }
}

/// Firecracker's validation of a machine configuration.
fn machine_config_fault(body: &Value) -> Option<&'static str> {
    let vcpus = body.get("vcpu_count").and_then(Value::as_u64).unwrap_or(1);
    let smt = body.get("smt").and_then(Value::as_bool).unwrap_or(false);
    if vcpus == 0 || vcpus > 32 || (smt && vcpus > 1 && vcpus % 2 == 1) {
        return Some(
            "Machine config error: The number of vCPUs must be greater than 0, \
             less than 32 and must be 1 or an even number if SMT is enabled.",
        );
    }
    if body.get("mem_size_mib").and_then(Value::as_u64) == Some(0) {
        return Some(
            "Machine config error: The memory size (MiB) is either 0, \
             or not a multiple of the configured page size.",
        );
    }
    None
}

/// `PUT /actions`: a fault, or `None` for a 204.
fn action(f: &Fake, vmm: &mut Vmm, body: &Value) -> Option<Reply> {
    const AFTER_START: &str =
        "The requested operation is not supported after starting the microVM.";
    const BEFORE_START: &str =
        "The requested operation is not supported before starting the microVM.";
    match body.get("action_type").and_then(Value::as_str) {
        Some("InstanceStart") => {
            if vmm.started {
                return Some(fault(AFTER_START));
            }
            if vmm.boot_source.is_none() {
                return Some(fault(
                    "Start microvm error: Cannot start microvm without kernel configuration.",
                ));
            }
            let uds = vmm.vsock.as_ref().and_then(|v| v.get("uds_path"));
            if let Some(uds) = uds.and_then(Value::as_str) {
                if let Err(e) = serve_agent(uds) {
                    return Some(fault(e));
                }
            }
            vmm.started = true;
            // The "guest" boots: banner and banger's readiness marker on
            // the serial console.
            println!("[    0.000000] Linux version 6.1.0 (fake-firecracker {VERSION})");
            println!("banger-ready fake-{}", f.id);
            let _ = std::io::stdout().flush();
            if let Some(rate) = std::env::var("FAKE_FC_CONSOLE_FLOOD")
                .ok()
                .and_then(|r| r.parse::<usize>().ok())
            {
                std::thread::spawn(move || flood_console(rate));
            }
        }
        Some("SendCtrlAltDel") => {
            if !vmm.started {
                return Some(fault(BEFORE_START));
            }
            tokio::spawn(async {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                println!("reboot: Power down");
                std::process::exit(0);
            });
        }
        Some("FlushMetrics") => {
            if !vmm.started {
                return Some(fault(BEFORE_START));
            }
        }
        _ => return Some(fault("Unknown action")),
    }
    None
}

/// Checks a `snapshot/load` the way Firecracker would fail it, and takes
/// the snapshot's configuration.
fn load_snapshot(body: &Value, vmm: &mut Vmm) -> Result<(), String> {
    let path = body
        .get("snapshot_path")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let text = std::fs::read_to_string(host_path(path))
        .map_err(|e| format!("Cannot open the snapshot state file {path}: {e}"))?;
    let state: Value =
        serde_json::from_str(&text).map_err(|_| format!("{path} is not a snapshot state file"))?;
    if state.get("fake_firecracker_snapshot_of").is_none() {
        return Err(format!("{path} is not a snapshot state file"));
    }
    let mem = match (body.get("mem_backend"), body.get("mem_file_path")) {
        (Some(b), None) => b
            .get("backend_path")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        (None, Some(p)) => p.as_str().unwrap_or_default(),
        _ => return Err("exactly one of mem_backend and mem_file_path is required".into()),
    };
    if !host_path(mem).exists() {
        return Err(format!(
            "Cannot open the memory file {mem}: No such file or directory (os error 2)"
        ));
    }
    let mut nets: Vec<Value> = state["nets"].as_array().cloned().unwrap_or_default();
    for o in body
        .get("network_overrides")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let id = o
            .get("iface_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let n = nets
            .iter_mut()
            .find(|n| n.get("iface_id").and_then(Value::as_str) == Some(id))
            .ok_or_else(|| {
                format!("Invalid network override: no network interface {id:?} in the snapshot")
            })?;
        n["host_dev_name"] = o["host_dev_name"].clone();
    }
    for d in state["drives"].as_array().into_iter().flatten() {
        let p = d
            .get("path_on_host")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !host_path(p).exists() {
            return Err(format!(
                "Unable to restore the block device: No such file or directory (os error 2): {p}"
            ));
        }
    }
    let mut vsock = state.get("vsock").cloned().filter(|v| !v.is_null());
    if let (Some(v), Some(o)) = (vsock.as_mut(), body.get("vsock_override")) {
        v["uds_path"] = o["uds_path"].clone();
    }
    if let Some(uds) = vsock
        .as_ref()
        .and_then(|v| v.get("uds_path"))
        .and_then(Value::as_str)
    {
        serve_agent(uds)?;
    }
    vmm.machine = state.get("machine").cloned();
    vmm.nets = nets
        .into_iter()
        .filter_map(|n| Some((n.get("iface_id")?.as_str()?.to_string(), n)))
        .collect();
    vmm.vsock = vsock;
    Ok(())
}

/// The stand-in guest agent on the vsock device's Unix socket.
fn serve_agent(uds: &str) -> Result<(), String> {
    let path = host_path(uds);
    if path.exists() {
        return Err(format!(
            "Cannot create the vsock device: Address in use: {uds}"
        ));
    }
    agent::serve(&path)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--version") {
        println!("Firecracker v{VERSION} (fake-firecracker, banger test double)");
        return std::process::ExitCode::SUCCESS;
    }
    let Some(sock) = arg(&args, "--api-sock") else {
        eprintln!("fake-firecracker: --api-sock is required");
        return std::process::ExitCode::FAILURE;
    };
    let spec = match Spec::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fake-firecracker: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::UnixListener::bind(&sock) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fake-firecracker: Failed to open the API socket at {sock}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let log = std::env::var("FAKE_FC_REQUEST_LOG")
        .ok()
        .and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        })
        .map(Mutex::new);
    let fake = Arc::new(Fake {
        spec,
        id: arg(&args, "--id").unwrap_or_else(|| "anonymous-instance".into()),
        vmm: Mutex::new(Vmm::default()),
        log,
        fail: std::env::var("FAKE_FC_FAIL").ok().filter(|s| !s.is_empty()),
        die_on: std::env::var("FAKE_FC_DIE_ON")
            .ok()
            .filter(|s| !s.is_empty()),
        delay: std::env::var("FAKE_FC_DELAY")
            .ok()
            .filter(|s| !s.is_empty()),
    });
    let served = http::serve(listener, move |req| handle(fake.clone(), req)).await;
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-firecracker: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Writes about `rate` bytes a second of numbered lines to stdout (the
/// serial console), in 20 ms chunks, until stdout fails.
fn flood_console(rate: usize) {
    let per_chunk = (rate / 50).max(1);
    let mut n: u64 = 0;
    loop {
        let mut chunk = String::with_capacity(per_chunk + 32);
        while chunk.len() < per_chunk {
            n += 1;
            chunk.push_str(&format!("flood {n}\n"));
        }
        let mut out = std::io::stdout().lock();
        if out
            .write_all(chunk.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            return;
        }
        drop(out);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
