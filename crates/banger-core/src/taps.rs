//! The TAP pool: TAP devices made ahead of time, attached to the bridge and
//! up, so that starting a VM does not wait on device creation. A VM takes
//! one (its name is recorded in the VM's row) and the pool refills itself
//! in the background. Pool TAPs are named `bgp-` + 11 hex digits; at start
//! the daemon deletes those it does not know (the pool is memory only).
//! Bookkeeping is pure ([`PoolState`]); device work goes through netlink.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The prefix of pool TAP names.
pub const POOL_PREFIX: &str = "bgp-";

/// A fresh pool TAP name (15 characters, IFNAMSIZ - 1). Pure but for randomness.
pub fn pool_name() -> String {
    format!(
        "{POOL_PREFIX}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..11]
    )
}

/// What the pool holds. Pure.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PoolState {
    pub ready: VecDeque<String>,
    pub target: usize,
}

impl PoolState {
    pub fn take(&mut self) -> Option<String> {
        self.ready.pop_front()
    }
    /// How many TAPs to make to reach the target.
    pub fn deficit(&self) -> usize {
        self.target.saturating_sub(self.ready.len())
    }
    pub fn put(&mut self, name: String) {
        self.ready.push_back(name);
    }
}

#[derive(Clone)]
pub struct TapPool {
    state: Arc<Mutex<PoolState>>,
    bridge: String,
    refilling: Arc<AtomicBool>,
}

impl TapPool {
    pub fn new(bridge: &str, target: usize) -> TapPool {
        TapPool {
            state: Arc::new(Mutex::new(PoolState {
                ready: VecDeque::new(),
                target,
            })),
            bridge: bridge.into(),
            refilling: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A ready TAP, if any (checked to still exist).
    pub fn take(&self) -> Option<String> {
        loop {
            let name = self.lock().take()?;
            if crate::network::link_exists(&name) {
                return Some(name);
            }
            tracing::warn!(tap = %name, "a pool TAP vanished; skipping it");
        }
    }

    pub fn ready(&self) -> usize {
        self.lock().ready.len()
    }

    /// Makes TAPs until the pool is full (blocking; one refill at a time).
    pub fn refill(&self) {
        if self.refilling.swap(true, Ordering::SeqCst) {
            return;
        }
        while self.lock().deficit() > 0 {
            let name = pool_name();
            let made = crate::netlink::create_tap(&name, None)
                .map_err(crate::network::NetworkError::from)
                .and_then(|_| crate::network::ipv6_off(&name))
                .and_then(|_| Ok(crate::netlink::attach_up(&name, &self.bridge)?));
            match made {
                Ok(()) => self.lock().put(name),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot refill the TAP pool");
                    let _ = crate::netlink::delete_link(&name);
                    break;
                }
            }
        }
        self.refilling.store(false, Ordering::SeqCst);
    }

    /// Refills on a blocking thread.
    pub fn refill_later(&self) {
        let this = self.clone();
        std::thread::spawn(move || this.refill());
    }

    /// Deletes pool TAPs that are neither ready nor in `used` (at start, all
    /// those a previous daemon made and no VM took).
    pub fn remove_strays(&self, used: &std::collections::HashSet<String>) {
        let ready: Vec<String> = self.lock().ready.iter().cloned().collect();
        for link in crate::network::list_links() {
            if link.starts_with(POOL_PREFIX) && !used.contains(&link) && !ready.contains(&link) {
                tracing::info!(tap = %link, "removing a stray pool TAP");
                crate::network::delete_tap(&link);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookkeeping() {
        let mut p = PoolState {
            ready: VecDeque::new(),
            target: 3,
        };
        assert_eq!(p.deficit(), 3);
        assert_eq!(p.take(), None);
        p.put("a".into());
        p.put("b".into());
        assert_eq!(p.deficit(), 1);
        assert_eq!(p.take().as_deref(), Some("a"));
        assert_eq!(p.deficit(), 2);
        let off = PoolState::default();
        assert_eq!(off.deficit(), 0);
    }

    #[test]
    fn names_fit_ifnamsiz_and_differ() {
        let a = pool_name();
        assert_eq!(a.len(), 15);
        assert!(a.starts_with(POOL_PREFIX));
        assert_ne!(a, pool_name());
    }
}
