//! Sizes as users and the API write them (`512M`, `2G`, `1.5G`, `4096`
//! bytes): one parser for the CLI, the daemon's config and its requests. Pure.

/// A size that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeError {
    pub input: String,
    pub reason: &'static str,
}

impl std::fmt::Display for SizeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Invalid size {:?}: {} (use a number with K, M, G or T, e.g. 2G)",
            self.input, self.reason
        )
    }
}

impl std::error::Error for SizeError {}

/// Parses a binary size (`K` = 1024). A bare number is bytes.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = |reason| SizeError {
        input: input.into(),
        reason,
    };
    let s = input.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].to_ascii_uppercase();
            let mult: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return Err(err("unknown unit")),
            };
            (&s[..i], mult)
        }
        None => (s, 1),
    };
    let num = num.trim();
    if num.is_empty() {
        return Err(err("no number"));
    }
    let value: f64 = num.parse().map_err(|_| err("not a number"))?;
    if !value.is_finite() || value <= 0.0 {
        return Err(err("must be positive"));
    }
    let bytes = value * mult as f64;
    if bytes > (1u64 << 50) as f64 {
        return Err(err("too large"));
    }
    // Checked above: finite, positive, below 2^50, so the cast is exact enough.
    #[allow(clippy::cast_possible_truncation)]
    Ok(bytes as u64)
}

/// `1.5 GiB`, `300 MiB`, `12 KiB`, `10 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, size) in UNITS {
        if bytes >= size {
            let v = bytes as f64 / size as f64;
            return if v >= 10.0 || (bytes % size) == 0 {
                format!("{v:.0} {name}")
            } else {
                format!("{v:.1} {name}")
            };
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size(" 1 T "), Ok(1 << 40));
    }

    #[test]
    fn rejects_nonsense() {
        for s in ["", "G", "-1G", "0", "1X", "abc", "1e400", "99999999T"] {
            assert!(parse_size(s).is_err(), "{s}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_size(2 << 30), "2 GiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size(100), "100 B");
    }
}
