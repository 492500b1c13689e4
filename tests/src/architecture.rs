//! Reading the module structure out of Rust source text (pure), for the
//! checks in `tests/tests/architecture.rs`: which module imports which,
//! whether that follows a stated order, whether sibling files form a DAG,
//! and whether ARCHITECTURE.md's code map names every file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One source file: its path under the crate's `src/` and its text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub rel: PathBuf,
    pub text: String,
}

/// A module path from the crate root: `vms/boot.rs` is `["vms", "boot"]`,
/// `vms/mod.rs` is `["vms"]`, `lib.rs` and `main.rs` are `[]`.
pub fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod")) {
        parts.pop();
    }
    if parts.len() == 1 && matches!(parts[0].as_str(), "lib" | "main") {
        parts.clear();
    }
    parts
}

/// The code with comments, string and char literals emptied, and every
/// `#[cfg(test)]` item removed.
pub fn strip_code(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        let at = |k: usize| c.get(i + k).copied().unwrap_or('\0');
        if at(0) == '/' && at(1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if at(0) == '/' && at(1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if at(0) == 'r' && (at(1) == '"' || (at(1) == '#' && is_raw(&c[i + 1..]))) {
            i += 1;
            let mut hashes = 0;
            while i < c.len() && c[i] == '#' {
                hashes += 1;
                i += 1;
            }
            i += 1;
            while i < c.len() {
                if c[i] == '"' && (0..hashes).all(|h| c.get(i + 1 + h) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            out.push_str("\"\"");
        } else if at(0) == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if at(0) == '\'' && (at(2) == '\'' || at(1) == '\\') {
            // A char literal ('x', '\n', '\u{..}'); a lifetime has no
            // closing quote.
            i += 1;
            while i < c.len() && c[i] != '\'' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    drop_test_items(&out)
}

fn is_raw(rest: &[char]) -> bool {
    let n = rest.iter().take_while(|&&ch| ch == '#').count();
    rest.get(n) == Some(&'"')
}

/// Removes each `#[cfg(test)]` item: up to its `;`, or its braces.
fn drop_test_items(code: &str) -> String {
    const ATTR: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find(ATTR) {
        out.push_str(&rest[..at]);
        let item = &rest[at + ATTR.len()..];
        let mut depth = 0usize;
        let mut end = item.len();
        for (k, ch) in item.char_indices() {
            match ch {
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Path,
    Open,
    Close,
    Comma,
    Other,
}

fn tokens(code: &str) -> Vec<Tok> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(c[start..i].iter().collect()));
            continue;
        }
        if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push(Tok::Path);
            i += 2;
            continue;
        }
        match ch {
            '{' => out.push(Tok::Open),
            '}' => out.push(Tok::Close),
            ',' => out.push(Tok::Comma),
            c if c.is_whitespace() => {}
            _ => out.push(Tok::Other),
        }
        i += 1;
    }
    out
}

/// Every crate-absolute path the code names (`crate::a::b`, the members
/// of `use crate::{a, b::{c}}` groups, `super::` and `self::` chains
/// resolved from module `here`), as identifier lists.
pub fn references(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let t = tokens(code);
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        let prev_is_path = i > 0 && t[i - 1] == Tok::Path;
        let base: Option<(Vec<String>, usize)> = match &t[i] {
            Tok::Ident(w) if w == "crate" && !prev_is_path => Some((Vec::new(), i + 1)),
            Tok::Ident(w) if (w == "super" || w == "self") && !prev_is_path => {
                // `self` is the module itself; each `super` climbs one.
                let mut level = here.len();
                let mut k = i;
                if w == "self" {
                    k += 1;
                } else {
                    while let (Some(Tok::Ident(s)), Some(Tok::Path)) = (t.get(k), t.get(k + 1)) {
                        if s != "super" {
                            break;
                        }
                        level = level.saturating_sub(1);
                        k += 2;
                    }
                    k -= 1;
                }
                Some((here[..level.min(here.len())].to_vec(), k))
            }
            _ => None,
        };
        match base {
            Some((prefix, k)) if t.get(k) == Some(&Tok::Path) => {
                let end = parse_tail(&t, k + 1, &prefix, &mut out);
                i = end.max(i + 1);
            }
            _ => i += 1,
        }
    }
    out
}

/// Parses what follows `prefix::` (a path or a `{...}` group), pushing
/// each full path; returns the index after it.
fn parse_tail(t: &[Tok], mut i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix.to_vec();
    loop {
        match t.get(i) {
            Some(Tok::Ident(w)) => {
                path.push(w.clone());
                i += 1;
                if t.get(i) == Some(&Tok::Path) {
                    i += 1;
                    continue;
                }
                out.push(path);
                return i;
            }
            Some(Tok::Open) => {
                i += 1;
                loop {
                    match t.get(i) {
                        Some(Tok::Close) => return i + 1,
                        Some(Tok::Comma) => i += 1,
                        Some(Tok::Ident(_)) | Some(Tok::Open) => {
                            i = parse_tail(t, i, &path, out);
                        }
                        None => return i,
                        Some(_) => i += 1,
                    }
                }
            }
            _ => {
                if path.len() > prefix.len() {
                    out.push(path);
                }
                return i;
            }
        }
    }
}

/// An import of one file: from module `from` (the file's), to the module
/// `to` it names (the longest known module prefix of the path).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    pub file: PathBuf,
    pub from: Vec<String>,
    pub to: Vec<String>,
}

/// The imports between the files' modules (a module's own items and its
/// crate root's are not edges).
pub fn file_edges(files: &[SourceFile]) -> Vec<Edge> {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_path(&f.rel)).collect();
    let mut edges = BTreeSet::new();
    for f in files {
        let here = module_path(&f.rel);
        let code = strip_code(&f.text);
        for path in references(&code, &here) {
            let to = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains(p));
            if let Some(to) = to {
                if to != here {
                    edges.insert(Edge {
                        file: f.rel.clone(),
                        from: here.clone(),
                        to,
                    });
                }
            }
        }
    }
    edges.into_iter().collect()
}

/// Top-level module -> the top-level modules it imports (crate root
/// files left out: they declare every module).
pub fn module_imports(files: &[SourceFile]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        if let Some(top) = module_path(&f.rel).first() {
            out.entry(top.clone()).or_default();
        }
    }
    for e in file_edges(files) {
        if let (Some(a), Some(b)) = (e.from.first(), e.to.first()) {
            if a != b {
                out.entry(a.clone()).or_default().insert(b.clone());
            }
        }
    }
    out
}

/// Each import of a top-level module by one listed before it in `order`
/// (or by one not listed), as a sentence naming the file.
pub fn import_violations(files: &[SourceFile], order: &[String]) -> Vec<String> {
    let pos = |m: &str| order.iter().position(|o| o == m);
    let mut bad = Vec::new();
    for e in file_edges(files) {
        let (Some(a), Some(b)) = (e.from.first(), e.to.first()) else {
            continue;
        };
        if a == b {
            continue;
        }
        match (pos(a), pos(b)) {
            (Some(pa), Some(pb)) if pb < pa => {}
            (Some(_), Some(_)) => bad.push(format!(
                "{} imports `{b}`, which the order puts after `{a}`",
                e.file.display()
            )),
            _ => bad.push(format!(
                "{} imports `{b}`; the order does not place both `{a}` and `{b}`",
                e.file.display()
            )),
        }
    }
    bad
}

/// Import cycles between sibling modules: every import is lifted to the
/// two children of the deepest module containing both ends (an import of
/// an ancestor or a descendant is not one). Each cycle is listed as its
/// members' paths.
pub fn cycles(files: &[SourceFile]) -> Vec<Vec<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in file_edges(files) {
        let common = e.from.iter().zip(&e.to).take_while(|(a, b)| a == b).count();
        if common == e.from.len() || common == e.to.len() {
            continue;
        }
        let a = e.from[..=common].join("::");
        let b = e.to[..=common].join("::");
        graph.entry(b.clone()).or_default();
        graph.entry(a).or_default().insert(b);
    }
    strongly_connected(&graph)
        .into_iter()
        .filter(|c| c.len() > 1)
        .collect()
}

/// Tarjan's strongly connected components.
fn strongly_connected(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on.insert(v);
        let g = s.g;
        for w in g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            comp.sort();
            s.out.push(comp);
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// The order stated in the paragraph of `doc` that contains `marker`: the
/// names in backticks after the marker, up to the paragraph's end.
pub fn parse_order(doc: &str, marker: &str) -> Option<Vec<String>> {
    let at = doc.find(marker)?;
    let rest = &doc[at + marker.len()..];
    let para = rest.split("\n\n").next()?;
    let names: Vec<String> = para
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    (!names.is_empty()).then_some(names)
}

/// One entry of the code map: its indentation, its name (`vms/`,
/// `boot.rs`) and its line.
struct Entry {
    indent: usize,
    name: String,
    line: usize,
}

/// The files of crate `krate` (paths under its `src/`) that
/// ARCHITECTURE.md's code map does not name. A file is named when its
/// directory's entry (or the crate's, for a file at the top) has it as an
/// entry or mentions it in the text of its subtree; `lib.rs`, `main.rs`
/// and `mod.rs` are the entries of their directories.
pub fn code_map_misses(doc: &str, krate: &str, files: &[PathBuf]) -> Vec<String> {
    let Some(block) = doc
        .split("## Code map")
        .nth(1)
        .and_then(|s| s.split("```").nth(1))
    else {
        return vec!["ARCHITECTURE.md has no code map".into()];
    };
    let lines: Vec<&str> = block.lines().collect();
    let entries: Vec<Entry> = lines
        .iter()
        .enumerate()
        .filter_map(|(line, l)| {
            let indent = l.len() - l.trim_start().len();
            let word = l.split_whitespace().next()?;
            let name = word.trim_end_matches(',');
            let is_entry = name.ends_with('/') || name.ends_with(".rs");
            is_entry.then(|| Entry {
                indent,
                name: name.to_string(),
                line,
            })
        })
        .collect();
    // The lines of an entry's subtree: to the next entry at its indent or less.
    let subtree = |k: usize| -> (usize, usize) {
        let e = &entries[k];
        let end = entries[k + 1..]
            .iter()
            .find(|n| n.indent <= e.indent)
            .map_or(lines.len(), |n| n.line);
        (e.line, end)
    };
    let child = |within: (usize, usize), indent: usize, name: &str| -> Option<usize> {
        entries.iter().position(|e| {
            e.line > within.0 && e.line < within.1 && e.indent > indent && e.name == name
        })
    };
    let Some(top) = entries.iter().position(|e| e.name == format!("{krate}/")) else {
        return vec![format!("crates/{krate}/ (the whole crate)")];
    };
    let mut missing = Vec::new();
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut node = top;
        let mut found = true;
        let dirs: Vec<String> = f
            .parent()
            .into_iter()
            .flat_map(|p| p.components())
            .map(|c| format!("{}/", c.as_os_str().to_string_lossy()))
            .collect();
        for d in &dirs {
            match child(subtree(node), entries[node].indent, d) {
                Some(k) => node = k,
                None => {
                    found = false;
                    break;
                }
            }
        }
        let implied = matches!(name.as_str(), "lib.rs" | "main.rs" | "mod.rs");
        if found && !implied {
            let (a, b) = subtree(node);
            found = lines[a..b].iter().any(|l| mentions(l, &name));
        }
        if !found {
            missing.push(format!("crates/{krate}/src/{}", f.display()));
        }
    }
    missing
}

/// Whether `line` has `name` as a whole word (not `xname.rs`).
fn mentions(line: &str, name: &str) -> bool {
    line.match_indices(name).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '/')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(rel: &str, text: &str) -> SourceFile {
        SourceFile {
            rel: rel.into(),
            text: text.into(),
        }
    }

    fn order(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_import_against_the_order_is_reported_and_one_with_it_is_not() {
        let files = [
            file("lib.rs", "pub mod a; pub mod b;"),
            file("a.rs", "use crate::b::Thing;"),
            file("b.rs", "pub struct Thing;"),
        ];
        assert!(import_violations(&files, &order(&["b", "a"])).is_empty());
        let reversed = import_violations(&files, &order(&["a", "b"]));
        assert_eq!(
            reversed,
            ["a.rs imports `b`, which the order puts after `a`"]
        );
        let unplaced = import_violations(&files, &order(&["a"]));
        assert_eq!(unplaced.len(), 1, "{unplaced:?}");
    }

    #[test]
    fn groups_super_chains_and_self_are_resolved() {
        let files = [
            file(
                "vms/mod.rs",
                "mod boot; use self::boot::x; use crate::{net::{Subnet}, store};",
            ),
            file(
                "vms/boot.rs",
                "use super::super::images::Images; use super::mod_item;",
            ),
            file("images.rs", ""),
            file("net.rs", ""),
            file("store.rs", ""),
        ];
        let got = module_imports(&files);
        assert_eq!(
            got["vms"],
            ["images", "net", "store"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        );
    }

    #[test]
    fn comments_strings_and_test_modules_are_not_imports() {
        let code = strip_code(
            "// use crate::a;\n/* crate::b */ let s = \"crate::c\"; let r = r#\"crate::d\"#;\n\
             let ch = '{'; fn f<'a>(x: &'a str) {}\n\
             #[cfg(test)]\nmod tests { use crate::e; fn g() { let _ = { 1 }; } }\n\
             use crate::f;",
        );
        let refs = references(&code, &[]);
        assert_eq!(refs, [vec!["f".to_string()]], "{code}");
    }

    #[test]
    fn a_cycle_between_siblings_is_found_and_parent_child_imports_are_not() {
        let files = [
            file(
                "images/mod.rs",
                "mod build; mod recipe; use build::x; use recipe::y;",
            ),
            file(
                "images/build.rs",
                "use super::recipe::Recipe; use super::Images;",
            ),
            file("images/recipe.rs", "use super::build::guest_fingerprint;"),
        ];
        assert_eq!(
            cycles(&files),
            [vec![
                "images::build".to_string(),
                "images::recipe".to_string()
            ]]
        );
        let dag = [
            file("images/mod.rs", "mod build; mod recipe; use build::x;"),
            file(
                "images/build.rs",
                "use super::recipe::Recipe; use super::Images;",
            ),
            file("images/recipe.rs", "use super::Images;"),
        ];
        assert!(cycles(&dag).is_empty());
    }

    #[test]
    fn the_code_map_check_finds_an_unnamed_file() {
        let doc = "## Code map\n\n```\ncrates/\n  core/   the core\n    a.rs   one\n    \
                   vms/   vms\n      boot.rs  boot; ports.rs, stats.rs  guest figures\n\
                   tests/  suites\n```\n";
        let files: Vec<PathBuf> = [
            "lib.rs",
            "a.rs",
            "vms/mod.rs",
            "vms/boot.rs",
            "vms/stats.rs",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert!(code_map_misses(doc, "core", &files).is_empty());
        let more = [PathBuf::from("b.rs"), PathBuf::from("net/x.rs")];
        assert_eq!(
            code_map_misses(doc, "core", &more),
            ["crates/core/src/b.rs", "crates/core/src/net/x.rs"]
        );
    }
}
