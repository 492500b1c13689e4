//! Firecracker's HTTP API, for banger.
//!
//! - [`spec`]: the vendored v1.16.1 Swagger document and a validator that
//!   checks a request (method, path, JSON body) the way Firecracker's API
//!   server does: the operation must exist, the body must match the schema
//!   (types, required fields, enums, bounds) and carry no unknown fields.
//!   banger's own requests are checked against it in tests, and the fake
//!   Firecracker rejects whatever it rejects.
//! - [`model`]: the request and response types banger uses.
//! - [`client`]: a small blocking HTTP/1.1 client over the API socket.

pub mod client;
pub mod model;
pub mod spec;

pub use client::{Client, ClientError};
pub use spec::{Spec, SpecError};
