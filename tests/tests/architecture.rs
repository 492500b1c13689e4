//! The shape of the code, checked against ARCHITECTURE.md (no root, no
//! guests):
//!
//! - the core's top-level modules import only modules listed before them in
//!   the invariant "The core's modules form a DAG, in this order: ...", and
//!   the daemon's files likewise in theirs;
//! - inside every directory module, the sibling files form a DAG;
//! - the code map names every source file of every crate.
//!
//! Imports are read from the source text: `crate::a::b`, `use crate::{a,
//! b}` groups and `super::` chains, outside comments and `#[cfg(test)]`
//! modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use banger_tests::architecture::{
    code_map_misses, cycles, import_violations, module_imports, parse_order, SourceFile,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn architecture() -> String {
    let p = root().join("ARCHITECTURE.md");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn sources(krate: &str) -> Vec<SourceFile> {
    let src = root().join("crates").join(krate).join("src");
    let mut out = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(d) = dirs.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        for e in entries {
            let path = e.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let rel = path.strip_prefix(&src).expect("under src").to_path_buf();
                let text = std::fs::read_to_string(&path).expect("source");
                out.push(SourceFile { rel, text });
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    out
}

fn check_order(krate: &str, marker: &str) {
    let order = parse_order(&architecture(), marker)
        .unwrap_or_else(|| panic!("ARCHITECTURE.md states no order after {marker:?}"));
    let files = sources(krate);
    let bad = import_violations(&files, &order);
    assert!(
        bad.is_empty(),
        "{krate}: imports against ARCHITECTURE.md's order:\n{}",
        bad.join("\n")
    );
    // Every top-level module is placed in the order.
    let tops: BTreeSet<String> = module_imports(&files).keys().cloned().collect();
    let missing: Vec<&String> = tops.iter().filter(|t| !order.contains(t)).collect();
    assert!(
        missing.is_empty(),
        "{krate}: modules missing from ARCHITECTURE.md's order: {missing:?}"
    );
}

#[test]
fn core_modules_import_only_earlier_modules() {
    check_order("banger-core", "The core's modules form a DAG");
}

#[test]
fn daemon_files_import_only_earlier_files() {
    check_order("bangerd", "The daemon's files form a DAG");
}

#[test]
fn sibling_files_form_a_dag_in_every_crate() {
    let mut found = BTreeMap::new();
    for krate in [
        "banger-core",
        "bangerd",
        "banger",
        "banger-api",
        "firecracker-api",
        "banger-agent",
        "banger-agent-proto",
        "fake-firecracker",
    ] {
        let c = cycles(&sources(krate));
        if !c.is_empty() {
            found.insert(krate, c);
        }
    }
    assert!(found.is_empty(), "import cycles between files: {found:?}");
}

#[test]
fn the_code_map_names_every_source_file() {
    let doc = architecture();
    let mut missing = Vec::new();
    for krate in [
        "banger-api",
        "banger-core",
        "bangerd",
        "banger",
        "firecracker-api",
        "fake-firecracker",
    ] {
        let files: Vec<PathBuf> = sources(krate).into_iter().map(|f| f.rel).collect();
        missing.extend(code_map_misses(&doc, krate, &files));
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's code map does not name: {missing:?}"
    );
}
