#!/usr/bin/env bash
# The whole test suite, from a fresh Debian/Ubuntu host:   sudo ./scripts/test.sh
# Installs what it needs, checks formatting and lints, builds, and runs every
# test (unit, integration against a real bangerd, and guest end-to-end).
# Needs root: the daemon under test manages devices inside test namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: sudo $0" >&2; exit 1; }

bash scripts/deps.sh --test
# deps.sh restores a package removed behind its back (and checks every tool).
bash scripts/test-deps.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo-nextest >/dev/null; then
  echo "[test] installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi
getent group banger >/dev/null || groupadd --system banger

echo "[test] cargo fmt --check" >&2
cargo fmt --all --check
echo "[test] cargo clippy" >&2
cargo clippy --workspace --all-targets --features banger-tests/root -- -D warnings
echo "[test] cargo build" >&2
cargo build --workspace --all-targets --features banger-tests/root
echo "[test] banger-agent, static" >&2
bash scripts/build-agent.sh
echo "[test] cargo nextest" >&2
# The root suites (a real bangerd, guests) are behind banger-tests/root, so a
# plain `cargo test` as a normal user runs only what needs neither.
cargo nextest run --workspace --profile ci --features banger-tests/root
echo "[test] benchmarks (quick mode: checks their JSON, not their speed)" >&2
bash bench/run.sh --quick
