//! Guest sessions: long-running commands in a guest that outlive the
//! connection. So far the guest-side scripts and their parsing ([`script`]);
//! the daemon's registry, SSH transport, API and CLI are still to come.

pub mod script;
