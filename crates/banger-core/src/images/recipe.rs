//! Image recipes: what `banger image build` makes, as data. Pure.
//!
//! A recipe is written as TOML (`--from-file`) or assembled from CLI flags.
//! Its canonical JSON, together with [`BUILDER_VERSION`], is hashed into the
//! image's digest: the same recipe is never built twice, and a change to the
//! build logic (a new builder version) yields new images.
//!
//! Recipes are pluggable by `distro`: each distro names its bootstrapper and
//! package set. Debian (the default) is what is tested; Ubuntu is
//! experimental (same bootstrapper, another mirror and suites).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use banger_api::units::{parse_size, SizeError};

/// Bump when the build steps change what they produce.
pub const BUILDER_VERSION: u32 = 5;

/// The smallest root filesystem banger accepts.
pub const MIN_IMAGE_SIZE: u64 = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distro {
    Debian,
    /// Experimental: not exercised by the test suite.
    Ubuntu,
}

pub use crate::guest::InitMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Agent {
    Opencode,
    ClaudeCode,
    Codex,
}

impl Agent {
    /// The npm package that installs the agent.
    pub fn npm_package(self) -> &'static str {
        match self {
            Agent::Opencode => "opencode-ai",
            Agent::ClaudeCode => "@anthropic-ai/claude-code",
            Agent::Codex => "@openai/codex",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Agent::Opencode => "opencode",
            Agent::ClaudeCode => "claude-code",
            Agent::Codex => "codex",
        }
    }

    pub fn parse(s: &str) -> Option<Agent> {
        match s {
            "opencode" => Some(Agent::Opencode),
            "claude-code" => Some(Agent::ClaudeCode),
            "codex" => Some(Agent::Codex),
            _ => None,
        }
    }
}

/// A recipe as written in a file; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    pub distro: Option<Distro>,
    pub suite: Option<String>,
    pub mirror: Option<String>,
    pub size: Option<String>,
    pub packages: Option<Vec<String>>,
    pub build_essential: Option<bool>,
    pub init: Option<InitMode>,
    pub kernel_package: Option<String>,
    pub kernel_modules_in_rootfs: Option<bool>,
    pub agent: Option<Agent>,
    pub host_ca_certificates: Option<bool>,
}

/// A complete recipe: every field resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub distro: Distro,
    pub suite: String,
    /// Package mirror URL. Not part of the digest (the same packages come
    /// from any mirror of the same suite).
    pub mirror: String,
    pub size_bytes: u64,
    /// Extra packages on top of the base set.
    pub packages: Vec<String>,
    pub build_essential: bool,
    pub init: InitMode,
    pub kernel_package: String,
    pub kernel_modules_in_rootfs: bool,
    pub agent: Option<Agent>,
    /// Install the host's locally added CA certificates
    /// (/usr/local/share/ca-certificates) into the image.
    pub host_ca_certificates: bool,
}

#[derive(Debug, Error)]
pub enum RecipeError {
    #[error("Recipe is not valid TOML: {0}")]
    Parse(String),
    #[error(transparent)]
    Size(#[from] SizeError),
    #[error("Image size {size} is below the minimum of 256 MiB")]
    TooSmall { size: u64 },
    #[error("Invalid package name {0:?}")]
    BadPackage(String),
    #[error("Invalid suite {0:?}")]
    BadSuite(String),
    #[error("Invalid mirror {0:?}: it must be an http(s) URL")]
    BadMirror(String),
    #[error("Invalid kernel package {0:?}")]
    BadKernelPackage(String),
}

impl crate::ToApiError for RecipeError {
    fn code(&self) -> banger_api::ErrorCode {
        banger_api::ErrorCode::InvalidRequest
    }
}

impl Distro {
    pub fn default_suite(self) -> &'static str {
        match self {
            Distro::Debian => "bookworm",
            Distro::Ubuntu => "noble",
        }
    }

    /// Packages every image of this distro gets.
    pub fn base_packages(self) -> &'static [&'static str] {
        &[
            "openssh-server",
            "git",
            "curl",
            "ca-certificates",
            "sudo",
            "python3",
            "iproute2",
            "netbase",
            "kmod",
            "procps",
            "less",
            // The guest agent's vsock listener (Firecracker).
            "socat",
            "systemd-sysv",
        ]
    }
}

/// A Debian package name (policy 5.6.1) or `name=version`.
pub fn valid_package(p: &str) -> bool {
    let name = p.split_once('=').map_or(p, |(n, _)| n);
    name.len() >= 2
        && name.len() <= 100
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
        && p.split_once('=').is_none_or(|(_, v)| {
            !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c))
        })
}

impl Recipe {
    /// Resolves a recipe file (and flag overrides already merged into it)
    /// against the defaults. `default_mirror` comes from the daemon's config.
    pub fn resolve(f: &RecipeFile, default_mirror: &str) -> Result<Recipe, RecipeError> {
        let distro = f.distro.unwrap_or(Distro::Debian);
        let suite = f
            .suite
            .clone()
            .unwrap_or_else(|| distro.default_suite().into());
        if suite.is_empty()
            || !suite
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(RecipeError::BadSuite(suite));
        }
        let mirror = f.mirror.clone().unwrap_or_else(|| default_mirror.into());
        if !(mirror.starts_with("http://") || mirror.starts_with("https://"))
            || mirror
                .chars()
                .any(|c| c.is_whitespace() || c == '\'' || c == '"')
        {
            return Err(RecipeError::BadMirror(mirror));
        }
        let size_bytes = parse_size(f.size.as_deref().unwrap_or("2G"))?;
        if size_bytes < MIN_IMAGE_SIZE {
            return Err(RecipeError::TooSmall { size: size_bytes });
        }
        let mut packages = f.packages.clone().unwrap_or_default();
        if let Some(bad) = packages.iter().find(|p| !valid_package(p)) {
            return Err(RecipeError::BadPackage(bad.clone()));
        }
        packages.sort();
        packages.dedup();
        let kernel_package = f
            .kernel_package
            .clone()
            .unwrap_or_else(|| "linux-image-cloud-amd64".into());
        if !valid_package(&kernel_package) || !kernel_package.starts_with("linux-image-") {
            return Err(RecipeError::BadKernelPackage(kernel_package));
        }
        Ok(Recipe {
            distro,
            suite,
            mirror,
            size_bytes,
            packages,
            build_essential: f.build_essential.unwrap_or(false),
            init: f.init.unwrap_or(InitMode::Light),
            kernel_package,
            kernel_modules_in_rootfs: f.kernel_modules_in_rootfs.unwrap_or(true),
            agent: f.agent,
            host_ca_certificates: f.host_ca_certificates.unwrap_or(true),
        })
    }

    pub fn parse_file(text: &str) -> Result<RecipeFile, RecipeError> {
        toml::from_str(text)
            .map_err(|e| RecipeError::Parse(e.to_string().trim().replace('\n', " | ")))
    }

    /// Every package mmdebstrap installs, sorted.
    pub fn all_packages(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .distro
            .base_packages()
            .iter()
            .map(|s| s.to_string())
            .collect();
        if self.build_essential {
            v.push("build-essential".into());
        }
        if self.agent.is_some() {
            v.extend(["nodejs".to_string(), "npm".to_string()]);
        }
        v.extend(self.packages.iter().cloned());
        v.sort();
        v.dedup();
        v
    }

    /// The content address: sha256 of the builder version, the guest files
    /// and the recipe's canonical JSON (without the mirror), as hex; images
    /// are stored under it.
    pub fn digest(&self) -> String {
        let mut canonical = self.clone();
        canonical.mirror = String::new();
        let json = serde_json::to_string(&canonical).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(format!("banger-builder-v{BUILDER_VERSION}\n"));
        h.update(crate::guest::files::guest_fingerprint());
        h.update(json.as_bytes());
        hex::encode(h.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIRROR: &str = "http://deb.debian.org/debian";

    #[test]
    fn defaults_resolve() {
        let r = Recipe::resolve(&RecipeFile::default(), MIRROR).expect("resolves");
        assert_eq!(r.distro, Distro::Debian);
        assert_eq!(r.suite, "bookworm");
        assert_eq!(r.size_bytes, 2 << 30);
        assert_eq!(r.init, InitMode::Light);
        assert!(r.all_packages().contains(&"openssh-server".to_string()));
        assert!(!r.all_packages().contains(&"build-essential".to_string()));
    }

    #[test]
    fn digest_is_stable_ignores_mirror_and_tracks_content() {
        let a = Recipe::resolve(&RecipeFile::default(), MIRROR).expect("a");
        let b = Recipe::resolve(&RecipeFile::default(), "http://other.example/debian").expect("b");
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.digest().len(), 64);
        let c = Recipe::resolve(
            &RecipeFile {
                packages: Some(vec!["jq".into()]),
                ..Default::default()
            },
            MIRROR,
        )
        .expect("c");
        assert_ne!(a.digest(), c.digest());
        // Package order does not matter.
        let d = Recipe::resolve(
            &RecipeFile {
                packages: Some(vec!["jq".into(), "vim".into()]),
                ..Default::default()
            },
            MIRROR,
        )
        .expect("d");
        let e = Recipe::resolve(
            &RecipeFile {
                packages: Some(vec!["vim".into(), "jq".into(), "jq".into()]),
                ..Default::default()
            },
            MIRROR,
        )
        .expect("e");
        assert_eq!(d.digest(), e.digest());
    }

    #[test]
    fn parses_a_recipe_file() {
        let f = Recipe::parse_file(
            "distro = \"debian\"\nsuite = \"bookworm\"\nsize = \"1G\"\npackages = [\"jq\"]\ninit = \"systemd\"\nagent = \"claude-code\"\n",
        )
        .expect("parses");
        let r = Recipe::resolve(&f, MIRROR).expect("resolves");
        assert_eq!(r.size_bytes, 1 << 30);
        assert_eq!(r.init, InitMode::Systemd);
        assert_eq!(r.agent, Some(Agent::ClaudeCode));
        assert!(r.all_packages().contains(&"npm".to_string()));
        assert!(Recipe::parse_file("sise = \"1G\"")
            .expect_err("unknown key")
            .to_string()
            .contains("sise"));
    }

    #[test]
    fn rejects_bad_values() {
        let bad = [
            RecipeFile {
                size: Some("100M".into()),
                ..Default::default()
            },
            RecipeFile {
                size: Some("lots".into()),
                ..Default::default()
            },
            RecipeFile {
                packages: Some(vec!["jq; rm -rf /".into()]),
                ..Default::default()
            },
            RecipeFile {
                packages: Some(vec!["$(x)".into()]),
                ..Default::default()
            },
            RecipeFile {
                suite: Some("Book Worm".into()),
                ..Default::default()
            },
            RecipeFile {
                mirror: Some("ftp://x".into()),
                ..Default::default()
            },
            RecipeFile {
                kernel_package: Some("bash".into()),
                ..Default::default()
            },
        ];
        for f in bad {
            assert!(Recipe::resolve(&f, MIRROR).is_err(), "{f:?}");
        }
    }

    #[test]
    fn package_names() {
        for p in ["jq", "libc6", "g++", "python3.11", "jq=1.6-2.1"] {
            assert!(valid_package(p), "{p}");
        }
        for p in ["", "a", "Jq", "-x", "jq=", "j q", "jq;ls"] {
            assert!(!valid_package(p), "{p}");
        }
    }
}
