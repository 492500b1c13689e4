//! The control plane's JSON, as E2B's `openapi.yml` names it (camelCase,
//! `templateID`/`sandboxID`). Unknown request fields are accepted and
//! ignored, as the SDKs send ones banger has no use for (`mcp`, `iam`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The envd version banger's envd adapter answers for: the SDKs then use
/// the default user, stdin on commands and octet-stream uploads.
pub const ENVD_VERSION: &str = "0.5.7";

/// `NewSandbox` (`POST /sandboxes`, `POST /v2/sandboxes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Seconds (default 15).
    #[serde(default)]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub auto_pause: Option<bool>,
    #[serde(default)]
    pub secure: Option<bool>,
    #[serde(default)]
    pub allow_internet_access: Option<bool>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
}

/// `Sandbox`: what a create answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    pub envd_version: String,
    pub envd_access_token: String,
    pub domain: Option<String>,
}

/// `SandboxDetail` and `ListedSandbox` (the latter without the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxDetail {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    pub started_at: String,
    pub end_at: String,
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    pub metadata: BTreeMap<String, String>,
    /// `running` or `paused`.
    pub state: String,
    pub envd_version: String,
}

/// `POST /sandboxes/{id}/timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct SetTimeout {
    pub timeout: u64,
}

/// E2B's `Error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Error {
    pub code: u16,
    pub message: String,
}

/// Whether `metadata` has every pair of the filter `query` (E2B's form:
/// `key=value&key2=value2`, each URL-encoded). Pure.
pub fn metadata_matches(metadata: &BTreeMap<String, String>, query: &str) -> bool {
    form_urlencoded(query)
        .iter()
        .all(|(k, v)| metadata.get(k) == Some(v))
}

fn form_urlencoded(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| percent_decode(&s.replace('+', " "));
            (dec(k), dec(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_as_the_sdk_sends_it_parses() {
        let r: NewSandbox = serde_json::from_str(
            r#"{"templateID":"base","timeout":300,"autoPause":false,"autoPauseMemory":true,
                "metadata":{"a":"1"},"envVars":{"X":"y"},"secure":true,"mcp":null}"#,
        )
        .expect("parses");
        assert_eq!(r.template_id, "base");
        assert_eq!(r.timeout, Some(300));
        assert_eq!(r.env_vars.expect("env")["X"], "y");
    }

    #[test]
    fn metadata_filters_match_every_pair() {
        let m: BTreeMap<String, String> = [
            ("user".to_string(), "a b".to_string()),
            ("app".into(), "x".into()),
        ]
        .into();
        assert!(metadata_matches(&m, "user=a%20b"));
        assert!(metadata_matches(&m, "user=a+b&app=x"));
        assert!(!metadata_matches(&m, "user=a%20b&app=y"));
        assert!(metadata_matches(&m, ""));
    }
}
