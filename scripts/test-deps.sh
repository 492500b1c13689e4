#!/usr/bin/env bash
# Test of scripts/deps.sh on this machine: a required package removed
# behind its back (as apt does when it makes way for another, or a person
# does by hand) is found by its missing command and installed again.
# Needs root and the Debian package registry; run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
fail() { echo "[test-deps] FAILED: $*" >&2; echo "deps: 0 passed, 1 failed"; exit 1; }

command -v qemu-img >/dev/null || fail "qemu-img is missing before the test: deps.sh did not install it"
echo "[test-deps] removing qemu-utils behind deps.sh's back" >&2
dpkg -r qemu-utils >/dev/null
! command -v qemu-img >/dev/null || fail "qemu-img is still there after dpkg -r qemu-utils"
out=$(bash scripts/deps.sh --test 2>&1) || fail "deps.sh failed: $out"
command -v qemu-img >/dev/null || fail "deps.sh did not restore qemu-img: $out"
qemu-img --version >/dev/null || fail "the restored qemu-img does not run"
sys=$(dpkg-query -W -f='${Version}' qemu-system-x86)
utils=$(dpkg-query -W -f='${Version}' qemu-utils)
[ "$sys" = "$utils" ] || fail "QEMU is not a matched set: qemu-system-x86 $sys, qemu-utils $utils"
echo "[test-deps] qemu-utils restored at $utils, matching qemu-system-x86" >&2
echo "deps: 1 passed, 0 failed"
