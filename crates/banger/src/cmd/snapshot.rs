//! `banger snapshot`: list and remove snapshots (taken with `vm snapshot`,
//! restored with `vm create --from-snapshot`).

use banger::exit;
use banger::output::{self, Style};
use banger_api::Snapshot;
use clap::Subcommand;

use super::{print_list, CmdResult, Ctx, Row};

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// List snapshots.
    #[command(visible_alias = "list")]
    Ls,
    /// Remove a snapshot and its files.
    #[command(visible_alias = "remove")]
    Rm {
        /// The snapshot.
        name: String,
    },
}

impl Row for Snapshot {
    const HEADER: &'static [&'static str] = &[
        "NAME", "VM", "IMAGE", "BACKEND", "OF", "CPUS", "MEMORY", "SIZE", "STATE", "CREATED",
    ];
    fn cells(&self, _: &Style) -> Vec<String> {
        vec![
            self.name.clone(),
            self.source_vm.clone(),
            self.image.clone(),
            self.backend.to_string(),
            if self.with_memory { "running" } else { "disks" }.into(),
            self.cpus.to_string(),
            output::size(u64::from(self.memory_mib) << 20),
            output::size(self.size_bytes),
            self.state.clone(),
            self.created_at.clone(),
        ]
    }
}

pub async fn run(ctx: &Ctx, cmd: SnapshotCommand) -> CmdResult {
    match cmd {
        SnapshotCommand::Ls => {
            let l = ctx.client.snapshots().await?;
            let empty = "No snapshots. Take one with: banger vm snapshot VM";
            print_list(ctx.json, &ctx.style, &l, &l.snapshots, empty);
        }
        SnapshotCommand::Rm { name } => {
            ctx.client.snapshot_rm(&name).await?;
            return super::print_removed(ctx, "snapshot", &name);
        }
    }
    Ok(exit::OK)
}
