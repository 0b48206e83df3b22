//! The files in `deploy/` as a deployer uses them: the systemd unit must be hardened (scored by
//! `systemd-analyze security --offline=yes`, which `.ci/deploy.sh` installs).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The exposure `systemd-analyze security` may give the unit at most ("OK" goes up to 2.9;
/// below 2.5 leaves a margin for directives a newer systemd scores).
const SYSTEMD_EXPOSURE_MAX: f64 = 2.5;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(deploy(file)).unwrap_or_else(|e| panic!("deploy/{file}: {e}"))
}

/// The overall exposure in `systemd-analyze security`'s report.
fn exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|line| line.contains("Overall exposure level"))?;
    line.split(':')
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn the_systemd_unit_is_hardened() {
    let analyzed = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(deploy("flashsale.service"))
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze runs ({e}); `bash .ci/deploy.sh` installs it"));
    let report = String::from_utf8_lossy(&analyzed.stdout);
    let score = exposure(&report).unwrap_or_else(|| {
        panic!(
            "a score in:\n{report}\n{}",
            String::from_utf8_lossy(&analyzed.stderr)
        )
    });
    assert!(
        score <= SYSTEMD_EXPOSURE_MAX,
        "exposure {score} > {SYSTEMD_EXPOSURE_MAX}:\n{report}"
    );
}

/// The unit survives a database that is down when it starts (the server waits for it), so
/// `Restart=` only ever restarts a crash.
#[test]
fn the_systemd_unit_restarts_on_failure_and_keeps_secrets_in_credentials() {
    let unit = read("flashsale.service");
    for directive in [
        "Restart=on-failure",
        "LoadCredential=webhook-secret:",
        "LoadCredential=admin-token:",
        "UMask=0077",
    ] {
        assert!(unit.contains(directive), "{directive} in the unit");
    }
}
