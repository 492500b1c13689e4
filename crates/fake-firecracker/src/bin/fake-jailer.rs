//! `fake-jailer`: stands in for Firecracker's `jailer` in tests. It checks
//! its arguments as the jailer does (`--id` of 1 to 64 characters of
//! `[A-Za-z0-9-]`, an absolute `--exec-file` whose name contains
//! "firecracker", numeric `--uid`/`--gid`, an absolute `--chroot-base-dir`),
//! makes `<chroot-base-dir>/<exec-file name>/<id>/root`, and runs the exec
//! file with the arguments after `--` plus `--id ID`. It does not chroot or
//! drop privileges (the fake Firecracker is not a static binary): it passes
//! `FAKE_FC_CHROOT=<root>` instead, and maps `--api-sock` into the root, so
//! the fake resolves every path as the jailed process would.
//! `FAKE_JAILER_LOG=FILE` appends its arguments as a JSON array.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

fn fail(msg: &str) -> std::process::ExitCode {
    eprintln!("fake-jailer: {msg}");
    std::process::ExitCode::FAILURE
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Ok(log) = std::env::var("FAKE_JAILER_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let quoted: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
            let _ = writeln!(f, "[{}]", quoted.join(","));
        }
    }
    let split = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let (own, rest) = (&args[..split], args.get(split + 1..).unwrap_or(&[]));
    let get = |name: &str| {
        own.iter()
            .position(|a| a == name)
            .and_then(|i| own.get(i + 1))
            .cloned()
    };
    let Some(id) = get("--id") else {
        return fail("--id is required");
    };
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return fail(&format!("invalid --id {id:?}"));
    }
    let Some(exec) = get("--exec-file").map(PathBuf::from) else {
        return fail("--exec-file is required");
    };
    let exec_name = exec
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !exec.is_absolute() || !exec.is_file() || !exec_name.contains("firecracker") {
        return fail(&format!("invalid --exec-file {}: it must be an absolute path to a file whose name contains \"firecracker\"", exec.display()));
    }
    for flag in ["--uid", "--gid"] {
        match get(flag) {
            Some(v) if v.parse::<u32>().is_ok() => {}
            _ => return fail(&format!("{flag} must be a number")),
        }
    }
    let Some(base) = get("--chroot-base-dir").map(PathBuf::from) else {
        return fail("--chroot-base-dir is required");
    };
    if !base.is_absolute() {
        return fail("--chroot-base-dir must be absolute");
    }
    let root = base.join(&exec_name).join(&id).join("root");
    if let Err(e) = std::fs::create_dir_all(&root) {
        return fail(&format!("cannot create {}: {e}", root.display()));
    }
    let mut fc_args: Vec<String> = Vec::new();
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        if a == "--api-sock" {
            let sock = it.next().cloned().unwrap_or_default();
            fc_args.push(a.clone());
            fc_args.push(
                root.join(
                    Path::new(&sock)
                        .strip_prefix("/")
                        .unwrap_or(Path::new(&sock)),
                )
                .display()
                .to_string(),
            );
        } else {
            fc_args.push(a.clone());
        }
    }
    fc_args.extend(["--id".to_string(), id]);
    let err = std::process::Command::new(&exec)
        .args(&fc_args)
        .env("FAKE_FC_CHROOT", &root)
        .exec();
    fail(&format!("cannot exec {}: {err}", exec.display()))
}
