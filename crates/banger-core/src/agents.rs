//! Coding-agent profiles: how `banger agent run` starts an agent, as data.
//!
//! Built-in profiles (opencode, claude-code, codex) are compiled in from
//! `crates/banger-core/agents/*.toml`; a file `NAME.toml` in `agents.dir`
//! adds an agent or replaces a built-in one. Profiles are read at each use,
//! so adding an agent needs neither code nor a restart. Parsing and command
//! assembly are pure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::config::{is_env_name, is_home_relative};
use crate::names::validate_name;

const BUILTIN: [(&str, &str); 3] = [
    ("opencode", include_str!("../agents/opencode.toml")),
    ("claude-code", include_str!("../agents/claude-code.toml")),
    ("codex", include_str!("../agents/codex.toml")),
];

/// The placeholder in a profile's command.
pub const PROMPT: &str = "{prompt}";

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("Unknown agent {name:?}; known agents: {}", known.join(", "))]
    Unknown { name: String, known: Vec<String> },
    #[error("Agent profile {path} is not valid: {reason}")]
    Invalid { path: String, reason: String },
    #[error("Cannot read agent profiles in {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl crate::ToApiError for AgentError {
    fn code(&self) -> banger_api::ErrorCode {
        match self {
            AgentError::Unknown { .. } => banger_api::ErrorCode::InvalidRequest,
            _ => banger_api::ErrorCode::Internal,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            AgentError::Unknown { .. } => Some(
                "List agents with `banger agent ls`; add one with a profile file NAME.toml in the daemon's agents.dir (docs/agents.md)".into(),
            ),
            AgentError::Invalid { .. } => Some("Fix the file (docs/agents.md has the format)".into()),
            AgentError::Read { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    /// Relative to the guest user's home.
    pub path: String,
    pub content: String,
    /// Replace the file at each run (default: write it only when missing).
    #[serde(default)]
    pub overwrite: bool,
}

/// A profile as written in its TOML file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub description: String,
    pub command: Vec<String>,
    #[serde(default)]
    pub require: Vec<String>,
    #[serde(default)]
    pub auth: Vec<String>,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub memory: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub files: Vec<ProfileFile>,
}

impl Profile {
    /// Parses and checks a profile's text. Pure.
    pub fn parse(text: &str, origin: &str) -> Result<Profile, AgentError> {
        let invalid = |reason: String| AgentError::Invalid {
            path: origin.into(),
            reason,
        };
        let p: Profile =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim().replace('\n', " | ")))?;
        if p.command.is_empty() || p.command[0].is_empty() {
            return Err(invalid("`command` is empty".into()));
        }
        if let Some(c) = p.cpus {
            crate::resources::check_cpus(c).map_err(|e| invalid(e.to_string()))?;
        }
        if let Some(m) = &p.memory {
            let bytes =
                banger_api::units::parse_size(m).map_err(|e| invalid(format!("memory: {e}")))?;
            crate::resources::memory_mib(bytes).map_err(|e| invalid(e.to_string()))?;
        }
        if let Some(k) = p.env.keys().find(|k| !is_env_name(k)) {
            return Err(invalid(format!("env: {k:?} is not a variable name")));
        }
        if let Some(f) = p.files.iter().find(|f| !is_home_relative(&f.path)) {
            return Err(invalid(format!(
                "files: {:?} is not a path inside the guest user's home",
                f.path
            )));
        }
        if let Some(r) = p
            .require
            .iter()
            .find(|r| r.is_empty() || r.contains('/') || r.contains(char::is_whitespace))
        {
            return Err(invalid(format!("require: {r:?} is not a command name")));
        }
        Ok(p)
    }

    /// The session's argv for `prompt`: every `{prompt}` in the command
    /// replaced (no shell is involved). Pure.
    pub fn argv(&self, prompt: &str) -> Vec<String> {
        self.command
            .iter()
            .map(|a| a.replace(PROMPT, prompt))
            .collect()
    }

    pub fn to_api(&self, name: &str, source: &str) -> banger_api::AgentProfile {
        banger_api::AgentProfile {
            name: name.into(),
            description: self.description.clone(),
            source: source.into(),
            command: self.command.clone(),
            require: self.require.clone(),
            auth: self.auth.clone(),
            cpus: self.cpus,
            memory: self.memory.clone(),
            env: self.env.clone(),
            files: self.files.iter().map(|f| f.path.clone()).collect(),
        }
    }
}

/// The profiles: built-in ones and those in a directory.
#[derive(Debug, Clone)]
pub struct Agents {
    dir: PathBuf,
}

impl Agents {
    pub fn new(dir: &Path) -> Agents {
        Agents { dir: dir.into() }
    }

    /// Every profile, by name, with where it came from. A file replaces
    /// the built-in profile of the same name.
    pub fn list(&self) -> Result<BTreeMap<String, (Profile, String)>, AgentError> {
        let mut out = BTreeMap::new();
        for (name, text) in BUILTIN {
            out.insert(
                name.to_string(),
                (Profile::parse(text, name)?, "builtin".to_string()),
            );
        }
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(source) => {
                return Err(AgentError::Read {
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".toml"))
            else {
                continue;
            };
            let shown = path.display().to_string();
            if validate_name("agent", name).is_err() {
                return Err(AgentError::Invalid {
                    path: shown,
                    reason: "the file name must be NAME.toml, NAME of a-z, 0-9 and '-'".into(),
                });
            }
            let text = std::fs::read_to_string(&path).map_err(|source| AgentError::Read {
                path: path.clone(),
                source,
            })?;
            out.insert(name.to_string(), (Profile::parse(&text, &shown)?, shown));
        }
        Ok(out)
    }

    pub fn get(&self, name: &str) -> Result<(Profile, String), AgentError> {
        let mut all = self.list()?;
        all.remove(name).ok_or_else(|| AgentError::Unknown {
            name: name.into(),
            known: all.keys().cloned().collect(),
        })
    }

    pub fn api_list(&self) -> Result<banger_api::AgentList, AgentError> {
        Ok(banger_api::AgentList {
            agents: self
                .list()?
                .iter()
                .map(|(n, (p, src))| p.to_api(n, src))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_parse_and_substitute_the_prompt() {
        let agents = Agents::new(Path::new("/nonexistent"));
        let all = agents.list().expect("builtins parse");
        assert_eq!(
            all.keys().cloned().collect::<Vec<_>>(),
            ["claude-code", "codex", "opencode"]
        );
        let (p, src) = agents.get("opencode").expect("opencode");
        assert_eq!(src, "builtin");
        assert_eq!(
            p.argv("fix it; $(rm -rf /)"),
            ["opencode", "run", "fix it; $(rm -rf /)"]
        );
        let err = agents.get("cursor").expect_err("unknown");
        assert!(err.to_string().contains("opencode"), "{err}");
    }

    #[test]
    fn a_file_adds_or_replaces_a_profile() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("stand-in.toml"),
            "description = \"x\"\ncommand = [\"/usr/local/bin/agent\", \"--\", \"{prompt}\"]\nauth = [\"git\"]\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("codex.toml"),
            "description = \"mine\"\ncommand = [\"codex\"]\n",
        )
        .expect("write");
        let agents = Agents::new(dir.path());
        let (p, src) = agents.get("stand-in").expect("added");
        assert!(src.ends_with("stand-in.toml"));
        assert_eq!(p.argv("go"), ["/usr/local/bin/agent", "--", "go"]);
        assert_eq!(agents.get("codex").expect("replaced").0.description, "mine");
    }

    #[test]
    fn bad_profiles_say_what_is_wrong() {
        for (text, what) in [
            ("description = \"x\"\ncommand = []\n", "command"),
            ("description = \"x\"\ncommand = [\"a\"]\ncpus = 99\n", "cpus"),
            ("description = \"x\"\ncommand = [\"a\"]\nmemory = \"lots\"\n", "memory"),
            ("description = \"x\"\ncommand = [\"a\"]\n[env]\n\"A B\" = \"1\"\n", "env"),
            ("description = \"x\"\ncommand = [\"a\"]\n[[files]]\npath = \"../x\"\ncontent = \"\"\n", "files"),
            ("description = \"x\"\ncommand = [\"a\"]\nsurprise = 1\n", "surprise"),
        ] {
            let err = Profile::parse(text, "t.toml").expect_err(text).to_string();
            assert!(err.contains(what) && err.contains("t.toml"), "{text}: {err}");
        }
    }
}
