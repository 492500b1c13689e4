#!/usr/bin/env bash
# Runs every benchmark and checks that its JSON has the expected fields (not
# its speed). `--quick` (what CI runs) uses the smallest N. Results go to
# target/bench/NAME.json. Needs root, like the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
out=target/bench
mkdir -p "$out"
# Figures (a full run) come from release builds; --quick only checks that
# the benchmarks still run, so a debug build does.
if [ "$mode" = --quick ]; then
  cargo build --workspace --bins -q
  bin=target/debug
else
  cargo build --release --workspace --bins -q
  bin=target/release
fi
bash scripts/build-agent.sh >/dev/null

check() { # FILE KEY...
  python3 - "$@" <<'PY'
import json, sys
path, keys = sys.argv[1], sys.argv[2:]
doc = json.load(open(path))
missing = [k for k in keys if k not in doc]
if missing:
    sys.exit(f"{path}: missing fields {missing}")
if not isinstance(doc.get("machine"), dict) or "cores" not in doc["machine"]:
    sys.exit(f"{path}: no machine description")
print(f"bench ok: {path}")
PY
}

./$bin/boot $mode > "$out/boot.json"
check "$out/boot.json" bench runs banger_default_image baseline_light_init ratio target_ratio_max machine
./$bin/image_build $mode > "$out/image_build.json"
check "$out/image_build.json" bench cold_s warm_s ratio_warm_over_cold machine
./$bin/vm_create $mode > "$out/vm_create.json"
check "$out/vm_create.json" bench runs banger_create_to_ssh hand_run_qemu_to_ssh ratio target_ratio_max root_disk_clone machine
./$bin/tap_pool $mode > "$out/tap_pool.json"
check "$out/tap_pool.json" bench runs warm_pool no_pool ratio network_step_ratio machine
./$bin/warm_pool $mode > "$out/warm_pool.json"
check "$out/warm_pool.json" bench runs from_pool cold ratio target_ratio_max machine
./$bin/snapshot $mode > "$out/snapshot.json"
check "$out/snapshot.json" bench runs cold from_snapshot fork snapshot_take ratio fork_over_cold target_ratio_max machine
./$bin/fleet $mode > "$out/fleet.json"
check "$out/fleet.json" bench vm_ls_latency_ms daemon_rss_kib concurrent_creates_s machine
./$bin/agent $mode > "$out/agent.json"
check "$out/agent.json" bench exec agent_round_trip guest_program_start_s vm_ssh ssh_controlmaster ratio_exec_over_vm_ssh ratio_exec_over_controlmaster in_a_row concurrent_8 copy_in create_to_first_exec agent vmm_rss_over_vm_ssh targets machine
