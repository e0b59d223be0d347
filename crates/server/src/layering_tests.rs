//! The layering ARCHITECTURE.md promises, checked on the sources: no module imports another
//! in a circle; the member's core names neither tonic nor axum; background tasks never hold
//! the assembled server.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src").flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A source file's module path (`member::applier`), and its text without test modules.
fn module(root: &Path, file: &Path) -> (String, String) {
    let rel = file.strip_prefix(root).expect("under src");
    let mut name = rel.with_extension("").to_string_lossy().replace('/', "::");
    if let Some(parent) = name.strip_suffix("::mod") {
        name = parent.to_string();
    }
    let text = std::fs::read_to_string(file).expect("read source");
    let code = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => &text,
    };
    // Comments may name anything.
    let code: Vec<&str> = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect();
    (name, code.join("\n"))
}

/// The modules a source refers to with `crate::a::b` or `super::x` paths.
fn references(name: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let resolve = |path: &str| -> Option<String> {
        let two: Vec<&str> = path.splitn(3, "::").collect();
        let nested = two.get(..2).map(|p| p.join("::"));
        nested
            .filter(|n| known.contains(n))
            .or_else(|| Some(two[0].to_string()).filter(|n| known.contains(n)))
    };
    let mut out = BTreeSet::new();
    let parent = name.rsplit_once("::").map(|(p, _)| p.to_string());
    for (prefix, base) in [("crate::", None), ("super::", parent)] {
        for (i, _) in code.match_indices(prefix) {
            let rest: String = code[i + prefix.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let full = match &base {
                Some(b) => format!("{b}::{rest}"),
                None => rest,
            };
            if let Some(m) = resolve(&full).filter(|m| m != name) {
                out.insert(m);
            }
        }
    }
    out
}

fn graph() -> (BTreeMap<String, BTreeSet<String>>, BTreeMap<String, String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mods: BTreeMap<String, String> = files.iter().map(|f| module(&root, f)).collect();
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    let edges = mods
        .iter()
        .map(|(n, code)| (n.clone(), references(n, code, &known)))
        .collect();
    (edges, mods)
}

#[test]
fn no_module_imports_another_in_a_circle() {
    let (edges, _) = graph();
    // The graph sees what it should: the server builds the applier, which publishes to the hub.
    assert!(edges["server"].contains("member::applier"), "{edges:?}");
    assert!(edges["member::applier"].contains("watch"), "{edges:?}");
    // Depth-first search for a back edge, reporting the circle it closes.
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            return Some(path[i..].to_vec());
        }
        if !done.insert(n.to_string()) {
            return None;
        }
        path.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        let circle = visit(n, &edges, &mut Vec::new(), &mut done);
        assert!(
            circle.is_none(),
            "modules import each other in a circle: {circle:?}"
        );
    }
}

#[test]
fn the_core_and_the_background_tasks_stay_below_the_edge() {
    let (_, mods) = graph();
    let under = |name: &str, layer: &str| name == layer || name.starts_with(&format!("{layer}::"));
    for (name, code) in &mods {
        if under(name, "member") {
            for word in ["tonic::", "axum::"] {
                assert!(!code.contains(word), "{name} names {word}");
            }
        }
        if under(name, "member") || under(name, "background") {
            assert!(
                !code.contains("EtcdServer"),
                "{name} holds the assembled server"
            );
        }
    }
}

/// The edge: what sees the assembled server. Everything else is below it and names none of it.
const EDGE: [&str; 9] = [
    "lib",
    "main",
    "server",
    "membership",
    "gateway",
    "http",
    "metrics",
    "rpc",
    "layering_tests",
];

#[test]
fn nothing_below_the_edge_reaches_up_to_it() {
    let (edges, _) = graph();
    let at_edge = |n: &str| {
        EDGE.iter()
            .any(|e| n == *e || n.starts_with(&format!("{e}::")))
    };
    for (name, refs) in &edges {
        if at_edge(name) {
            continue;
        }
        let up: Vec<&String> = refs.iter().filter(|r| at_edge(r)).collect();
        assert!(up.is_empty(), "{name} (below the edge) names {up:?}");
    }
}
