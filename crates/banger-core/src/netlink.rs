//! Links, addresses and neighbours through rtnetlink (no parsing of `ip`
//! output), and persistent TAP creation through /dev/net/tun (the kernel
//! refuses to create tun/tap devices over rtnetlink).
//!
//! A synchronous facade: each call runs on a short-lived thread with its
//! own current-thread runtime, so it works from blocking code and from
//! async code alike. Threads inherit the daemon's network namespace, so
//! the netlink socket is always the namespace's.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
use rtnetlink::{Handle, LinkBridge, LinkUnspec};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetlinkError {
    #[error("netlink: {what} failed: {detail}")]
    Op { what: String, detail: String },
    #[error("Cannot create TAP {name}: {detail}")]
    Tap { name: String, detail: String },
}

fn op(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |e| NetlinkError::Op {
        what,
        detail: e.to_string(),
    }
}

/// Runs `f` with a netlink handle on a fresh thread and runtime.
fn run<T, F, Fut>(f: F) -> Result<T, NetlinkError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, NetlinkError>>,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| NetlinkError::Op {
                what: "runtime".into(),
                detail: e.to_string(),
            })?;
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| NetlinkError::Op {
                what: "connect".into(),
                detail: e.to_string(),
            })?;
            let task = tokio::spawn(conn);
            let r = f(handle).await;
            task.abort();
            r
        })
    })
    .join()
    .map_err(|_| NetlinkError::Op {
        what: "thread".into(),
        detail: "panicked".into(),
    })?
}

fn name_of(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

async fn index(h: &Handle, name: &str) -> Result<Option<u32>, NetlinkError> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(Some(m.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(op(format!("get link {name}"))(e)),
    }
}

/// The index of a link, if it exists.
pub fn link_index(name: &str) -> Result<Option<u32>, NetlinkError> {
    let name = name.to_string();
    run(move |h| async move { index(&h, &name).await })
}

/// Names of every link in the namespace.
pub fn link_names() -> Result<Vec<String>, NetlinkError> {
    run(|h| async move {
        let links: Vec<LinkMessage> = h
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(op("list links"))?;
        Ok(links.iter().filter_map(name_of).collect())
    })
}

/// Deletes a link; a missing one is fine.
pub fn delete_link(name: &str) -> Result<(), NetlinkError> {
    let name = name.to_string();
    run(move |h| async move {
        if let Some(i) = index(&h, &name).await? {
            h.link()
                .del(i)
                .execute()
                .await
                .map_err(op(format!("delete {name}")))?;
        }
        Ok(())
    })
}

/// Creates the bridge (if missing) with `addr/prefix`, and brings it and
/// `lo` up. Idempotent.
pub fn ensure_bridge(name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), NetlinkError> {
    let name = name.to_string();
    run(move |h| async move {
        if index(&h, &name).await?.is_none() {
            h.link()
                .add(LinkBridge::new(&name).build())
                .execute()
                .await
                .map_err(op(format!("create bridge {name}")))?;
        }
        let i = index(&h, &name).await?.ok_or_else(|| NetlinkError::Op {
            what: format!("create bridge {name}"),
            detail: "it does not exist after creation".into(),
        })?;
        let addrs: Vec<_> = h
            .address()
            .get()
            .set_link_index_filter(i)
            .execute()
            .try_collect()
            .await
            .map_err(op(format!("list addresses of {name}")))?;
        let has = addrs.iter().any(|m| {
            m.header.prefix_len == prefix
                && m.attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(x)) if *x == addr))
        });
        if !has {
            h.address()
                .add(i, IpAddr::V4(addr), prefix)
                .execute()
                .await
                .map_err(op(format!("add {addr}/{prefix} to {name}")))?;
        }
        for link in [i, index(&h, "lo").await?.unwrap_or(1)] {
            h.link()
                .set(LinkUnspec::new_with_index(link).up().build())
                .execute()
                .await
                .map_err(op(format!("set link {link} up")))?;
        }
        Ok(())
    })
}

/// Attaches a link to a bridge and brings it up.
pub fn attach_up(name: &str, bridge: &str) -> Result<(), NetlinkError> {
    let (name, bridge) = (name.to_string(), bridge.to_string());
    run(move |h| async move {
        let br = index(&h, &bridge).await?.ok_or_else(|| NetlinkError::Op {
            what: format!("attach {name}"),
            detail: format!("bridge {bridge} does not exist"),
        })?;
        let i = index(&h, &name).await?.ok_or_else(|| NetlinkError::Op {
            what: format!("attach {name}"),
            detail: "no such link".into(),
        })?;
        h.link()
            .set(LinkUnspec::new_with_index(i).controller(br).up().build())
            .execute()
            .await
            .map_err(op(format!("attach {name} to {bridge}")))
    })
}

/// Forgets the neighbour (ARP) entry of `ip` on `dev`, if any.
pub fn flush_neighbour(ip: Ipv4Addr, dev: &str) -> Result<(), NetlinkError> {
    let dev = dev.to_string();
    run(move |h| async move {
        let Some(i) = index(&h, &dev).await? else {
            return Ok(());
        };
        let neigh: Vec<_> = h
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(op("list neighbours"))?;
        for n in neigh {
            let hit = n.header.ifindex == i
                && n.attributes.iter().any(|a| {
                    matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(x)) if *x == ip)
                });
            if hit {
                let _ = h.neighbours().del(n).execute().await;
            }
        }
        Ok(())
    })
}

/// Creates a persistent TAP device (IFF_TAP | IFF_NO_PI), optionally owned
/// by `owner` (uid, gid), through /dev/net/tun.
#[allow(unsafe_code)]
pub fn create_tap(name: &str, owner: Option<(u32, u32)>) -> Result<(), NetlinkError> {
    use std::os::fd::AsRawFd;
    let fail = |detail: String| NetlinkError::Tap {
        name: name.into(),
        detail,
    };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(fail("the name must be 1-15 bytes".into()));
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| {
            fail(format!(
                "/dev/net/tun: {e} (is the tun module loaded? sudo modprobe tun)"
            ))
        })?;
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let flags = libc::c_short::try_from(libc::IFF_TAP | libc::IFF_NO_PI)
        .map_err(|_| fail("TAP flags do not fit".into()))?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    let fd = tun.as_raw_fd();
    let check = |r: libc::c_int, what: &str| {
        if r < 0 {
            Err(fail(format!("{what}: {}", std::io::Error::last_os_error())))
        } else {
            Ok(())
        }
    };
    let req_ptr: *mut IfReq = &mut req;
    // SAFETY: fd is an open /dev/net/tun descriptor; TUNSETIFF reads a
    // struct ifreq, of which IfReq has the layout (16-byte name, short
    // flags, padding to 40 bytes), and `req` outlives the call.
    let r = unsafe { libc::ioctl(fd, libc::TUNSETIFF, req_ptr) };
    check(r, "TUNSETIFF")?;
    if let Some((uid, gid)) = owner {
        // SAFETY: an integer argument on the same open descriptor.
        let r = unsafe { libc::ioctl(fd, libc::TUNSETOWNER, libc::c_ulong::from(uid)) };
        check(r, "TUNSETOWNER")?;
        // SAFETY: as above.
        let r = unsafe { libc::ioctl(fd, libc::TUNSETGROUP, libc::c_ulong::from(gid)) };
        check(r, "TUNSETGROUP")?;
    }
    let persist: libc::c_ulong = 1;
    // SAFETY: as above; 1 makes the device outlive this descriptor.
    let r = unsafe { libc::ioctl(fd, libc::TUNSETPERSIST, persist) };
    check(r, "TUNSETPERSIST")?;
    Ok(())
}
