//! Guest-side shell scripts for workspaces, generated here and tested with
//! the local bash and git. Pure: every value is quoted with
//! [`crate::shell::quote`]; nothing here runs anything.
//!
//! A push reads one tar stream on stdin, made by the client:
//! - `bundle`: a git bundle of the host's HEAD (and its branch),
//! - `staged.patch`: `git diff --cached --binary` (may be empty),
//! - `tree/...`: the files that differ from the index, and untracked files,
//! - `deleted`: NUL-separated paths deleted from the working tree.
//!
//! The repository is assembled in a temporary directory next to `dest` and
//! moved into place last, so a failed push leaves nothing behind.

use crate::shell::quote;

/// `dest` exists and the push did not force.
pub const EXIT_EXISTS: i32 = 17;
/// git is not installed in the guest.
pub const EXIT_NO_GIT: i32 = 18;
/// The bundle's HEAD is not the base commit the client announced.
pub const EXIT_BASE_MISMATCH: i32 = 19;
/// The guest's history no longer contains the base commit.
pub const EXIT_BASE_GONE: i32 = 21;
/// The workspace's directory or repository is missing in the guest.
pub const EXIT_MISSING: i32 = 23;

/// The push script (reads the tar on stdin).
pub fn push_script(dest: &str, base: &str, branch: Option<&str>, force: bool) -> String {
    format!(
        r#"set -euo pipefail
dest={dest}; base={base}; branch={branch}; force={force}
if [ -e "$dest" ] || [ -L "$dest" ]; then
  if [ "$force" = 1 ]; then rm -rf -- "$dest"; else echo "banger-push: $dest exists" >&2; exit {EXIT_EXISTS}; fi
fi
command -v git >/dev/null 2>&1 || {{ echo "banger-push: git is not installed" >&2; exit {EXIT_NO_GIT}; }}
parent=$(dirname -- "$dest")
mkdir -p -- "$parent"
tmp=$(mktemp -d "$parent/.banger-push.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT
mkdir "$tmp/in"
tar -x --no-same-owner --no-same-permissions -f - -C "$tmp/in"
git init -q "$tmp/repo"
cd "$tmp/repo"
if [ -n "$branch" ]; then
  git fetch -q --no-tags --update-head-ok "$tmp/in/bundle" "+refs/heads/$branch:refs/heads/$branch"
  git symbolic-ref HEAD "refs/heads/$branch"
else
  git fetch -q --no-tags "$tmp/in/bundle" HEAD
  git update-ref --no-deref HEAD FETCH_HEAD
fi
if [ "$(git rev-parse HEAD)" != "$base" ]; then
  echo "banger-push: the bundle's HEAD is $(git rev-parse HEAD), not $base" >&2; exit {EXIT_BASE_MISMATCH}
fi
git reset -q --hard HEAD
if [ -s "$tmp/in/staged.patch" ]; then git apply --index --whitespace=nowarn "$tmp/in/staged.patch"; fi
if [ -d "$tmp/in/tree" ]; then cp -a "$tmp/in/tree/." .; fi
if [ -s "$tmp/in/deleted" ]; then xargs -0 rm -f -- < "$tmp/in/deleted"; fi
rm -f .git/FETCH_HEAD
cd /
mv -T -- "$tmp/repo" "$dest"
"#,
        dest = quote(dest),
        base = quote(base),
        branch = quote(branch.unwrap_or("")),
        force = u8::from(force),
    )
}

/// The script that describes the guest's commits since `base` (and since
/// `exported`, the last export). Output: see [`parse_changes`].
pub fn changes_script(dest: &str, base: &str, exported: Option<&str>) -> String {
    format!(
        r#"set -uo pipefail
dest={dest}; base={base}; exported={exported}
cd -- "$dest" 2>/dev/null && git rev-parse -q --verify 'HEAD^{{commit}}' >/dev/null 2>&1 || {{ echo "banger-ws: no repository at $dest" >&2; exit {EXIT_MISSING}; }}
head=$(git rev-parse HEAD)
echo "head $head"
if ! git cat-file -e "$base^{{commit}}" 2>/dev/null || ! git merge-base --is-ancestor "$base" "$head"; then exit {EXIT_BASE_GONE}; fi
echo "branch $(git symbolic-ref -q --short HEAD || echo -)"
from=$base; rewritten=0
if [ -n "$exported" ]; then
  if git cat-file -e "$exported^{{commit}}" 2>/dev/null && git merge-base --is-ancestor "$exported" "$head"; then from=$exported; else rewritten=1; fi
fi
echo "from $from"
echo "rewritten $rewritten"
echo "total $(git rev-list --count "$base..$head")"
echo "dirty $(git status --porcelain | wc -l)"
git diff --numstat "$from" "$head" | awk '{{f++; if ($1 != "-") i += $1; if ($2 != "-") d += $2}} END {{printf "stat %d %d %d\n", f, i, d}}'
git log --reverse --format='commit %H %s' "$from..$head"
"#,
        dest = quote(dest),
        base = quote(base),
        exported = quote(exported.unwrap_or("")),
    )
}

/// The script that writes a git bundle of `base..head` (tip under the ref
/// `refs/banger/export`) to the guest file `out` and prints its size: the
/// daemon then streams the file in chunks, never holding it whole.
pub fn bundle_script(dest: &str, base: &str, head: &str, out: &str) -> String {
    format!(
        r#"set -euo pipefail
cd -- {dest}
git update-ref refs/banger/export {head}
trap 'git update-ref -d refs/banger/export' EXIT
mkdir -p -- "$(dirname -- {out})"
rm -f -- {out}
git bundle create -q {out} refs/banger/export ^{base}
stat -c %s -- {out}
"#,
        dest = quote(dest),
        base = quote(base),
        head = quote(head),
        out = quote(out),
    )
}

/// Where a workspace's export bundle is written in the guest (one per
/// workspace: a later export replaces one a broken download left).
pub fn bundle_path(workspace: &str) -> String {
    format!("/var/tmp/banger-export/{workspace}.bundle")
}

/// The bundle's size, as [`bundle_script`] printed it (strict). Pure.
pub fn parse_bundle_size(out: &str) -> Result<u64, String> {
    let line = out.strip_suffix('\n').unwrap_or(out);
    if line.is_empty() || line.len() > 20 || !line.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "expected the bundle's size, got {:?}",
            truncate(out)
        ));
    }
    line.parse()
        .map_err(|e| format!("bad bundle size {line:?}: {e}"))
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// What [`changes_script`] printed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    pub head: String,
    pub branch: Option<String>,
    pub from: String,
    pub rewritten: bool,
    pub total: u64,
    pub dirty: u64,
    pub files: u64,
    pub insertions: u64,
    pub deletions: u64,
    pub commits: Vec<(String, String)>,
}

fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Parses the output of [`changes_script`] strictly. Pure.
pub fn parse_changes(out: &str) -> Result<Changes, String> {
    let mut c = Changes::default();
    let num = |v: &str, what: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("bad {what} {v:?} in the guest's answer"))
    };
    let mut seen = std::collections::BTreeSet::new();
    for line in out.lines() {
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "head" if is_commit_id(rest) => c.head = rest.into(),
            "branch" => c.branch = (rest != "-" && !rest.is_empty()).then(|| rest.to_string()),
            "from" if is_commit_id(rest) => c.from = rest.into(),
            "rewritten" => c.rewritten = rest == "1",
            "total" => c.total = num(rest, "count")?,
            "dirty" => c.dirty = num(rest, "count")?,
            "stat" => {
                let v: Vec<&str> = rest.split(' ').collect();
                if v.len() != 3 {
                    return Err(format!("bad stat line {line:?} in the guest's answer"));
                }
                (c.files, c.insertions, c.deletions) = (
                    num(v[0], "count")?,
                    num(v[1], "count")?,
                    num(v[2], "count")?,
                );
            }
            "commit" => {
                let (id, subject) = rest.split_once(' ').unwrap_or((rest, ""));
                if !is_commit_id(id) {
                    return Err(format!("bad commit line {line:?} in the guest's answer"));
                }
                c.commits.push((id.into(), subject.into()));
                continue;
            }
            _ => return Err(format!("unexpected line {line:?} in the guest's answer")),
        }
        seen.insert(key.to_string());
    }
    for key in [
        "head",
        "branch",
        "from",
        "rewritten",
        "total",
        "dirty",
        "stat",
    ] {
        if !seen.contains(key) {
            return Err(format!("the guest's answer lacks {key:?}"));
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_answer_and_rejects_garbage() {
        let h = "a".repeat(40);
        let b = "b".repeat(40);
        let out = format!("head {h}\nbranch main\nfrom {b}\nrewritten 0\ntotal 2\ndirty 1\nstat 3 10 2\ncommit {h} fix: it, all\n");
        let c = parse_changes(&out).expect("parses");
        assert_eq!(c.branch.as_deref(), Some("main"));
        assert_eq!((c.files, c.insertions, c.deletions), (3, 10, 2));
        assert_eq!(c.commits, vec![(h.clone(), "fix: it, all".to_string())]);
        for bad in [
            format!("head {h}\n"),
            format!("head zz\nbranch -\nfrom {b}\nrewritten 0\ntotal 0\ndirty 0\nstat 0 0 0\n"),
            format!("head {h}\nbranch -\nfrom {b}\nrewritten 0\ntotal x\ndirty 0\nstat 0 0 0\n"),
            format!("head {h}\nbranch -\nfrom {b}\nrewritten 0\ntotal 0\ndirty 0\nstat 0 0 0\nsurprise\n"),
        ] {
            assert!(parse_changes(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_bundle_size_is_parsed_strictly() {
        assert_eq!(parse_bundle_size("1234\n"), Ok(1234));
        for bad in [
            "",
            "\n",
            "12 34\n",
            "-1\n",
            "12\n13\n",
            "99999999999999999999999\n",
            "x",
        ] {
            assert!(parse_bundle_size(bad).is_err(), "{bad:?}");
        }
    }

    /// The script against a local repository: the bundle lands in the
    /// file, its size is printed, and the export ref is gone afterwards.
    #[test]
    fn the_bundle_script_writes_the_file_and_prints_its_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        let git = |args: &[&str]| {
            let st = std::process::Command::new("git")
                .arg("-C")
                .arg(&repo)
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args)
                .output()
                .expect("git");
            assert!(
                st.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&st.stderr)
            );
            String::from_utf8_lossy(&st.stdout).trim().to_string()
        };
        std::fs::create_dir_all(&repo).expect("mkdir");
        git(&["init", "-q"]);
        git(&["commit", "-q", "--allow-empty", "-m", "base"]);
        let base = git(&["rev-parse", "HEAD"]);
        git(&["commit", "-q", "--allow-empty", "-m", "work"]);
        let head = git(&["rev-parse", "HEAD"]);
        let out = dir.path().join("exports/w.bundle");
        let text = bundle_script(
            &repo.display().to_string(),
            &base,
            &head,
            &out.display().to_string(),
        );
        let run = std::process::Command::new("bash")
            .args(["-c", &text])
            .output()
            .expect("bash");
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let size = parse_bundle_size(&String::from_utf8_lossy(&run.stdout)).expect("size");
        assert_eq!(size, std::fs::metadata(&out).expect("bundle").len());
        assert!(git(&["for-each-ref", "refs/banger"]).is_empty());
    }
}
