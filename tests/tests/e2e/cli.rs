//! The command line as an operator meets it: startup errors that say what is wrong without
//! printing the database password, `--bind` with a host name, and `sign-webhook` taking the
//! same secret list as `serve`.

use std::process::Command;

use flashsale_server::signature::{self, Secret};

use crate::harness::{Db, TestApp, WEBHOOK_SECRET, now_unix_s, spawn_app, spawn_bare};

/// Runs the binary with `args` and a clean `FLASHSALE_*` environment plus `env`; returns its
/// exit success, stdout and stderr.
pub(crate) fn flashsale(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let (code, stdout, stderr) = flashsale_code(args, env);
    (code == Some(0), stdout, stderr)
}

/// [`flashsale`], with the exit code (`None` when a signal ended it).
pub(crate) fn flashsale_code(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flashsale-e2e"));
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("FLASHSALE_")
            || text == "DATABASE_URL"
            || text == "CREDENTIALS_DIRECTORY"
        {
            command.env_remove(&name);
        }
    }
    command.args(args).envs(env.iter().copied());
    let output = command.output().expect("the binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A fresh, empty directory for one test's files, named after `what`.
pub(crate) fn scratch_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flashsale-cli-{}-{what}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory");
    dir
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
            WEBHOOK_SECRET,
            "--connect-timeout",
            "0s",
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
        !stdout.contains("webhook secret"),
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
    // An empty file is an empty database; `status` never creates one (see below).
    std::fs::write(dir.join("f.db"), b"").expect("an empty database");
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

/// The secret a server generated on SQLite, from the line it printed on stdout.
fn generated_secret(app: &TestApp) -> Option<String> {
    app.stdout_lines()
        .iter()
        .find(|line| line.contains("webhook secret"))
        .and_then(|line| line.split_whitespace().last().map(str::to_owned))
}

/// On SQLite without a configured secret, the server generates one once, keeps it beside the
/// database (mode 0600), prints it the first time only (never into the log), accepts it after
/// a restart, and `flashsale webhook-secret show` prints it again.
#[tokio::test]
async fn a_generated_webhook_secret_is_kept_across_restarts_and_printed_only_once() {
    use std::os::unix::fs::PermissionsExt;

    let mut app = spawn_bare(Db::Sqlite, &["--seed-demo"], &[]).await;
    let secret = generated_secret(&app).expect("a generated secret is printed");
    assert!(secret.len() >= 32, "{secret}");
    assert!(!app.log_tail().contains(&secret), "not in the log");
    app.restart().await;
    assert_eq!(
        generated_secret(&app),
        None,
        "not printed again: {:?}",
        app.stdout_lines()
    );
    assert!(!app.log_tail().contains(&secret), "not in the log");

    let hold = app.hold(1, 1).await;
    let body = format!(r#"{{"idempotency_key":"kept-secret","hold_id":{hold},"status":"paid"}}"#);
    let header = signature::sign(
        &Secret::new(secret.as_bytes()),
        now_unix_s(),
        body.as_bytes(),
    );
    let reply = app.webhook_raw(body.as_bytes(), Some(&header)).await;
    assert_eq!(
        reply.status, 200,
        "the first secret still verifies: {reply:?}"
    );

    let url = app.database_url().to_owned();
    let (ok, shown, err) = flashsale(&["webhook-secret", "show", "--database-url", &url], &[]);
    assert!(ok, "{err}");
    assert_eq!(shown.trim(), secret);

    let file = url.strip_prefix("sqlite:").expect("a SQLite URL");
    let dir = std::path::Path::new(file).parent().expect("a directory");
    let kept: Vec<_> = std::fs::read_dir(dir)
        .expect("the directory lists")
        .filter_map(Result::ok)
        .filter(|entry| {
            std::fs::read_to_string(entry.path()).is_ok_and(|text| text.trim() == secret)
        })
        .collect();
    assert_eq!(kept.len(), 1, "one file keeps the secret");
    let mode = kept[0].metadata().expect("metadata").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "only its owner reads it");
    app.finish().await;
}

/// With `--log-format json` (or `FLASHSALE_LOG_FORMAT=json`), a start-up error, a command's
/// error and a usage error are each one JSON line at level ERROR, as a log collector expects.
#[test]
fn fatal_errors_are_one_json_line_when_json_logs_are_chosen() {
    let dir = scratch_dir("json-errors");
    let url = format!("sqlite:{}", dir.join("f.db").display());
    let missing = format!("sqlite:{}", dir.join("missing.db").display());
    // The arguments, the environment, and a word the error must carry.
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 3] = [
        (
            vec![
                "--log-format",
                "json",
                "serve",
                "--hold-ttl",
                "0s",
                "--database-url",
                &url,
            ],
            vec![],
            "--hold-ttl",
        ),
        (
            vec!["report", "--database-url", &missing],
            vec![("FLASHSALE_LOG_FORMAT", "json")],
            "missing.db",
        ),
        (
            vec!["serve", "--log-format", "json", "--no-such-flag"],
            vec![],
            "--no-such-flag",
        ),
    ];
    for (args, env, needle) in cases {
        let (ok, _, stderr) = flashsale(&args, &env);
        assert!(!ok, "{args:?} fails");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line: {stderr}");
        let line: serde_json::Value = serde_json::from_str(lines[0])
            .unwrap_or_else(|e| panic!("{args:?}: a JSON line ({e}): {stderr}"));
        assert_eq!(line["level"], "ERROR", "{args:?}: {line}");
        assert!(line.to_string().contains(needle), "{args:?}: {line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Commands that only read (`migrate status`, `report`, `webhook-secret show`) on a misspelled
/// SQLite path say the file does not exist, and create nothing.
#[test]
fn read_only_commands_on_a_missing_sqlite_file_say_so_and_create_nothing() {
    let dir = scratch_dir("read-only");
    let url = format!("sqlite:{}", dir.join("misspelled.db").display());
    for command in [
        &["migrate", "status"][..],
        &["report"][..],
        &["webhook-secret", "show"][..],
    ] {
        let mut args = command.to_vec();
        args.extend(["--database-url", &url]);
        let (ok, _, stderr) = flashsale(&args, &[]);
        assert!(!ok, "{command:?} fails");
        assert!(stderr.contains("does not exist"), "{command:?}: {stderr}");
        let left: Vec<_> = std::fs::read_dir(&dir)
            .expect("the directory lists")
            .filter_map(Result::ok)
            .map(|entry| entry.file_name())
            .collect();
        assert!(left.is_empty(), "{command:?} created {left:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `flashsale report` exits 0 when there is nothing to follow up, so cron and alerting can
/// tell it from the exit code (3 when there is; see the reconciliation test).
#[test]
fn report_exits_0_when_nothing_needs_follow_up() {
    let dir = scratch_dir("report-empty");
    let url = format!("sqlite:{}", dir.join("f.db").display());
    let (ok, _, err) = flashsale(&["migrate", "--database-url", &url], &[]);
    assert!(ok, "{err}");
    let (code, _, err) = flashsale_code(&["report", "--database-url", &url], &[]);
    assert_eq!(code, Some(0), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Shell completions and a man page come from the command line's own definition.
#[test]
fn completions_and_a_man_page_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let (ok, script, err) = flashsale(&["completions", shell], &[]);
        assert!(ok, "{shell}: {err}");
        for word in ["serve", "report", "hold-ttl"] {
            assert!(script.contains(word), "{shell}: {word} in the completions");
        }
    }
    let (ok, page, err) = flashsale(&["man"], &[]);
    assert!(ok, "{err}");
    assert!(
        page.starts_with(".ie") || page.contains(".TH flashsale"),
        "{page}"
    );
    for word in ["serve", "report", "webhook"] {
        assert!(page.contains(word), "{word} in the man page");
    }
}
