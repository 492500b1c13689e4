//! Validation of names given by users (VMs, images, sessions, operations).
//!
//! A name reaches shells, file paths, netlink and DNS, so it is checked once,
//! here, before anything else sees it: 1 to 63 characters of lowercase ASCII
//! letters, digits and `-`, starting with a letter or digit and not ending
//! with `-` (a DNS label, which also makes it a safe file name and argv word).

use thiserror::Error;

pub const MAX_NAME_LEN: usize = 63;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("Invalid {what} name {name:?}: it is empty")]
    Empty { what: &'static str, name: String },
    #[error(
        "Invalid {what} name {name:?}: it is {len} characters long, the limit is {MAX_NAME_LEN}"
    )]
    TooLong {
        what: &'static str,
        name: String,
        len: usize,
    },
    #[error("Invalid {what} name {name:?}: character {ch:?} is not allowed")]
    BadChar {
        what: &'static str,
        name: String,
        ch: char,
    },
    #[error(
        "Invalid {what} name {name:?}: it must start with a letter or digit and not end with '-'"
    )]
    BadEdge { what: &'static str, name: String },
}

impl crate::ToApiError for NameError {
    fn code(&self) -> banger_api::ErrorCode {
        banger_api::ErrorCode::InvalidRequest
    }
    fn hint(&self) -> Option<String> {
        Some("Use 1-63 characters of a-z, 0-9 and '-', e.g. 'dev-1'".into())
    }
}

/// Checks `name` as the name of a `what` (used in the message).
pub fn validate_name(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty {
            what,
            name: name.into(),
        });
    }
    let len = name.chars().count();
    if len > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            what,
            name: name.into(),
            len,
        });
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::BadChar {
            what,
            name: name.into(),
            ch,
        });
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(NameError::BadEdge {
            what,
            name: name.into(),
        });
    }
    Ok(())
}

/// The name among `known` closest to `name` when it is close enough to be
/// a typo of it (edit distance at most a third of its length, at least 1;
/// or a prefix of one), for "did you mean ...?". Pure.
pub fn closest(name: &str, known: &[String]) -> Option<String> {
    let limit = (name.chars().count() / 3).max(1);
    known
        .iter()
        .filter(|k| k.as_str() != name)
        .map(|k| {
            let d = strsim::osa_distance(name, k);
            // A prefix ("de" for "dev") counts as close.
            let d = if k.starts_with(name) && !name.is_empty() {
                d.min(1)
            } else {
                d
            };
            (d, k)
        })
        .filter(|(d, _)| *d <= limit)
        .min_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)))
        .map(|(_, k)| k.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for n in ["a", "dev", "dev-1", "0day", &"x".repeat(63)] {
            assert_eq!(validate_name("vm", n), Ok(()), "{n}");
        }
    }

    #[test]
    fn rejects_hostile_names() {
        for n in [
            "",
            "-a",
            "a-",
            "A",
            "a b",
            "a/b",
            "..",
            "$(rm -rf /)",
            "a;b",
            "é",
            &"x".repeat(64),
        ] {
            assert!(validate_name("vm", n).is_err(), "{n:?} accepted");
        }
    }

    #[test]
    fn closest_names_are_typos_or_prefixes_only() {
        let known: Vec<String> = ["dev", "web-1", "database"].map(String::from).to_vec();
        assert_eq!(closest("dve", &known).as_deref(), Some("dev"));
        assert_eq!(closest("de", &known).as_deref(), Some("dev"));
        assert_eq!(closest("web-2", &known).as_deref(), Some("web-1"));
        assert_eq!(closest("databse", &known).as_deref(), Some("database"));
        assert_eq!(closest("zzz", &known), None);
        assert_eq!(
            closest("dev", &known),
            None,
            "an exact name is not a suggestion"
        );
        assert_eq!(closest("x", &[]), None);
    }
}
