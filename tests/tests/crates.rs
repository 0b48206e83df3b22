//! The crate graph as docs/ARCHITECTURE.md draws it ("The crates"): every member of the
//! workspace has its row, and the workspace crates each member's `Cargo.toml` depends on (and
//! dev-depends on) are the ones its row names. A dependency added or dropped without the drawing,
//! or a drawing that drifted from the manifests, fails here naming the crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A crate's dependencies on the workspace's crates, by short name (`core`, `service`, ...).
#[derive(Debug, Default, PartialEq, Eq)]
struct Edges {
    normal: BTreeSet<String>,
    dev: BTreeSet<String>,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds the tests crate")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// "core, sync" -> {core, sync}; "nothing" -> {}.
fn names(list: &str) -> BTreeSet<String> {
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty() && *name != "nothing")
        .map(str::to_owned)
        .collect()
}

/// The table of the section "The crates": member directory -> (crate name, edges).
fn drawn(architecture: &str) -> BTreeMap<String, (String, Edges)> {
    let section = architecture
        .split("\n## The crates\n")
        .nth(1)
        .expect("docs/ARCHITECTURE.md has a section \"The crates\"");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut crates = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with("| `flashsale-")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert!(cells.len() >= 4, "a row of three cells: {row}");
        // "`flashsale-core` (`core/`)"
        let quoted: Vec<&str> = cells[1].split('`').skip(1).step_by(2).collect();
        let [name, dir] = quoted[..] else {
            panic!("a crate and its directory: {row}");
        };
        let (normal, dev) = cells[2].split_once("; dev: ").unwrap_or((cells[2], ""));
        let edges = Edges {
            normal: names(normal),
            dev: names(dev),
        };
        let dir = dir.trim_end_matches('/').to_owned();
        assert!(
            crates.insert(dir, (name.to_owned(), edges)).is_none(),
            "one row per crate: {row}"
        );
    }
    crates
}

/// The package name and the workspace crates a member's manifest names, by section.
fn declared(manifest: &str) -> (String, Edges) {
    let mut name = None;
    let mut edges = Edges::default();
    let mut section = "";
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
            continue;
        }
        let key = line.split(['=', '.', ' ']).next().unwrap_or("");
        if section == "[package]" && key == "name" {
            name = line.split('"').nth(1).map(str::to_owned);
        }
        let Some(short) = key.strip_prefix("flashsale-") else {
            continue;
        };
        if section == "[dev-dependencies]" {
            edges.dev.insert(short.to_owned());
        } else if section == "[dependencies]" || section.ends_with(".dependencies]") {
            edges.normal.insert(short.to_owned());
        }
    }
    (name.expect("[package] name"), edges)
}

/// The members of the root manifest.
fn members(root: &str) -> BTreeSet<String> {
    let line = root
        .lines()
        .find(|l| l.starts_with("members = ["))
        .expect("the root manifest lists its members on one line");
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_crate_depends_on_the_crates_architecture_md_draws() {
    let workspace = workspace();
    let drawn = drawn(&read(&workspace.join("docs/ARCHITECTURE.md")));
    let members = members(&read(&workspace.join("Cargo.toml")));
    let rows: BTreeSet<String> = drawn.keys().cloned().collect();
    assert_eq!(
        rows, members,
        "a row for every member of the workspace, and no other"
    );
    let mut differ = Vec::new();
    for (dir, (name, edges)) in &drawn {
        let (package, declared) = declared(&read(&workspace.join(dir).join("Cargo.toml")));
        assert_eq!(&package, name, "{dir}/Cargo.toml names its package");
        if &declared != edges {
            differ.push(format!(
                "{name}: drawn {edges:?}, {dir}/Cargo.toml has {declared:?}"
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "the crate graph drifted:\n{}",
        differ.join("\n")
    );
}

#[test]
fn the_drawing_is_read_as_it_is_written() {
    let doc = "\n## The crates\n\n| crate | depends on | what |\n|---|---|---|\n\
               | `flashsale-a` (`a/`) | nothing | x |\n\
               | `flashsale-b` (`b/`) | a, c; dev: d | y |\n\n## Next\n\
               | `flashsale-z` (`z/`) | a | not in the section |\n";
    let drawn = drawn(doc);
    assert_eq!(drawn.len(), 2);
    assert_eq!(drawn["a"], ("flashsale-a".to_owned(), Edges::default()));
    let b = &drawn["b"].1;
    assert_eq!(b.normal, names("a, c"));
    assert_eq!(b.dev, names("d"));
    let manifest = "[package]\nname = \"flashsale-b\"\n\n[dependencies]\nflashsale-a.workspace = true\n\
                    serde = \"1\"\n\n[target.'cfg(madsim)'.dependencies]\nflashsale-c = { path = \"../c\" }\n\
                    \n[dev-dependencies]\nflashsale-d = { workspace = true, features = [\"x\"] }\n";
    let (name, edges) = declared(manifest);
    assert_eq!(name, "flashsale-b");
    assert_eq!(&edges, b);
}
