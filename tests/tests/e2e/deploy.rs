//! The files in `deploy/` as a deployer uses them: the systemd unit must be hardened (scored by
//! `systemd-analyze security --offline=yes`, which `.ci/deploy.sh` installs), and the container
//! files must build a small non-root image and a compose file whose server is only healthy when
//! `/readyz` is. No container engine runs here, so the container files are checked by reading
//! them (CI also runs hadolint on the Dockerfile).

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

/// The instructions of a Dockerfile, continuation lines joined.
fn instructions(dockerfile: &str) -> Vec<String> {
    let joined = dockerfile.replace("\\\n", " ");
    joined
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_container_image_is_multi_stage_small_and_not_root() {
    let lines = instructions(&read("Dockerfile"));
    let stages: Vec<&String> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(
        stages.len() >= 2,
        "a build stage and a runtime stage: {stages:?}"
    );
    let runtime = stages.last().expect("a runtime stage");
    assert!(
        runtime.contains("slim") || runtime.contains("distroless"),
        "a small runtime image: {runtime}"
    );
    assert!(
        !runtime.contains("rust:"),
        "no toolchain at run time: {runtime}"
    );
    let last_stage = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a stage");
    let user = lines
        .iter()
        .skip(last_stage)
        .rfind(|l| l.starts_with("USER "))
        .expect("the runtime stage sets its user");
    let name = user.trim_start_matches("USER ").trim();
    assert!(
        !["root", "0", "0:0", "root:root"].contains(&name),
        "not root: {user}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("COPY --from=")),
        "the binary comes from the build stage"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ENTRYPOINT") && l.contains("flashsale")),
        "the image runs flashsale"
    );
}

#[test]
fn the_compose_file_runs_mariadb_and_the_server_healthy_on_readyz() {
    let compose = read("compose.yaml");
    for needle in [
        "services:",
        "image: mariadb:",
        "build:",
        "healthcheck:",
        "/readyz",
        "condition: service_healthy",
        "FLASHSALE_WEBHOOK_SECRET_FILE",
        "secrets:",
    ] {
        assert!(compose.contains(needle), "{needle} in compose.yaml");
    }
    assert!(!compose.contains('\t'), "YAML is indented with spaces");
}
