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
//!   makes it exit as a powered-off guest would.
//!
//! Under `fake-jailer`, `FAKE_FC_CHROOT=DIR` makes host paths in requests
//! resolve inside DIR, as they would in the jail.
//!
//! For tests, through the environment: `FAKE_FC_REQUEST_LOG=FILE` appends
//! each request as a JSON line; `FAKE_FC_FAIL="PUT /drives/rootfs"` answers
//! that call with a fault; `FAKE_FC_DIE_ON="PUT /actions"` exits the process
//! abruptly when it arrives.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use firecracker_api::spec::{Spec, SpecError};
use serde_json::{json, Value};

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
}

struct Fake {
    spec: Spec,
    id: String,
    vmm: Mutex<Vmm>,
    log: Option<Mutex<std::fs::File>>,
    fail: Option<String>,
    die_on: Option<String>,
}

/// A path from a request, as the process sees it (inside its "chroot").
fn host_path(p: &str) -> std::path::PathBuf {
    match std::env::var_os("FAKE_FC_CHROOT") {
        Some(root) => std::path::Path::new(&root).join(p.trim_start_matches('/')),
        None => std::path::PathBuf::from(p),
    }
}

fn fault(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "fault_message": msg.into() }))).into_response()
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

async fn handle(State(f): State<Arc<Fake>>, method: Method, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let body_json: Option<Value> = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => Some(v),
            Err(e) => {
                return fault(
                    StatusCode::BAD_REQUEST,
                    format!("An error occurred when deserializing the json body of a request: {e}"),
                )
            }
        }
    };
    let call = format!("{method} {path}");
    if let Some(log) = &f.log {
        let mut file = log.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            file,
            "{}",
            json!({ "method": method.as_str(), "path": path, "body": body_json })
        );
    }
    if f.die_on.as_deref() == Some(call.as_str()) {
        eprintln!("fake-firecracker: dying on {call} as told");
        std::process::exit(1);
    }
    if f.fail.as_deref() == Some(call.as_str()) {
        return fault(
            StatusCode::BAD_REQUEST,
            format!("Injected failure of {call}"),
        );
    }
    let tmpl = match f
        .spec
        .validate_request(method.as_str(), &path, body_json.as_ref())
    {
        Ok(t) => t,
        Err(SpecError::NoOperation { .. }) => {
            return fault(
                StatusCode::BAD_REQUEST,
                format!("Invalid request method and/or path: {method} {path}."),
            )
        }
        Err(e) => {
            return fault(
                StatusCode::BAD_REQUEST,
                format!("An error occurred when deserializing the json body of a request: {e}."),
            )
        }
    };
    let body = body_json.unwrap_or(Value::Null);
    let mut vmm = f.vmm.lock().unwrap_or_else(|p| p.into_inner());
    if method == Method::PUT && PRE_BOOT.contains(&tmpl.as_str()) {
        if vmm.started {
            return fault(
                StatusCode::BAD_REQUEST,
                "The requested operation is not supported after starting the microVM.",
            );
        }
        vmm.configured = true;
    }
    if method == Method::PATCH
        && (tmpl.starts_with("/drives/") || tmpl.starts_with("/network-interfaces/"))
        && !vmm.started
    {
        return fault(
            StatusCode::BAD_REQUEST,
            "The requested operation is not supported before starting the microVM.",
        );
    }
    let id_of = |key: &str| {
        path.rsplit('/')
            .next()
            .map(String::from)
            .filter(|id| body.get(key).and_then(Value::as_str) == Some(id.as_str()))
    };
    match (method.as_str(), tmpl.as_str()) {
        ("GET", "/") => {
            let state = if !vmm.started { "Not started" } else if vmm.paused { "Paused" } else { "Running" };
            return axum::Json(json!({ "app_name": "Firecracker", "id": f.id, "state": state, "vmm_version": VERSION })).into_response();
        }
        ("GET", "/version") => return axum::Json(json!({ "firecracker_version": VERSION })).into_response(),
        ("GET", "/machine-config") => {
            return axum::Json(vmm.machine.clone().unwrap_or(json!({ "vcpu_count": 1, "mem_size_mib": 128, "smt": false }))).into_response()
        }
        ("GET", "/vm/config") => {
            return axum::Json(json!({
                "boot-source": vmm.boot_source, "machine-config": vmm.machine,
                "drives": vmm.drives.values().collect::<Vec<_>>(), "network-interfaces": vmm.nets.values().collect::<Vec<_>>(),
            }))
            .into_response()
        }
        ("PUT", "/boot-source") => {
            if let Some(k) = body.get("kernel_image_path").and_then(Value::as_str) {
                                if !host_path(k).exists() {
                    return fault(StatusCode::BAD_REQUEST, format!("The kernel file cannot be opened: No such file or directory (os error 2): {k}"));
                }
            }
            vmm.boot_source = Some(body);
        }
        ("PUT", "/machine-config") => {
            let vcpus = body.get("vcpu_count").and_then(Value::as_u64).unwrap_or(1);
            if vcpus > 1 && vcpus % 2 == 1 {
                return fault(StatusCode::BAD_REQUEST, "The number of vCPUs must be 1 or an even number if SMT is enabled.");
            }
            vmm.machine = Some(body);
        }
        ("PUT", "/drives/{drive_id}") => {
            let Some(id) = id_of("drive_id") else {
                return fault(StatusCode::BAD_REQUEST, "The id from the path does not match the id from the body!");
            };
            if let Some(p) = body.get("path_on_host").and_then(Value::as_str) {
                                if !host_path(p).exists() {
                    return fault(StatusCode::BAD_REQUEST, format!("Unable to create the block device: No such file or directory (os error 2): {p}"));
                }
            }
            vmm.drives.insert(id, body);
        }
        ("PUT", "/network-interfaces/{iface_id}") => {
            let Some(id) = id_of("iface_id") else {
                return fault(StatusCode::BAD_REQUEST, "The id from the path does not match the id from the body!");
            };
            vmm.nets.insert(id, body);
        }
        ("PUT", "/actions") => match body.get("action_type").and_then(Value::as_str) {
            Some("InstanceStart") => {
                if vmm.started {
                    return fault(StatusCode::BAD_REQUEST, "The requested operation is not supported after starting the microVM.");
                }
                if vmm.boot_source.is_none() {
                    return fault(StatusCode::BAD_REQUEST, "Cannot start microvm without kernel configuration.");
                }
                vmm.started = true;
                // The "guest" boots: banner and banger's readiness marker on the serial console.
                println!("[    0.000000] Linux version 6.1.0 (fake-firecracker {VERSION})");
                println!("banger-ready fake-{}", f.id);
                let _ = std::io::stdout().flush();
            }
            Some("SendCtrlAltDel") => {
                if !vmm.started {
                    return fault(StatusCode::BAD_REQUEST, "The requested operation is not supported before starting the microVM.");
                }
                tokio::spawn(async {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    println!("reboot: Power down");
                    std::process::exit(0);
                });
            }
            Some("FlushMetrics") => {}
            _ => return fault(StatusCode::BAD_REQUEST, "Unknown action"),
        },
        ("PATCH", "/vm") => {
            if !vmm.started {
                return fault(StatusCode::BAD_REQUEST, "The requested operation is not supported before starting the microVM.");
            }
            vmm.paused = body.get("state").and_then(Value::as_str) == Some("Paused");
        }
        ("PUT", "/snapshot/create") => {
            if !vmm.started || !vmm.paused {
                return fault(StatusCode::BAD_REQUEST, "Create snapshot error: the microVM is not paused.");
            }
            for key in ["snapshot_path", "mem_file_path"] {
                if let Some(p) = body.get(key).and_then(Value::as_str) {
                                        if let Err(e) = std::fs::write(host_path(p), format!("fake-firecracker {key} of {}\n", f.id)) {
                        return fault(StatusCode::BAD_REQUEST, format!("Cannot write {p}: {e}"));
                    }
                }
            }
        }
        ("PUT", "/snapshot/load") => {
            if vmm.started || vmm.configured {
                return fault(StatusCode::BAD_REQUEST, "Loading a microVM snapshot not allowed after configuring boot-specific resources.");
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
    StatusCode::NO_CONTENT.into_response()
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
    });
    let app = axum::Router::new().fallback(handle).with_state(fake);
    match axum::serve(listener, app).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-firecracker: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
