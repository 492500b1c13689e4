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

/// The VM id a VMM's command line names (`banger-vm-ID`), when the command
/// line also names `run_dir`: a VMM of this daemon, whose sockets live
/// there. Pure.
pub fn vmm_id_in(cmdline: &str, run_dir: &str) -> Option<String> {
    if run_dir.is_empty() || !cmdline.contains(run_dir) {
        return None;
    }
    let rest = &cmdline[cmdline.find("banger-vm-")? + "banger-vm-".len()..];
    let id: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    (!id.is_empty()).then_some(id)
}

/// Processes that are VMMs of this daemon (their command line names
/// `run_dir`), with the VM id each names.
pub(super) fn vmms_under(run_dir: &std::path::Path) -> Vec<(u32, String)> {
    let run_dir = run_dir.display().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(Result::ok)
        .filter_map(|p| p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| *pid != std::process::id() && pid_alive(*pid))
        .filter_map(|pid| {
            let c = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            vmm_id_in(&c, &run_dir).map(|id| (pid, id))
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vmm_is_ours_only_when_it_names_our_run_dir() {
        let qemu = "qemu-system-x86_64 -name banger-dev,process=banger-vm-0a1b2c3d4e5f \
                    -qmp unix:/run/banger/vms/0a1b2c3d4e5f/qmp.sock,server=on";
        assert_eq!(
            vmm_id_in(qemu, "/run/banger/vms").as_deref(),
            Some("0a1b2c3d4e5f")
        );
        assert_eq!(vmm_id_in(qemu, "/tmp/other/vms"), None, "another daemon's");
        assert_eq!(
            vmm_id_in("sleep 100 /run/banger/vms", "/run/banger/vms"),
            None
        );
        assert_eq!(vmm_id_in("x banger-vm-zz /r", "/r"), None);
        assert_eq!(vmm_id_in(qemu, ""), None);
    }
}
