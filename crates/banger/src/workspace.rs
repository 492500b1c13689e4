//! The host side of workspaces and credential sync, run as the calling
//! user: packing a git repository for `workspace push`, bringing a guest
//! bundle back for `workspace export`, reading credential values for
//! `auth sync`. Git is driven through its command line, the real interface.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::client::ClientError;

fn local(message: impl Into<String>, hint: Option<&str>) -> ClientError {
    ClientError::Local {
        message: message.into(),
        hint: hint.map(str::to_string),
    }
}

/// Runs git in `repo` (any exit status).
fn git_output(repo: &Path, args: &[&str]) -> Result<std::process::Output, ClientError> {
    Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .map_err(|e| {
            local(
                format!("Cannot run git: {e}"),
                Some("Install git: sudo apt-get install git"),
            )
        })
}

/// Runs git in `repo`; its stdout, or an error with its stderr.
pub fn git(repo: &Path, args: &[&str]) -> Result<Vec<u8>, ClientError> {
    let out = git_output(repo, args)?;
    if !out.status.success() {
        return Err(local(
            format!(
                "git {} failed in {}: {}",
                args.join(" "),
                repo.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            None,
        ));
    }
    Ok(out.stdout)
}

fn git_line(repo: &Path, args: &[&str]) -> Result<String, ClientError> {
    Ok(String::from_utf8_lossy(&git(repo, args)?)
        .trim()
        .to_string())
}

/// The top directory of the git work tree containing `path`.
pub fn repo_root(path: &Path) -> Result<PathBuf, ClientError> {
    let abs = std::fs::canonicalize(path)
        .map_err(|e| local(format!("Cannot open {}: {e}", path.display()), None))?;
    let out = git_output(&abs, &["rev-parse", "--show-toplevel"])?;
    if !out.status.success() {
        return Err(local(
            format!("{} is not inside a git repository", abs.display()),
            Some("Pass the path of a git work tree (git init; git commit, first)"),
        ));
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// A workspace name from a directory name: lowercase a-z, 0-9 and '-'. Pure.
pub fn default_name(dir: &Path) -> String {
    let raw = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    let s: String = s.trim_matches('-').chars().take(63).collect();
    let s = s.trim_end_matches('-').to_string();
    if s.is_empty() {
        "workspace".into()
    } else {
        s
    }
}

/// A packed repository, ready to upload.
pub struct Packed {
    pub archive: tempfile::NamedTempFile,
    pub head: String,
    pub branch: Option<String>,
    /// Changed or untracked files carried, and deleted paths.
    pub files: usize,
    pub deleted: usize,
    pub staged: bool,
}

fn nul_list(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// Packs the repository at `root` (see banger-core's workspaces::script
/// for the layout): HEAD as a bundle, the staged diff, changed and
/// untracked (not ignored) files, and deleted paths.
pub fn pack(root: &Path) -> Result<Packed, ClientError> {
    let head = git_line(root, &["rev-parse", "--verify", "-q", "HEAD^{commit}"]).map_err(|_| {
        local(
            format!("{} has no commits yet", root.display()),
            Some("Commit once (git commit), then push"),
        )
    })?;
    let branch = git_output(root, &["symbolic-ref", "-q", "--short", "HEAD"])
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|b| !b.is_empty());
    let scratch = tempfile::tempdir()
        .map_err(|e| local(format!("Cannot make a temporary directory: {e}"), None))?;
    let bundle = scratch.path().join("bundle");
    let bundle_s = bundle.display().to_string();
    let mut args = vec!["bundle", "create", "-q", bundle_s.as_str(), "HEAD"];
    let branch_ref = branch.as_ref().map(|b| format!("refs/heads/{b}"));
    if let Some(r) = &branch_ref {
        args.push(r);
    }
    git(root, &args)?;
    let staged = git(root, &["diff", "--cached", "--binary"])?;
    let changed: Vec<String> = nul_list(&git(
        root,
        &["ls-files", "-z", "-m", "-o", "--exclude-standard"],
    )?)
    .into_iter()
    .filter(|p| !p.ends_with('/') && root.join(p).symlink_metadata().is_ok())
    .collect();
    let deleted = nul_list(&git(root, &["ls-files", "-z", "-d"])?);

    let archive = tempfile::NamedTempFile::new()
        .map_err(|e| local(format!("Cannot make a temporary file: {e}"), None))?;
    let io = |e: std::io::Error| local(format!("Cannot write the workspace archive: {e}"), None);
    {
        let mut tar = tar::Builder::new(std::io::BufWriter::new(archive.as_file()));
        tar.follow_symlinks(false);
        tar.append_path_with_name(&bundle, "bundle").map_err(io)?;
        let mut add_bytes = |name: &str, data: &[u8]| -> Result<(), ClientError> {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, name, data).map_err(io)
        };
        add_bytes("staged.patch", &staged)?;
        let mut del = Vec::new();
        for d in &deleted {
            del.extend_from_slice(d.as_bytes());
            del.push(0);
        }
        add_bytes("deleted", &del)?;
        for p in &changed {
            tar.append_path_with_name(root.join(p), Path::new("tree").join(p))
                .map_err(io)?;
        }
        tar.into_inner()
            .and_then(|mut w| std::io::Write::flush(&mut w))
            .map_err(io)?;
    }
    Ok(Packed {
        archive,
        head,
        branch,
        files: changed.len(),
        deleted: deleted.len(),
        staged: !staged.is_empty(),
    })
}

/// Brings `bundle` (commits base..head under `refs/banger/export`) into the
/// repository at `root`: into `branch` (a fast-forward, unless `force`), or
/// as patch files from `from` in `patches`. Never touches the working tree
/// or the current branch (git refuses to fetch into a checked-out branch).
/// Returns the written patch files.
pub fn import_bundle(
    root: &Path,
    bundle: &[u8],
    head: &str,
    from: &str,
    branch: Option<&str>,
    force: bool,
    patches: Option<&Path>,
) -> Result<Vec<PathBuf>, ClientError> {
    let mut file = tempfile::NamedTempFile::new()
        .map_err(|e| local(format!("Cannot make a temporary file: {e}"), None))?;
    std::io::Write::write_all(&mut file, bundle)
        .map_err(|e| local(format!("Cannot write the bundle: {e}"), None))?;
    let path = file.path().display().to_string();
    git(root, &["bundle", "verify", "-q", &path]).map_err(|e| {
        local(
            format!(
                "The guest's commits do not apply to {}: {e}",
                root.display()
            ),
            Some("The repository must still have the workspace's base commit"),
        )
    })?;
    if let Some(b) = branch {
        if git_line(root, &["check-ref-format", "--branch", b]).is_err() {
            return Err(local(format!("{b:?} is not a valid branch name"), None));
        }
        let current =
            git_line(root, &["symbolic-ref", "-q", "--short", "HEAD"]).unwrap_or_default();
        if current == b {
            return Err(local(
                format!(
                    "{b} is the branch checked out in {}; export never touches the current branch",
                    root.display()
                ),
                Some("Pass another --dest-branch, or check out another branch first"),
            ));
        }
        let spec = format!(
            "{}refs/banger/export:refs/heads/{b}",
            if force { "+" } else { "" }
        );
        git(root, &["fetch", "-q", "--no-tags", &path, &spec]).map_err(|e| {
            local(
                format!("Cannot update branch {b}: {e}"),
                Some("The branch has commits the guest does not (it is not a fast-forward): pass --force to replace it, or --dest-branch NEW"),
            )
        })?;
    }
    let mut written = Vec::new();
    if let Some(dir) = patches {
        if branch.is_none() {
            git(
                root,
                &["fetch", "-q", "--no-tags", &path, "refs/banger/export"],
            )?;
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| local(format!("Cannot create {}: {e}", dir.display()), None))?;
        let dir_abs = std::fs::canonicalize(dir)
            .map_err(|e| local(format!("Cannot open {}: {e}", dir.display()), None))?;
        let out = git(
            root,
            &[
                "format-patch",
                "-o",
                &dir_abs.display().to_string(),
                &format!("{from}..{head}"),
            ],
        )?;
        written = String::from_utf8_lossy(&out)
            .lines()
            .map(PathBuf::from)
            .collect();
    }
    Ok(written)
}

/// `~/x` with the caller's home. Pure but for $HOME.
pub fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}

/// The caller's git identity (user.name, user.email), when both are set.
pub fn git_identity() -> Option<(String, String)> {
    let get = |key: &str| {
        Command::new("git")
            .args(["config", "--get", key])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|v| !v.is_empty())
    };
    Some((get("user.name")?, get("user.email")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_valid_names() {
        assert_eq!(
            default_name(Path::new("/home/u/My_Project.rs")),
            "my-project-rs"
        );
        assert_eq!(default_name(Path::new("/")), "workspace");
        assert_eq!(default_name(Path::new("/x/---")), "workspace");
    }
}
