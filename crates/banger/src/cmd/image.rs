//! `banger image`: build, import, list, show, remove.

use std::path::{Path, PathBuf};

use banger::exit;
use banger::output::{self, Style};
use banger_api::{Image, ImageBuildRequest, ImageImportRequest, OpState, Operation};
use clap::Subcommand;

use super::{follow, print_json_line, print_list, CmdResult, Ctx, Row, Wait};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build an image (Debian stable by default) with mmdebstrap.
    Build {
        /// The image's name (a-z, 0-9, '-').
        name: String,
        /// A recipe file (TOML); the flags below override its fields.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// debian (default) or ubuntu (experimental).
        #[arg(long)]
        distro: Option<String>,
        /// Distribution suite, e.g. bookworm.
        #[arg(long)]
        suite: Option<String>,
        /// Package mirror URL (default: the daemon's).
        #[arg(long)]
        mirror: Option<String>,
        /// Root filesystem size, e.g. 2G.
        #[arg(long)]
        size: Option<String>,
        /// Extra packages, comma-separated.
        #[arg(long, value_delimiter = ',')]
        packages: Option<Vec<String>>,
        /// Install build-essential.
        #[arg(long)]
        build_essential: bool,
        /// light (busybox init + sshd, fastest) or systemd.
        #[arg(long)]
        init: Option<String>,
        /// Install a coding agent with npm: opencode, claude-code or codex.
        #[arg(long)]
        agent: Option<String>,
        /// Start the build and print its operation id without following it.
        #[arg(long)]
        detach: bool,
    },
    /// Import a rootfs: an ext4 image, a directory, or a tarball (e.g. `docker export`).
    Import {
        /// The image's name (a-z, 0-9, '-').
        name: String,
        #[arg(long, value_name = "FILE|DIR|TARBALL")]
        rootfs: PathBuf,
        /// A bzImage (default: the kernel of the default recipe).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// An initrd for --kernel.
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// An ELF vmlinux, for Firecracker.
        #[arg(long)]
        vmlinux: Option<PathBuf>,
        /// Root filesystem size when packing a directory or tarball.
        #[arg(long)]
        size: Option<String>,
        /// Start the import and print its operation id without following it.
        #[arg(long)]
        detach: bool,
    },
    /// List images.
    #[command(visible_alias = "list")]
    Ls,
    /// Show an image: artifacts with sha256, packages, recipe.
    Show {
        /// The image's name.
        name: String,
    },
    /// Remove an image (refused while VMs use it, unless --force).
    #[command(visible_alias = "remove")]
    Rm {
        /// The image's name.
        name: String,
        /// Remove the name even while VMs use it (their files stay until
        /// the last one is gone).
        #[arg(long)]
        force: bool,
    },
}

impl Row for Image {
    const HEADER: &'static [&'static str] = &[
        "name", "source", "init", "backends", "size", "digest", "created",
    ];
    fn cells(&self, _: &Style) -> Vec<String> {
        let rootfs = self
            .artifacts
            .iter()
            .find(|a| a.kind == "rootfs")
            .map(|a| a.size)
            .unwrap_or(0);
        vec![
            self.name.clone(),
            self.source.clone(),
            self.init.clone(),
            super::vm::join_backends(&self.backends, ","),
            output::size(rootfs),
            short_digest(&self.digest).to_string(),
            self.created_at
                .with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M")
                .to_string(),
        ]
    }
}

fn short_digest(d: &str) -> &str {
    &d[..12.min(d.len())]
}

/// An absolute path for the daemon, which has another working directory.
fn absolute(p: &Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// `image import`'s arguments as the request (paths made absolute). Pure
/// but for the working directory.
pub fn import_request(
    name: String,
    rootfs: &Path,
    kernel: Option<&Path>,
    initrd: Option<&Path>,
    vmlinux: Option<&Path>,
    size: Option<String>,
) -> ImageImportRequest {
    ImageImportRequest {
        name,
        rootfs: absolute(rootfs),
        kernel: kernel.map(absolute),
        initrd: initrd.map(absolute),
        vmlinux: vmlinux.map(absolute),
        size,
    }
}

pub async fn run(ctx: &Ctx, cmd: ImageCommand) -> CmdResult {
    match cmd {
        ImageCommand::Build {
            name,
            from_file,
            distro,
            suite,
            mirror,
            size,
            packages,
            build_essential,
            init,
            agent,
            detach,
        } => {
            let recipe_toml = match &from_file {
                Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
                    super::usage(
                        format!("Cannot read recipe {}: {e}", p.display()),
                        "Give --from-file a readable TOML recipe (docs/images.md)",
                    )
                })?),
                None => None,
            };
            let req = ImageBuildRequest {
                name,
                recipe_toml,
                distro,
                suite,
                mirror,
                size,
                packages,
                build_essential: build_essential.then_some(true),
                init,
                agent,
            };
            let op = ctx.client.image_build(&req).await?;
            finish(ctx, op, detach).await
        }
        ImageCommand::Import {
            name,
            rootfs,
            kernel,
            initrd,
            vmlinux,
            size,
            detach,
        } => {
            let req = import_request(
                name,
                &rootfs,
                kernel.as_deref(),
                initrd.as_deref(),
                vmlinux.as_deref(),
                size,
            );
            let op = ctx.client.image_import(&req).await?;
            finish(ctx, op, detach).await
        }
        ImageCommand::Ls => {
            let list = ctx.client.images().await?;
            let empty = "No images. Build one with: banger image build NAME";
            print_list(ctx.json, &ctx.style, &list, &list.images, empty);
            Ok(exit::OK)
        }
        ImageCommand::Show { name } => {
            super::print_one(ctx, &ctx.client.image(&name).await?, |i| {
                print_image(&ctx.style, i)
            })
        }
        ImageCommand::Rm { name, force } => {
            let r = ctx.client.image_rm(&name, force).await?;
            if ctx.json {
                output::print_json(&r);
            } else {
                let kept = if r.artifacts_deleted {
                    ""
                } else {
                    " (its files stay: another name or a VM uses them)"
                };
                println!("removed image {}{kept}", r.name);
            }
            Ok(exit::OK)
        }
    }
}

/// Follows a build or import; ends with the image (`--json`) or a sentence.
async fn finish(ctx: &Ctx, op: Operation, detach: bool) -> CmdResult {
    let wait = if detach { Wait::None } else { Wait::Ssh };
    let Some(done) = follow(ctx, op, wait).await? else {
        return Ok(exit::OK);
    };
    if done.state != OpState::Succeeded {
        return Ok(exit::FAILURE);
    }
    let image = ctx.client.image(&done.target).await?;
    if ctx.json {
        print_json_line(&image);
    } else {
        let reused = super::result_bool(&done, "reused");
        println!(
            "image {} is ready ({}, digest {}{}). Next: banger vm create NAME --image {}",
            image.name,
            super::vm::join_backends(&image.backends, "/"),
            short_digest(&image.digest),
            if reused { ", reused" } else { "" },
            image.name
        );
    }
    Ok(exit::OK)
}

fn print_image(style: &Style, i: &Image) {
    println!("{} ({}, {} init)", style.bold(&i.name), i.source, i.init);
    println!("digest:   {}", i.digest);
    println!("created:  {}", super::ops::local_time(i.created_at));
    println!("backends: {}", super::vm::join_backends(&i.backends, ", "));
    if let Some(k) = &i.kernel_version {
        println!("kernel:   {k}");
    }
    if let Some(a) = &i.agent {
        println!("agent:    {a}");
    }
    let used = if i.used_by.is_empty() {
        "-".into()
    } else {
        i.used_by.join(", ")
    };
    println!("used by:  {used}");
    println!("artifacts:");
    for a in &i.artifacts {
        println!(
            "  {:<8} {:<12} {:>10}  sha256:{}",
            a.kind,
            a.file,
            output::size(a.size),
            a.sha256
        );
    }
    if let Some(r) = &i.recipe {
        println!("recipe:   {r}");
    }
    if !i.packages.is_empty() {
        println!("packages ({}):", i.packages.len());
        print!("{}", output::wrap_words(&i.packages, "  ", 78));
    }
}
