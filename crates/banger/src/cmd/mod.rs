//! The CLI's commands, one file per noun. Each holds its clap arguments,
//! pure "arguments -> request" functions (unit-tested without a daemon),
//! and handlers that call the typed client ([`banger::api`]) and render the
//! answer with [`banger::output`]. What every command shares is here: the
//! context, following an operation, and how an action ends (a sentence for
//! people, its result object for programs).

pub mod e2b;
pub mod image;
pub mod ops;
pub mod pool;
pub mod session;
pub mod snapshot;
pub mod system;
pub mod term;
pub mod vm;
pub mod vm_exec;
pub mod vm_net;
pub mod vm_ssh;
pub mod workspace;

use banger::client::{Client, ClientError};
use banger::exit;
use banger::output::Style;
use banger::progress::Renderer;
use banger_api::{OpState, Operation};

/// What every handler gets.
pub struct Ctx {
    pub client: Client,
    /// `--json`: machine-readable output.
    pub json: bool,
    pub style: Style,
}

/// A command's exit code, or the error to report.
pub type CmdResult = Result<u8, ClientError>;

/// `--wait`: how far an action that starts an operation follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Wait {
    /// Until the operation ends (a new guest: until it takes SSH).
    Ssh,
    /// Return the operation at once (its id; `--json`: the operation).
    None,
}

/// One row of a list command's table.
pub trait Row {
    /// The column titles.
    const HEADER: &'static [&'static str];
    /// The cells, in the order of [`Row::HEADER`].
    fn cells(&self, style: &Style) -> Vec<String>;
}

/// The one way a list is shown: the whole answer as JSON with `--json`;
/// otherwise `empty` when there are no rows, else an aligned table.
pub fn print_list<T: serde::Serialize, R: Row>(
    json: bool,
    style: &Style,
    whole: &T,
    rows: &[R],
    empty: &str,
) {
    if json {
        banger::output::print_json(whole);
    } else if rows.is_empty() {
        println!("{empty}");
    } else {
        let cells: Vec<Vec<String>> = rows.iter().map(|r| r.cells(style)).collect();
        print!("{}", banger::output::table(R::HEADER, &cells));
    }
}

/// A usage error found after parsing (exit 2), e.g. `--env X` without `=`.
pub fn usage(message: impl Into<String>, hint: impl Into<String>) -> ClientError {
    ClientError::Usage {
        message: message.into(),
        hint: Some(hint.into()),
    }
}

/// A failure on the client's side (a local file), not the user's input.
pub fn local(message: impl Into<String>, hint: Option<&str>) -> ClientError {
    ClientError::Local {
        message: message.into(),
        hint: hint.map(str::to_string),
    }
}

/// Prints `v` as JSON with `--json`, else as `human` renders it; exit 0.
pub fn print_one<T: serde::Serialize>(ctx: &Ctx, v: &T, human: impl FnOnce(&T)) -> CmdResult {
    if ctx.json {
        banger::output::print_json(v);
    } else {
        human(v);
    }
    Ok(exit::OK)
}

/// How a removal ends: `{"<kind>": NAME, "removed": true}` with `--json`,
/// else `removed <kind> NAME`.
pub fn print_removed(ctx: &Ctx, kind: &str, name: &str) -> CmdResult {
    if ctx.json {
        print_json_line(&serde_json::json!({ kind: name, "removed": true }));
    } else {
        println!("removed {kind} {name}");
    }
    Ok(exit::OK)
}

/// Prints `v` as one line of JSON (the last line of an action's output).
pub fn print_json_line<T: serde::Serialize>(v: &T) {
    match serde_json::to_string(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("banger: cannot encode output as JSON: {e}"),
    }
}

/// Follows an operation just started, unless `wait` is `None` (then its id
/// is printed, or the operation with `--json`). Returns the finished
/// operation, or `None` when not followed.
pub async fn follow(
    ctx: &Ctx,
    op: Operation,
    wait: Wait,
) -> Result<Option<Operation>, ClientError> {
    if wait == Wait::None {
        if ctx.json {
            banger::output::print_json(&op);
        } else {
            println!("{}", op.id);
        }
        return Ok(None);
    }
    watch(ctx, op).await.map(Some)
}

/// Follows `op` to its end, rendering progress (NDJSON events on stdout
/// with `--json`); reports a failure on stderr. Returns the final snapshot.
pub async fn watch(ctx: &Ctx, op: Operation) -> Result<Operation, ClientError> {
    let mut renderer = Renderer::detect(ctx.json, &op);
    ctx.client
        .follow_op(&op.id, 0, |ev| renderer.event(ev))
        .await?;
    let done = ctx.client.op(&op.id).await?;
    if !ctx.json {
        if let Some(e) = &done.error {
            eprintln!(
                "banger: {} {}: {}",
                done.kind,
                done.state.as_str(),
                e.message
            );
            if let Some(h) = &e.hint {
                eprintln!("hint: {h}");
            }
        }
    } else if done.state != OpState::Succeeded {
        // The last line says how it ended.
        print_json_line(&done);
    }
    Ok(done)
}

/// 0 when the operation succeeded, else 1.
pub fn final_code(op: &Operation) -> u8 {
    if op.state == OpState::Succeeded {
        exit::OK
    } else {
        exit::FAILURE
    }
}

/// A number from an operation's result object (`boot_seconds`, ...).
pub fn result_f64(op: &Operation, key: &str) -> Option<f64> {
    op.result.as_ref()?.get(key)?.as_f64()
}

/// A flag from an operation's result object (`from_pool`, ...).
pub fn result_bool(op: &Operation, key: &str) -> bool {
    op.result
        .as_ref()
        .and_then(|r| r.get(key))
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

/// `KEY=VALUE` pairs (`--env`), checked. Pure.
pub fn parse_env(
    pairs: &[String],
) -> Result<std::collections::BTreeMap<String, String>, ClientError> {
    let mut map = std::collections::BTreeMap::new();
    for kv in pairs {
        let Some((k, v)) = kv.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(usage(
                format!("--env {kv:?} is not KEY=VALUE"),
                "Write --env NAME=value (repeat it for more)",
            ));
        };
        map.insert(k.to_string(), v.to_string());
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_pairs_are_checked() {
        let m = parse_env(&["A=1".into(), "B=x=y".into(), "C=".into()]).expect("valid");
        assert_eq!(m.get("B").map(String::as_str), Some("x=y"));
        assert_eq!(m.get("C").map(String::as_str), Some(""));
        for bad in ["A", "=1"] {
            let e = parse_env(&[bad.into()]).expect_err(bad);
            assert_eq!(e.exit_code(), exit::USAGE, "{bad}");
        }
    }
}
