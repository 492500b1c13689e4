//! `banger workspace`, `banger auth`, `banger agent`: the host side of
//! workspaces, credential sync and coding agents. Git runs here, as the
//! calling user; the daemon gets and gives only streams and JSON.

use std::path::{Path, PathBuf};

use banger::api::WorkspacePush;
use banger::client::{Client, ClientError};
use banger::exit;
use banger::output::{self, Style};
use banger::workspace as ws;
use banger_api::{
    AgentProfile, AgentRunRequest, AuthItem, AuthSyncReport, AuthSyncRequest, AuthValue, Workspace,
    WorkspaceChanges,
};
use base64::Engine;
use clap::Subcommand;

use super::{print_list, Ctx, Row};

#[derive(Debug, Subcommand)]
pub enum WorkspaceCommand {
    /// Copy a host git repository into the VM (HEAD, staged, changed and
    /// untracked files) as a git repository on the same commit.
    Push {
        vm: String,
        /// The repository (default: the current directory's).
        path: Option<PathBuf>,
        /// Workspace name (default: the repository's directory name).
        #[arg(long)]
        name: Option<String>,
        /// Guest directory (default: /work/NAME).
        #[arg(long)]
        dest: Option<String>,
        /// Replace the workspace or directory if it exists (guest commits
        /// not exported are lost).
        #[arg(long)]
        force: bool,
    },
    /// Bring the guest's commits since the push (or the last export) back
    /// into the host repository as a branch, or as patch files. Never
    /// touches the host's working tree or current branch.
    Export(ExportArgs),
    /// List workspaces (of one VM).
    Ls { vm: Option<String> },
    /// Show a workspace and what an export would bring back now.
    Show { vm: String, name: Option<String> },
    /// Forget a workspace (its files stay in the guest).
    Rm { vm: String, name: String },
}

/// `agent run`'s arguments.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    pub vm: String,
    /// The repository to push (default: the current directory, when it
    /// is in a git repository).
    #[arg(long, conflicts_with = "no_workspace")]
    pub workspace: Option<PathBuf>,
    /// Run without a workspace.
    #[arg(long)]
    pub no_workspace: bool,
    /// The agent (default: the VM's).
    #[arg(long)]
    pub agent: Option<String>,
    /// The session's name.
    #[arg(long)]
    pub name: Option<String>,
    /// Attach to the session right away.
    #[arg(long)]
    pub attach: bool,
    #[arg(last = true, required = true)]
    pub prompt: Vec<String>,
}

/// `workspace export`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    pub vm: String,
    /// Which workspace (default: the VM's only one).
    #[arg(long)]
    pub name: Option<String>,
    /// The host branch to create or fast-forward (default: banger/VM).
    #[arg(long)]
    pub dest_branch: Option<String>,
    /// Write the new commits as patch files into DIR instead of a branch.
    #[arg(long, value_name = "DIR")]
    pub patches: Option<PathBuf>,
    /// The host repository (default: where the workspace was pushed from).
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// Replace the branch even when it is not a fast-forward.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// The credential items the daemon's config lists (auth.items).
    Ls,
    /// Copy the credential items into the VM's user home (mode 0600).
    Sync {
        vm: String,
        /// Only this item (repeatable).
        #[arg(long = "only", value_name = "NAME")]
        only: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// The agent profiles (built in, and files in the daemon's agents.dir).
    Ls,
    /// Push the workspace, sync credentials, and start the agent on PROMPT
    /// as a session in the workspace (see `banger session attach`).
    Run(RunArgs),
}

fn short(id: &str) -> &str {
    &id[..id.len().min(10)]
}

/// Pushes the repository at `path`; returns the workspace.
async fn push(
    client: &Client,
    vm: &str,
    path: &Path,
    name: Option<String>,
    dest: Option<String>,
    force: bool,
) -> Result<Workspace, ClientError> {
    // The VM first: no packing for a VM that does not exist.
    client.vm(vm).await?;
    let root = ws::repo_root(path)?;
    let name = name.unwrap_or_else(|| ws::default_name(&root));
    // A workspace that is there already: said now, not after the upload
    // (the daemon checks again; it may answer before reading it all).
    if !force {
        if let Ok(w) = client.workspace(vm, &name).await {
            return Err(ClientError::Api(
                banger_api::ApiError::new(
                    banger_api::ErrorCode::Conflict,
                    format!(
                        "Workspace {:?} already exists in VM {vm:?} at {}",
                        w.name, w.dest
                    ),
                )
                .with_hint("Pass --force to replace it (guest commits not exported are lost)"),
            ));
        }
    }
    let packed = ws::pack(&root)?;
    let host = root.display().to_string();
    let q = WorkspacePush {
        name: &name,
        dest: dest.as_deref(),
        host_path: &host,
        base: &packed.head,
        branch: packed.branch.as_deref(),
        force,
    };
    let w = client.workspace_push(vm, &q, packed.archive.path()).await?;
    eprintln!(
        "pushed {} ({} on {}, {} changed or untracked file(s), {} deleted{}) to {}:{}",
        root.display(),
        short(&w.base_commit),
        w.branch.as_deref().unwrap_or("detached HEAD"),
        packed.files,
        packed.deleted,
        if packed.staged {
            ", staged changes"
        } else {
            ""
        },
        vm,
        w.dest
    );
    Ok(w)
}

/// The VM's workspace `name`, or its only one.
async fn pick(client: &Client, vm: &str, name: Option<String>) -> Result<Workspace, ClientError> {
    if let Some(n) = name {
        return client.workspace(vm, &n).await;
    }
    let mut list = client.workspaces(Some(vm)).await?;
    match list.workspaces.len() {
        1 => Ok(list.workspaces.remove(0)),
        0 => Err(ClientError::Local {
            message: format!("VM {vm:?} has no workspace"),
            hint: Some(format!("Push one: banger workspace push {vm} PATH")),
        }),
        _ => Err(ClientError::Local {
            message: format!(
                "VM {vm:?} has several workspaces: {}",
                list.workspaces
                    .iter()
                    .map(|w| w.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            hint: Some("Pass --name NAME".into()),
        }),
    }
}

fn print_changes(c: &WorkspaceChanges) {
    println!(
        "{} new commit(s) ({} since the base {}), {} file(s) changed, +{} -{}",
        c.commits.len(),
        c.total_commits,
        short(&c.workspace.base_commit),
        c.files_changed,
        c.insertions,
        c.deletions
    );
    for commit in &c.commits {
        let subject = banger::output::printable(&commit.subject);
        println!("  {} {subject}", short(&commit.id));
    }
    if c.dirty_files > 0 {
        eprintln!(
            "note: {} uncommitted change(s) in the guest are not exported (commit them in the guest first)",
            c.dirty_files
        );
    }
}

impl Row for Workspace {
    const HEADER: &'static [&'static str] =
        &["VM", "NAME", "GUEST DIR", "BASE", "EXPORTED", "HOST REPO"];
    fn cells(&self, _: &Style) -> Vec<String> {
        vec![
            self.vm.clone(),
            self.name.clone(),
            self.dest.clone(),
            short(&self.base_commit).to_string(),
            self.exported_commit
                .as_deref()
                .map(short)
                .unwrap_or("-")
                .to_string(),
            self.host_path.clone(),
        ]
    }
}

impl Row for AuthItem {
    const HEADER: &'static [&'static str] = &["NAME", "KIND", "HOST SOURCE", "GUEST PATH (~/)"];
    fn cells(&self, _: &Style) -> Vec<String> {
        vec![
            self.name.clone(),
            self.kind.clone(),
            self.source.clone().unwrap_or_else(|| "-".into()),
            self.dest.clone().unwrap_or_else(|| "-".into()),
        ]
    }
}

impl Row for AgentProfile {
    const HEADER: &'static [&'static str] = &["NAME", "SOURCE", "COMMAND", "DESCRIPTION"];
    fn cells(&self, _: &Style) -> Vec<String> {
        vec![
            self.name.clone(),
            self.source.clone(),
            self.command.join(" "),
            self.description.clone(),
        ]
    }
}

pub async fn workspace(ctx: &Ctx, cmd: WorkspaceCommand) -> Result<u8, ClientError> {
    let (client, json, style) = (&ctx.client, ctx.json, &ctx.style);
    match cmd {
        WorkspaceCommand::Push {
            vm,
            path,
            name,
            dest,
            force,
        } => {
            let path = path.unwrap_or_else(|| PathBuf::from("."));
            let w = push(client, &vm, &path, name, dest, force).await?;
            if json {
                output::print_json(&w);
            } else {
                println!("{}", w.name);
            }
            Ok(exit::OK)
        }
        WorkspaceCommand::Export(a) => export(ctx, a).await,
        WorkspaceCommand::Ls { vm } => {
            let list = client.workspaces(vm.as_deref()).await?;
            let empty = "No workspaces. Push one with: banger workspace push VM [PATH]";
            print_list(json, style, &list, &list.workspaces, empty);
            Ok(exit::OK)
        }
        WorkspaceCommand::Show { vm, name } => show(ctx, &vm, name).await,
        WorkspaceCommand::Rm { vm, name } => {
            client.workspace_rm(&vm, &name).await?;
            eprintln!("forgot workspace {name} of {vm} (its files stay in the guest)");
            Ok(exit::OK)
        }
    }
}

/// `workspace export`: the guest's new commits into the host repository,
/// as a branch or patch files.
async fn export(ctx: &Ctx, a: ExportArgs) -> Result<u8, ClientError> {
    let (client, json, style) = (&ctx.client, ctx.json, &ctx.style);
    let ExportArgs {
        vm,
        name,
        dest_branch,
        patches,
        repo,
        force,
    } = a;
    let w = pick(client, &vm, name).await?;
    let c = client.workspace_changes(&vm, &w.name).await?;
    let root = ws::repo_root(&repo.unwrap_or_else(|| PathBuf::from(&w.host_path)))?;
    if c.rewritten_since_export && !force && patches.is_none() {
        return Err(ClientError::Local {
            message: format!(
                "The guest rewrote the commits exported last time ({}); exporting would replace them",
                short(w.exported_commit.as_deref().unwrap_or("?"))
            ),
            hint: Some("Pass --force to replace the branch, or --dest-branch NEW".into()),
        });
    }
    if c.head == w.base_commit || (c.commits.is_empty() && !c.rewritten_since_export) {
        if json {
            output::print_json(&c);
        } else {
            println!(
                "nothing new to export: the guest's HEAD is {}",
                short(&c.head)
            );
        }
        return Ok(exit::OK);
    }
    let branch = match (&patches, dest_branch) {
        (Some(_), b) => b,
        (None, Some(b)) => Some(b),
        (None, None) => Some(format!("banger/{vm}")),
    };
    let bundle = client.workspace_bundle(&vm, &w.name, &c.head).await?;
    let written = ws::import_bundle(
        &root,
        &bundle,
        &c.head,
        &c.from,
        branch.as_deref(),
        force,
        patches.as_deref(),
    )?;
    client
        .workspace_exported(&vm, &w.name, c.head.clone())
        .await?;
    if json {
        output::print_json(&serde_json::json!({
            "changes": c,
            "branch": branch,
            "patches": written,
        }));
        return Ok(exit::OK);
    }
    print_changes(&c);
    if let Some(b) = &branch {
        println!(
            "{} {b} in {} now at {}",
            style.green("exported:"),
            root.display(),
            short(&c.head)
        );
    }
    for p in &written {
        println!("{}", p.display());
    }
    Ok(exit::OK)
}

/// `workspace show`: the workspace and what an export would bring back.
async fn show(ctx: &Ctx, vm: &str, name: Option<String>) -> Result<u8, ClientError> {
    let (client, json) = (&ctx.client, ctx.json);
    let w = pick(client, vm, name).await?;
    let c = client.workspace_changes(vm, &w.name).await;
    if json {
        output::print_json(&serde_json::json!({
            "workspace": w,
            "changes": c.as_ref().ok(),
            "changes_error": c.as_ref().err().map(|e| e.to_string()),
        }));
        return Ok(exit::OK);
    }
    println!("name:      {}", w.name);
    println!("vm:        {}", w.vm);
    println!("guest dir: {}", w.dest);
    println!("host repo: {}", w.host_path);
    println!(
        "base:      {} ({})",
        w.base_commit,
        w.branch.as_deref().unwrap_or("detached HEAD")
    );
    println!("pushed:    {}", w.pushed_at.with_timezone(&chrono::Local));
    if let Some(e) = &w.exported_commit {
        println!("exported:  {e}");
    }
    match c {
        Ok(c) => print_changes(&c),
        Err(e) => println!("changes:   unknown ({e})"),
    }
    Ok(exit::OK)
}

/// Reads the values of `items` (all configured ones, or `only`) as the
/// calling user. Returns the values and the skipped items with why.
async fn read_values(
    client: &Client,
    only: &[String],
) -> Result<(Vec<AuthValue>, Vec<(String, String)>), ClientError> {
    let items = client.auth_items().await?;
    if let Some(unknown) = only
        .iter()
        .find(|o| !items.items.iter().any(|i| &i.name == *o))
    {
        return Err(ClientError::Local {
            message: format!(
                "No auth item named {unknown:?}; configured: {}",
                items
                    .items
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            hint: Some("Items are configured under [auth] in the daemon's config".into()),
        });
    }
    let mut values = Vec::new();
    let mut skipped = Vec::new();
    for item in items
        .items
        .iter()
        .filter(|i| only.is_empty() || only.contains(&i.name))
    {
        let name = item.name.clone();
        match item.kind.as_str() {
            "file" => {
                let src = ws::expand_home(item.source.as_deref().unwrap_or(""));
                match std::fs::read(&src) {
                    Ok(bytes) => values.push(AuthValue::File {
                        name,
                        content_base64: base64::engine::general_purpose::STANDARD.encode(bytes),
                    }),
                    Err(e) => skipped.push((name, format!("cannot read {}: {e}", src.display()))),
                }
            }
            "git-identity" => match ws::git_identity() {
                Some((user_name, user_email)) => values.push(AuthValue::GitIdentity {
                    name,
                    user_name,
                    user_email,
                }),
                None => skipped.push((name, "git user.name or user.email is not set".into())),
            },
            "env" => {
                let var = item.source.as_deref().unwrap_or("");
                match std::env::var(var) {
                    Ok(value) if !value.is_empty() => values.push(AuthValue::Env { name, value }),
                    _ => skipped.push((name, format!("${var} is not set"))),
                }
            }
            other => skipped.push((name, format!("unknown kind {other:?}"))),
        }
    }
    Ok((values, skipped))
}

async fn sync(
    client: &Client,
    vm: &str,
    only: &[String],
) -> Result<(AuthSyncReport, Vec<(String, String)>), ClientError> {
    client.vm(vm).await?;
    let (values, skipped) = read_values(client, only).await?;
    let report = client.auth_sync(vm, &AuthSyncRequest { values }).await?;
    Ok((report, skipped))
}

pub async fn auth(ctx: &Ctx, cmd: AuthCommand) -> Result<u8, ClientError> {
    let (client, json) = (&ctx.client, ctx.json);
    match cmd {
        AuthCommand::Ls => {
            let items = client.auth_items().await?;
            let empty = "No credential items: list them under [auth] in the daemon's config";
            print_list(json, &ctx.style, &items, &items.items, empty);
            Ok(exit::OK)
        }
        AuthCommand::Sync { vm, only } => {
            let (report, skipped) = sync(client, &vm, &only).await?;
            if json {
                output::print_json(&serde_json::json!({
                    "synced": report.synced,
                    "skipped": skipped.iter().map(|(n, why)| serde_json::json!({"name": n, "reason": why})).collect::<Vec<_>>(),
                }));
            } else {
                for s in &report.synced {
                    println!("synced  {:<12} -> {} (0600)", s.name, s.guest_path);
                }
                for (n, why) in &skipped {
                    println!("skipped {n:<12} ({why})");
                }
            }
            // An item asked for by name that could not be read is a failure.
            Ok(if !only.is_empty() && !skipped.is_empty() {
                exit::FAILURE
            } else {
                exit::OK
            })
        }
    }
}

pub async fn agent(ctx: &Ctx, cmd: AgentCommand) -> Result<u8, ClientError> {
    let (client, json) = (&ctx.client, ctx.json);
    match cmd {
        AgentCommand::Ls => {
            let list = client.agents().await?;
            print_list(json, &ctx.style, &list, &list.agents, "No agent profiles.");
            Ok(exit::OK)
        }
        AgentCommand::Run(a) => run_agent(ctx, a).await,
    }
}

/// The workspace an agent works in: the repository at `path`, pushed
/// unless a workspace of its name is in the VM already. Returns its name.
async fn agent_workspace(client: &Client, vm: &str, path: &Path) -> Result<String, ClientError> {
    let root = ws::repo_root(path)?;
    let name = ws::default_name(&root);
    match client.workspace(vm, &name).await {
        Ok(w) => {
            eprintln!(
                "using workspace {} already in {vm} at {} (replace it with: banger workspace \
                 push {vm} {} --force)",
                w.name,
                w.dest,
                root.display()
            );
            Ok(w.name)
        }
        Err(_) => Ok(push(client, vm, &root, Some(name), None, false).await?.name),
    }
}

/// Syncs the credential items an agent profile names that the daemon's
/// config lists; says which were synced and which this host lacks.
async fn sync_profile_credentials(
    client: &Client,
    vm: &str,
    items: &[String],
) -> Result<(), ClientError> {
    if items.is_empty() {
        return Ok(());
    }
    let configured = client.auth_items().await?;
    let wanted: Vec<String> = items
        .iter()
        .filter(|a| configured.items.iter().any(|i| &i.name == *a))
        .cloned()
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let (report, skipped) = sync(client, vm, &wanted).await?;
    let names: Vec<&str> = report.synced.iter().map(|s| s.name.as_str()).collect();
    let synced = if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    };
    let missing = if skipped.is_empty() {
        String::new()
    } else {
        let n: Vec<&str> = skipped.iter().map(|(n, _)| n.as_str()).collect();
        format!(" (not on this host: {})", n.join(", "))
    };
    eprintln!("credentials synced: {synced}{missing}");
    Ok(())
}

/// `agent run`: the workspace pushed (or the one there reused), the
/// profile's credentials synced, the agent started as a session.
async fn run_agent(ctx: &Ctx, a: RunArgs) -> Result<u8, ClientError> {
    let (client, json) = (&ctx.client, ctx.json);
    let RunArgs {
        vm,
        workspace,
        no_workspace,
        agent,
        name,
        attach,
        prompt,
    } = a;
    let v = client.vm(&vm).await?;
    let list = client.agents().await?;
    let agent_name = agent
        .or(v.agent.clone())
        .ok_or_else(|| ClientError::Local {
            message: format!("VM {vm:?} has no agent"),
            hint: Some(
                "Pass --agent NAME (banger agent ls lists them), or create the VM with --agent"
                    .into(),
            ),
        })?;
    let profile = list
        .agents
        .iter()
        .find(|a| a.name == agent_name)
        .ok_or_else(|| ClientError::Local {
            message: format!(
                "Unknown agent {agent_name:?}; known agents: {}",
                list.agents.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
            hint: Some("Add one with a profile file NAME.toml in the daemon's agents.dir (see \"Agent profiles\" in docs/workspaces.md)".into()),
        })?;
    let path = match (no_workspace, workspace) {
        (true, _) => None,
        (false, Some(p)) => Some(p),
        (false, None) => ws::repo_root(Path::new(".")).ok(),
    };
    let ws_name = match path {
        Some(p) => Some(agent_workspace(client, &vm, &p).await?),
        None => None,
    };
    sync_profile_credentials(client, &vm, &profile.auth).await?;
    let req = AgentRunRequest {
        prompt: prompt.join(" "),
        agent: Some(agent_name.clone()),
        workspace: ws_name,
        session: name,
    };
    let s = client.agent_run(&vm, &req).await?;
    if json {
        output::print_json(&s);
    } else {
        println!("{}", s.name);
        eprintln!(
            "{agent_name} runs in {vm} as session {n}{cwd}; follow it: banger session attach {n} (or banger session logs -f {n}); bring its commits back: banger workspace export {vm}",
            n = s.name,
            cwd = s.cwd.as_deref().map(|c| format!(" in {c}")).unwrap_or_default(),
        );
    }
    if attach {
        return super::session::attach(ctx, &s.name).await;
    }
    Ok(exit::OK)
}
