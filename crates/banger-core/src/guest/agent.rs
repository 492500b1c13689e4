//! The guest agent, guest side, as generated text: the launcher every
//! image runs as `/usr/lib/banger/agent` (it starts the daemon's
//! `banger-agent` from the config disk), the guest script the daemon puts
//! on each config disk (`guest.sh`: rename, reload, and the function that
//! applies a config disk), the shell agent of earlier banger versions (kept
//! as a fallback), and the script that moves a VM of an older image onto
//! banger-agent over SSH. Pure.

use super::{apply_config_fn, InitMode, CONFIG_LABEL, GUEST_BUSYBOX, GUEST_DIR};

/// The name of the agent's virtio-serial port (QEMU).
pub const AGENT_PORT_NAME: &str = banger_agent_proto::PORT_NAME;
/// The agent's vsock port (Firecracker).
pub const AGENT_VSOCK_PORT: u32 = banger_agent_proto::VSOCK_PORT;
/// The agent binary's name on the config disk.
pub const AGENT_BIN: &str = "banger-agent";

/// `/usr/lib/banger/agent`: runs the `banger-agent` of the config disk
/// (copied to /run, as the config disk is mounted noexec); the shell agent
/// where a config disk has none.
pub fn agent_stub() -> String {
    format!(
        r#"#!{GUEST_BUSYBOX} sh
# banger guest agent launcher: the daemon ships banger-agent on the config
# disk, so the agent is always the daemon's own version.
B={GUEST_BUSYBOX}
C=/run/banger/config
A=/run/banger/{AGENT_BIN}
if [ -f $C/{AGENT_BIN} ]; then
  $B mkdir -p /run/banger
  $B cp $C/{AGENT_BIN} $A.new && $B chmod 755 $A.new && $B mv -f $A.new $A
fi
[ -x $A ] && exec $A
exec {GUEST_DIR}/agent-sh "$@"
"#
    )
}

/// The guest script on every config disk (`guest.sh rename NAME`,
/// `guest.sh reload EPOCH SEED`): banger-agent runs it, so how a config
/// disk is applied is the daemon's version too.
pub fn guest_script() -> String {
    format!(
        r#"# banger guest script (on the config disk; run by banger-agent with sh).
B={GUEST_BUSYBOX}
[ -x $B ] || B=
C=/run/banger/config
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
{apply}
{ops}
case "$1" in
  rename) rename "$2" ;;
  reload) reload "$2" "$3" ;;
  *) echo "unknown request $1" >&2; exit 2 ;;
esac
"#,
        apply = apply_config_fn(),
        ops = reload_rename_fns()
    )
}

/// `reload EPOCH SEED` and `rename NAME` as shell functions (needs `$B`,
/// `$C` and [`apply_config_fn`]).
fn reload_rename_fns() -> String {
    format!(
        r#"reload() {{
  case "$1" in *[!0-9]*|'') echo "bad epoch" >&2; return 1;; esac
  $B date -s "@$1" >/dev/null || return 1
  printf '%s' "$2" > /dev/urandom
  dev=
  while read -r src dst rest; do [ "$dst" = $C ] && dev=$src; done < /proc/mounts
  [ -n "$dev" ] || dev=$($B findfs LABEL={CONFIG_LABEL} 2>/dev/null) || return 1
  $B umount $C 2>/dev/null || $B umount -l $C 2>/dev/null
  # The disk under the guest changed: drop what the guest cached of it.
  $B blockdev --flushbufs "$dev"
  $B mount -t ext4 -o ro,nosuid,nodev,noexec "$dev" $C || return 1
  apply_config live
}}
rename() {{
  case "$1" in *[!a-z0-9-]*|'') echo "bad name" >&2; return 1;; esac
  set_name "$1"
  [ -f /etc/environment ] && $B sed -i "s/^BANGER_VM=.*/BANGER_VM=$1/" /etc/environment
  return 0
}}"#
    )
}

/// The script (run as root over SSH) that moves a VM of an image made
/// before banger-agent onto it: the launcher replaces the shell agent in
/// the VM's own root disk (kept as `agent-sh`), and the running shell agent
/// is stopped so that init starts the launcher. Idempotent.
pub fn bootstrap_script(init: InitMode) -> String {
    let _ = init;
    format!(
        r#"set -e
D={GUEST_DIR}
if [ ! -f $D/agent-sh ]; then cp $D/agent $D/agent-sh; fi
cat > $D/agent.new <<'BANGER_STUB'
{stub}BANGER_STUB
chmod 755 $D/agent.new
mv -f $D/agent.new $D/agent
if [ -d /run/systemd/system ]; then
  systemctl restart banger-agent.service
else
  # The shell agent: running, or (its port closed, as a socket chardev's
  # does while no daemon is connected) idle in `sleep 3600` until init
  # starts it again; socat under Firecracker. Found in /proc: an image may
  # have no pgrep.
  B={GUEST_BUSYBOX}
  for d in /proc/[0-9]*; do
    p=${{d#/proc/}}
    [ "$p" = "$$" ] && continue
    c=$($B tr '\000' ' ' < $d/cmdline 2>/dev/null) || continue
    case "$c" in
      *" $D/agent "*|"$D/agent "*|"$B sleep 3600 "|*VSOCK-LISTEN*) kill "$p" 2>/dev/null || true ;;
    esac
  done
fi
"#,
        stub = agent_stub()
    )
}

/// banger's guest agent: answers the daemon, one request per line, over a
/// virtio-serial port (QEMU) or vsock (Firecracker, through socat):
///
/// - `ping NONCE` -> `ok NONCE`
/// - `rename NONCE NAME` -> `ok NONCE` once the guest took the name
///   (hostname, /etc/hosts, `BANGER_VM`): a warm pool VM being claimed
/// - `reload NONCE EPOCH SEED` -> `ok NONCE` once the guest has re-read its
///   config disk (the daemon swapped it under a guest restored from a
///   snapshot) and applied it live; the clock is set to EPOCH and SEED
///   (hex) is mixed into the kernel's random pool, as a restored guest
///   shares both with its snapshot. `err NONCE REASON` on failure.
///
/// The shell agent of earlier banger versions (`/usr/lib/banger/agent-sh`).
pub fn agent_script() -> String {
    format!(
        r#"#!{GUEST_BUSYBOX} sh
# banger's shell agent (before banger-agent; see guest_agent::legacy).
B={GUEST_BUSYBOX}
C=/run/banger/config
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
{apply}
reload() {{
  case "$1" in *[!0-9]*|'') return 1;; esac
  $B date -s "@$1" >/dev/null || return 1
  printf '%s' "$2" > /dev/urandom
  dev=
  while read -r src dst rest; do [ "$dst" = $C ] && dev=$src; done < /proc/mounts
  [ -n "$dev" ] || dev=$($B findfs LABEL={CONFIG_LABEL} 2>/dev/null) || return 1
  $B umount $C 2>/dev/null || $B umount -l $C 2>/dev/null
  # The disk under the guest changed: drop what the guest cached of it (the
  # last close at umount drops it too; this says so explicitly).
  $B blockdev --flushbufs "$dev"
  $B mount -t ext4 -o ro,nosuid,nodev,noexec "$dev" $C || return 1
  apply_config live
}}
rename() {{
  case "$1" in *[!a-z0-9-]*|'') return 1;; esac
  set_name "$1"
  [ -f /etc/environment ] && $B sed -i "s/^BANGER_VM=.*/BANGER_VM=$1/" /etc/environment
  return 0
}}
handle() {{
  while read -r cmd nonce a b; do
    case "$cmd" in
      ping) echo "ok $nonce" ;;
      rename)
        if out=$(rename "$a" 2>&1); then echo "ok $nonce"
        else echo "err $nonce rename failed: $(echo $out)"; fi ;;
      reload)
        if out=$(reload "$a" "$b" 2>&1); then echo "ok $nonce"
        else echo "err $nonce reload failed: $(echo $out)"; fi ;;
      *) echo "err $nonce unknown request" ;;
    esac
  done
}}
[ "$1" = handle ] && {{ handle; exit 0; }}
dev=
for p in /sys/class/virtio-ports/*; do
  [ "$(cat $p/name 2>/dev/null)" = {AGENT_PORT_NAME} ] && dev=/dev/${{p##*/}}
done
if [ -n "$dev" ]; then
  exec 3<>"$dev"
  handle <&3 >&3
elif [ -e /dev/vsock ] && command -v socat >/dev/null 2>&1; then
  exec socat VSOCK-LISTEN:{AGENT_VSOCK_PORT},reuseaddr,fork EXEC:"{GUEST_DIR}/agent-sh handle"
fi
# No channel (or it closed): wait, so that init does not respawn us in a loop.
exec $B sleep 3600
"#,
        apply = apply_config_fn()
    )
}

/// The agent as a systemd unit (systemd mode).
pub fn agent_unit() -> String {
    format!(
        "[Unit]\nDescription=banger guest agent\n\n[Service]\nExecStart={GUEST_DIR}/agent\nRestart=always\nRestartSec=1\n\n[Install]\nWantedBy=multi-user.target\n"
    )
}
