//! The E2B-compatible listener's management over `/v1` (its API keys and
//! address); the E2B protocol itself is served on `e2b.listen`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /v1/e2b`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct E2bInfo {
    /// `http://127.0.0.1:PORT` when the listener is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// An E2B API key (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct E2bKey {
    pub id: String,
    pub name: String,
    /// The key's first characters.
    pub prefix: String,
    pub owner_uid: u32,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct E2bKeyList {
    pub keys: Vec<E2bKey>,
}

/// `POST /v1/e2b/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct E2bKeyCreate {
    pub name: String,
}

/// A new key: its secret is in this answer only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct E2bKeyCreated {
    pub key: E2bKey,
    pub secret: String,
}
