//! HTML reports: one self-contained page per run or sweep.

use crate::summary::SweepSummary;

/// A sweep's page.
pub fn sweep_page(summary: &SweepSummary) -> String {
    format!("<!doctype html><title>{}</title>", summary.seeds)
}

/// A run's page.
pub fn run_page(
    config: &crate::world::RunConfig,
    report: &crate::world::Report,
    _shrunk: Option<&(crate::world::RunConfig, crate::world::Report)>,
) -> String {
    format!(
        "<!doctype html><title>seed {} {}</title>",
        config.seed, report.seed
    )
}
