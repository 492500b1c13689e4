//! Peer credentials of API clients (SO_PEERCRED) and the authorization rule:
//! root, or a member of the socket's group. The socket's 0660 mode already
//! keeps others out; this check holds even if someone loosens the mode, and
//! gives every request a uid to log.

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::UnixListener;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Connected<IncomingStream<'_, UnixListener>> for PeerCred {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(c) => PeerCred {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
            },
            // Unknown peers are treated as the least privileged user.
            Err(_) => PeerCred {
                uid: u32::MAX,
                gid: u32::MAX,
                pid: None,
            },
        }
    }
}

/// Supplementary groups from `/proc/PID/status` ("Groups:\t1 2 3").
pub fn parse_proc_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the peer may use the API: root, the daemon's own uid, or a member
/// of `group_gid` (primary group, supplementary groups of the connecting
/// process, or listed in the group database).
pub fn is_authorized(peer: &PeerCred, group_gid: u32) -> bool {
    if peer.uid == 0 || peer.uid == nix::unistd::geteuid().as_raw() || peer.gid == group_gid {
        return true;
    }
    if let Some(pid) = peer.pid {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if parse_proc_groups(&status).contains(&group_gid) {
                return true;
            }
        }
    }
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(peer.uid))
        .ok()
        .flatten();
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(group_gid))
        .ok()
        .flatten();
    matches!((user, group), (Some(u), Some(g)) if g.mem.contains(&u.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_groups_line() {
        let s = "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 27 1001 \nNgid:\t0\n";
        assert_eq!(parse_proc_groups(s), vec![4, 24, 27, 1001]);
        assert_eq!(parse_proc_groups("Groups:\t\n"), Vec::<u32>::new());
        assert_eq!(parse_proc_groups("Name: x\n"), Vec::<u32>::new());
    }

    #[test]
    fn root_and_group_members_are_authorized_others_not() {
        let gid = 4242_4242;
        assert!(is_authorized(
            &PeerCred {
                uid: 0,
                gid: 0,
                pid: None
            },
            gid
        ));
        assert!(is_authorized(
            &PeerCred {
                uid: 5000,
                gid,
                pid: None
            },
            gid
        ));
        // pid 1's groups do not include the made-up gid.
        assert!(!is_authorized(
            &PeerCred {
                uid: 4242_4243,
                gid: 4242_4244,
                pid: Some(1)
            },
            gid
        ));
    }
}
