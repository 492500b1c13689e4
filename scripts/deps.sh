#!/usr/bin/env bash
# Installs the system packages banger needs on Debian/Ubuntu (idempotent:
# apt runs only when something is missing), and the Rust tools to build it.
# Used by install.sh and scripts/test.sh; needs root.
#
# What counts is the commands, not the package database: a package that
# apt removed while installing another (a backported qemu-utils makes way
# for the release's qemu-system-x86) or that someone removed by hand is
# found by its missing command and installed again, and every command is
# checked once more after installing. The QEMU packages are installed as a
# matched set at one version.
set -euo pipefail

log() { printf '[deps] %s\n' "$*" >&2; }
# Where the admin tools live, whatever PATH the caller had.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# command:package, for every program banger and its install run.
TOOLS=(
  qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils   # QEMU backend, qcow2 overlays
  mkfs.ext4:e2fsprogs e2fsck:e2fsprogs resize2fs:e2fsprogs debugfs:e2fsprogs
  mmdebstrap:mmdebstrap                                    # image builds
  busybox:busybox-static cpio:cpio depmod:kmod             # guest initrd
  ssh:openssh-client ssh-keygen:openssh-client             # guests' SSH, host keys
  ip:iproute2 nft:nftables                                 # bridge/TAP/netns, NAT
  dmsetup:dmsetup                                          # device-mapper clones
  curl:curl git:git xz:xz-utils lz4:lz4 zstd:zstd
  setpriv:util-linux flock:util-linux renice:bsdutils nice:coreutils
  sqlite3:sqlite3                                          # tests edit the store
  python3:python3                                          # bench/run.sh checks JSON
  cc:build-essential make:build-essential pkg-config:pkg-config
  readelf:binutils                                         # checks banger-agent is static
)
# Packages without a command of their own.
PKGS=(ca-certificates busybox-static)

# `--test`: also what the test suite needs beyond the product.
if [ "${1:-}" = "--test" ]; then
  TOOLS+=(
    chromium:chromium chromedriver:chromium-driver         # dashboard browser tests
    dig:bind9-dnsutils                                     # .vm DNS queries
    tmux:tmux bash:bash                                    # the CLI on a terminal, completions
  )
  PKGS+=(python3-venv)                                     # the E2B SDK's pinned venv
fi

# The packages whose command is missing, or that are not installed.
missing_packages() {
  local t p
  declare -A seen=()
  for t in "${TOOLS[@]}"; do
    p=${t#*:}
    if ! command -v "${t%%:*}" >/dev/null 2>&1 && [ -z "${seen[$p]:-}" ]; then
      seen[$p]=1; echo "$p"
    fi
  done
  for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' \
       && [ -z "${seen[$p]:-}" ]; then
      seen[$p]=1; echo "$p"
    fi
  done
}

# The version every QEMU package is installed at: the installed
# qemu-system-x86's, else its candidate.
qemu_version() {
  local v
  v=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
  [ -n "$v" ] && dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q 'ok installed' \
    || v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}')
  [ "$v" = "(none)" ] && v=
  echo "$v"
}

mapfile -t missing < <(missing_packages)
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  apt-get update -q
  export DEBIAN_FRONTEND=noninteractive
  install=()
  qemu=0
  for p in "${missing[@]}"; do
    case "$p" in qemu-system-x86|qemu-utils) qemu=1 ;; *) install+=("$p") ;; esac
  done
  if ((qemu)); then
    # Both QEMU packages at one version: apt would otherwise remove a newer
    # (backported) qemu-utils to install the release's qemu-system-x86, or
    # leave a pair that does not fit.
    v=$(qemu_version)
    if [ -n "$v" ] && apt-cache madison qemu-utils | awk '{print $3}' | grep -qxF "$v"; then
      log "QEMU as a matched set at $v"
      install+=("qemu-system-x86=$v" "qemu-utils=$v")
    else
      install+=(qemu-system-x86 qemu-utils)
    fi
  fi
  apt-get install -y -q --no-install-recommends --allow-downgrades "${install[@]}"
fi

# Every command once more, after installing: what apt removed on the way
# counts as much as what was missing before.
mapfile -t still < <(missing_packages)
if ((${#still[@]})); then
  for t in "${TOOLS[@]}"; do
    command -v "${t%%:*}" >/dev/null 2>&1 || log "missing after install: ${t%%:*} (package ${t#*:})"
  done
  echo "deps.sh: packages still missing after installing: ${still[*]}." \
       "Install them by hand (apt-get install ${still[*]}) and read apt's messages above." >&2
  exit 1
fi

if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null; then
  log "no Rust toolchain found; installing rustup from the distribution"
  apt-get install -y -q --no-install-recommends rustup || {
    echo "Cannot install a Rust toolchain: install rustup (https://rustup.rs) and run this again" >&2; exit 1; }
  rustup default stable
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
