#!/usr/bin/env bash
# Builds banger-agent, the guest agent, linked statically so that it runs
# in any guest (glibc or musl, any version):
#   target/x86_64-unknown-linux-gnu/release/banger-agent
# bangerd finds it there (beside its own target/ directory) or installed as
# $PREFIX/lib/banger/banger-agent; it ships it on every VM's config disk.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
# A target given explicitly keeps these flags off build scripts and proc
# macros, and the output out of the host build's directory.
RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" \
  cargo build --release --locked -p banger-agent --target x86_64-unknown-linux-gnu
out=target/x86_64-unknown-linux-gnu/release/banger-agent
if readelf -lW "$out" | grep -q 'INTERP'; then
  echo "build-agent: $out is dynamically linked; it would not run in every guest" >&2
  exit 1
fi
echo "$out"
