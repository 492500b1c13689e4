//! Users from the guest's /etc/passwd and /etc/group, read as text: a
//! static binary cannot load glibc's NSS modules, and a guest's users are
//! local anyway.

/// A user to run a program as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
    /// Supplementary groups (the primary one included).
    pub groups: Vec<u32>,
}

impl User {
    /// root, for a guest without /etc/passwd.
    pub fn root() -> User {
        User {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: "/root".into(),
            shell: "/bin/sh".into(),
            groups: vec![0],
        }
    }
}

/// The user named `spec` (a name, or a uid) in `passwd`, with its groups
/// from `group`. Pure.
pub fn lookup(spec: &str, passwd: &str, group: &str) -> Option<User> {
    let by_uid: Option<u32> = spec.parse().ok();
    let mut user = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        let uid: u32 = f[2].parse().ok()?;
        let hit = match by_uid {
            Some(u) => u == uid,
            None => f[0] == spec,
        };
        hit.then(|| User {
            name: f[0].to_string(),
            uid,
            gid: f[3].parse().unwrap_or(uid),
            home: f[5].to_string(),
            shell: f[6].to_string(),
            groups: Vec::new(),
        })
    })?;
    user.groups.push(user.gid);
    for l in group.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        let Ok(gid) = f[2].parse::<u32>() else {
            continue;
        };
        if f[3].split(',').any(|m| m == user.name) && !user.groups.contains(&gid) {
            user.groups.push(gid);
        }
    }
    Some(user)
}

/// The user `spec` on this guest (root when `None`).
pub fn load(spec: Option<&str>) -> Result<User, String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    match spec {
        None | Some("root") | Some("0") => {
            Ok(lookup("0", &passwd, &group).unwrap_or_else(User::root))
        }
        Some(s) => lookup(s, &passwd, &group).ok_or_else(|| format!("no user {s:?} in the guest")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        broken-line\n\
        dev:x:1000:1000:Dev:/home/dev:/bin/zsh\n";
    const GROUP: &str = "root:x:0:\nsudo:x:27:dev,other\ndocker:x:998:dev\ndev:x:1000:\n";

    #[test]
    fn users_are_found_by_name_or_uid_with_their_groups() {
        let u = lookup("dev", PASSWD, GROUP).expect("dev");
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/dev"));
        assert_eq!(u.groups, [1000, 27, 998]);
        assert_eq!(
            lookup("1000", PASSWD, GROUP).map(|u| u.name),
            Some("dev".into())
        );
        assert_eq!(
            lookup("0", PASSWD, GROUP).map(|u| u.shell),
            Some("/bin/bash".into())
        );
        assert!(lookup("nobody", PASSWD, GROUP).is_none());
        assert!(lookup("broken-line", PASSWD, GROUP).is_none());
    }
}
