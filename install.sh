#!/usr/bin/env bash
# banger installer for a fresh Debian/Ubuntu host:   sudo ./install.sh
#
# Installs the system packages, builds and installs `bangerd` and `banger`
# into /usr/local/bin (and the guest agent into /usr/local/lib/banger), creates the `banger` group (and adds you to it),
# writes /etc/banger/config.toml if absent, starts the daemon (a systemd
# unit where systemd runs; a background process otherwise), then runs the
# main job as far as banger has it.
#
# Environment:
#   BANGER_PREFIX   install prefix (default /usr/local)
#   BANGER_NETNS    put the VM network (bridge, TAPs, VMMs) in this network
#                   namespace instead of the host's (network.netns)
set -euo pipefail
cd "$(dirname "$0")"
[ "$(id -u)" = 0 ] || { echo "run as root: sudo $0" >&2; exit 1; }
PREFIX=${BANGER_PREFIX:-/usr/local}
log() { printf '[install] %s\n' "$*" >&2; }

bash scripts/deps.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

log "building (release)"
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ] && sudo -u "$SUDO_USER" -i bash -c 'command -v cargo' >/dev/null 2>&1; then
  # Build with the invoking user's toolchain; the tree stays theirs.
  sudo -u "$SUDO_USER" -i bash -c "cd '$PWD' && cargo build --release --locked -p bangerd -p banger && bash scripts/build-agent.sh"
else
  cargo build --release --locked -p bangerd -p banger
  bash scripts/build-agent.sh
fi
install -D -m 0755 target/release/bangerd "$PREFIX/bin/bangerd"
install -D -m 0755 target/release/banger "$PREFIX/bin/banger"
# The guest agent: bangerd ships it on every VM's config disk.
install -D -m 0755 target/x86_64-unknown-linux-gnu/release/banger-agent "$PREFIX/lib/banger/banger-agent"
"$PREFIX/bin/banger" completions bash > /etc/bash_completion.d/banger 2>/dev/null || true

getent group banger >/dev/null || { log "creating group banger"; groupadd --system banger; }
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ] && ! id -nG "$SUDO_USER" | grep -qw banger; then
  usermod -aG banger "$SUDO_USER"
  log "added $SUDO_USER to group banger (log in again to use banger without sudo)"
fi
if [ ! -e /etc/banger/config.toml ]; then
  install -d -m 0755 /etc/banger
  "$PREFIX/bin/bangerd" --print-default-config > /etc/banger/config.toml
  log "wrote /etc/banger/config.toml (every key documented)"
fi

if [ -n "${BANGER_NETNS:-}" ]; then
  cfg=/etc/banger/config.toml
  if grep -q '^netns *=' "$cfg"; then
    sed -i "s/^netns *=.*/netns = \"$BANGER_NETNS\"/" "$cfg"
  elif grep -q '^\[network\]' "$cfg"; then
    sed -i "s/^\[network\]/[network]\nnetns = \"$BANGER_NETNS\"/" "$cfg"
  else
    printf '\n[network]\nnetns = "%s"\n' "$BANGER_NETNS" >> "$cfg"
  fi
  log "VM networking goes into network namespace $BANGER_NETNS"
fi

SOCK=$(awk -F'"' '/^socket *=/{print $2}' /etc/banger/config.toml)
RUNDIR=$(awk -F'"' '/^runtime_dir *=/{print $2}' /etc/banger/config.toml)
STATE=$(awk -F'"' '/^state_dir *=/{print $2}' /etc/banger/config.toml)
SOCK=${SOCK:-${RUNDIR:-/run/banger}/bangerd.sock}
STATE=${STATE:-/var/lib/banger}

if [ -d /run/systemd/system ]; then
  log "installing the systemd unit"
  sed "s#@PREFIX@#$PREFIX#g" packaging/bangerd.service > /etc/systemd/system/bangerd.service
  systemctl daemon-reload
  systemctl enable bangerd >/dev/null
  systemctl restart bangerd
else
  # No systemd (containers, some VMs): run bangerd in the background.
  # Stop it with: sudo kill $(cat /var/lib/banger/bangerd.lock)
  if [ -s "$STATE/bangerd.lock" ] && kill -0 "$(cat "$STATE/bangerd.lock")" 2>/dev/null; then
    pid=$(cat "$STATE/bangerd.lock")
    log "stopping the running bangerd (pid $pid)"
    kill "$pid"
    for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  fi
  log "systemd is not running here: starting bangerd in the background (log: /var/log/bangerd.log)"
  setsid -f "$PREFIX/bin/bangerd" >>/var/log/bangerd.log 2>&1 </dev/null
fi

for _ in $(seq 200); do "$PREFIX/bin/banger" --socket "$SOCK" version >/dev/null 2>&1 && break; sleep 0.05; done
"$PREFIX/bin/banger" --socket "$SOCK" version

# The main job: a VM up, and a command run in it over SSH.
B=("$PREFIX/bin/banger" --socket "$SOCK")
log "checking the host"
"${B[@]}" doctor
if ! "${B[@]}" image show default >/dev/null 2>&1; then
  log "building the default image (Debian stable; cached by recipe)"
  "${B[@]}" image build default
fi
state=$("${B[@]}" --json vm show dev 2>/dev/null | awk -F'"' '/"state"/{print $4; exit}') || state=""
case "$state" in
  "") log "creating VM dev"; "${B[@]}" vm create dev ;;
  stopped) log "starting VM dev"; "${B[@]}" vm start dev ;;
  *) log "VM dev is $state" ;;
esac
log "running a command in dev (through its guest agent)"
"${B[@]}" vm exec dev -- sh -c 'echo "hello from $(hostname)"; uname -sr; df -h /work | tail -1'
log "done: try \`banger vm ssh dev\` or \`banger vm exec dev -- CMD\`"
