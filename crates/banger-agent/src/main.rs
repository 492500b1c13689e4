//! `banger-agent`: the program every banger guest runs, linked statically
//! so it runs on any glibc or musl guest. It is always the daemon's own
//! version: the daemon ships it on each VM's config disk, and the guest's
//! `/usr/lib/banger/agent` stub runs that copy.
//!
//! It serves the daemon over one channel (see `banger-agent-proto` for the
//! protocol): exec with streams or a PTY, files, listening ports, metrics,
//! and the identity chores (rename, reload after a restore).
//!
//! Usage: `banger-agent [--channel auto|serial:DEV|vsock:PORT|unix:PATH]`,
//! `banger-agent --version`.

mod channel;
mod exec;
mod fdio;
mod files;
mod reply;
mod serve;
mod system;
mod users;
mod watch;

use std::process::ExitCode;
use std::time::Duration;

use channel::Channel;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut channel = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--version" => {
                println!("banger-agent {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "--channel" => match it.next().map(|v| Channel::parse(v)) {
                Some(Ok(c)) => channel = c,
                Some(Err(e)) => return usage(&e),
                None => return usage("--channel needs a value"),
            },
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("banger-agent: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let channel = match channel {
            Some(c) => c,
            None => wait_for_channel().await,
        };
        eprintln!(
            "banger-agent {}: serving on {channel:?}",
            env!("CARGO_PKG_VERSION")
        );
        match channel::run(channel, serve::connection).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("banger-agent: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn usage(why: &str) -> ExitCode {
    eprintln!("banger-agent: {why}\nusage: banger-agent [--channel auto|serial:DEV|vsock:PORT|unix:PATH] | --version");
    ExitCode::from(2)
}

/// The guest's channel, once its device is there (a module may still be
/// loading at boot).
async fn wait_for_channel() -> Channel {
    loop {
        if let Some(c) = Channel::detect(std::path::Path::new("/sys")) {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
