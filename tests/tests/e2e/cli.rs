//! The command line as an operator meets it: startup errors that say what is wrong without
//! printing the database password, `--bind` with a host name, and `sign-webhook` taking the
//! same secret list as `serve`.

use std::process::Command;

use crate::harness::{Db, TestApp, WEBHOOK_SECRET, spawn_app};

/// Runs the binary with `args` and a clean `FLASHSALE_*` environment plus `env`; returns its
/// exit success, stdout and stderr.
pub(crate) fn flashsale(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flashsale-e2e"));
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("FLASHSALE_") || text == "DATABASE_URL" {
            command.env_remove(&name);
        }
    }
    command.args(args).envs(env.iter().copied());
    let output = command.output().expect("the binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_unreachable_database_is_named_without_its_password() {
    // Nothing listens on port 1.
    let url = "mysql://root:hunter2@127.0.0.1:1/sale";
    let (ok, _, stderr) = flashsale(
        &[
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--database-url",
            url,
            "--webhook-secret",
            "s",
        ],
        &[],
    );
    assert!(!ok, "the server does not start: {stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "the password is not printed: {stderr}"
    );
    assert!(
        stderr.contains("root:***@127.0.0.1:1"),
        "the database is named: {stderr}"
    );
    assert!(
        stderr.contains("cannot reach the database") && stderr.contains("refused"),
        "says what is wrong: {stderr}"
    );
}

#[test]
fn a_taken_port_fails_before_the_database_is_touched() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port is taken");
    let port = taken.local_addr().expect("an address").port();
    let dir = std::env::temp_dir().join(format!("flashsale-cli-{}-port", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory");
    let db = dir.join("f.db");
    let url = format!("sqlite:{}", db.display());
    let bind = format!("127.0.0.1:{port}");
    let (ok, stdout, stderr) = flashsale(&["serve", "--bind", &bind, "--database-url", &url], &[]);
    assert!(!ok, "the server does not start");
    assert!(stderr.contains("binding"), "{stderr}");
    assert!(!db.exists(), "no database was created");
    assert!(
        !stdout.contains("generated webhook secret"),
        "no secret was made: {stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sign_webhook_signs_with_the_first_of_the_rotation_list_and_refuses_an_empty_secret() {
    let body = r#"{"idempotency_key":"k","hold_id":1,"status":"paid"}"#;
    let args = ["sign-webhook", "--body", body, "--timestamp", "1700000000"];
    let (ok, listed, stderr) = flashsale(&args, &[("FLASHSALE_WEBHOOK_SECRET", "new1,old0")]);
    assert!(ok, "{stderr}");
    let (ok, first, stderr) = flashsale(&args, &[("FLASHSALE_WEBHOOK_SECRET", "new1")]);
    assert!(ok, "{stderr}");
    assert_eq!(listed, first, "a list signs with its first secret");
    let (ok, _, stderr) = flashsale(&args, &[("FLASHSALE_WEBHOOK_SECRET", "")]);
    assert!(!ok, "an empty secret signs nothing");
    assert!(
        stderr.contains("empty") || stderr.contains("required"),
        "{stderr}"
    );
}

on_both_databases!(bind_takes_a_host_name_and_signed_webhooks_from_the_cli_are_accepted);

async fn bind_takes_a_host_name_and_signed_webhooks_from_the_cli_are_accepted(db: Db) -> TestApp {
    let app = spawn_app(db, &["--bind", "localhost:0"]).await;
    let product = app.create_product(100, 2).await;
    let hold = app.hold(product, 1).await;
    let body = format!(r#"{{"idempotency_key":"cli-signed","hold_id":{hold},"status":"paid"}}"#);
    let secrets = format!("{WEBHOOK_SECRET},retired-secret");
    let (ok, header, stderr) = flashsale(
        &["sign-webhook", "--body", &body],
        &[("FLASHSALE_WEBHOOK_SECRET", &secrets)],
    );
    assert!(ok, "{stderr}");
    let reply = app.webhook_raw(body.as_bytes(), Some(header.trim())).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    app
}

#[test]
fn migrate_says_what_it_applied_and_status_lists_every_migration() {
    let dir = std::env::temp_dir().join(format!("flashsale-cli-{}-migrate", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory");
    let url = format!("sqlite:{}", dir.join("f.db").display());
    let status = |expect: &str| {
        let (ok, out, err) = flashsale(&["migrate", "status", "--database-url", &url], &[]);
        assert!(ok, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.len() >= 3, "every migration is listed: {out}");
        assert!(
            lines.iter().all(|line| line.contains(expect)),
            "every migration is {expect}: {out}"
        );
    };
    status("pending");
    let (ok, out, err) = flashsale(&["migrate", "--database-url", &url], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("applied 0001 init"), "{out}");
    assert!(out.contains("applied 0003 product counters"), "{out}");
    status("applied");
    let (ok, out, err) = flashsale(&["migrate", "--database-url", &url], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("nothing to apply"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
