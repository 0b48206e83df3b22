//! No import cycle between the modules of any crate of the workspace but the core (whose layers
//! `core/tests/layers.rs` checks): read from the sources, every `crate::`, `super::` and `self::`
//! path outside unit-test modules is an edge from its module to the module it names. A folder's
//! `mod.rs` and its own files may use each other; any other cycle fails here, naming its modules.
//! docs/ARCHITECTURE.md lists the graphs this reads, and its tables of the service's and the
//! server's modules must be the graphs read here, between top-level modules.

#[path = "../../core/tests/imports/mod.rs"]
mod imports;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[test]
fn no_crate_of_the_workspace_has_an_import_cycle() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds the tests crate");
    let mut cycles = Vec::new();
    for krate in ["service", "server", "sim", "check", "sync", "benches"] {
        let (files, graph) = imports::graph(&workspace.join(krate).join("src"), false);
        assert!(files.len() > 1, "{krate}: modules read");
        // The graph, for docs/ARCHITECTURE.md (shown with `-- --nocapture`).
        println!("{krate}:");
        for (module, edges) in &graph {
            let targets: Vec<&str> = edges.iter().map(|(to, _)| to.as_str()).collect();
            println!("  {module} -> {}", targets.join(", "));
        }
        if let Some(cycle) = imports::find_cycle(&graph) {
            cycles.push(format!("{krate}: {}", cycle.join(" -> ")));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

/// A table's cell without what its parentheses say, then its backquoted names (`routes/` is
/// `routes`).
fn named(cell: &str) -> Vec<String> {
    let mut depth = 0usize;
    let bare: String = cell
        .chars()
        .filter(|&c| {
            match c {
                '(' => depth = depth.saturating_add(1),
                ')' => depth = depth.saturating_sub(1),
                _ => return depth == 0,
            }
            false
        })
        .collect();
    bare.split('`')
        .skip(1)
        .step_by(2)
        .map(|name| name.trim_end_matches('/').to_owned())
        .collect()
}

type Drawn = BTreeMap<String, BTreeSet<String>>;

/// The module table that follows `heading` in docs/ARCHITECTURE.md: module -> what it imports.
fn drawn(architecture: &str, heading: &str) -> Drawn {
    let after = architecture
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("docs/ARCHITECTURE.md has {heading}"));
    let mut drawn = Drawn::new();
    let rows = after
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2);
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert!(cells.len() >= 3, "a row of two cells: {row}");
        let imports: BTreeSet<String> = named(cells[2]).into_iter().collect();
        for module in named(cells[1]) {
            let again = drawn.insert(module.clone(), imports.clone());
            assert!(again.is_none(), "{module} has one row under {heading}");
        }
    }
    drawn
}

/// A crate's graph between its top-level modules: a folder's files import as the folder.
fn top_level(src: &Path) -> Drawn {
    let (files, graph) = imports::graph(src, false);
    let top = |module: &str| module.split("::").next().unwrap_or(module).to_owned();
    let mut drawn: Drawn = files.keys().map(|m| (top(m), BTreeSet::new())).collect();
    for (module, edges) in &graph {
        for (to, _) in edges {
            if top(to) != top(module) {
                drawn.entry(top(module)).or_default().insert(top(to));
            }
        }
    }
    drawn
}

#[test]
fn the_service_and_server_modules_import_as_architecture_md_draws() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds the tests crate");
    let architecture = std::fs::read_to_string(workspace.join("docs/ARCHITECTURE.md"))
        .expect("docs/ARCHITECTURE.md");
    for (krate, heading) in [
        ("service", "**service** (`service/src/`)"),
        ("server", "**server** (`server/src/`)"),
    ] {
        let drawn = drawn(&architecture, heading);
        let read = top_level(&workspace.join(krate).join("src"));
        let mut differ = Vec::new();
        for module in drawn.keys().chain(read.keys()).collect::<BTreeSet<_>>() {
            let (want, got) = (drawn.get(module), read.get(module));
            if want != got {
                differ.push(format!("  {module}: drawn {want:?}, imports {got:?}"));
            }
        }
        assert!(
            differ.is_empty(),
            "{krate}: the modules differ from docs/ARCHITECTURE.md:\n{}",
            differ.join("\n")
        );
    }
}

#[test]
fn a_drawn_table_is_read_without_its_parentheses() {
    let doc = "**x** (`x/src/`):\n\n| module | imports |\n|---|---|\n\
               | `a/` (`mod.rs`: the `b` part) | `b`, `c` |\n| `b`, `c` | none |\n\nafter\n";
    let drawn = drawn(doc, "**x** (`x/src/`)");
    let names = |list: &[&str]| {
        list.iter()
            .map(|s| (*s).to_owned())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(drawn.len(), 3);
    assert_eq!(drawn["a"], names(&["b", "c"]));
    assert_eq!(drawn["b"], names(&[]));
    assert_eq!(drawn["c"], names(&[]));
}
