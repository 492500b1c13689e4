//! VMM processes: liveness, identity by command line, kills.

/// Whether a process exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

/// Whether `pid` is the VMM of VM `id` (its cmdline names it).
pub fn is_our_vmm(pid: u32, id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            String::from_utf8_lossy(&c).contains(&format!("banger-vm-{}", &id[..id.len().min(16)]))
        })
        .unwrap_or(false)
        && pid_alive(pid)
}

/// SIGKILLs every process whose command line names VM `id` (its VMM,
/// jailed or not, recorded or not): the id is unique to this VM.
pub(super) fn kill_vmms_of(id: &str) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.filter_map(Result::ok) {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && is_our_vmm(pid, id) {
            tracing::warn!(pid, vm = id, "killing a VMM no live VM owns");
            kill_vmm(pid, id);
        }
    }
}

/// SIGKILLs `pid` when it is VM `id`'s VMM (a stored pid may be anyone's
/// after a host reboot or a pid reuse: it is checked first).
pub(super) fn kill_vmm(pid: u32, id: &str) {
    if !is_our_vmm(pid, id) {
        tracing::warn!(pid, vm = id, "not killing pid: it is not this VM's VMM");
        return;
    }
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
