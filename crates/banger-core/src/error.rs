//! Mapping of subsystem errors onto the API's `{code, message, hint}`.

use banger_api::{ApiError, ErrorCode};

/// Implemented by every subsystem error enum so the daemon's edge can turn
/// it into an API error without knowing the subsystem.
pub trait ToApiError: std::error::Error + Sized {
    /// The API code for this error.
    fn code(&self) -> ErrorCode {
        ErrorCode::Internal
    }

    /// What the user can do about it.
    fn hint(&self) -> Option<String> {
        None
    }

    /// The whole error, the cause chain in `message`.
    fn to_api_error(&self) -> ApiError {
        ApiError {
            code: self.code(),
            message: error_chain(self),
            hint: self.hint(),
        }
    }
}

/// `outer: cause: root cause`, printed once at the edge.
pub fn error_chain(err: &(dyn std::error::Error + '_)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let msg = e.to_string();
        if !s.ends_with(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = e.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("Outer failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_joins_sources_once() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(error_chain(&e), "Outer failed: disk on fire");
    }
}
