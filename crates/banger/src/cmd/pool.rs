//! `banger pool`: the warm pool (VMs booted ahead of time, so that a
//! `vm create` that fits takes one at once).

use banger::exit;
use banger::output::{self, Style};
use banger_api::{PoolSetRequest, PoolStatus, VmResources};
use clap::Subcommand;

use super::vm::{cpus_arg, memory_arg, work_size_arg};
use super::{print_list, CmdResult, Ctx, Row};

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Pool sizes with their ready and booting VMs, and the memory budget.
    #[command(visible_alias = "list")]
    Ls,
    /// Keep SIZE VMs of an image and size booted (0: none). A `vm create`
    /// asking for the same image, cpus, memory and work disk takes one.
    /// Sizes left out are those of the image's one pool entry when it has
    /// exactly one (so `--size 0` empties it), else the daemon's defaults.
    Set {
        /// Image [default: the daemon's vm.default_image].
        image: Option<String>,
        /// How many VMs to keep ready, 0..=64 (0: none).
        #[arg(long)]
        size: u32,
        /// vCPUs of each, 1..=32.
        #[arg(long, value_parser = cpus_arg)]
        cpus: Option<u32>,
        /// Memory of each, e.g. 1G.
        #[arg(long, value_parser = memory_arg)]
        memory: Option<String>,
        /// Work disk of each, e.g. 1G.
        #[arg(long, value_parser = work_size_arg)]
        work_disk_size: Option<String>,
    },
}

impl Row for PoolStatus {
    const HEADER: &'static [&'static str] = &[
        "IMAGE",
        "CPUS",
        "MEMORY",
        "WORK DISK",
        "SIZE",
        "READY",
        "BOOTING",
    ];
    fn cells(&self, _: &Style) -> Vec<String> {
        vec![
            self.image.clone(),
            self.cpus.to_string(),
            output::size(u64::from(self.memory_mib) << 20),
            output::size(self.work_disk_bytes),
            self.size.to_string(),
            self.ready.to_string(),
            self.booting.to_string(),
        ]
    }
}

pub async fn run(ctx: &Ctx, cmd: PoolCommand) -> CmdResult {
    match cmd {
        PoolCommand::Ls => {
            let l = ctx.client.pools().await?;
            let empty = "No pools. Keep VMs ready with: banger pool set --size N";
            print_list(ctx.json, &ctx.style, &l, &l.pools, empty);
            if !ctx.json {
                println!(
                    "memory: {} of {} used",
                    output::size(l.memory_used_mib << 20),
                    output::size(l.memory_budget_mib << 20)
                );
            }
        }
        PoolCommand::Set {
            image,
            size,
            cpus,
            memory,
            work_disk_size,
        } => {
            let req = PoolSetRequest {
                image,
                resources: VmResources {
                    cpus,
                    memory,
                    disk_size: None,
                    work_disk_size,
                },
                size,
            };
            let p = ctx.client.pool_set(&req).await?;
            if ctx.json {
                output::print_json(&p);
            } else {
                println!(
                    "pool {}: {} VM(s) of {} cpus, {}, work disk {} (refilling in the background)",
                    p.image,
                    p.size,
                    p.cpus,
                    output::size(u64::from(p.memory_mib) << 20),
                    output::size(p.work_disk_bytes)
                );
            }
        }
    }
    Ok(exit::OK)
}
