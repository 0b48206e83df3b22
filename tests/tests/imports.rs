//! No import cycle between the modules of any crate of the workspace but the core (whose layers
//! `core/tests/layers.rs` checks): read from the sources, every `crate::`, `super::` and `self::`
//! path outside unit-test modules is an edge from its module to the module it names. A folder's
//! `mod.rs` and its own files may use each other; any other cycle fails here, naming its modules.
//! docs/ARCHITECTURE.md lists the graphs this reads.

#[path = "../../core/tests/imports/mod.rs"]
mod imports;

use std::path::Path;

#[test]
fn no_crate_of_the_workspace_has_an_import_cycle() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds the tests crate");
    let mut cycles = Vec::new();
    for krate in ["server", "sim", "check", "sync", "benches"] {
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
