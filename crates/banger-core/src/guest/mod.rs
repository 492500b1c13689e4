//! What runs inside a guest, generated here: the initrd's `/init`, banger's
//! guest init (`/usr/lib/banger/init`, PID 1) with its inittab and readiness
//! notifier, and the per-VM config disk. Pure text; the effects (cpio,
//! mkfs.ext4) live in `images` and `configdisk`.
//!
//! Boot protocol:
//! 1. The kernel runs the initrd's `/init`: it loads the virtio modules
//!    shipped with the kernel, mounts `root=` (default `/dev/vda`) and
//!    `switch_root`s to `init=` (default [`GUEST_INIT`]).
//! 2. [`GUEST_INIT`] mounts the API filesystems, mounts the config disk
//!    (ext4, label [`CONFIG_LABEL`]) read-only, applies it (hostname,
//!    network, SSH host keys, authorized keys, environment, machine-id, the
//!    work disk with label [`WORK_LABEL`]), then execs busybox init (light
//!    mode: sshd respawned, nothing else) or the image's systemd.
//! 3. Once sshd listens on port 22, the notifier writes
//!    `banger-ready <boot_id>` to the console, which is the serial port the
//!    daemon reads: readiness without polling SSH.

pub mod agent;
pub mod configdisk;
pub mod files;

pub use files::InitMode;

/// The kernel command line's fixed part; `root=`/`init=` defaults apply.
pub const KERNEL_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 rw quiet net.ifnames=0 i8042.noaux i8042.nomux i8042.nopnp";

/// Where banger's guest files live in the rootfs.
pub const GUEST_DIR: &str = "/usr/lib/banger";
pub const GUEST_INIT: &str = "/usr/lib/banger/init";
pub const GUEST_BUSYBOX: &str = "/usr/lib/banger/busybox";
pub const CONFIG_LABEL: &str = "banger-cfg";
pub const WORK_LABEL: &str = "banger-work";
/// The line prefix the guest writes to its console once sshd listens.
pub const READY_MARKER: &str = "banger-ready";

/// Kernel modules the initrd loads, in dependency order (file stems under
/// `kernel/`); missing ones are skipped (built-in, or not in this kernel).
pub const INITRD_MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci",
    "drivers/virtio/virtio_mmio",
    "drivers/block/virtio_blk",
    "net/core/failover",
    "drivers/net/net_failover",
    "drivers/net/virtio_net",
    "drivers/char/hw_random/virtio-rng",
    "drivers/char/virtio_console",
    // vsock: the guest agent's channel under Firecracker (no udev in light
    // mode to load it on demand).
    "net/vmw_vsock/vsock",
    "net/vmw_vsock/vmw_vsock_virtio_transport_common",
    "net/vmw_vsock/vmw_vsock_virtio_transport",
];

/// The initrd's `/init` (busybox sh).
pub fn initrd_init() -> String {
    let mods: Vec<&str> = INITRD_MODULES
        .iter()
        .map(|m| m.rsplit('/').next().unwrap_or(m))
        .collect();
    format!(
        r#"#!/bin/busybox sh
# banger initrd: load virtio drivers, mount the root disk, hand over to init=.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev; mount -t proc proc /proc; mount -t sysfs sys /sys
for m in {mods}; do
  [ -e /mods/$m.ko ] && insmod /mods/$m.ko 2>/dev/null
done
root=/dev/vda; init={GUEST_INIT}
for a in $(cat /proc/cmdline); do
  case $a in root=*) root=${{a#root=}};; init=*) init=${{a#init=}};; esac
done
i=0; while [ ! -b "$root" ] && [ $i -lt 200 ]; do usleep 10000; i=$((i+1)); done
mount -t ext4 -o rw,noatime "$root" /newroot || {{ echo "banger initrd: cannot mount $root"; exec sh; }}
[ -x "/newroot$init" ] || {{ echo "banger initrd: $init missing in the root disk; falling back to /sbin/init"; init=/sbin/init; }}
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot "$init"
"#,
        mods = mods.join(" ")
    )
}

/// banger's guest init, PID 1 after `switch_root`.
pub fn guest_init() -> String {
    format!(
        r#"#!{GUEST_BUSYBOX} sh
# banger guest init (PID 1): apply the per-VM config disk, then start the
# image's init (busybox init + sshd in "light" mode, or systemd).
B={GUEST_BUSYBOX}
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
$B mount -t proc -o nosuid,nodev,noexec proc /proc
$B mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
$B grep -q ' /dev ' /proc/mounts || $B mount -t devtmpfs -o mode=755,nosuid devtmpfs /dev
$B mkdir -p /dev/pts /dev/shm
$B mount -t devpts -o gid=5,mode=620,ptmxmode=000 devpts /dev/pts
$B mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm
$B mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
$B mount -o remount,rw / 2>/dev/null
$B ip link set lo up
C=/run/banger/config
$B mkdir -p $C
dev=$($B findfs LABEL={CONFIG_LABEL} 2>/dev/null)
if [ -n "$dev" ]; then
  $B mount -t ext4 -o ro,nosuid,nodev,noexec "$dev" $C
else
  echo "banger-init: no config disk (label {CONFIG_LABEL}); booting with the image's defaults" > /dev/console
fi
mode=light
[ -f {GUEST_DIR}/init-mode ] && read mode < {GUEST_DIR}/init-mode
{apply}
apply_config boot
if [ -f $C/work ]; then
  read wm < $C/work
  wdev=$($B findfs LABEL={WORK_LABEL} 2>/dev/null)
  if [ -n "$wdev" ]; then
    $B mkdir -p "$wm"
    $B mount -t ext4 -o noatime "$wdev" "$wm" || echo "banger-init: cannot mount the work disk at $wm" > /dev/console
  fi
fi
if [ -f $C/grow-root ] && command -v resize2fs >/dev/null 2>&1; then
  resize2fs /dev/vda >/dev/null 2>&1 &
fi
$B mkdir -p /run/sshd /tmp /var/lib/banger
$B chmod 1777 /tmp
if [ "$mode" = systemd ]; then
  exec /sbin/init
fi
[ -e /etc/inittab ] || : > /etc/inittab
$B mount --bind {GUEST_DIR}/inittab /etc/inittab
exec $B init
"#,
        apply = apply_config_fn()
    )
}

/// The shell function both the guest init (`boot`) and the agent (`live`,
/// after a restore from a snapshot) use to apply the config disk mounted at
/// `$C`: hostname, network (live: the MAC too, old addresses dropped), SSH
/// host keys (live: the listening sshd reloads them), authorized keys,
/// environment, machine-id. Needs `$B` (busybox) and `$C`.
pub fn apply_config_fn() -> String {
    r#"set_name() {
  $B hostname "$1"
  echo "$1" > /etc/hostname
  printf '127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost ip6-localhost ip6-loopback\n' "$1" > /etc/hosts
}
apply_config() {
  if [ -f $C/hostname ]; then
    read h < $C/hostname
    set_name "$h"
  fi
  if [ -f $C/network ]; then
    ADDRESS= GATEWAY= DNS= MAC=
    . $C/network
    if [ "$1" = live ]; then
      [ -n "$MAC" ] && $B ip link set eth0 address "$MAC"
      $B ip -4 addr flush dev eth0
    fi
    $B ip link set eth0 up
    [ -n "$ADDRESS" ] && $B ip addr add "$ADDRESS" dev eth0
    # Announce our MAC: the address may have belonged to another VM before.
    [ -n "$ADDRESS" ] && $B arping -q -U -c 1 -I eth0 "${ADDRESS%/*}" >/dev/null 2>&1 &
    [ -n "$GATEWAY" ] && $B ip route replace default via "$GATEWAY"
    $B rm -f /etc/resolv.conf
    for d in $DNS; do echo "nameserver $d" >> /etc/resolv.conf; done
  fi
  if [ -d $C/ssh ]; then
    $B rm -f /etc/ssh/ssh_host_*
    $B cp $C/ssh/ssh_host_* /etc/ssh/
    $B chmod 600 /etc/ssh/ssh_host_*_key
    $B chmod 644 /etc/ssh/ssh_host_*_key.pub
    # OpenSSH before 9.8 re-executes itself per connection and reads the
    # host keys each time; from 9.8 (sshd-session) the listener holds them.
    if [ "$1" = live ] && [ -x /usr/lib/openssh/sshd-session ]; then
      # The listening sshd (a child of PID 1) re-executes and reads the new
      # keys; wait (at most 10 s) until its new listening socket is up.
      l22() {
        $B awk '$2 ~ /:0016$/ && $4 == "0A" {print $10}' /proc/net/tcp /proc/net/tcp6 2>/dev/null | $B sort | $B tr '\n' ' '
      }
      was=$(l22)
      hup=
      for p in $($B pidof sshd); do
        pp=$($B awk '/^PPid:/ {print $2}' /proc/$p/status 2>/dev/null)
        [ "$pp" = 1 ] && kill -HUP "$p" && hup=1
      done
      i=0
      while [ -n "$hup" ] && [ $i -lt 500 ]; do
        now=$(l22)
        [ -n "$now" ] && [ "$now" != "$was" ] && break
        $B usleep 20000
        i=$((i+1))
      done
    fi
  fi
  [ -e /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -A >/dev/null 2>&1
  if [ -f $C/authorized_keys ]; then
    $B mkdir -p /root/.ssh
    $B chmod 700 /root/.ssh
    $B cp $C/authorized_keys /root/.ssh/authorized_keys
    $B chmod 600 /root/.ssh/authorized_keys
  fi
  [ -f $C/environment ] && $B cp $C/environment /etc/environment
  [ -f $C/machine-id ] && $B cp $C/machine-id /etc/machine-id
  return 0
}"#
    .to_string()
}

pub use agent::{
    agent_script, agent_stub, agent_unit, bootstrap_script, guest_script, AGENT_BIN,
    AGENT_PORT_NAME, AGENT_VSOCK_PORT,
};

/// busybox init's table in light mode.
pub fn inittab() -> String {
    format!(
        "# banger light init: sshd, the readiness notifier, clean poweroff on Ctrl-Alt-Del.\n\
         ::sysinit:{GUEST_BUSYBOX} true\n\
         ::respawn:/usr/sbin/sshd -D -e\n\
         ::respawn:{GUEST_DIR}/agent\n\
         ::once:{GUEST_DIR}/ready\n\
         ::ctrlaltdel:{GUEST_BUSYBOX} poweroff\n\
         ::shutdown:{GUEST_BUSYBOX} sync\n\
         ::shutdown:{GUEST_BUSYBOX} umount -a -r\n"
    )
}

/// Waits (10 ms steps, at most 60 s) until something listens on TCP port
/// 22, then writes the readiness marker with the boot id to the console.
pub fn ready_script() -> String {
    format!(
        r#"#!{GUEST_BUSYBOX} sh
B={GUEST_BUSYBOX}
i=0
while [ $i -lt 6000 ]; do
  if $B grep -qE '^ *[0-9]+: [0-9A-F]+:0016 [0-9A-F]+:0000 0A ' /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
    echo "{READY_MARKER} $(cat /proc/sys/kernel/random/boot_id)" > /dev/console
    exit 0
  fi
  $B usleep 10000
  i=$((i+1))
done
echo "{READY_MARKER}-timeout" > /dev/console
"#
    )
}

/// The readiness notifier as a systemd unit (systemd mode).
pub fn ready_unit() -> String {
    format!(
        "[Unit]\nDescription=banger readiness notifier\nAfter=ssh.service\nWants=ssh.service\n\n\
         [Service]\nType=oneshot\nExecStart={GUEST_DIR}/ready\n\n[Install]\nWantedBy=multi-user.target\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh_syntax_ok(script: &str) {
        let body = script.split_once('\n').map_or(script, |(_, b)| b);
        let out = std::process::Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(body)
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "syntax error: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn scripts_parse() {
        sh_syntax_ok(&initrd_init());
        sh_syntax_ok(&guest_init());
        sh_syntax_ok(&ready_script());
        sh_syntax_ok(&agent_script());
        sh_syntax_ok(&agent_stub());
        sh_syntax_ok(&guest_script());
        sh_syntax_ok(&bootstrap_script(InitMode::Light));
    }

    #[test]
    fn initrd_loads_modules_in_order() {
        let s = initrd_init();
        let a = s.find("virtio_ring").expect("ring");
        let b = s.find("virtio_blk").expect("blk");
        assert!(a < b);
        assert!(s.contains(GUEST_INIT));
    }

    #[test]
    fn ready_regex_matches_a_listening_sshd() {
        let table = "  sl  local_address rem_address   st\n   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0\n";
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("tcp");
        std::fs::write(&p, table).expect("write");
        let re = "^ *[0-9]+: [0-9A-F]+:0016 [0-9A-F]+:0000 0A ";
        let st = std::process::Command::new("grep")
            .args(["-qE", re])
            .arg(&p)
            .status()
            .expect("grep");
        assert!(st.success());
        std::fs::write(&p, table.replace(" 0A ", " 01 ")).expect("write");
        let st = std::process::Command::new("grep")
            .args(["-qE", re])
            .arg(&p)
            .status()
            .expect("grep");
        assert!(!st.success(), "an established connection is not a listener");
    }
}
