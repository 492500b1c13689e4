//! `banger vm ports`, `vm forward`, `vm forwards`: a VM's listening sockets
//! and the host ports that reach them.

use banger::exit;
use banger::output::{self, Style};
use banger_api::{Forward, ForwardRequest, VmPort};
use clap::Subcommand;

use super::{print_json_line, print_list, usage, CmdResult, Ctx, Row};

#[derive(Debug, Subcommand)]
pub enum VmNetCommand {
    /// The guest's listening TCP and UDP sockets, with processes and the
    /// links the host can open.
    Ports {
        /// The VM.
        name: String,
        /// Follow: a line per socket opened or closed (the ones open now
        /// first), until Ctrl-C; with --json, one event object per line.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Forward [HOST_ADDR:]HOST_PORT on the host (default 127.0.0.1; port 0:
    /// any free one) to GUEST_PORT; kept across daemon restarts. --rm removes it.
    Forward {
        /// The VM.
        name: String,
        /// [HOST_ADDR:]HOST_PORT:GUEST_PORT, or [HOST_ADDR:]HOST_PORT with --rm.
        spec: String,
        #[arg(long)]
        rm: bool,
    },
    /// List port forwards (of one VM).
    Forwards {
        /// Only this VM's.
        name: Option<String>,
    },
}

impl Row for VmPort {
    const HEADER: &'static [&'static str] = &["PROTO", "ADDRESS", "PORT", "PROCESS", "PID", "URL"];
    fn cells(&self, _: &Style) -> Vec<String> {
        let dash = || "-".to_string();
        vec![
            self.proto.clone(),
            self.address.clone(),
            self.port.to_string(),
            self.process.clone().unwrap_or_else(dash),
            self.pid.map(|p| p.to_string()).unwrap_or_else(dash),
            self.url.clone().unwrap_or_else(dash),
        ]
    }
}

impl Row for Forward {
    const HEADER: &'static [&'static str] = &["HOST", "VM", "GUEST PORT", "STATE"];
    fn cells(&self, _: &Style) -> Vec<String> {
        let state = if self.active {
            "listening".into()
        } else {
            let why = self.error.clone().unwrap_or_default();
            format!("not listening: {why}")
        };
        vec![
            format!("{}:{}", self.host_addr, self.host_port),
            self.vm.clone(),
            self.guest_port.to_string(),
            state,
        ]
    }
}

/// A parsed forward spec: host address, host port, guest port.
pub type ForwardSpec = (Option<String>, u16, Option<u16>);

/// `[ADDR:]HOST:GUEST` (or `[ADDR:]HOST` when removing). IPv6 addresses
/// go in brackets. A bad spec is a usage error. Pure.
pub fn parse_forward_spec(
    spec: &str,
    rm: bool,
) -> Result<ForwardSpec, banger::client::ClientError> {
    let bad = |why: &str| {
        usage(
            format!("Invalid forward {spec:?}: {why}"),
            "Write [HOST_ADDR:]HOST_PORT:GUEST_PORT, e.g. 8080:80 or 127.0.0.1:0:3000",
        )
    };
    let (addr, rest) = match spec.strip_prefix('[') {
        Some(r) => {
            let (a, rest) = r.split_once("]:").ok_or_else(|| bad("unclosed ["))?;
            (Some(a.to_string()), rest.to_string())
        }
        None => {
            let parts: Vec<&str> = spec.split(':').collect();
            let want = if rm { 2 } else { 3 };
            if parts.len() == want {
                (Some(parts[0].to_string()), parts[1..].join(":"))
            } else {
                (None, spec.to_string())
            }
        }
    };
    let nums: Vec<&str> = rest.split(':').collect();
    let port = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| bad(&format!("{s:?} is not a port")))
    };
    match (rm, nums.as_slice()) {
        (true, [h]) => Ok((addr, port(h)?, None)),
        (false, [h, g]) => {
            let g = port(g)?;
            if g == 0 {
                return Err(bad("the guest port cannot be 0"));
            }
            Ok((addr, port(h)?, Some(g)))
        }
        _ => Err(bad("wrong number of parts")),
    }
}

pub async fn run(ctx: &Ctx, cmd: VmNetCommand) -> CmdResult {
    let c = &ctx.client;
    match cmd {
        VmNetCommand::Ports { name, watch: true } => {
            let json = ctx.json;
            c.follow_port_events(&name, |e| {
                if json {
                    print_json_line(&e);
                } else {
                    let r = e.port.cells(&ctx.style);
                    let who = match (&e.port.process, e.port.pid) {
                        (Some(p), Some(pid)) => format!(" {p} ({pid})"),
                        _ => String::new(),
                    };
                    let url = e
                        .port
                        .url
                        .as_deref()
                        .map(|u| format!(" {u}"))
                        .unwrap_or_default();
                    println!("{:<5} {} {}:{}{who}{url}", e.event, r[0], r[1], r[2]);
                }
                let _ = std::io::Write::flush(&mut std::io::stdout());
            })
            .await?;
            Ok(exit::OK)
        }
        VmNetCommand::Ports { name, watch: false } => {
            let p = c.vm_ports(&name).await?;
            print_list(ctx.json, &ctx.style, &p, &p.ports, "No listening sockets.");
            let unlinked = p
                .ports
                .iter()
                .any(|x| x.url.is_none() && x.proto == "tcp" && !x.address.starts_with("127."));
            if !ctx.json && unlinked {
                eprintln!(
                    "note: a port without a URL is not an HTTP service banger knows of, or the \
                     host does not reach the VM directly; reach one with: banger vm forward \
                     {name} 0:PORT"
                );
            }
            Ok(exit::OK)
        }
        VmNetCommand::Forward { name, spec, rm } => {
            let (addr, host_port, guest_port) = parse_forward_spec(&spec, rm)?;
            if rm {
                c.forward_rm(&name, addr.as_deref(), host_port).await?;
                if ctx.json {
                    print_json_line(&serde_json::json!({ "vm": name, "host_port": host_port,
                        "removed": true }));
                } else {
                    eprintln!("forward removed");
                }
                return Ok(exit::OK);
            }
            let req = ForwardRequest {
                host_addr: addr,
                host_port,
                guest_port: guest_port.unwrap_or(0),
            };
            let f = c.forward_add(&name, &req).await?;
            if ctx.json {
                output::print_json(&f);
            } else {
                println!(
                    "{}:{} -> {}:{}",
                    f.host_addr, f.host_port, f.vm, f.guest_port
                );
            }
            Ok(exit::OK)
        }
        VmNetCommand::Forwards { name } => {
            let l = c.forwards(name.as_deref()).await?;
            let empty = "No forwards. Add one with: banger vm forward VM HOST_PORT:GUEST_PORT";
            print_list(ctx.json, &ctx.style, &l, &l.forwards, empty);
            Ok(exit::OK)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_specs_parse_or_are_usage_errors() {
        assert_eq!(
            parse_forward_spec("8080:80", false).ok(),
            Some((None, 8080, Some(80)))
        );
        assert_eq!(
            parse_forward_spec("127.0.0.1:0:3000", false).ok(),
            Some((Some("127.0.0.1".into()), 0, Some(3000)))
        );
        assert_eq!(
            parse_forward_spec("[::1]:8080:80", false).ok(),
            Some((Some("::1".into()), 8080, Some(80)))
        );
        assert_eq!(
            parse_forward_spec("8080", true).ok(),
            Some((None, 8080, None))
        );
        for bad in ["80", "a:b", "8080:0", "1:2:3:4", "[::1:80:80"] {
            let e = parse_forward_spec(bad, false).expect_err(bad);
            assert_eq!(e.exit_code(), banger::exit::USAGE, "{bad}");
        }
    }
}
