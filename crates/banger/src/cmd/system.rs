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

pub async fn ui(ctx: &Ctx, open: bool, logout_all: bool) -> CmdResult {
    if logout_all {
        let r = ctx.client.ui_logout().await?;
        if ctx.json {
            output::print_json(&r);
        } else {
            println!(
                "Logged {} dashboard session(s) out; unused login links no longer work.",
                r.sessions_ended
            );
        }
        return Ok(exit::OK);
    }
    let info = ctx.client.ui_login().await?;
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
    let secs = info.expires_in_secs.unwrap_or(60);
    if !open {
        println!("{url}");
        eprintln!("This login link works once, within {secs} s; `banger ui` makes another.");
        return Ok(exit::OK);
    }
    // The link never goes on a command line (every local user can read
    // those): the browser is given a private file that forwards to it.
    let page = login_page(&url)?;
    let st = std::process::Command::new("xdg-open").arg(&page).status();
    match st {
        Ok(s) if s.success() => {
            println!(
                "Opened the dashboard in your browser (login page {}).",
                page.display()
            );
            Ok(exit::OK)
        }
        other => {
            let why = match other {
                Ok(s) => format!("xdg-open exited with {s}"),
                Err(e) => format!("cannot run xdg-open: {e}"),
            };
            Err(local(
                format!("Cannot open the dashboard in a browser: {why}"),
                Some("Open the file it names in your browser, or run `banger ui` for a link"),
            ))
        }
    }
}

/// Writes a page, readable only by you, that forwards the browser to the
/// login link `url`; returns its path.
fn login_page(url: &str) -> Result<std::path::PathBuf, super::ClientError> {
    use std::os::unix::fs::OpenOptionsExt;
    let html = login_html(url);
    let dir = super::vm_ssh::key_dir()?;
    let path = dir.join("dashboard.html");
    let tmp = dir.join(".dashboard.html.new");
    let fail = |e: std::io::Error| {
        local(
            format!("Cannot write the dashboard's login page: {e}"),
            None,
        )
    };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(html.as_bytes()).map_err(fail)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(fail)?;
    Ok(path)
}

/// A page that sends the browser on to `url` (a loopback http URL of
/// hex, `:/?=.` only, so it needs no escaping; anything else is refused).
fn login_html(url: &str) -> String {
    let safe = url
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b":/?=.-_[]".contains(&b));
    let url = if safe { url } else { "about:blank" };
    format!(
        "<!doctype html>\n<meta charset=utf-8>\n<meta name=referrer content=no-referrer>\n\
         <meta http-equiv=refresh content=\"0; url={url}\">\n\
         <title>banger</title>\n<a href=\"{url}\">Open the banger dashboard</a>\n"
    )
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_login_page_forwards_to_the_link_and_nothing_else() {
        let p = super::login_html("http://127.0.0.1:7878/?code=ab12");
        assert!(
            p.contains("content=\"0; url=http://127.0.0.1:7878/?code=ab12\""),
            "{p}"
        );
        let p = super::login_html("http://x/\"><script>");
        assert!(!p.contains("script") && p.contains("about:blank"), "{p}");
    }
}
