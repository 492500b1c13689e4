//! The one quoting function for values that reach a shell. Pure.

/// Quotes `s` as one word for POSIX sh/bash: single quotes, with each `'`
/// written as `'\''`. Safe for any byte string without NUL.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_sh() {
        let hostile = [
            "plain",
            "",
            "it's",
            "$(rm -rf /)",
            "`id`",
            "a\nb",
            "\"q\"",
            "\\",
            "ü ñ 漢字",
            "'; echo pwned; '",
        ];
        for s in hostile {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf '%s' {}", quote(s)))
                .output()
                .expect("sh");
            assert_eq!(String::from_utf8_lossy(&out.stdout), s, "{s:?}");
        }
    }
}
