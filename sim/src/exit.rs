//! The exit codes every command ends with, as `--help` lists them (docs/SIMULATION.md too).

/// The exit codes, as `--help` prints them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  every seed passed (and, for a sweep or merge, every coverage item happened)
  1  a seed failed, a coverage item never happened, or a seed was not deterministic
  2  usage error: bad arguments, an unreadable or invalid plan file, shard summaries that do not
     fit together";

/// Exit code of a usage error (clap's own errors exit with it too).
pub const EXIT_USAGE: u8 = 2;
