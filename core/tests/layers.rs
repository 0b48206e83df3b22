//! The core's modules are layers: each imports only modules of its own layer or of layers below,
//! and no import cycle exists, even inside a layer. Read from the sources: every `crate::` path
//! outside a `#[cfg(test)] mod tests` is an edge from its file's module to the module it names.
//!
//! A new module needs a line in [`LAYERS`]; an import that reaches up a layer, names the crate
//! root's re-exports, or closes a cycle fails here with the files involved.

// Offsets into a source file's text, which is far below usize::MAX.
#![allow(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Every module of `core/src` (path from the crate root) and its layer, lowest first.
const LAYERS: &[(&str, u8)] = &[
    // ids and time
    ("ids", 1),
    ("time", 1),
    // the rows and their lifecycles
    ("rows", 2),
    ("rows::hold", 2),
    ("rows::order", 2),
    ("rows::payment", 2),
    ("rows::product", 2),
    ("rows::request", 2),
    // why a decision did not go through
    ("errors", 3),
    // what a batch reads, locks, writes and answers
    ("command", 4),
    ("locks", 4),
    ("outcome", 4),
    ("plan", 4),
    ("writes", 4),
    // the decisions
    ("hold", 5),
    ("order", 5),
    ("payment", 5),
    ("product", 5),
    ("request", 5),
    // the invariants over stored rows, and the one step that decides a batch
    ("execute", 6),
    ("invariants", 6),
    // the in-memory ledger
    ("ledger", 7),
];

type Graph = BTreeMap<String, Vec<(String, String)>>;

#[test]
fn every_import_stays_in_its_layer_or_below_and_none_closes_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let files = modules(&src);
    let on_disk: Vec<&str> = files.keys().map(String::as_str).collect();
    let listed: Vec<&str> = layers.keys().copied().collect();
    assert_eq!(
        on_disk, listed,
        "every module of core/src, and only those, has a layer"
    );

    let mut graph = Graph::new();
    let mut wrong = Vec::new();
    for (module, file) in &files {
        let text = fs::read_to_string(file).expect("a readable source file");
        for path in crate_paths(&library_code(&text)) {
            let Some(target) = named_module(&path, &layers) else {
                wrong.push(format!(
                    "{module}: `crate::{}` names no module; import from the module that defines it",
                    path.join("::")
                ));
                continue;
            };
            if target == *module {
                continue;
            }
            if layers[target.as_str()] > layers[module.as_str()] {
                wrong.push(format!(
                    "{module} (layer {}) imports {target} (layer {}): `crate::{}`",
                    layers[module.as_str()],
                    layers[target.as_str()],
                    path.join("::")
                ));
            }
            graph
                .entry(module.clone())
                .or_default()
                .push((target, path.join("::")));
        }
    }
    assert!(
        wrong.is_empty(),
        "imports out of layer:\n{}",
        wrong.join("\n")
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
    // The check has something to check: the decisions import the rows, the ledger the step.
    assert!(graph["hold"].iter().any(|(to, _)| to == "rows::hold"));
    assert!(graph["ledger"].iter().any(|(to, _)| to == "execute"));
}

/// Every module file under `src`, by module path (`rows/hold.rs` is `rows::hold`, `rows/mod.rs`
/// is `rows`). The crate root and test-module files (`tests.rs`) are left out.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).expect("a readable source directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = relative
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            match parts.last().map(String::as_str) {
                Some("lib" | "tests") => continue,
                Some("mod") => {
                    parts.pop();
                }
                _ => {}
            }
            found.insert(parts.join("::"), path);
        }
    }
    found
}

/// The source without its unit-test module (which may reach anywhere) and without comments
/// (doc links are not imports).
fn library_code(text: &str) -> String {
    let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..end]
        .lines()
        .map(|line| match line.find("//") {
            Some(at) if line[..at].matches('"').count() % 2 == 0 => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path after a `crate::` in `code`, with `use` groups expanded:
/// `crate::rows::{hold::Hold, order::Order}` gives `rows::hold::Hold` and `rows::order::Order`.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut paths = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        let preceded = start
            .checked_sub(1)
            .map(|i| bytes[i])
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        if preceded {
            continue; // `flashsale_crate::` or the like
        }
        let mut at = from;
        use_tree(bytes, &mut at, &[], &mut paths);
    }
    paths
}

fn use_tree(bytes: &[u8], at: &mut usize, prefix: &[String], paths: &mut Vec<Vec<String>>) {
    skip_space(bytes, at);
    if bytes.get(*at) == Some(&b'{') {
        *at += 1;
        loop {
            skip_space(bytes, at);
            match bytes.get(*at) {
                None => return,
                Some(b'}') => {
                    *at += 1;
                    return;
                }
                Some(b',') => *at += 1,
                Some(_) => use_tree(bytes, at, prefix, paths),
            }
        }
    }
    let start = *at;
    while bytes
        .get(*at)
        .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
    {
        *at += 1;
    }
    let ident = String::from_utf8_lossy(&bytes[start..*at]).into_owned();
    let mut path = prefix.to_vec();
    if ident.is_empty() {
        // `*`, or the end of the path
        *at += usize::from(bytes.get(*at) == Some(&b'*'));
        paths.push(path);
        return;
    }
    if ident != "self" {
        path.push(ident);
    }
    skip_space(bytes, at);
    if bytes[*at..].starts_with(b"::") {
        *at += 2;
        use_tree(bytes, at, &path, paths);
    } else {
        paths.push(path);
        // Skip an `as name` so the next group member starts clean.
        skip_space(bytes, at);
        if bytes[*at..].starts_with(b"as ") {
            *at += 3;
            skip_space(bytes, at);
            while bytes
                .get(*at)
                .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
            {
                *at += 1;
            }
        }
    }
}

fn skip_space(bytes: &[u8], at: &mut usize) {
    while bytes.get(*at).is_some_and(u8::is_ascii_whitespace) {
        *at += 1;
    }
}

/// The longest prefix of `path` that is a module.
fn named_module(path: &[String], layers: &BTreeMap<&str, u8>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|prefix| layers.contains_key(prefix.as_str()))
}

/// A cycle in `graph`, as the modules along it (first and last the same), if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        done: &mut Vec<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.iter().any(|n| n == node) {
            return None;
        }
        stack.push(node.to_owned());
        for (next, _) in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.push(node.to_owned());
        None
    }
    let mut done = Vec::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

#[test]
fn the_reader_expands_groups_and_skips_tests_and_comments() {
    let code = library_code(
        "use crate::rows::{hold::{self, Hold}, order::Order as O};\n\
         // use crate::ledger::Ledger;\n\
         let x = crate::ids::Cents(1); // crate::time\n\
         #[cfg(test)]\nmod tests {\n    use crate::ledger::Ledger;\n}\n",
    );
    let paths: Vec<String> = crate_paths(&code).iter().map(|p| p.join("::")).collect();
    assert_eq!(
        paths,
        [
            "rows::hold",
            "rows::hold::Hold",
            "rows::order::Order",
            "ids::Cents"
        ]
    );
}

#[test]
fn a_cycle_is_found_and_an_acyclic_graph_passes() {
    let edge = |to: &str| (to.to_owned(), String::new());
    let mut graph = Graph::new();
    graph.insert("a".into(), vec![edge("b")]);
    graph.insert("b".into(), vec![edge("c")]);
    assert_eq!(find_cycle(&graph), None);
    graph.insert("c".into(), vec![edge("a")]);
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
