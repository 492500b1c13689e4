//! What the command tree learns from the daemon at run time: the names it
//! completes (VMs, images, sessions, snapshots, through clap_complete's
//! dynamic completion, `COMPLETE=bash banger -- ...`), and the defaults the
//! help of `vm create` and `pool set` shows. Both ask the daemon with a
//! short timeout and do without it when it does not answer.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use banger::client::{Client, DEFAULT_SOCKET};
use clap::Arg;
use clap_complete::engine::{ArgValueCompleter, CompletionCandidate};

/// Which names a positional argument or option takes.
#[derive(Debug, Clone, Copy)]
enum Names {
    Vms,
    Images,
    Sessions,
    Snapshots,
}

/// Subcommands whose positional `name` (or other argument) is an existing
/// thing: `(noun, verb, argument, names)`. `vm create NAME` and `vm fork
/// NAME NEW`'s `NEW` are new names and complete nothing.
const TARGETS: &[(&str, &str, &str, Names)] = &[
    ("vm", "*", "name", Names::Vms),
    ("vm", "create", "image", Names::Images),
    ("vm", "create", "from_snapshot", Names::Snapshots),
    ("image", "*", "name", Names::Images),
    ("session", "*", "name", Names::Sessions),
    ("session", "*", "vm", Names::Vms),
    ("snapshot", "*", "name", Names::Snapshots),
    ("workspace", "*", "vm", Names::Vms),
    ("auth", "*", "vm", Names::Vms),
    ("agent", "*", "vm", Names::Vms),
    ("pool", "set", "image", Names::Images),
];

/// The tree with name completers attached.
pub fn attach(cmd: clap::Command) -> clap::Command {
    let mut cmd = cmd;
    for (noun, verb, arg, names) in TARGETS {
        cmd = cmd.mut_subcommand(noun, |n| {
            n.mut_subcommands(|v| {
                let skip = (*verb != "*" && v.get_name() != *verb)
                    || (*noun == "vm" && *verb == "*" && v.get_name() == "create");
                if skip || !v.get_arguments().any(|a| a.get_id() == *arg) {
                    return v;
                }
                let names = *names;
                // mut_args keeps the arguments' order (mut_arg moves one last,
                // which would renumber positionals).
                v.mut_args(move |a: Arg| {
                    if a.get_id() == *arg {
                        a.add(ArgValueCompleter::new(move |cur: &OsStr| {
                            complete(names, cur)
                        }))
                    } else {
                        a
                    }
                })
            })
        });
    }
    cmd
}

/// The socket named on the command line being completed or run, else
/// `BANGER_SOCKET`, else the default.
fn socket() -> PathBuf {
    let args: Vec<String> = std::env::args().collect();
    for (i, a) in args.iter().enumerate() {
        if let Some(v) = a.strip_prefix("--socket=") {
            return PathBuf::from(v);
        }
        if a == "--socket" {
            if let Some(v) = args.get(i + 1) {
                return PathBuf::from(v);
            }
        }
    }
    std::env::var_os("BANGER_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Runs `f` against the daemon, giving up after a short while.
fn ask<T, F>(f: impl FnOnce(Client) -> F) -> Option<T>
where
    F: std::future::Future<Output = Result<T, banger::client::ClientError>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let client = Client::new(socket());
    rt.block_on(async {
        tokio::time::timeout(Duration::from_millis(1500), f(client))
            .await
            .ok()?
            .ok()
    })
}

fn complete(names: Names, current: &OsStr) -> Vec<CompletionCandidate> {
    let prefix = current.to_string_lossy();
    let all: Vec<String> = match names {
        Names::Vms => ask(|c| async move { c.vms().await })
            .map(|l| l.vms.into_iter().map(|v| v.name).collect()),
        Names::Images => ask(|c| async move { c.images().await })
            .map(|l| l.images.into_iter().map(|i| i.name).collect()),
        Names::Sessions => ask(|c| async move { c.sessions(None).await })
            .map(|l| l.sessions.into_iter().map(|s| s.name).collect()),
        Names::Snapshots => ask(|c| async move { c.snapshots().await })
            .map(|l| l.snapshots.into_iter().map(|s| s.name).collect()),
    }
    .unwrap_or_default();
    all.into_iter()
        .filter(|n| n.starts_with(prefix.as_ref()))
        .map(CompletionCandidate::new)
        .collect()
}

/// Whether this run asks for help (`-h`, `--help`, `help`).
pub fn wants_help() -> bool {
    std::env::args()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "-h" || a == "--help" || a == "help")
}

/// The tree with the daemon's actual defaults in the help of the flags that
/// fall back to them; unchanged when the daemon does not answer.
pub fn with_daemon_defaults(cmd: clap::Command) -> clap::Command {
    match ask(|c| async move { c.defaults().await }) {
        Some(d) => apply_defaults(cmd, &d),
        None => cmd,
    }
}

/// The help of the flags that fall back to the daemon's defaults, with
/// those defaults. Pure.
fn apply_defaults(cmd: clap::Command, d: &banger_api::VmDefaults) -> clap::Command {
    let memory = banger::output::size(u64::from(d.memory_mib) << 20);
    let work = banger::output::size(d.work_disk_bytes);
    let set = |c: clap::Command, arg: &'static str, text: String| {
        c.mut_args(move |a| {
            if a.get_id() == arg {
                a.help(text.clone()).long_help(text.clone())
            } else {
                a
            }
        })
    };
    let image = format!("Image [daemon default: {}]", d.image);
    let cpus = format!(
        "vCPUs, 1..=32 [daemon default: {}; an agent profile's first]",
        d.cpus
    );
    let mem = format!("Memory, 128M..=64G [daemon default: {memory}]");
    let wd = format!("The work disk mounted at /work, 64M..=16T [daemon default: {work}]");
    cmd.mut_subcommand("vm", |vm| {
        vm.mut_subcommand("create", |c| {
            let c = set(c, "image", image.clone());
            let c = set(c, "cpus", cpus.clone());
            let c = set(c, "memory", mem.clone());
            set(c, "work_disk_size", wd.clone())
        })
    })
    .mut_subcommand("pool", |p| {
        p.mut_subcommand("set", |c| {
            let c = set(c, "image", image.clone());
            let c = set(c, "cpus", cpus.clone());
            let c = set(c, "memory", mem.clone());
            set(c, "work_disk_size", wd.clone())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_help_shows_the_daemon_s_defaults() {
        let d = banger_api::VmDefaults {
            image: "deb".into(),
            cpus: 3,
            memory_mib: 2048,
            work_disk_bytes: 4 << 30,
            accel: "auto".into(),
        };
        let mut cmd = apply_defaults(attach(crate::Cli::command()), &d);
        let create = cmd
            .find_subcommand_mut("vm")
            .and_then(|v| v.find_subcommand_mut("create"))
            .expect("vm create");
        let help = create.render_long_help().to_string();
        assert!(help.contains("[daemon default: 3;"), "{help}");
        assert!(help.contains("[daemon default: 2.0 GiB]"), "{help}");
        assert!(help.contains("[daemon default: deb]"), "{help}");
        assert!(help.contains("[daemon default: 4.0 GiB]"), "{help}");
    }
}
