//! `banger e2b`: the E2B-compatible listener's API keys, and the lines
//! that point the E2B SDKs at it.

use banger::exit;
use banger::output::Style;
use banger_api::E2bKey;
use clap::Subcommand;

use super::{print_list, CmdResult, Ctx, Row};

#[derive(Debug, Subcommand)]
pub enum E2bCommand {
    /// API keys: each is its maker's, and reaches only their sandboxes.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Print the `export` lines that point the E2B SDKs at this daemon.
    Env {
        /// The API key to put in E2B_API_KEY (else a placeholder).
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a key; its secret is printed this once.
    Create {
        /// A name for it (yours to pick, e.g. the project).
        name: String,
    },
    /// Your keys (every key, for root).
    #[command(visible_alias = "list")]
    Ls,
    /// Remove a key, by id or name.
    #[command(visible_alias = "remove")]
    Rm { key: String },
}

impl Row for E2bKey {
    const HEADER: &'static [&'static str] = &["ID", "NAME", "KEY", "OWNER", "CREATED"];
    fn cells(&self, _: &Style) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            format!("{}...", self.prefix),
            self.owner_uid.to_string(),
            self.created_at.clone(),
        ]
    }
}

/// The export lines for listener `url` and `key`. Pure.
pub fn env_lines(url: &str, key: &str) -> String {
    format!("export E2B_API_URL={url}\nexport E2B_SANDBOX_URL={url}\nexport E2B_API_KEY={key}\n")
}

pub async fn run(ctx: &Ctx, cmd: E2bCommand) -> CmdResult {
    match cmd {
        E2bCommand::Key(KeyCommand::Create { name }) => {
            let k = ctx.client.e2b_key_create(&name).await?;
            if ctx.json {
                banger::output::print_json(&k);
            } else {
                println!("{}", k.secret);
                eprintln!(
                    "key {} ({}) made; it is shown this once. Point the SDKs here with: \
                     eval \"$(banger e2b env --key KEY)\"",
                    k.key.id, k.key.name
                );
            }
        }
        E2bCommand::Key(KeyCommand::Ls) => {
            let l = ctx.client.e2b_keys().await?;
            let empty = "No E2B API keys. Make one with: banger e2b key create NAME";
            print_list(ctx.json, &ctx.style, &l, &l.keys, empty);
        }
        E2bCommand::Key(KeyCommand::Rm { key }) => {
            ctx.client.e2b_key_rm(&key).await?;
            return super::print_removed(ctx, "E2B key", &key);
        }
        E2bCommand::Env { key } => {
            let info = ctx.client.e2b_info().await?;
            let Some(url) = info.url else {
                eprintln!(
                    "banger: the E2B listener is off\n  hint: set [e2b] listen = \"127.0.0.1:3000\" in \
                     /etc/banger/config.toml and restart bangerd"
                );
                return Ok(exit::FAILURE);
            };
            print!(
                "{}",
                env_lines(
                    &url,
                    key.as_deref()
                        .unwrap_or("<your key: banger e2b key create NAME>")
                )
            );
        }
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lines_name_the_three_variables() {
        let t = env_lines("http://127.0.0.1:3000", "e2b_x");
        assert!(t.contains("export E2B_API_URL=http://127.0.0.1:3000\n"));
        assert!(t.contains("export E2B_SANDBOX_URL=http://127.0.0.1:3000\n"));
        assert!(t.contains("export E2B_API_KEY=e2b_x\n"));
    }
}
