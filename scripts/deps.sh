#!/usr/bin/env bash
# Installs the system packages banger needs on Debian/Ubuntu (idempotent:
# apt runs only when something is missing), and the Rust tools to build it.
# Used by install.sh and scripts/test.sh; needs root.
set -euo pipefail

log() { printf '[deps] %s\n' "$*" >&2; }

PKGS=(
  qemu-system-x86 qemu-utils     # QEMU backend, qcow2 overlays
  e2fsprogs                      # mkfs.ext4 -d, e2fsck, resize2fs
  mmdebstrap                     # image builds
  busybox-static cpio kmod       # guest initrd
  openssh-client                 # ssh into guests, host keys
  iproute2 nftables              # bridge/TAP/netns, NAT
  dmsetup                        # device-mapper snapshot clones (where dm exists)
  ca-certificates curl git xz-utils lz4 zstd
  util-linux                     # setpriv, flock (tests)
  sqlite3                        # tests simulate crashes by editing the store
  python3                        # bench/run.sh checks the benchmarks' JSON
  build-essential pkg-config     # cc for bundled SQLite
)

# `--test`: also what the test suite needs beyond the product.
if [ "${1:-}" = "--test" ]; then
  PKGS+=(
    chromium chromium-driver     # the dashboard's browser tests (WebDriver)
    bind9-dnsutils               # dig (tests query the .vm DNS server)
  )
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  apt-get update -q
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    # A backported qemu-utils can conflict with the release's qemu-system;
    # install the pair at the same version.
    v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}')
    log "retrying with qemu-utils pinned to qemu-system-x86's version $v"
    pinned=()
    for p in "${missing[@]}"; do [ "$p" = qemu-utils ] || pinned+=("$p"); done
    apt-get install -y -q --no-install-recommends --allow-downgrades "${pinned[@]}" "qemu-utils=$v"
  fi
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
