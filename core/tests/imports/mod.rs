//! Reading a crate's module graph from its sources, for the tests that keep it free of cycles
//! (`core/tests/layers.rs` for the core's layers, `tests/tests/imports.rs` for the other crates).
//!
//! Every `crate::`, `super::` and `self::` path outside a `#[cfg(test)] mod tests` and outside
//! comments is an edge from its file's module to the module it names (the longest prefix of the
//! path that is a module). `use` groups are expanded.

// Offsets into a source file's text, which is far below usize::MAX.
#![allow(clippy::arithmetic_side_effects, dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Module path to the modules it imports, each with the path that named it.
pub type Graph = BTreeMap<String, Vec<(String, String)>>;

/// Every module file under `src`, by module path (`rows/hold.rs` is `rows::hold`, `rows/mod.rs`
/// is `rows`). The crate roots (`lib.rs`, `main.rs`) and test-module files (`tests.rs`) are left
/// out.
pub fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).expect("a readable source directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                // `src/bin/` holds crate roots of their own.
                if path != src.join("bin") {
                    dirs.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = relative
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            match parts.last().map(String::as_str) {
                Some("lib" | "main" | "tests") if parts.len() == 1 => continue,
                Some("tests") => continue,
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

/// The module graph of the crate whose sources are `src`. An edge between a module and its own
/// ancestor or descendant (a folder's `mod.rs` and its files) is left out when `family` is false.
///
/// # Panics
/// When a path names no module (an item of the crate root, or a module that is not a file).
pub fn graph(src: &Path, family: bool) -> (BTreeMap<String, PathBuf>, Graph) {
    let files = modules(src);
    let mut graph = Graph::new();
    let mut unnamed = Vec::new();
    for (module, file) in &files {
        let text = fs::read_to_string(file).expect("a readable source file");
        let here: Vec<String> = module.split("::").map(str::to_owned).collect();
        for path in crate_paths(&library_code(&text), &here) {
            let Some(target) = named_module(&path, &files) else {
                unnamed.push(format!(
                    "{module}: `crate::{}` names no module; import from the module that defines it",
                    path.join("::")
                ));
                continue;
            };
            let related = is_within(&target, module) || is_within(module, &target);
            if target == *module || (related && !family) {
                continue;
            }
            let edges = graph.entry(module.clone()).or_default();
            if !edges.iter().any(|(to, _)| *to == target) {
                edges.push((target, path.join("::")));
            }
        }
    }
    assert!(unnamed.is_empty(), "{}", unnamed.join("\n"));
    (files, graph)
}

/// Whether `module` is `ancestor` or lies inside it.
fn is_within(module: &str, ancestor: &str) -> bool {
    module == ancestor
        || module
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with("::"))
}

/// The library code of a source file: without comments, without the contents of string and
/// character literals (doc links and text are not imports), and without any item under
/// `#[cfg(test)]` (a test module may reach anywhere).
pub fn library_code(text: &str) -> String {
    let code = strip_comments_and_literals(text);
    let mut kept = String::with_capacity(code.len());
    let mut rest = code.as_str();
    while let Some((at, attribute)) = next_test_attribute(rest) {
        kept.push_str(&rest[..at]);
        rest = &rest[at + attribute..];
        // The item ends at its first `;` or at the `}` closing its first `{`.
        let mut depth = 0_usize;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    kept.push_str(rest);
    kept
}

/// Where the next `#[cfg(...)]` that compiles only in tests starts (`test`, or `all(...)` with
/// `test` among its terms), and its length.
fn next_test_attribute(code: &str) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(found) = code[from..].find("#[cfg(") {
        let at = from + found;
        let inner = &code[at + "#[cfg(".len()..];
        let end = inner.find(")]")?;
        let predicate: String = inner[..end].split_whitespace().collect();
        let terms = predicate.strip_prefix("all(").unwrap_or("");
        if predicate == "test" || terms.split([',', ')']).any(|t| t == "test") {
            return Some((at, "#[cfg(".len() + end + ")]".len()));
        }
        from = at + 1;
    }
    None
}

/// `text` with comments removed and string and character literals emptied (`""`, `' '`), so
/// that braces and paths inside them are not read as code.
fn strip_comments_and_literals(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let next = b.get(i + 1).copied();
        match b[i] {
            b'/' if next == Some(b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if next == Some(b'*') => {
                i += 2;
                while i < b.len() && !b[i..].starts_with(b"*/") {
                    i += 1;
                }
                i += 2;
            }
            b'r' if raw_string_hashes(&b[i + 1..]).is_some() => {
                let hashes = raw_string_hashes(&b[i + 1..]).unwrap_or(0);
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                i += 1 + hashes + 1;
                while i < b.len() && !b[i..].starts_with(&close) {
                    i += 1;
                }
                i += close.len();
                out.push_str("\"\"");
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' => {
                // A character literal, or a lifetime (`'a`), which stays.
                let after = &text[i + 1..];
                let literal_end = if after.starts_with('\\') {
                    after[2..].find('\'').map(|at| at + 3)
                } else {
                    after
                        .chars()
                        .next()
                        .map(char::len_utf8)
                        .filter(|&len| after[len..].starts_with('\''))
                        .map(|len| len + 1)
                };
                match literal_end {
                    Some(len) => {
                        i += 1 + len;
                        out.push_str("' '");
                    }
                    None => {
                        out.push('\'');
                        i += 1;
                    }
                }
            }
            _ => {
                let c = text[i..].chars().next().unwrap_or(' ');
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// The number of `#` of a raw string starting after its `r` (`r"`, `r#"`), if one starts there.
fn raw_string_hashes(after_r: &[u8]) -> Option<usize> {
    let hashes = after_r.iter().take_while(|&&c| c == b'#').count();
    (after_r.get(hashes) == Some(&b'"')).then_some(hashes)
}

/// Every path after a `crate::`, `super::` or `self::` in the code of module `here`, from the
/// crate root, with `use` groups expanded: `crate::rows::{hold::Hold, order::Order}` gives
/// `rows::hold::Hold` and `rows::order::Order`; `super::x` in `a::b` gives `a::x`.
pub fn crate_paths(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut paths = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let preceded = at
            .checked_sub(1)
            .map(|i| bytes[i])
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
        if !code.is_char_boundary(at) {
            at += 1;
            continue;
        }
        let rest = &code[at..];
        let root = if preceded {
            None
        } else if rest.starts_with("crate::") {
            at += "crate::".len();
            Some(Vec::new())
        } else if rest.starts_with("super::") {
            let mut prefix = here.to_vec();
            while code[at..].starts_with("super::") {
                at += "super::".len();
                prefix.pop();
            }
            Some(prefix)
        } else if rest.starts_with("self::") {
            at += "self::".len();
            Some(here.to_vec())
        } else {
            None
        };
        match root {
            Some(prefix) => use_tree(bytes, &mut at, &prefix, &mut paths),
            None => at += rest.chars().next().map_or(1, char::len_utf8),
        }
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
    let ident = read_ident(bytes, at);
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
            read_ident(bytes, at);
        }
    }
}

fn read_ident(bytes: &[u8], at: &mut usize) -> String {
    let start = *at;
    while bytes
        .get(*at)
        .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
    {
        *at += 1;
    }
    String::from_utf8_lossy(&bytes[start..*at]).into_owned()
}

fn skip_space(bytes: &[u8], at: &mut usize) {
    while bytes.get(*at).is_some_and(u8::is_ascii_whitespace) {
        *at += 1;
    }
}

/// The longest prefix of `path` that is a module of `modules`.
pub fn named_module<V>(path: &[String], modules: &BTreeMap<String, V>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|prefix| modules.contains_key(prefix.as_str()))
}

/// A cycle in `graph`, as the modules along it (first and last the same), if there is one.
pub fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
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
fn the_reader_expands_groups_resolves_super_and_skips_tests_and_comments() {
    let code = library_code(
        "use crate::rows::{hold::{self, Hold}, order::Order as O};\n\
         use super::super::ids::HoldId;\n\
         pub use self::child::Thing;\n\
         // use crate::ledger::Ledger;\n\
         let x = crate::ids::Cents(1); // crate::time\n\
         let y = flashsale_core::crate_like::X; let z = $crate::time::Timestamp(0);\n\
         let s = \"{ crate::in_a_string }\"; let c = '{'; let r = r#\"crate::raw\"#;\n\
         /* crate::in_a_block_comment */\n\
         #[cfg(test)]\nfn helper() { let x = crate::ledger::Ledger::new(); }\n\
         #[cfg(all(test, loom))]\nmod loom_tests { use super::*; }\n\
         #[cfg(not(loom))]\nuse crate::locks::RowLock;\n\
         #[cfg(test)]\nmod openapi_tests {\n    use super::*;\n    fn f() { let s = \"}\"; }\n}\n\
         pub use crate::plan::Plan;\n",
    );
    let here = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
    let paths: Vec<String> = crate_paths(&code, &here)
        .iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(
        paths,
        [
            "rows::hold",
            "rows::hold::Hold",
            "rows::order::Order",
            "a::ids::HoldId",
            "a::b::c::child::Thing",
            "ids::Cents",
            "time::Timestamp",
            "locks::RowLock",
            "plan::Plan",
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
