//! What every seed's plan is drawn with (a [`Workload`]: journeys, clients, servers, a planted
//! bug, with their defaults), and the command line that runs a seed of it again; shared by the
//! command line and the sweeps.

use std::path::PathBuf;

use clap::Args;

use crate::plan::Plan;
use crate::store::Bug;
use crate::world::RunConfig;

/// Journeys in a plan by default.
pub const OPS_DEFAULT: usize = 200;
/// Concurrent clients by default.
pub const CLIENTS_DEFAULT: usize = 8;
/// Server instances by default.
pub const SERVERS_DEFAULT: usize = 3;

/// What every seed's plan is drawn with.
#[derive(Clone, Copy, Debug, Args)]
pub struct Workload {
    /// Journeys in each seed's plan, spread over the clients.
    #[arg(long, default_value_t = OPS_DEFAULT, value_parser = at_least_one)]
    pub ops: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = CLIENTS_DEFAULT, value_parser = at_least_one)]
    pub clients: usize,
    /// Server instances sharing the storage.
    #[arg(long, default_value_t = SERVERS_DEFAULT, value_parser = at_least_one)]
    pub servers: usize,
    /// Plants a bug in the simulated storage (never in the service), to see a checker find it.
    #[arg(long, value_enum)]
    pub bug: Option<Bug>,
}

impl Workload {
    /// The run of `seed` under this workload.
    pub fn config(&self, seed: u64) -> RunConfig {
        RunConfig {
            seed,
            plan: Plan::draw(seed, self.ops, self.clients, self.servers),
            bug: self.bug,
            trace: false,
        }
    }
}

/// The one line that replays a seed with the binary at hand.
pub fn replay_command(workload: &Workload, seed: u64) -> String {
    let bug = workload
        .bug
        .map(|b| format!(" --bug {}", b.name()))
        .unwrap_or_default();
    format!(
        "{} replay --seed {seed} --ops {} --clients {} --servers {}{bug}",
        binary(),
        workload.ops,
        workload.clients,
        workload.servers
    )
}

/// How this binary was invoked, for the lines it prints to run it again.
pub fn binary() -> String {
    std::env::args()
        .next()
        .map(PathBuf::from)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "flashsale-sim".to_owned())
}

fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
