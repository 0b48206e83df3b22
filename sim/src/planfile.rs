//! Plan files: a run written down so it can be replayed, read, edited by hand and committed as
//! a regression (`sim/regressions/*.json`, replayed by `cargo test`). The format is JSON, one
//! document, stable and documented in docs/SIMULATION.md:
//!
//! - `format`: `"flashsale-sim plan 1"`;
//! - `note`: free text for the person reading it;
//! - `seed`: madsim's seed (scheduling, latencies, which faults fire); the plan fixes the rest;
//! - `bug`: the planted bug the run needs (`--bug` names), or `null`;
//! - `expect`: the failure the plan showed when it was written (`kind` is what a replay must
//!   show again; `message` is for reading), or `null` for a plan that must pass;
//! - `plan`: the workload (see [`Plan`]'s fields): products numbered from 1 as the API numbers
//!   them, clients and instances from 0, times in milliseconds from the start of the run.

use std::path::Path;

use flashsale_check::failure::Failure;
use serde::{Deserialize, Serialize};

use crate::plan::Plan;
use crate::store::Bug;
use crate::world::RunConfig;

/// The format word of a plan file.
pub const FORMAT: &str = "flashsale-sim plan 1";

/// The failure a plan showed when it was written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    /// The failure's kind (`Failure::kind`): what a replay must show again.
    pub kind: String,
    /// The failure as it read, for a person.
    pub message: String,
}

/// A plan file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    /// [`FORMAT`].
    pub format: String,
    /// What the plan shows, for the person reading it.
    #[serde(default)]
    pub note: String,
    /// madsim's seed.
    pub seed: u64,
    /// The planted bug the run needs, by its `--bug` name.
    pub bug: Option<String>,
    /// The failure it showed when written; `None` for a plan that must pass.
    pub expect: Option<Expected>,
    /// The workload.
    pub plan: Plan,
}

impl PlanFile {
    /// The file for `config`, which showed `failure` (if any).
    pub fn of(config: &RunConfig, failure: Option<&Failure>, note: String) -> PlanFile {
        PlanFile {
            format: FORMAT.to_owned(),
            note,
            seed: config.seed,
            bug: config.bug.map(|b| b.name().to_owned()),
            expect: failure.map(|f| Expected {
                kind: f.kind.clone(),
                message: f.to_string(),
            }),
            plan: config.plan.clone(),
        }
    }

    /// The run this file describes.
    ///
    /// # Errors
    /// What is wrong with the file: another format, an unknown bug, a plan that names a
    /// product or instance it does not have.
    pub fn config(&self) -> Result<RunConfig, String> {
        if self.format != FORMAT {
            return Err(format!(
                "format is {:?}; this simulator reads {FORMAT:?}",
                self.format
            ));
        }
        let bug = match &self.bug {
            None => None,
            Some(name) => Some(Bug::parse(name).ok_or_else(|| {
                let names: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
                format!("bug {name:?} is not one of {}", names.join(", "))
            })?),
        };
        self.plan.check().map_err(|e| format!("plan.{e}"))?;
        Ok(RunConfig {
            seed: self.seed,
            plan: self.plan.clone(),
            bug,
            trace: false,
        })
    }

    /// Reads a plan file.
    ///
    /// # Errors
    /// The file cannot be read, is not JSON of this shape (with the line and column), or
    /// describes no valid run.
    pub fn read(path: &Path) -> Result<(PlanFile, RunConfig), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file: PlanFile = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a plan file: {e}", path.display()))?;
        let config = file
            .config()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok((file, config))
    }

    /// Writes the file, creating its directory.
    ///
    /// # Errors
    /// The directory or file cannot be written.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let mut text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        text.push('\n');
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}
