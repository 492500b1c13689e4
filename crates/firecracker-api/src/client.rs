//! A blocking HTTP/1.1 client for Firecracker's API socket. One request per
//! connection (`Connection: close`), bodies as JSON, errors carrying
//! Firecracker's `fault_message`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use crate::model::*;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("Cannot reach the Firecracker API at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Firecracker refused {method} {path} ({status}): {fault}")]
    Fault {
        method: String,
        path: String,
        status: u16,
        fault: String,
    },
    #[error("Unexpected answer from Firecracker to {method} {path}: {detail}")]
    Protocol {
        method: String,
        path: String,
        detail: String,
    },
}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
            timeout: Duration::from_secs(10),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request; returns the status and body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, String), ClientError> {
        let proto = |detail: String| ClientError::Protocol {
            method: method.into(),
            path: path.into(),
            detail,
        };
        let mut s = UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
            path: self.socket.clone(),
            source,
        })?;
        s.set_read_timeout(Some(self.timeout))
            .map_err(|e| proto(e.to_string()))?;
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n");
        if body.is_some() {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                payload.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(&payload);
        s.write_all(req.as_bytes())
            .map_err(|e| proto(e.to_string()))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(|e| proto(e.to_string()))?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| proto(format!("no header end in {text:?}")))?;
        let status: u16 = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| proto(format!("bad status line in {head:?}")))?;
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("transfer-encoding:")
                && l.to_ascii_lowercase().contains("chunked")
        });
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_string()
        };
        Ok((status, body))
    }

    fn call<B: Serialize>(&self, method: &str, path: &str, body: &B) -> Result<(), ClientError> {
        let v = serde_json::to_value(body).map_err(|e| ClientError::Protocol {
            method: method.into(),
            path: path.into(),
            detail: e.to_string(),
        })?;
        let (status, text) = self.request(method, path, Some(&v))?;
        if (200..300).contains(&status) {
            return Ok(());
        }
        Err(fault(method, path, status, &text))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (status, text) = self.request("GET", path, None)?;
        if !(200..300).contains(&status) {
            return Err(fault("GET", path, status, &text));
        }
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol {
            method: "GET".into(),
            path: path.into(),
            detail: format!("{e} in {text:?}"),
        })
    }

    pub fn put_machine_config(&self, c: &MachineConfiguration) -> Result<(), ClientError> {
        self.call("PUT", "/machine-config", c)
    }
    pub fn put_boot_source(&self, b: &BootSource) -> Result<(), ClientError> {
        self.call("PUT", "/boot-source", b)
    }
    pub fn put_drive(&self, d: &Drive) -> Result<(), ClientError> {
        self.call("PUT", &format!("/drives/{}", d.drive_id), d)
    }
    pub fn put_network_interface(&self, n: &NetworkInterface) -> Result<(), ClientError> {
        self.call("PUT", &format!("/network-interfaces/{}", n.iface_id), n)
    }
    pub fn put_logger(&self, l: &Logger) -> Result<(), ClientError> {
        self.call("PUT", "/logger", l)
    }
    pub fn put_metrics(&self, m: &Metrics) -> Result<(), ClientError> {
        self.call("PUT", "/metrics", m)
    }
    pub fn action(&self, a: ActionType) -> Result<(), ClientError> {
        self.call("PUT", "/actions", &InstanceActionInfo { action_type: a })
    }
    pub fn patch_vm(&self, state: VmState) -> Result<(), ClientError> {
        self.call("PATCH", "/vm", &Vm { state })
    }
    pub fn snapshot_create(&self, p: &SnapshotCreateParams) -> Result<(), ClientError> {
        self.call("PUT", "/snapshot/create", p)
    }
    pub fn snapshot_load(&self, p: &SnapshotLoadParams) -> Result<(), ClientError> {
        self.call("PUT", "/snapshot/load", p)
    }
    pub fn describe(&self) -> Result<InstanceInfo, ClientError> {
        self.get("/")
    }
}

fn fault(method: &str, path: &str, status: u16, text: &str) -> ClientError {
    let fault = serde_json::from_str::<ApiFault>(text)
        .map(|f| f.fault_message)
        .unwrap_or_else(|_| text.trim().to_string());
    ClientError::Fault {
        method: method.into(),
        path: path.into(),
        status,
        fault,
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}
