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
    use proptest::prelude::*;

    fn through_bash(values: &[String]) -> Vec<String> {
        let script = format!(
            "for a in {}; do printf '%s\\0' \"$a\"; done",
            values
                .iter()
                .map(|v| quote(v))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf8");
        text.split_terminator('\0').map(str::to_string).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any string without NUL survives bash as exactly one word.
        #[test]
        fn any_string_is_one_word_in_bash(values in proptest::collection::vec("[^\\x00]{0,40}", 1..6)) {
            prop_assert_eq!(through_bash(&values), values);
        }
    }

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
