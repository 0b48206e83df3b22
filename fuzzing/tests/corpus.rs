//! Replays every committed input of `fuzz/corpus/<target>/` through its target, so every
//! `cargo test` exercises every fuzz target on what the fuzzer and the seeds found.

use std::path::Path;

#[test]
fn every_committed_corpus_input_passes_its_target() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (name, target) in flashsale_fuzzing::TARGETS {
        let dir = corpus.join(name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert!(
            entries.len() >= 3,
            "{name}: a committed corpus of seeds, found {}",
            entries.len()
        );
        for entry in entries {
            let input = std::fs::read(entry.path()).expect("a corpus file");
            let run = std::panic::catch_unwind(|| target(&input));
            assert!(
                run.is_ok(),
                "{name}: {} fails its target",
                entry.path().display()
            );
        }
    }
}
