//! What a VM shows: console log, stats, listening ports; connections to it.

use std::time::{Duration, Instant};

use banger_api::{Vm, VmState};

use crate::tools::ToolError;

use super::error::VmError;
use super::procs::pid_alive;
use super::{ports, stats, Vms};

impl Vms {
    /// One round of the fleet's live figures: every user VM with its VMM's
    /// CPU use since the previous round (kept in `meter`) and its RSS.
    pub fn fleet(&self, meter: &mut stats::CpuMeter) -> banger_api::FleetSnapshot {
        let mut live = Vec::new();
        for vm in self.list_user().unwrap_or_default() {
            let (cpu, rss) = match self.vmm_sample(&vm) {
                Some((ticks, rss)) => (meter.sample(&vm.id, ticks, Instant::now()), rss),
                None => (None, None),
            };
            live.push(banger_api::VmLive {
                vm,
                cpu_percent: cpu,
                rss_bytes: rss,
            });
        }
        meter.end_round();
        banger_api::FleetSnapshot {
            at: chrono::Utc::now(),
            vms: live,
        }
    }

    /// A guest command's stdout, for figures that are reported as text.
    async fn guest_stdout_of(&self, vm: &Vm, command: &str) -> Result<String, VmError> {
        Ok(self.guest(vm)?.stdout(command).await?)
    }

    /// The console log from byte `offset` on, and the log's size.
    pub fn console_log_from(&self, name: &str, offset: u64) -> Result<(String, u64), VmError> {
        use std::io::{Read, Seek, SeekFrom};
        let vm = self.get(name)?;
        let p = self.paths(&vm.id).console();
        let Ok(mut f) = std::fs::File::open(&p) else {
            return Ok((String::new(), 0));
        };
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        // A log shorter than the offset was restarted (a new boot): from 0.
        let from = if offset > size { 0 } else { offset };
        f.seek(SeekFrom::Start(from))
            .map_err(|source| VmError::Io {
                path: p.clone(),
                source,
            })?;
        let mut buf = Vec::new();
        f.take(4 << 20)
            .read_to_end(&mut buf)
            .map_err(|source| VmError::Io {
                path: p.clone(),
                source,
            })?;
        Ok((
            String::from_utf8_lossy(&buf).into_owned(),
            from + buf.len() as u64,
        ))
    }

    /// Host-side figures from /proc and the disks; guest-side over SSH.
    /// A VMM's CPU ticks and RSS now (for live figures); `None` when not running.
    pub(super) fn vmm_sample(&self, vm: &Vm) -> Option<(u64, Option<u64>)> {
        let pid = vm
            .pid
            .filter(|p| vm.state == VmState::Running && pid_alive(*p))?;
        let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .as_deref()
            .and_then(stats::parse_proc_stat_ticks)?;
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .as_deref()
            .and_then(stats::parse_rss);
        Some((ticks, rss))
    }

    pub async fn stats(&self, name: &str) -> Result<banger_api::VmStats, VmError> {
        let vm = self.get(name)?;
        let p = self.paths(&vm.id);
        let disk_allocated_bytes = std::fs::read_dir(&p.dir)
            .map(|r| {
                use std::os::unix::fs::MetadataExt;
                r.filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.blocks() * 512)
                    .sum()
            })
            .unwrap_or(0);
        let running = vm.state == VmState::Running;
        let pid = vm.pid.filter(|p| running && pid_alive(*p));
        let mut host = banger_api::HostStats {
            pid,
            cpu_percent: None,
            rss_bytes: None,
            disk_allocated_bytes,
        };
        if let Some(pid) = pid {
            let ticks = || {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .as_deref()
                    .and_then(stats::parse_proc_stat_ticks)
            };
            let hz = stats::clock_ticks_per_second();
            let (a, t0) = (ticks(), Instant::now());
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let (Some(a), Some(b)) = (a, ticks()) {
                let secs = t0.elapsed().as_secs_f64();
                host.cpu_percent = Some(stats::cpu_percent(b.saturating_sub(a), hz, secs));
            }
            host.rss_bytes = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .as_deref()
                .and_then(stats::parse_rss);
        }
        let (guest, guest_error) = if running {
            match self.guest_figures(&vm).await {
                Ok(g) => (Some(g), None),
                Err(e) => (None, Some(e)),
            }
        } else {
            (None, Some(format!("the VM is {}", vm.state.as_str())))
        };
        Ok(banger_api::VmStats {
            name: vm.name,
            state: vm.state,
            host,
            guest,
            guest_error,
        })
    }

    /// The guest's figures: from banger-agent, else from a command over SSH.
    async fn guest_figures(&self, vm: &Vm) -> Result<banger_api::GuestStats, String> {
        use banger_agent_proto::msg::{Reply, Request};
        if let Ok(c) = self.agent(vm).await {
            return match c.call(&Request::Metrics, Duration::from_secs(10)).await {
                Ok(Reply::Metrics(m)) => Ok(banger_api::GuestStats {
                    load: m.load,
                    mem_total_bytes: m.mem_total_bytes,
                    mem_available_bytes: m.mem_available_bytes,
                    root_used_bytes: m.root_used_bytes,
                    root_total_bytes: m.root_total_bytes,
                    work_used_bytes: m.work_used_bytes,
                    work_total_bytes: m.work_total_bytes,
                }),
                Ok(other) => Err(format!("unexpected answer from the guest agent: {other:?}")),
                Err(e) => Err(crate::error::error_chain(&e)),
            };
        }
        match self.guest_stdout_of(vm, stats::GUEST_STATS_COMMAND).await {
            Ok(out) => stats::parse_guest(&out)
                .map_err(|e| format!("unexpected output from the guest: {e}")),
            Err(e) => Err(crate::error::error_chain(&e)),
        }
    }

    /// The guest's listening sockets: from banger-agent (/proc/net), else
    /// from `ss` over SSH.
    async fn guest_ports(
        &self,
        vm: &Vm,
        reach: &ports::Reach,
    ) -> Result<Vec<banger_api::VmPort>, VmError> {
        use banger_agent_proto::msg::{Reply, Request};
        if let Ok(c) = self.agent(vm).await {
            let reply = c.call(&Request::Ports, Duration::from_secs(10)).await?;
            let Reply::Ports { ports: listening } = reply else {
                return Err(VmError::Internal {
                    what: "guest agent",
                    reason: format!("unexpected answer to ports: {reply:?}"),
                });
            };
            return Ok(ports::from_agent(listening, reach));
        }
        let out = self.guest(vm)?.stdout(ports::GUEST_PORTS_COMMAND).await?;
        ports::parse_ss(&out, reach).map_err(|detail| {
            VmError::Tool(ToolError::BadOutput {
                program: "ss (in the guest)".into(),
                detail,
            })
        })
    }

    /// The guest's listening TCP and UDP sockets, with the links the host
    /// can open (`forwarded`: guest port -> host `addr:port`).
    pub(crate) async fn ports(
        &self,
        name: &str,
        forwarded: Vec<(u16, String)>,
    ) -> Result<banger_api::VmPortList, VmError> {
        let vm = self.get(name)?;
        let reach = ports::Reach {
            direct: self.inner.config.host_routes_to_vms.then(|| vm.ip.clone()),
            forwarded,
        };
        let ports = self.guest_ports(&vm, &reach).await?;
        Ok(banger_api::VmPortList { vm: vm.name, ports })
    }

    /// Sockets opening and closing in the guest, as they happen (`open`
    /// for each one listening at the start); needs banger-agent.
    pub(crate) async fn watch_ports(
        &self,
        name: &str,
        forwarded: Vec<(u16, String)>,
    ) -> Result<impl futures::Stream<Item = banger_api::VmPortEvent> + Send, VmError> {
        use banger_agent_proto::msg::{Reply, Request};
        let vm = self.get(name)?;
        let reach = ports::Reach {
            direct: self.inner.config.host_routes_to_vms.then(|| vm.ip.clone()),
            forwarded,
        };
        let c = self.agent(&vm).await?;
        let mut f = c.open(&Request::WatchPorts).await?;
        match crate::guest_agent::next_reply(&mut f).await? {
            Reply::Ok => {}
            other => {
                return Err(VmError::Internal {
                    what: "guest agent",
                    reason: format!("unexpected answer to watch_ports: {other:?}"),
                })
            }
        }
        Ok(futures::stream::unfold(
            (f, reach),
            |(mut f, reach)| async move {
                loop {
                    match crate::guest_agent::next_reply(&mut f).await {
                        Ok(Reply::PortEvent { event, port }) => {
                            let Some(port) = ports::from_agent(vec![port], &reach).pop() else {
                                continue;
                            };
                            let ev = banger_api::VmPortEvent { event, port };
                            return Some((ev, (f, reach)));
                        }
                        Ok(_) => continue,
                        Err(_) => return None,
                    }
                }
            },
        ))
    }

    /// Opens a TCP connection to a port of a running VM (from the daemon's
    /// network namespace).
    pub async fn connect(&self, name: &str, port: u16) -> Result<tokio::net::TcpStream, VmError> {
        let vm = self.get(name)?;
        if vm.state != VmState::Running {
            return Err(VmError::WrongState {
                name: name.into(),
                state: vm.state.as_str(),
                what: "only a running VM can be reached",
            });
        }
        let addr = format!("{}:{port}", vm.ip);
        tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(&addr),
        )
        .await
        .map_err(|_| VmError::Connect {
            name: name.into(),
            port,
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
        })?
        .map_err(|source| VmError::Connect {
            name: name.into(),
            port,
            source,
        })
    }
}
