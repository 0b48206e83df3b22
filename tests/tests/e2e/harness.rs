//! The end-to-end harness: starts the real `flashsale` server as a child process on a fresh
//! database, talks to it over HTTP, and checks docs/DESIGN.md's invariants on that database when
//! the test ends.
//!
//! Each test gets its own server process (bound to `127.0.0.1:0`; the port comes from the
//! `listening on http://ADDR` line the server prints once bound) and its own database: a SQLite
//! file in a fresh temporary directory, or a fresh MariaDB database `fs_e2e_<pid>_<counter>` on
//! the server named by `FLASHSALE_TEST_MYSQL_URL` (default [`MYSQL_URL_DEFAULT`]). Nothing is
//! shared, so tests run in parallel. The binary is `flashsale-e2e`, the server's own `main.rs`
//! compiled by this package (see `tests/Cargo.toml` for why), which cargo builds before the
//! tests run.
//!
//! Every test returns its [`TestApp`] and [`run`] finishes it: the server must still be alive,
//! and the database's rows must pass `Ledger::check_invariants` (conservation of units among
//! them). A test that panics still kills its server and drops its database, from `Drop`.
//! The server's log goes to the terminal when `TEST_LOG` is set; otherwise it is kept in memory
//! and printed only when the test fails.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::contract;
use flashsale_server::signature::{self, Secret};
use flashsale_server::sql::SqlStore;
use flashsale_service::store::{Dump, Storage, Transaction, TxMode};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Connection};

/// The webhook signing secret every test server is started with.
pub const WEBHOOK_SECRET: &str = "e2e-webhook-secret";
/// The admin bearer token every test server is started with (unless started without one).
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0001";
/// Where MariaDB is when `FLASHSALE_TEST_MYSQL_URL` is not set: what `.ci/mariadb.sh` starts.
pub const MYSQL_URL_DEFAULT: &str = "mysql://root@127.0.0.1:3306";
/// How long a test waits for a state that time or the sweeper brings about before failing.
/// Generous: a hold TTL is 1 s, and two cores run many servers at once.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server may take to migrate its database and bind.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one HTTP request may take; far above any healthy answer, so a hang fails clearly.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of the server's log is kept to print when a test fails.
const LOG_TAIL_BYTES: usize = 64 * 1024;
/// How often [`TestApp::poll_until`] asks again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Which database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    /// A SQLite file in a fresh temporary directory.
    Sqlite,
    /// A fresh database on the MariaDB server at `FLASHSALE_TEST_MYSQL_URL`.
    MariaDb,
}

/// Runs one test body on `db` and finishes the app it returns: server alive, invariants hold,
/// database dropped. The test macro in `main.rs` calls this for each database.
pub async fn run<F, Fut>(db: Db, test: F)
where
    F: FnOnce(Db) -> Fut,
    Fut: Future<Output = TestApp>,
{
    test(db).await.finish().await;
}

/// Starts a server on a fresh database of kind `db`, with the known webhook secret and admin
/// token, plus `extra_args` (e.g. `["--hold-ttl", "1s", "--seed-demo"]`).
pub async fn spawn_app(db: Db, extra_args: &[&str]) -> TestApp {
    spawn(db, extra_args, true).await
}

/// Like [`spawn_app`], but with no admin token configured, so the admin routes are off.
pub async fn spawn_app_without_admin(db: Db, extra_args: &[&str]) -> TestApp {
    spawn(db, extra_args, false).await
}

/// Starts a server on the database at `url`, which the test owns (a private MariaDB server or
/// a Galera node): the app neither creates nor drops it. Passes the known webhook secret and
/// admin token, plus `extra_args`. Fails the test if the server does not start.
pub async fn spawn_on(url: &str, extra_args: &[&str]) -> TestApp {
    let db = if url.starts_with("sqlite:") {
        Db::Sqlite
    } else {
        Db::MariaDb
    };
    let database = Database::External {
        url: url.to_owned(),
    };
    let launch = Launch::new(&database, extra_args, true);
    start(db, database, launch).await
}

/// Starts a server on a fresh database of kind `db` with only `--bind 127.0.0.1:0`,
/// `--database-url` and `extra_args`, and `env` in its environment: no webhook secret or admin
/// token unless the test gives them its own way.
pub async fn spawn_bare(db: Db, extra_args: &[&str], env: &[(&str, &str)]) -> TestApp {
    let database = Database::create(db).await;
    let mut launch = Launch::new(&database, &[], false);
    // The known secret `Launch::new` adds is dropped: the test configures its own.
    launch.args.truncate(launch.args.len().saturating_sub(2));
    launch
        .args
        .extend(extra_args.iter().map(|s| (*s).to_owned()));
    launch.env = env
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    start(db, database, launch).await
}

async fn spawn(db: Db, extra_args: &[&str], admin: bool) -> TestApp {
    let database = Database::create(db).await;
    let launch = Launch::new(&database, extra_args, admin);
    start(db, database, launch).await
}

/// Starts one server per entry of `instances` (its extra arguments) at the same moment, all on
/// `database`, which the first app then owns (it is dropped when that app finishes). Fails the
/// test if any does not start.
pub async fn spawn_together(database: Database, instances: &[&[&str]]) -> Vec<TestApp> {
    let db = database.kind();
    let shared = Database::External {
        url: database.url().to_owned(),
    };
    let mut databases = vec![database];
    databases.extend((1..instances.len()).map(|_| shared.clone()));
    let starts = databases
        .into_iter()
        .zip(instances)
        .map(|(database, args)| {
            let launch = Launch::new(&database, args, true);
            start(db, database, launch)
        });
    futures_util::future::join_all(starts).await
}

/// How to start one server: its arguments, kept so a killed server restarts the same way.
#[derive(Clone, Debug)]
pub struct Launch {
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Launch {
    fn new(database: &Database, extra_args: &[&str], admin: bool) -> Launch {
        let mut args = vec!["serve".to_owned()];
        // Port 0 unless the test binds its own way.
        if !extra_args.contains(&"--bind") {
            args.extend(["--bind".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        args.extend(["--database-url".to_owned(), database.url().to_owned()]);
        args.extend(["--webhook-secret".to_owned(), WEBHOOK_SECRET.to_owned()]);
        if admin {
            args.extend(["--admin-token".to_owned(), ADMIN_TOKEN.to_owned()]);
        }
        args.extend(extra_args.iter().map(|s| (*s).to_owned()));
        Launch {
            args,
            env: Vec::new(),
        }
    }
}

impl Launch {
    fn start(&self) -> Process {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        start_process_with_env(&self.args, &env)
    }
}

/// The server process of `launch`, with its stderr kept and its stdout read for the address.
pub struct Process {
    child: Child,
    log: Arc<Mutex<Vec<u8>>>,
    log_reader: Option<JoinHandle<()>>,
    listening: tokio::sync::oneshot::Receiver<String>,
    stdout: Arc<Mutex<Vec<String>>>,
}

/// Starts `flashsale-e2e` with exactly `args` and a clean `FLASHSALE_*` environment.
pub fn start_process(args: &[String]) -> Process {
    start_process_with_env(args, &[])
}

/// Starts `flashsale-e2e` with exactly `args`, a clean `FLASHSALE_*` environment, and `env`.
pub fn start_process_with_env(args: &[String], env: &[(&str, &str)]) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flashsale-e2e"));
    // The server reads every flag from the environment too: keep a developer's settings out.
    for (name, _) in std::env::vars_os() {
        let name_text = name.to_string_lossy();
        if name_text.starts_with("FLASHSALE_")
            || name_text == "DATABASE_URL"
            || name_text == "CREDENTIALS_DIRECTORY"
        {
            command.env_remove(&name);
        }
    }
    command.envs(env.iter().copied());
    let log_to_terminal = std::env::var_os("TEST_LOG").is_some();
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(if log_to_terminal {
            Stdio::inherit()
        } else {
            Stdio::piped()
        });
    let mut child = command.spawn().expect("the flashsale-e2e binary starts");
    let log = Arc::new(Mutex::new(Vec::new()));
    let log_reader = child
        .stderr
        .take()
        .map(|stderr| keep_tail(stderr, log.clone()));
    let stdout = child.stdout.take().expect("stdout is piped");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let listening = listening_address(stdout, lines.clone());
    Process {
        child,
        log,
        log_reader,
        listening,
        stdout: lines,
    }
}

impl Process {
    /// The server's address once it listens, or, if it exits first, its exit status and log.
    pub async fn listening(&mut self) -> Result<String, String> {
        match tokio::time::timeout(STARTUP_TIMEOUT, &mut self.listening).await {
            Ok(Ok(address)) => Ok(address),
            Ok(Err(_)) => {
                let status = self.child.wait().expect("the server is waited for");
                if let Some(reader) = self.log_reader.take() {
                    let _ = reader.join();
                }
                Err(format!("exited ({status}); its log:\n{}", self.log_tail()))
            }
            Err(_) => Err(format!(
                "did not print `listening on` within {STARTUP_TIMEOUT:?}; its log:\n{}",
                self.log_tail()
            )),
        }
    }

    /// The lines the server wrote to stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Whether the process has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// What the server wrote to stderr, the last [`LOG_TAIL_BYTES`] of it.
    pub fn log_tail(&self) -> String {
        let log = self
            .log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        String::from_utf8_lossy(&log).into_owned()
    }
}

impl Drop for Process {
    /// A process the test lets go of, on any path (a failed assertion included), is killed:
    /// none outlives its test.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(db: Db, database: Database, launch: Launch) -> TestApp {
    let mut process = launch.start();
    let address = process.listening().await;
    let mut app = TestApp {
        address: String::new(),
        client: reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("an HTTP client builds"),
        db,
        database,
        launch,
        process,
        finished: false,
    };
    match address {
        Ok(address) => app.address = address,
        Err(failure) => panic!("the server {failure}"),
    }
    app
}

/// Reads the server's stdout on a thread: keeps every line in `kept`, sends the address of the
/// `listening on` line, and keeps draining so the server never blocks on a full pipe.
fn listening_address(
    stdout: impl Read + Send + 'static,
    kept: Arc<Mutex<Vec<String>>>,
) -> tokio::sync::oneshot::Receiver<String> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut sender = Some(sender);
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            kept.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(line.clone());
            if let Some(address) = line.trim().strip_prefix("listening on ")
                && let Some(sender) = sender.take()
            {
                let _ = sender.send(address.to_owned());
            }
        }
    });
    receiver
}

/// Drains the server's stderr on a thread, keeping the last [`LOG_TAIL_BYTES`]; the thread
/// ends when the server does.
fn keep_tail(mut stderr: impl Read + Send + 'static, log: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buffer = [0_u8; 8192];
        while let Ok(read @ 1..) = stderr.read(&mut buffer) {
            let mut log = log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            log.extend_from_slice(buffer.get(..read).unwrap_or_default());
            let excess = log.len().saturating_sub(LOG_TAIL_BYTES);
            log.drain(..excess);
        }
    })
}

/// A fresh database for one test.
#[derive(Clone)]
pub enum Database {
    Sqlite {
        dir: PathBuf,
        url: String,
    },
    MariaDb {
        server_url: String,
        name: String,
        url: String,
    },
    /// A database the test made and drops itself.
    External {
        url: String,
    },
}

/// Numbers the databases of this process, so parallel tests never share one.
static DATABASES_CREATED: AtomicU32 = AtomicU32::new(0);

impl Database {
    /// A fresh, empty database of kind `db`.
    pub async fn create(db: Db) -> Database {
        let counter = DATABASES_CREATED.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        match db {
            Db::Sqlite => {
                let dir = std::env::temp_dir().join(format!("flashsale-e2e-{pid}-{counter}"));
                // A leftover from an earlier run with the same pid must not leak rows in.
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).expect("the temporary directory is created");
                let url = format!("sqlite:{}", dir.join("flashsale.db").display());
                Database::Sqlite { dir, url }
            }
            Db::MariaDb => {
                let server_url = std::env::var("FLASHSALE_TEST_MYSQL_URL")
                    .unwrap_or_else(|_| MYSQL_URL_DEFAULT.to_owned());
                let name = format!("fs_e2e_{pid}_{counter}");
                let mut connection = mariadb_connect(&server_url).await;
                let create = format!("DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}");
                sqlx::raw_sql(AssertSqlSafe(create))
                    .execute(&mut connection)
                    .await
                    .unwrap_or_else(|e| panic!("creating database {name} failed: {e}"));
                let _ = connection.close().await;
                let url = with_database(&server_url, &name);
                Database::MariaDb {
                    server_url,
                    name,
                    url,
                }
            }
        }
    }

    /// Which kind of database it is.
    pub fn kind(&self) -> Db {
        if self.url().starts_with("sqlite:") {
            Db::Sqlite
        } else {
            Db::MariaDb
        }
    }

    /// Its URL, as the server takes it.
    pub fn url(&self) -> &str {
        match self {
            Database::Sqlite { url, .. }
            | Database::MariaDb { url, .. }
            | Database::External { url } => url,
        }
    }

    /// Runs `sql` on the database behind any server's back.
    pub async fn execute(&self, sql: &'static str) {
        let url = self.url();
        match self.kind() {
            Db::Sqlite => {
                let mut connection = sqlx::SqliteConnection::connect(url)
                    .await
                    .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
                sqlx::raw_sql(sql)
                    .execute(&mut connection)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                let _ = connection.close().await;
            }
            Db::MariaDb => {
                let mut connection = mariadb_connect(url).await;
                sqlx::raw_sql(sql)
                    .execute(&mut connection)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                let _ = connection.close().await;
            }
        }
    }

    pub async fn destroy(&self) {
        match self {
            Database::Sqlite { dir, .. } => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Database::MariaDb {
                server_url, name, ..
            } => {
                let mut connection = mariadb_connect(server_url).await;
                let drop = format!("DROP DATABASE IF EXISTS {name}");
                sqlx::raw_sql(AssertSqlSafe(drop))
                    .execute(&mut connection)
                    .await
                    .unwrap_or_else(|e| panic!("dropping database {name} failed: {e}"));
                let _ = connection.close().await;
            }
            Database::External { .. } => {}
        }
    }

    /// [`Database::destroy`] from synchronous code (`Drop`), on a runtime of its own thread,
    /// best effort: it runs while a test is already failing.
    fn destroy_blocking(self) {
        let destroyed = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime builds");
            runtime.block_on(self.destroy());
        })
        .join();
        if destroyed.is_err() {
            eprintln!("e2e: the test's database could not be dropped");
        }
    }
}

/// A transaction of the test's own that makes a product's writes wait ([`TestApp::lock_product`]).
pub enum Locker {
    /// Holding SQLite's write lock.
    Sqlite(sqlx::SqliteConnection),
    /// Holding a MariaDB row lock.
    MariaDb(sqlx::MySqlConnection),
}

impl Locker {
    /// Rolls the transaction back: the writes waiting on it go on.
    pub async fn release(self) {
        let rolled_back = match self {
            Locker::Sqlite(mut connection) => {
                let done = sqlx::raw_sql("ROLLBACK").execute(&mut connection).await;
                let _ = connection.close().await;
                done.map(|_| ())
            }
            Locker::MariaDb(mut connection) => {
                let done = sqlx::raw_sql("ROLLBACK").execute(&mut connection).await;
                let _ = connection.close().await;
                done.map(|_| ())
            }
        };
        rolled_back.expect("the locking transaction rolls back");
    }
}

/// Connects to the MariaDB server itself (no database), failing the test with how to start
/// MariaDB if it does not answer: the MariaDB tests never skip.
async fn mariadb_connect(server_url: &str) -> sqlx::MySqlConnection {
    let connecting = sqlx::MySqlConnection::connect(server_url);
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => panic!(
            "MariaDB not reachable at {server_url} ({error}); start it with \
             `bash .ci/mariadb.sh`"
        ),
        Err(_) => panic!(
            "MariaDB not reachable at {server_url} (no answer in 10 s); start it with \
             `bash .ci/mariadb.sh`"
        ),
    }
}

/// `mysql://user@host:port[/db][?query]` with its database replaced by `name`.
fn with_database(server_url: &str, name: &str) -> String {
    let (base, query) = match server_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server_url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i.saturating_add(3));
    let path_start = base
        .get(authority_start..)
        .and_then(|rest| rest.find('/'))
        .map_or(base.len(), |i| i.saturating_add(authority_start));
    let host = base.get(..path_start).unwrap_or(base);
    match query {
        Some(query) => format!("{host}/{name}?{query}"),
        None => format!("{host}/{name}"),
    }
}

/// One running server and its database.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// A client for it.
    pub client: reqwest::Client,
    /// Which database it runs on.
    pub db: Db,
    database: Database,
    launch: Launch,
    process: Process,
    finished: bool,
}

/// One HTTP answer, with its body parsed as JSON when it is JSON.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` header, empty if absent.
    pub content_type: String,
    /// The body as JSON, or as a JSON string holding the text when it is not JSON.
    pub body: Value,
    /// Whether the answer says it replayed an idempotency key's stored response
    /// (`Idempotent-Replayed: true`).
    pub replayed: bool,
}

impl Reply {
    /// Asserts the status and returns the JSON body.
    #[track_caller]
    pub fn expect_status(&self, status: u16) -> &Value {
        assert_eq!(
            self.status, status,
            "unexpected status; the reply: {self:?}"
        );
        &self.body
    }

    /// Asserts an RFC 9457 problem with this status and `code`, and returns its body.
    #[track_caller]
    pub fn expect_problem(&self, status: u16, code: &str) -> &Value {
        assert_eq!(
            self.status, status,
            "unexpected status; the reply: {self:?}"
        );
        assert_eq!(
            self.content_type, "application/problem+json",
            "a problem; the reply: {self:?}"
        );
        assert_eq!(self.body["code"], code, "problem code; the reply: {self:?}");
        assert_eq!(
            self.body["status"], status,
            "problem status; the reply: {self:?}"
        );
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "a problem has a message; the reply: {self:?}"
        );
        &self.body
    }
}

impl TestApp {
    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path))).await
    }

    /// `POST path` with `body` as JSON.
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(self.client.post(self.url(path)).json(body)).await
    }

    /// `POST path` with `body` as JSON and an `Idempotency-Key` header.
    pub async fn post_keyed(&self, path: &str, key: &str, body: &Value) -> Reply {
        let request = self.client.post(self.url(path)).json(body);
        self.send(request.header("idempotency-key", key)).await
    }

    /// `POST path` with `body` as JSON and `Authorization: Bearer <token>` when `token` is set.
    pub async fn post_admin(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    /// `GET path` with `Authorization: Bearer <token>`.
    pub async fn get_admin(&self, path: &str, token: &str) -> Reply {
        self.send(self.client.get(self.url(path)).bearer_auth(token))
            .await
    }

    /// The URL of the server's database, for the command line's subcommands.
    pub fn database_url(&self) -> &str {
        self.database.url()
    }

    /// Delivers a webhook signed now with the server's secret.
    pub async fn webhook(&self, key: &str, hold_id: u64, status: &str) -> Reply {
        let body = json!({"idempotency_key": key, "hold_id": hold_id, "status": status});
        let body = serde_json::to_vec(&body).expect("JSON serializes");
        let signature = sign(&body, now_unix_s());
        self.webhook_raw(&body, Some(&signature)).await
    }

    /// Delivers `body` as a JSON webhook with this signature header (or none).
    pub async fn webhook_raw(&self, body: &[u8], signature: Option<&str>) -> Reply {
        let mut request = self
            .client
            .post(self.url("/api/payments/webhook"))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header("x-flashsale-signature", signature);
        }
        self.send(request).await
    }

    /// Creates a product through the admin API; returns its id.
    pub async fn create_product(&self, price_cents: u64, stock: u32) -> u64 {
        let body = json!({"name": "E2E product", "price_cents": price_cents, "stock": stock});
        let reply = self
            .post_admin("/api/admin/products", Some(ADMIN_TOKEN), &body)
            .await;
        id(reply.expect_status(201), "id")
    }

    /// `GET /api/products/{id}`, asserting 200.
    pub async fn product(&self, product_id: u64) -> Value {
        let reply = self.get(&format!("/api/products/{product_id}")).await;
        reply.expect_status(200).clone()
    }

    /// The product's `available`.
    pub async fn available(&self, product_id: u64) -> u64 {
        id(&self.product(product_id).await, "available")
    }

    /// Places a hold, asserting 201; returns its id.
    pub async fn hold(&self, product_id: u64, qty: u32) -> u64 {
        let reply = self.place_hold(product_id, qty).await;
        id(reply.expect_status(201), "hold_id")
    }

    /// `POST /api/holds {product_id, qty}`.
    pub async fn place_hold(&self, product_id: u64, qty: u32) -> Reply {
        self.post("/api/holds", &json!({"product_id": product_id, "qty": qty}))
            .await
    }

    /// `GET /api/holds/{id}`'s `state`, asserting 200.
    pub async fn hold_state(&self, hold_id: u64) -> String {
        let reply = self.get(&format!("/api/holds/{hold_id}")).await;
        let state = &reply.expect_status(200)["state"];
        state.as_str().expect("state is a string").to_owned()
    }

    /// `POST /api/orders {hold_id}`.
    pub async fn place_order(&self, hold_id: u64) -> Reply {
        self.post("/api/orders", &json!({"hold_id": hold_id})).await
    }

    /// Asks `check` every [`POLL_INTERVAL`] until it is true; fails the test after
    /// [`POLL_TIMEOUT`] naming `what` was awaited.
    pub async fn poll_until(&self, what: &str, mut check: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now()
            .checked_add(POLL_TIMEOUT)
            .expect("the deadline is representable");
        loop {
            if check().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {POLL_TIMEOUT:?} waiting until {what}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Runs `sql` on the test's database behind the server's back, as an operator (or a bug)
    /// might: for tests of what the server does with rows it did not write.
    pub async fn execute(&self, sql: &'static str) {
        self.database.execute(sql).await;
    }

    /// Opens a transaction behind the server's back that makes every write to product
    /// `product_id` wait: on MariaDB it locks the product's row, on SQLite it takes the
    /// database's write lock. It lasts until [`Locker::release`].
    pub async fn lock_product(&self, product_id: u64) -> Locker {
        let url = self.database.url();
        match self.db {
            Db::Sqlite => {
                let mut connection = sqlx::SqliteConnection::connect(url)
                    .await
                    .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
                sqlx::raw_sql("BEGIN IMMEDIATE")
                    .execute(&mut connection)
                    .await
                    .expect("the write lock is taken");
                Locker::Sqlite(connection)
            }
            Db::MariaDb => {
                let mut connection = mariadb_connect(url).await;
                sqlx::raw_sql("BEGIN")
                    .execute(&mut connection)
                    .await
                    .expect("a transaction begins");
                sqlx::query("SELECT id FROM products WHERE id = ? FOR UPDATE")
                    .bind(product_id)
                    .fetch_one(&mut connection)
                    .await
                    .expect("the product's row is locked");
                Locker::MariaDb(connection)
            }
        }
    }

    /// Every row of the test's database, read in one transaction on a connection of our own.
    pub async fn dump(&self) -> Dump {
        let url = self.database.url();
        let store = SqlStore::connect(url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {url} for a dump: {e}"));
        // A Galera node catching up answers a causal read with a lock-wait timeout: retryable.
        let mut attempts = 0_u32;
        let dump = loop {
            attempts = attempts.saturating_add(1);
            let read = async {
                let mut tx = store.begin(TxMode::Snapshot).await?;
                let dump = tx.dump().await?;
                tx.commit().await?;
                Ok::<_, flashsale_service::store::StoreError>(dump)
            };
            match read.await {
                Ok(dump) => break dump,
                Err(error) if error.is_retryable() && attempts < 5 => {
                    eprintln!("e2e: the dump of {url} failed ({error}); reading again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => panic!("the dump of {url} failed: {error}"),
            }
        };
        store.close().await;
        dump
    }

    /// Checks the server still runs and the database's rows keep every invariant, then stops
    /// the server and drops the database.
    pub async fn finish(mut self) {
        if let Some(status) = self
            .process
            .child
            .try_wait()
            .expect("the server's status is readable")
        {
            panic!(
                "the server exited during the test ({status}); its log:\n{}",
                self.log_tail()
            );
        }
        if let Err(violation) = self.dump().await.check() {
            panic!("invariant violated in the database at the end of the test: {violation}");
        }
        self.stop();
        self.database.destroy().await;
        self.finished = true;
    }

    fn stop(&mut self) {
        // Already exited is fine: killing is only how the test lets go of it.
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
    }

    /// Kills the server with SIGKILL, as a crash would: no drain, no shutdown.
    pub fn kill9(&mut self) {
        self.stop();
    }

    /// Starts the server again, the same way, on the same database (after [`TestApp::kill9`]);
    /// it may listen on another port. Fails the test if it does not start.
    pub async fn restart(&mut self) {
        self.stop();
        self.process = self.launch.start();
        match self.process.listening().await {
            Ok(address) => self.address = address,
            Err(failure) => panic!("the restarted server {failure}"),
        }
    }

    /// `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// The text of `GET /metrics`, which must answer 200.
    pub async fn scrape(&self) -> String {
        let answer = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("an answer");
        assert_eq!(answer.status(), 200);
        answer.text().await.expect("a body")
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        self.try_send(request).await.unwrap_or_else(|e| {
            panic!(
                "the request failed: {e}; the server's log:\n{}",
                self.log_tail()
            )
        })
    }

    /// Sends `request`; a failure to get an answer (refused, dropped, timed out) is an `Err`.
    pub async fn try_send(&self, request: reqwest::RequestBuilder) -> Result<Reply, String> {
        send_request(request).await
    }

    /// Waits until the log reader has read everything an exited server wrote.
    fn finish_log(&mut self) {
        if let Some(reader) = self.process.log_reader.take() {
            let _ = reader.join();
        }
    }

    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// The lines the server wrote to stdout since it was last started.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.process.stdout_lines()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop();
        if self.finished {
            return;
        }
        if std::thread::panicking() && std::env::var_os("TEST_LOG").is_none() {
            self.finish_log();
            eprintln!(
                "--- the server's log ({:?}) ---\n{}",
                self.db,
                self.log_tail()
            );
        }
        // The clone names the same directory or database; `self` is gone after this.
        self.database.clone().destroy_blocking();
    }
}

/// Sends `request` and reads its answer; a failure to get one (refused, dropped, timed out, a
/// body cut short) is an `Err` naming it. Every answer is checked against the OpenAPI document
/// (see `contract.rs`); one that breaks it fails the test here.
pub async fn send_request(request: reqwest::RequestBuilder) -> Result<Reply, String> {
    let (client, request) = request.build_split();
    let request = request.map_err(|e| format!("the request cannot be built: {e}"))?;
    let method = request.method().as_str().to_owned();
    let path = request.url().path().to_owned();
    let response = client
        .execute(request)
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let content_type = header("content-type");
    let replayed = header("idempotent-replayed") == "true";
    let request_id = header("x-request-id");
    let text = response
        .text()
        .await
        .map_err(|e| format!("body cut: {e}"))?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    let answer = contract::Answer {
        method: &method,
        path: &path,
        status,
        content_type: &content_type,
        request_id: Some(request_id.as_str()),
        body: &body,
    };
    if let Err(broken) = contract::check(&answer) {
        panic!("the answer to {method} {path} breaks openapi.json: {broken}");
    }
    Ok(Reply {
        status,
        content_type,
        body,
        replayed,
    })
}

/// The signature header value for `body` at unix time `t`, with the server's secret.
pub fn sign(body: &[u8], t: i64) -> String {
    signature::sign(&Secret::new(WEBHOOK_SECRET), t, body)
}

/// Now, in unix seconds.
pub fn now_unix_s() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since_epoch.as_secs()).expect("seconds fit i64")
}

/// The unsigned integer member `name` of `body`.
#[track_caller]
pub fn id(body: &Value, name: &str) -> u64 {
    body[name]
        .as_u64()
        .unwrap_or_else(|| panic!("`{name}` is an unsigned integer in {body}"))
}

/// Asserts that two dumps hold the same rows.
#[track_caller]
pub fn assert_same_rows(before: &Dump, after: &Dump, what: &str) {
    assert_eq!(before.products, after.products, "{what}: products changed");
    assert_eq!(before.holds, after.holds, "{what}: holds changed");
    assert_eq!(before.orders, after.orders, "{what}: orders changed");
    assert_eq!(
        before.webhooks, after.webhooks,
        "{what}: webhook records changed"
    );
    assert_eq!(
        before.request_keys, after.request_keys,
        "{what}: request key records changed"
    );
}
