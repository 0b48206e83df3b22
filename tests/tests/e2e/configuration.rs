//! Configuring `flashsale serve` as a deployer does: the usual boolean spellings, an environment
//! file that lists every variable, the pool's size, secrets read from files or systemd
//! credentials, and secrets too short to be safe refused with a clear error.

use std::collections::BTreeSet;
use std::path::Path;

use flashsale_server::signature::{self, Secret};
use serde_json::json;

use crate::cli::{flashsale, scratch_dir};
use crate::harness::{
    Db, TestApp, WEBHOOK_SECRET, id, now_unix_s, spawn_app, spawn_bare, start_process,
};

on_both_databases!(the_pool_size_is_configurable);

/// `FLASHSALE_SEED_DEMO` takes the usual spellings of true and false.
#[tokio::test]
async fn seed_demo_takes_the_usual_boolean_spellings() {
    for spelling in ["1", "0", "yes", "no", "on", "off", "true", "false"] {
        // A setting refused later (the TTL) shows the boolean itself was taken.
        let (ok, _, stderr) = flashsale(
            &["serve", "--hold-ttl", "0s"],
            &[("FLASHSALE_SEED_DEMO", spelling)],
        );
        assert!(!ok);
        assert!(
            stderr.contains("--hold-ttl") && !stderr.contains("invalid value"),
            "FLASHSALE_SEED_DEMO={spelling}: {stderr}"
        );
    }
    let app = spawn_bare(
        Db::Sqlite,
        &["--webhook-secret", WEBHOOK_SECRET],
        &[("FLASHSALE_SEED_DEMO", "1")],
    )
    .await;
    assert_eq!(app.product(1).await["name"], "Product 1", "seeded");
    app.finish().await;
}

/// The `[env: NAME]` of every setting `flashsale serve --help` shows.
fn variables_in_help() -> BTreeSet<String> {
    let (ok, help, err) = flashsale(&["serve", "--help"], &[]);
    assert!(ok, "{err}");
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split([']', '=']).next())
        .map(str::to_owned)
        .collect()
}

/// Every variable `deploy/flashsale.env` sets, or shows commented out (`#NAME=...`).
fn variables_in_env_file() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/flashsale.env");
    let text = std::fs::read_to_string(&path).expect("deploy/flashsale.env");
    text.lines()
        .map(|line| line.trim_start_matches('#').trim_start())
        .filter_map(|line| line.split_once('=').map(|(name, _)| name))
        .filter(|name| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_environment_file_lists_every_variable_serve_reads() {
    let help = variables_in_help();
    assert!(help.len() > 10, "the help lists the variables: {help:?}");
    let file = variables_in_env_file();
    let missing: Vec<_> = help.difference(&file).collect();
    assert!(
        missing.is_empty(),
        "not in deploy/flashsale.env: {missing:?}"
    );
    let unknown: Vec<_> = file
        .difference(&help)
        .filter(|name| *name != "RUST_LOG")
        .collect();
    assert!(unknown.is_empty(), "not read by serve: {unknown:?}");
}

/// `--db-max-connections` sizes the pool, and `/metrics` says the size.
async fn the_pool_size_is_configurable(db: Db) -> TestApp {
    let app = spawn_app(db, &["--db-max-connections", "3"]).await;
    let text = app.scrape().await;
    assert!(
        text.lines()
            .any(|line| line == "flashsale_db_connections_max 3"),
        "{text}"
    );
    app
}

/// Creates a product with `token` and pays a hold on it by a webhook signed with `secret`.
async fn admin_and_webhook_work_with(app: &TestApp, token: &str, secret: &str) {
    let create = json!({"name": "From files", "price_cents": 100, "stock": 2});
    let reply = app
        .post_admin("/api/admin/products", Some(token), &create)
        .await;
    let product = id(reply.expect_status(201), "id");
    let hold = app.hold(product, 1).await;
    let body = format!(r#"{{"idempotency_key":"from-files","hold_id":{hold},"status":"paid"}}"#);
    let header = signature::sign(
        &Secret::new(secret.as_bytes()),
        now_unix_s(),
        body.as_bytes(),
    );
    let reply = app.webhook_raw(body.as_bytes(), Some(&header)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

/// Secrets come from files (`--webhook-secret-file`, `--admin-token-file`), or from systemd's
/// `LoadCredential=` (files named `webhook-secret` and `admin-token` in
/// `$CREDENTIALS_DIRECTORY`), so they stay out of the environment and the process list.
#[tokio::test]
async fn secrets_are_read_from_files_and_from_systemd_credentials() {
    let dir = scratch_dir("secret-files");
    let secret = "webhook-secret-from-a-file";
    let token = "admin-token-from-a-file";
    let secret_file = dir.join("webhook-secret");
    let token_file = dir.join("admin-token");
    std::fs::write(&secret_file, format!("{secret}\n")).expect("written");
    std::fs::write(&token_file, format!("{token}\n")).expect("written");
    let secret_path = secret_file.display().to_string();
    let token_path = token_file.display().to_string();
    let app = spawn_bare(
        Db::Sqlite,
        &[
            "--webhook-secret-file",
            &secret_path,
            "--admin-token-file",
            &token_path,
        ],
        &[],
    )
    .await;
    admin_and_webhook_work_with(&app, token, secret).await;
    app.finish().await;

    let credentials = dir.display().to_string();
    let app = spawn_bare(Db::Sqlite, &[], &[("CREDENTIALS_DIRECTORY", &credentials)]).await;
    admin_and_webhook_work_with(&app, token, secret).await;
    app.finish().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// An admin token or a webhook secret shorter than 16 bytes is guessable: the server refuses
/// to start, naming the setting and the minimum.
#[tokio::test]
async fn secrets_shorter_than_16_bytes_are_refused() {
    let dir = scratch_dir("short-secrets");
    let url = format!("sqlite:{}", dir.join("f.db").display());
    for (flag, value) in [
        ("--admin-token", "fifteen-bytes-x"),
        ("--webhook-secret", "short"),
        ("--webhook-secret", "long-enough-secret-1,short"),
    ] {
        let mut args: Vec<String> = ["serve", "--bind", "127.0.0.1:0", "--database-url", &url]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        if flag == "--admin-token" {
            args.extend(["--webhook-secret".to_owned(), WEBHOOK_SECRET.to_owned()]);
        }
        args.extend([flag.to_owned(), value.to_owned()]);
        let mut process = start_process(&args);
        let failure = process
            .listening()
            .await
            .expect_err("the server refuses to start");
        assert!(
            failure.contains(flag) && failure.contains("16 bytes"),
            "{flag} {value}: {failure}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
