//! The secrets `serve` is given: the webhook signing secrets it checks signatures with, and the
//! admin token.
//!
//! Each comes from its flag (or variable), else from a file named by `--*-file`, else from a
//! systemd credential (`LoadCredential=webhook-secret:...`, `admin-token`, read from
//! `$CREDENTIALS_DIRECTORY`), so a deployment can keep them out of the environment, which
//! every process of the unit and `systemctl show` can read. A secret shorter than
//! [`SECRET_BYTES_MIN`] is refused: a short token or key can be guessed.
//!
//! Configured webhook secrets win. Without one, a shared database (MySQL/MariaDB) is refused: every
//! instance on it must check the same signatures. On a SQLite file, the one database of this
//! machine, a secret is generated the first time and kept in a file beside the database (mode
//! 0600), so a payment provider configured with it keeps working across restarts; it is printed
//! that first time only, and `flashsale webhook-secret show` prints it again.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::ServeArgs;
use crate::signature::Secret;
use crate::sql::SqlStore;

/// The shortest admin token or webhook secret accepted, in bytes.
pub const SECRET_BYTES_MIN: usize = 16;
/// The systemd credential holding the webhook secrets.
pub const WEBHOOK_SECRET_CREDENTIAL: &str = "webhook-secret";
/// The systemd credential holding the admin token.
pub const ADMIN_TOKEN_CREDENTIAL: &str = "admin-token";

/// The webhook secrets configured for `serve`: `--webhook-secret`, else the lines (or
/// comma-separated entries) of `--webhook-secret-file`, else of the `webhook-secret`
/// credential; empty when none is configured.
///
/// # Errors
/// A file that cannot be read, or a secret shorter than [`SECRET_BYTES_MIN`].
pub fn configured_webhook_secrets(args: &ServeArgs) -> anyhow::Result<Vec<String>> {
    let given: Vec<String> = args
        .webhook_secret
        .iter()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect();
    let (secrets, source) = if !given.is_empty() {
        (given, "--webhook-secret".to_owned())
    } else if let Some(file) =
        file_or_credential(&args.webhook_secret_file, WEBHOOK_SECRET_CREDENTIAL)
    {
        let text = read_secret_file(&file)?;
        let secrets = text
            .split(['\n', ','])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        (secrets, format!("--webhook-secret-file {}", file.display()))
    } else {
        return Ok(Vec::new());
    };
    if let Some(short) = secrets.iter().find(|s| s.len() < SECRET_BYTES_MIN) {
        bail!(
            "{source}: each webhook secret must be at least {SECRET_BYTES_MIN} bytes (one has {}); \
             generate one with `openssl rand -hex 32`",
            short.len()
        );
    }
    Ok(secrets)
}

/// The admin token configured for `serve`: `--admin-token`, else `--admin-token-file`, else
/// the `admin-token` credential; `None` (admin routes off) when none is, or it is empty.
///
/// # Errors
/// A file that cannot be read, or a token shorter than [`SECRET_BYTES_MIN`].
pub fn admin_token(args: &ServeArgs) -> anyhow::Result<Option<String>> {
    let (token, source) = match (
        &args.admin_token,
        file_or_credential(&args.admin_token_file, ADMIN_TOKEN_CREDENTIAL),
    ) {
        (Some(token), _) => (token.clone(), "--admin-token".to_owned()),
        (None, Some(file)) => (
            read_secret_file(&file)?.trim().to_owned(),
            format!("--admin-token-file {}", file.display()),
        ),
        (None, None) => return Ok(None),
    };
    if token.is_empty() {
        return Ok(None);
    }
    if token.len() < SECRET_BYTES_MIN {
        bail!(
            "{source}: the admin token must be at least {SECRET_BYTES_MIN} bytes (it has {}); \
             generate one with `openssl rand -hex 32`",
            token.len()
        );
    }
    Ok(Some(token))
}

/// `file` when given, else the systemd credential `name` when the unit loaded it.
fn file_or_credential(file: &Option<PathBuf>, name: &str) -> Option<PathBuf> {
    file.clone().or_else(|| {
        let directory = std::env::var_os("CREDENTIALS_DIRECTORY")?;
        let credential = Path::new(&directory).join(name);
        credential.exists().then_some(credential)
    })
}

fn read_secret_file(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file)
        .with_context(|| format!("reading the secret in {}", file.display()))
}

/// How many random bytes a generated secret has (printed as twice as many hex digits).
const GENERATED_SECRET_BYTES: usize = 32;
/// How many times to read a secret file another process is writing at the same moment, and the
/// pause between two reads: half a second in all.
const CONCURRENT_WRITE_TRIES: u32 = 25;
const CONCURRENT_WRITE_PAUSE: Duration = Duration::from_millis(20);

/// The file beside a SQLite database where its generated webhook secret is kept.
pub fn secret_file_of(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".webhook-secret");
    PathBuf::from(name)
}

/// The secrets `serve` checks signatures with: `given` ([`configured_webhook_secrets`]), or on a
/// SQLite file the one generated for it, or on an in-memory SQLite a new one each start.
///
/// # Errors
/// No secret given for a shared database; a generated secret that cannot be kept or read.
pub fn webhook_secrets(given: &[String], database_url: &str) -> anyhow::Result<Vec<Secret>> {
    let given: Vec<&String> = given.iter().filter(|s| !s.is_empty()).collect();
    if !given.is_empty() {
        return Ok(given
            .into_iter()
            .map(|s| Secret::new(s.as_bytes().to_vec()))
            .collect());
    }
    if !database_url.starts_with("sqlite:") {
        bail!(
            "no webhook secret configured: on a shared database (MySQL/MariaDB) every instance \
             must check the same signatures; set FLASHSALE_WEBHOOK_SECRET or --webhook-secret"
        );
    }
    let secret = match SqlStore::sqlite_file(database_url) {
        Some(database) => kept_secret(&secret_file_of(&database))?,
        None => {
            let secret = generate();
            // Printed, to stdout, so the operator can configure the payment provider; webhooks
            // are never accepted unsigned. An in-memory database keeps nothing, this included.
            println!("generated a webhook secret for this in-memory database: {secret}");
            secret
        }
    };
    Ok(vec![Secret::new(secret.into_bytes())])
}

/// The secret kept at `file`, generated and printed once if there is none yet.
fn kept_secret(file: &Path) -> anyhow::Result<String> {
    let secret = generate();
    // `create_new`: of two instances starting at once, one writes and the other reads.
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file);
    match created {
        Ok(mut kept) => {
            kept.write_all(format!("{secret}\n").as_bytes())
                .and_then(|()| kept.sync_all())
                .with_context(|| format!("keeping the webhook secret in {}", file.display()))?;
            println!(
                "generated a webhook secret, kept in {} (`flashsale webhook-secret show` prints \
                 it again): {secret}",
                file.display()
            );
            tracing::info!(file = %file.display(), "webhook secret generated");
            Ok(secret)
        }
        Err(error) if error.kind() == ErrorKind::AlreadyExists => read_kept(file),
        Err(error) => {
            Err(error).with_context(|| format!("keeping the webhook secret in {}", file.display()))
        }
    }
}

/// The secret kept at `file`, waiting briefly for one another process is writing.
fn read_kept(file: &Path) -> anyhow::Result<String> {
    for _ in 0..CONCURRENT_WRITE_TRIES {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the webhook secret kept in {}", file.display()))?;
        let secret = text.trim();
        if !secret.is_empty() {
            return Ok(secret.to_owned());
        }
        // A blocking pause, once, at start-up: only when two instances create the file at once.
        std::thread::sleep(CONCURRENT_WRITE_PAUSE);
    }
    bail!(
        "{} is empty: remove it to generate a new secret",
        file.display()
    );
}

/// `flashsale webhook-secret show`: the secret generated for the SQLite database at `url`.
///
/// # Errors
/// Another database (its secrets are configured, never kept), a database file that does not
/// exist, or none generated yet.
pub fn show(url: &str) -> anyhow::Result<String> {
    let Some(database) = SqlStore::sqlite_file(url) else {
        bail!(
            "only a SQLite file keeps a generated webhook secret; on MySQL/MariaDB the secret \
             is configured (FLASHSALE_WEBHOOK_SECRET)"
        );
    };
    if !database.exists() {
        bail!(
            "{} does not exist: check --database-url",
            database.display()
        );
    }
    let file = secret_file_of(&database);
    if !file.exists() {
        bail!(
            "no webhook secret was generated for {}: `flashsale serve` generates one the first \
             time it starts on it without a configured secret",
            database.display()
        );
    }
    read_kept(&file)
}

fn generate() -> String {
    let bytes: [u8; GENERATED_SECRET_BYTES] = rand::random();
    hex::encode(bytes)
}
