//! The core's modules are layers: each imports only modules of its own layer or of layers below,
//! and no import cycle exists, even inside a layer. Read from the sources: every `crate::` path
//! outside a `#[cfg(test)] mod tests` is an edge from its file's module to the module it names.
//!
//! A new module needs a line in [`LAYERS`]; an import that reaches up a layer, names the crate
//! root's re-exports, or closes a cycle fails here with the files involved.

mod imports;

use std::collections::BTreeMap;
use std::path::Path;

use imports::find_cycle;

/// Every module of `core/src` (path from the crate root) and its layer, lowest first.
const LAYERS: &[(&str, u8)] = &[
    // ids and time
    ("ids", 1),
    ("time", 1),
    // the rows and their lifecycles
    ("rows", 2),
    ("rows::expiry", 2),
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
    ("writes::lay", 4),
    // the decisions
    ("hold", 5),
    ("order", 5),
    ("payment", 5),
    ("product", 5),
    ("request", 5),
    // the invariants over stored rows, and the one step that decides a batch
    ("execute", 6),
    ("driver", 6),
    ("invariants", 6),
    // the in-memory ledger
    ("ledger", 7),
];

#[test]
fn every_import_stays_in_its_layer_or_below_and_none_closes_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let (files, graph) = imports::graph(&src, true);
    let on_disk: Vec<&str> = files.keys().map(String::as_str).collect();
    let listed: Vec<&str> = layers.keys().copied().collect();
    assert_eq!(
        on_disk, listed,
        "every module of core/src, and only those, has a layer"
    );
    let wrong: Vec<String> = graph
        .iter()
        .flat_map(|(module, edges)| edges.iter().map(move |edge| (module, edge)))
        .filter(|(module, (target, _))| layers[target.as_str()] > layers[module.as_str()])
        .map(|(module, (target, path))| {
            format!(
                "{module} (layer {}) imports {target} (layer {}): `crate::{path}`",
                layers[module.as_str()],
                layers[target.as_str()],
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "imports out of layer:\n{}",
        wrong.join("\n")
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
    // The check has something to check: the decisions import the rows, the ledger the driver,
    // the driver the step.
    assert!(graph["hold"].iter().any(|(to, _)| to == "rows::hold"));
    assert!(graph["ledger"].iter().any(|(to, _)| to == "driver"));
    assert!(graph["driver"].iter().any(|(to, _)| to == "execute"));
}
