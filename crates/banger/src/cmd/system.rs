//! `banger version`, `doctor`, `capabilities`, `ui`, `completions`.

use std::io::Write as _;

use banger::exit;
use banger::output::{self, Style};
use banger_api::{Capabilities, CheckStatus, DoctorReport};

use super::{local, CmdResult, Ctx};

pub async fn version(ctx: &Ctx) -> CmdResult {
    let v = ctx.client.version().await?;
    if ctx.json {
        output::print_json(&serde_json::json!({
            "client": { "version": env!("CARGO_PKG_VERSION") },
            "daemon": v,
        }));
    } else {
        println!("banger  {}", env!("CARGO_PKG_VERSION"));
        println!(
            "bangerd {} (api {}, pid {}, state dir {})",
            v.version, v.api_version, v.pid, v.state_dir
        );
    }
    Ok(exit::OK)
}

pub async fn doctor(ctx: &Ctx) -> CmdResult {
    let r = ctx.client.doctor().await?;
    if ctx.json {
        output::print_json(&r);
    } else {
        print_doctor(&ctx.style, &r);
    }
    Ok(if r.ok { exit::OK } else { exit::FAILURE })
}

pub async fn capabilities(ctx: &Ctx) -> CmdResult {
    let c = ctx.client.capabilities().await?;
    if ctx.json {
        output::print_json(&c);
    } else {
        print_capabilities(&c);
    }
    Ok(exit::OK)
}

pub async fn ui(ctx: &Ctx, open: bool) -> CmdResult {
    let info = ctx.client.ui().await?;
    if ctx.json {
        output::print_json(&info);
        return Ok(exit::OK);
    }
    let Some(url) = info.url else {
        return Err(local(
            format!(
                "The dashboard is not available: {}",
                info.error.unwrap_or_else(|| "unknown reason".into())
            ),
            Some(
                "Set ui.listen in /etc/banger/config.toml (e.g. \"127.0.0.1:7878\") and restart \
                 bangerd",
            ),
        ));
    };
    println!("{url}");
    if open {
        let _ = std::process::Command::new("xdg-open").arg(&url).status();
    }
    Ok(exit::OK)
}

/// `banger completions SHELL`: the script that registers banger's
/// completions with the shell. It calls back into `banger` as you type
/// (`COMPLETE=SHELL banger -- ...`), so VM, image, session and snapshot
/// names come from the daemon.
pub fn completions(shell: clap_complete::Shell) -> CmdResult {
    let name = shell.to_string();
    let shells = clap_complete::env::Shells::builtins();
    let Some(completer) = shells.completer(&name) else {
        return Err(super::usage(
            format!("No completion support for {name}"),
            "Use bash, zsh, fish, elvish or powershell",
        ));
    };
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "banger".into());
    let mut buf = Vec::new();
    completer
        .write_registration("COMPLETE", "banger", "banger", &me, &mut buf)
        .map_err(|e| local(format!("Cannot write the completion script: {e}"), None))?;
    let _ = std::io::stdout().write_all(&buf);
    Ok(exit::OK)
}

fn print_doctor(style: &Style, r: &DoctorReport) {
    for c in &r.checks {
        let mark = match c.status {
            CheckStatus::Ok => style.green("ok  "),
            CheckStatus::Warn => style.yellow("warn"),
            CheckStatus::Fail => style.red("FAIL"),
            CheckStatus::Info => style.dim("info"),
        };
        let req = if c.required { "" } else { " (optional)" };
        println!("{mark} {}{req}: {}", c.title, c.detail);
        if c.status != CheckStatus::Ok {
            if let Some(h) = &c.hint {
                println!("     hint: {h}");
            }
        }
    }
    if r.ok {
        println!("{}", style.green("All required checks passed."));
    } else {
        let msg = "A required check failed; see the hints above.";
        println!("{}", style.red(msg));
    }
}

fn print_capabilities(c: &Capabilities) {
    let tool = |t: &Option<banger_api::doctor::ToolInfo>| {
        t.as_ref()
            .map(|t| format!("{} ({})", t.version, t.path))
            .unwrap_or_else(|| "not installed".into())
    };
    let backends = if c.backends.is_empty() {
        "none".into()
    } else {
        super::vm::join_backends(&c.backends, ", ")
    };
    println!("backends:          {backends}");
    println!("qemu:              {}", tool(&c.qemu));
    println!("firecracker:       {}", tool(&c.firecracker));
    let module = c
        .kvm_module
        .as_deref()
        .map(|m| format!(" ({m})"))
        .unwrap_or_default();
    println!("kvm:               {}{module}", c.kvm_device);
    println!("tun:               {}", c.tun);
    println!("nftables:          {}", c.nftables);
    println!("device-mapper:     {}", c.device_mapper);
    println!("reflink:           {}", c.reflink);
    println!("clone strategies:  {}", c.clone_strategies.join(", "));
    let boot = c.bootstrapper.as_deref().unwrap_or("none");
    println!("bootstrapper:      {boot}");
    let free = c.state_dir_free_bytes as f64 / (1u64 << 30) as f64;
    println!("state dir free:    {free:.1} GiB");
}
