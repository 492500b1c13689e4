//! Output: aligned tables for people, JSON for programs. Color only on a
//! terminal and never when `NO_COLOR` is set.

use std::io::IsTerminal;

#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    pub fn detect() -> Style {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            color: !no_color && std::io::stdout().is_terminal(),
        }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    pub fn green(&self, s: &str) -> String {
        self.paint("32", s)
    }
    pub fn yellow(&self, s: &str) -> String {
        self.paint("33", s)
    }
    pub fn red(&self, s: &str) -> String {
        self.paint("31", s)
    }
    pub fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }
    pub fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
}

/// The width a cell takes on a terminal: its characters, not counting
/// ANSI escape sequences (`ESC [ ... letter`), which take none. Pure.
pub fn visible_width(s: &str) -> usize {
    let mut n = 0;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        n += 1;
    }
    n
}

/// `s` made safe for a terminal: text from a guest (commit subjects,
/// process names, console output) could carry escape sequences that move
/// the cursor, set the title or write to the clipboard (OSC 52). Colour
/// sequences (`ESC [ digits ; m`) and newlines and tabs stay; every other
/// control character is shown escaped (`\u{1b}`). Pure.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let safe_sgr = |rest: &str| -> Option<usize> {
        let body = rest.strip_prefix('[')?;
        let end = body.find(|c: char| !(c.is_ascii_digit() || c == ';'))?;
        (body[end..].starts_with('m')).then_some(end + 2)
    };
    if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    let mut i = 0;
    while let Some(c) = s[i..].chars().next() {
        let len = c.len_utf8();
        if c == '\x1b' {
            if let Some(n) = safe_sgr(&s[i + 1..]) {
                out.push_str(&s[i..i + 1 + n]);
                i += 1 + n;
                continue;
            }
        }
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        i += len;
    }
    std::borrow::Cow::Owned(out)
}

/// Renders rows as space-aligned columns under an upper-case header.
/// Widths count what a terminal shows: colour codes take no room.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| visible_width(h)).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(visible_width(c));
            }
        }
    }
    let line = |cells: Vec<String>| -> String {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            s.push_str(&printable(&c));
            if i < last {
                let pad = widths[i].saturating_sub(visible_width(&c)) + 2;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.iter().map(|h| h.to_uppercase()).collect());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.clone()));
        out.push('\n');
    }
    out
}

/// `1.2s`, `3m04s`, `2h05m`.
pub fn duration(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds().max(0);
    let s = ms / 1000;
    if s < 60 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86400 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86400, (s % 86400) / 3600)
    }
}

/// `1.5 GiB`, `300 MiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, unit) in UNITS {
        if bytes >= unit {
            return format!("{:.1} {name}", bytes as f64 / unit as f64);
        }
    }
    format!("{bytes} B")
}

/// Words laid out in lines of at most `width` columns, each line starting
/// with `indent` (long package lists). Pure.
pub fn wrap_words(words: &[String], indent: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::from(indent);
    for w in words {
        if line.len() > indent.len() && line.len() + 1 + w.len() > width {
            out.push_str(line.trim_end());
            out.push('\n');
            line = String::from(indent);
        }
        if line.len() > indent.len() {
            line.push(' ');
        }
        line.push_str(w);
    }
    if line.len() > indent.len() {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Prints `v` as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("banger: cannot encode output as JSON: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_controls_but_keeps_colours_and_lines() {
        assert!(matches!(
            printable("plain\ttext\n"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(printable("\x1b[1;32mok\x1b[0m"), "\x1b[1;32mok\x1b[0m");
        // OSC 52 (clipboard), a title and a cursor move are shown escaped.
        assert_eq!(printable("\x1b]52;c;AAAA\x07x"), "\\u{1b}]52;c;AAAA\\u{7}x");
        assert_eq!(printable("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(printable("\r\x08é"), "\\r\\u{8}é");
        assert_eq!(printable("end\x1b"), "end\\u{1b}");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["id", "state"],
            &[
                vec!["op-1".into(), "running".into()],
                vec!["op-22".into(), "x".into()],
            ],
        );
        assert_eq!(t, "ID     STATE\nop-1   running\nop-22  x\n");
    }

    #[test]
    fn colour_codes_take_no_room_in_a_table() {
        let style = Style { color: true };
        let t = table(
            &["name", "state"],
            &[
                vec!["a".into(), style.green("running")],
                vec!["bbbb".into(), style.dim("stopped")],
            ],
        );
        let plain: Vec<String> = t
            .lines()
            .map(|l| {
                let mut s = String::new();
                let mut skip = false;
                for c in l.chars() {
                    match (skip, c) {
                        (_, '\x1b') => skip = true,
                        (true, c) if c.is_ascii_alphabetic() => skip = false,
                        (true, _) => {}
                        (false, c) => s.push(c),
                    }
                }
                s
            })
            .collect();
        assert_eq!(plain, ["NAME  STATE", "a     running", "bbbb  stopped"]);
        assert_eq!(visible_width(&style.green("running")), 7);
    }

    #[test]
    fn words_wrap_at_the_width() {
        let w: Vec<String> = ["aaa", "bbb", "ccc", "dd"].map(String::from).to_vec();
        assert_eq!(wrap_words(&w, "  ", 10), "  aaa bbb\n  ccc dd\n");
        assert_eq!(wrap_words(&[], "  ", 10), "");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(duration(chrono::Duration::milliseconds(1234)), "1.2s");
        assert_eq!(duration(chrono::Duration::seconds(184)), "3m04s");
        assert_eq!(duration(chrono::Duration::seconds(7500)), "2h05m");
    }
}
