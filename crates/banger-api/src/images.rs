//! `/v1/images`: build, import, list, show, remove guest images.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One file of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// `rootfs`, `kernel` (bzImage, for QEMU), `initrd`, or `vmlinux` (ELF, for Firecracker).
    pub kind: String,
    /// File name inside the image directory.
    pub file: String,
    /// Apparent size in bytes.
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub name: String,
    /// Content address: the recipe's hash (built) or the artifacts' hash (imported).
    pub digest: String,
    /// `build` or `import`.
    pub source: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub artifacts: Vec<Artifact>,
    /// VMM backends that can boot it.
    pub backends: Vec<crate::vms::Backend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    /// `light` (busybox init + sshd) or `systemd`.
    pub init: String,
    /// Packages installed in the rootfs (name=version), when known.
    #[serde(default)]
    pub packages: Vec<String>,
    /// The resolved recipe (built images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub recipe: Option<serde_json::Value>,
    /// The coding agent installed in it, if any (`opencode`, `claude-code`, `codex`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// VMs using it.
    #[serde(default)]
    pub used_by: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageList {
    pub images: Vec<Image>,
}

/// `POST /v1/images/build`. Fields override the recipe file's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageBuildRequest {
    pub name: String,
    /// A recipe file's TOML text (`--from-file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe_toml: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distro: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    /// e.g. `2G`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Extra packages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_essential: Option<bool>,
    /// `light` or `systemd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// `opencode`, `claude-code` or `codex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// `POST /v1/images/import`. Paths are on the daemon's host and absolute.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageImportRequest {
    pub name: String,
    /// An ext4 image file, a directory, or a tarball (`.tar`, `.tar.gz`, `.tar.xz`, `.tar.zst`, e.g. `docker export` output).
    pub rootfs: String,
    /// A bzImage; default: the kernel of banger's default recipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// An initrd for `kernel`; default: banger's (when `kernel` is not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// An ELF vmlinux for Firecracker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmlinux: Option<String>,
    /// Size of the root filesystem made from a directory or tarball (default: contents + 50% + 256 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageRemoved {
    pub name: String,
    /// Whether the artifacts were deleted (no other name used them).
    pub artifacts_deleted: bool,
}
