//! Private MariaDB servers for the fault tests: a `mariadbd` of the test's own, on its own data
//! directory and port, that the test can kill with SIGKILL and start again; and a Galera cluster
//! of three of them on this machine.
//!
//! They need the MariaDB server binaries (`mariadbd`, `mariadb-install-db`, `mariadb-admin`) and,
//! for the cluster, the Galera provider (Debian's `galera-4`); `bash .ci/mariadb.sh` installs
//! them. A missing one fails the test saying so: these tests never skip.
//!
//! Every port comes from the kernel (bind to port 0, read it, let go), never the same twice in one
//! process, so tests in parallel and a MariaDB already on 3306 never collide. A node's data
//! directory lives under the system's temporary directory and is removed when the server is
//! dropped, unless `FLASHSALE_KEEP_NODES` is set.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Connection, Row};

/// Where Debian's `galera-4` puts the provider.
const GALERA_PROVIDER: &str = "/usr/lib/galera/libgalera_smm.so";
/// How long a server may take to answer after it is started (a Galera node joining included).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Numbers this process's servers, for their directory names.
static SERVERS: AtomicU32 = AtomicU32::new(0);

/// Every port [`free_port`] has handed out in this process.
static PORTS_GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A free TCP port on 127.0.0.1, as the kernel picks one, and never one this process was given
/// before: a port is let go as soon as it is read, and the kernel may pick the same one again for
/// the next call (it did: two Galera nodes were given one group-communication port).
pub fn free_port() -> u16 {
    let mut given = PORTS_GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port is bound");
        let port = listener.local_addr().expect("a bound address").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// One `mariadbd` process of the test's own.
pub struct Mariadbd {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    /// Arguments beyond the data directory, port and socket: the Galera settings of a node.
    extra: Vec<String>,
    child: Option<Child>,
}

impl Mariadbd {
    /// A fresh data directory with root allowed over TCP without a password, and a server
    /// started on it and answering.
    pub async fn start_fresh() -> Mariadbd {
        let mut server = Mariadbd::initialized(Vec::new());
        server.extra.push(server.init_arg());
        server.start(&[]).await;
        server
    }

    /// A fresh, initialized data directory and no process yet.
    fn initialized(extra: Vec<String>) -> Mariadbd {
        let n = SERVERS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("flashsale-mdb-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("the data directory is created");
        std::fs::create_dir_all(dir.join("tmp")).expect("the temporary directory is created");
        let server = Mariadbd {
            port: free_port(),
            dir,
            extra,
            child: None,
        };
        server.own_by_server_user();
        // Neither the machine's own server's configuration nor its /tmp: a bootstrap once
        // failed on a temporary table that vanished from the shared /tmp (`Could not remove
        // temporary table '/tmp/#sql-temptable-...'`, then `Unknown table 'mysql.tmp_user_sys'`).
        let mut install = Command::new("mariadb-install-db");
        install
            .arg("--no-defaults")
            .args(server.user_args())
            .arg(format!("--datadir={}", server.data().display()))
            .arg(format!("--tmpdir={}", server.tmp().display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
        run(&mut install, "initializing a MariaDB data directory");
        std::fs::write(
            server.init_file(),
            "CREATE USER IF NOT EXISTS root@'127.0.0.1' IDENTIFIED BY '';\n\
             GRANT ALL ON *.* TO root@'127.0.0.1' WITH GRANT OPTION;\n",
        )
        .expect("the init file is written");
        server.own_by_server_user();
        server
    }

    /// SQL run by the server as it starts: lets root in over TCP without a password.
    fn init_file(&self) -> PathBuf {
        self.dir.join("init.sql")
    }

    /// The `--init-file` argument, for a start that must let root in over TCP.
    fn init_arg(&self) -> String {
        format!("--init-file={}", self.init_file().display())
    }

    /// `mysql://root@127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    /// `mysql://root@127.0.0.1:PORT/DATABASE`.
    pub fn database_url(&self, database: &str) -> String {
        format!("{}/{database}", self.url())
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("mariadbd.sock")
    }

    /// Runs the server as `mysql` when the tests run as root (mariadbd refuses root).
    fn user_args(&self) -> Vec<String> {
        if running_as_root() {
            vec!["--user=mysql".to_owned()]
        } else {
            Vec::new()
        }
    }

    fn own_by_server_user(&self) {
        if running_as_root() {
            let mut chown = Command::new("chown");
            chown.args(["-R", "mysql:mysql"]).arg(&self.dir);
            run(&mut chown, "giving the data directory to the mysql user");
        }
    }

    /// Starts the server with `once` added for this start only (`--wsrep-new-cluster`), and
    /// waits until it answers over TCP.
    pub async fn start(&mut self, once: &[&str]) {
        self.spawn(once);
        self.wait_answering().await;
    }

    fn spawn(&mut self, once: &[&str]) {
        assert!(self.child.is_none(), "the server is already running");
        let mut command = self.command(once, &self.dir.join("error.log"));
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(command.spawn().expect("mariadbd starts"));
    }

    /// The Galera position (`uuid:seqno`) of the data directory of a server that is not running,
    /// recovered from InnoDB as `mariadbd --wsrep-recover` finds it (what `galera_recovery` does
    /// before systemd starts a node): a node killed with SIGKILL left no position in
    /// `grastate.dat`, and without one it would ask for a full state transfer (SST, which
    /// blocks writes on its donor while the data directory is copied) instead of the write sets
    /// it missed (IST).
    fn recovered_position(&self) -> String {
        let log = self.dir.join("recover.log");
        let _ = std::fs::remove_file(&log);
        let mut recover = self.command(&["--wsrep-recover"], &log);
        run(&mut recover, "recovering the Galera position");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let position = text
            .lines()
            .find_map(|line| line.split("WSREP: Recovered position: ").nth(1))
            .map(|position| position.trim().to_owned());
        position.unwrap_or_else(|| panic!("no position in the recovery's log:\n{text}"))
    }

    /// `mariadbd` with this server's arguments, `once` added, logging to `log`.
    fn command(&self, once: &[&str], log: &Path) -> Command {
        let binary = "/usr/sbin/mariadbd";
        assert!(
            Path::new(binary).exists(),
            "{binary} is missing: install MariaDB with `bash .ci/mariadb.sh`"
        );
        let mut command = Command::new(binary);
        command
            .arg("--no-defaults")
            .args(self.user_args())
            .arg(format!("--datadir={}", self.data().display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--tmpdir={}", self.tmp().display()))
            .arg(format!(
                "--pid-file={}",
                self.dir.join("mariadbd.pid").display()
            ))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--port={}", self.port))
            .args([
                "--bind-address=127.0.0.1",
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=16M",
                "--max-connections=500",
                "--skip-name-resolve",
            ])
            .args(&self.extra)
            .args(once);
        command
    }

    /// Waits until root can run a query over TCP, failing the test with the server's error log
    /// if it exits or takes longer than [`START_TIMEOUT`].
    async fn wait_answering(&mut self) {
        let deadline = deadline_in(START_TIMEOUT);
        loop {
            if self.query_text("SELECT 'up'").await.as_deref() == Some("up") {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "mariadbd on port {} exited ({status}); its error log:\n{}",
                    self.port,
                    self.error_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd on port {} did not answer within {START_TIMEOUT:?}; its error log:\n{}",
                self.port,
                self.error_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The first column of the first row of `sql`, as text, or `None` when the server does not
    /// answer (or the login fails).
    /// Waits until this node has applied everything the cluster committed before the call: a
    /// causal read (`wsrep_sync_wait`). A node applies the others' writes, their DDL too, a
    /// little after they commit, and on a busy machine a test's next statement can come first.
    pub async fn catch_up(&self) {
        let mut connection = sqlx::MySqlConnection::connect(&self.url())
            .await
            .expect("a connection to the node");
        sqlx::query("SET SESSION wsrep_sync_wait = 1")
            .execute(&mut connection)
            .await
            .expect("causal reads on");
        sqlx::query("SELECT 1")
            .fetch_one(&mut connection)
            .await
            .expect("a causal read");
        let _ = connection.close().await;
    }

    pub async fn query_text(&self, sql: &'static str) -> Option<String> {
        let connecting = sqlx::MySqlConnection::connect(&self.url());
        let mut connection = tokio::time::timeout(Duration::from_secs(2), connecting)
            .await
            .ok()?
            .ok()?;
        let row = sqlx::query(sql).fetch_one(&mut connection).await.ok()?;
        let value: Option<String> = row
            .try_get::<String, _>(0)
            .ok()
            .or_else(|| row.try_get::<i64, _>(0).ok().map(|v| v.to_string()));
        let _ = connection.close().await;
        value
    }

    /// Runs `sql` as root, failing the test when it fails.
    async fn execute(&self, sql: &'static str) {
        let mut connection = sqlx::MySqlConnection::connect(&self.url())
            .await
            .unwrap_or_else(|e| panic!("root on port {}: {e}", self.port));
        sqlx::raw_sql(sql)
            .execute(&mut connection)
            .await
            .unwrap_or_else(|e| panic!("{sql} on port {}: {e}", self.port));
        let _ = connection.close().await;
    }

    /// Kills the server with SIGKILL: a crash, no shutdown.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Shuts the server down cleanly and waits for it to exit.
    fn shutdown(&mut self) {
        let mut admin = Command::new("mariadb-admin");
        admin
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "shutdown"]);
        run(&mut admin, "shutting mariadbd down");
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Its binary log files, in order.
    pub fn binlogs(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.data())
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok().map(|e| e.path()))
                    .filter(|path| {
                        path.file_name()
                            .and_then(|name| name.to_str())
                            .is_some_and(|name| {
                                name.strip_prefix("binlog.")
                                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                            })
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    fn error_log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
        let start = log.len().saturating_sub(4_000);
        log.get(start..).unwrap_or(&log).to_owned()
    }
}

/// Set, a test leaves its servers' directories (data, binary logs, error log) behind for a look.
const KEEP: &str = "FLASHSALE_KEEP_NODES";

impl Drop for Mariadbd {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os(KEEP).is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A Galera cluster of MariaDB nodes on this machine, every node taking writes.
pub struct Galera {
    /// The nodes, in the order they joined.
    pub nodes: Vec<Mariadbd>,
    /// This process's turn to run a cluster: one at a time, as two clusters on two cores miss
    /// their group communication timeouts.
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// Whose turn it is to run a cluster ([`Galera`]).
static CLUSTER_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Galera {
    /// Starts a cluster of `size` nodes and waits until every node is synced in it.
    ///
    /// The first node is initialized, started alone (bootstrapping the cluster) to let root in
    /// over TCP, and stopped; the others start from copies of its data directory, so no node
    /// needs a state transfer. Failure detection is set to a few seconds, so a killed node
    /// leaves the cluster quickly.
    pub async fn start(size: usize) -> Galera {
        let turn = CLUSTER_TURN.lock().await;
        assert!(
            Path::new(GALERA_PROVIDER).exists(),
            "{GALERA_PROVIDER} is missing: install galera-4 and rsync (`bash .ci/mariadb.sh` does)"
        );
        let gcomm: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let address = gcomm
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let node_args = |i: usize| -> Vec<String> {
            let base = gcomm.get(i).copied().unwrap_or_default();
            vec![
                "--wsrep-on=ON".to_owned(),
                format!("--wsrep-provider={GALERA_PROVIDER}"),
                "--wsrep-cluster-name=flashsale-test".to_owned(),
                format!("--wsrep-node-name=node{i}"),
                format!("--wsrep-cluster-address=gcomm://{address}"),
                format!("--wsrep-node-address=127.0.0.1:{base}"),
                format!("--wsrep-sst-receive-address=127.0.0.1:{}", free_port()),
                "--wsrep-sst-method=rsync".to_owned(),
                format!(
                    "--wsrep-provider-options=base_port={base};ist.recv_addr=127.0.0.1:{};\
                     evs.keepalive_period=PT0.5S;evs.suspect_timeout=PT2S;\
                     evs.inactive_timeout=PT4S;evs.inactive_check_period=PT0.5S;\
                     evs.install_timeout=PT4S;\
                     gcache.size=64M",
                    free_port()
                ),
                "--binlog-format=ROW".to_owned(),
                "--innodb-autoinc-lock-mode=2".to_owned(),
                // Every node logs every transaction of the cluster, in its global order, with
                // its row images: the history the cluster test replays (`binlog.rs`).
                "--log-bin=binlog".to_owned(),
                "--log-slave-updates=ON".to_owned(),
            ]
        };
        let mut first = Mariadbd::initialized(node_args(0));
        let init = first.init_arg();
        first.start(&["--wsrep-new-cluster", &init]).await;
        first.shutdown();
        let mut nodes = vec![first];
        for i in 1..size {
            let node = Mariadbd::initialized(node_args(i));
            let _ = std::fs::remove_dir_all(node.data());
            let mut copy = Command::new("cp");
            copy.arg("-a")
                .arg(nodes.first().map(Mariadbd::data).unwrap_or_default())
                .arg(node.data());
            run(&mut copy, "copying the first node's data directory");
            node.own_by_server_user();
            nodes.push(node);
        }
        let mut cluster = Galera { nodes, _turn: turn };
        if let Some(first) = cluster.nodes.first_mut() {
            first.start(&["--wsrep-new-cluster"]).await;
        }
        // One joiner at a time: two joining at once on a loaded machine have failed to agree on
        // the new view within the install timeout, and a node that cannot reach a primary view
        // aborts.
        for (i, members) in (1..size).zip(2..) {
            if let Some(node) = cluster.nodes.get_mut(i) {
                node.spawn(&[]);
            }
            cluster.wait_members(i, members).await;
        }
        for i in 0..size {
            cluster.wait_synced(i).await;
        }
        cluster
    }

    /// Waits until node `i` answers, is synced and sees every node in the cluster.
    pub async fn wait_synced(&mut self, i: usize) {
        let size = self.nodes.len();
        self.wait_members(i, size).await;
    }

    /// Waits until node `i` answers, is synced and sees `size` nodes in the cluster. Past
    /// [`START_TIMEOUT`] it fails with every node's error log: a node that will not join is
    /// often told why only in the log of the node it tried to join.
    async fn wait_members(&mut self, i: usize, size: usize) {
        let Err((ready, members)) = self.members_within(i, size, START_TIMEOUT).await else {
            return;
        };
        let logs: Vec<String> = (self.nodes.iter().enumerate())
            .map(|(n, node)| format!("--- node {n}'s error log:\n{}", node.error_log()))
            .collect();
        panic!(
            "Galera node {i} is not synced after {START_TIMEOUT:?} (ready {ready:?}, cluster size \
             {members:?})\n{}",
            logs.join("\n")
        );
    }

    /// Waits up to `within` until node `i` answers, is synced and sees `size` nodes; otherwise
    /// what it last said of `WSREP_READY` and `WSREP_CLUSTER_SIZE`.
    async fn members_within(
        &mut self,
        i: usize,
        size: usize,
        within: Duration,
    ) -> Result<(), (Option<String>, Option<String>)> {
        let size = size.to_string();
        let node = self.nodes.get_mut(i).expect("a node of the cluster");
        node.wait_answering().await;
        let deadline = deadline_in(within);
        loop {
            let ready = node
                .query_text("SELECT variable_value FROM information_schema.global_status WHERE variable_name = 'WSREP_READY'")
                .await;
            let members = node
                .query_text("SELECT variable_value FROM information_schema.global_status WHERE variable_name = 'WSREP_CLUSTER_SIZE'")
                .await;
            if ready.as_deref() == Some("ON") && members.as_deref() == Some(size.as_str()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err((ready, members));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Cuts node `i` off from the others' group communication (`gmcast.isolate`), as a
    /// network partition would, and waits until it has left the primary component: it then
    /// refuses statements with error 1047 until [`Galera::heal`].
    pub async fn isolate(&mut self, i: usize) {
        self.cut_off(i).await;
        let node = self.nodes.get(i).expect("a node of the cluster");
        let deadline = deadline_in(Duration::from_secs(30));
        loop {
            let status = node
                .query_text("SELECT variable_value FROM information_schema.global_status WHERE variable_name = 'WSREP_CLUSTER_STATUS'")
                .await;
            if status.as_deref() == Some("non-Primary") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Galera node {i} is still in the primary component ({status:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Cuts node `i` off from the others' group communication and returns at once, while the
    /// others still count it a member for a few seconds: a commit on another node then waits
    /// for the group, which ends up without node `i`.
    pub async fn cut_off(&mut self, i: usize) {
        let node = self.nodes.get(i).expect("a node of the cluster");
        node.execute("SET GLOBAL wsrep_provider_options = 'gmcast.isolate=1'")
            .await;
    }

    /// Lets node `i` talk to the others again and waits until it is synced with them.
    pub async fn heal(&mut self, i: usize) {
        let node = self.nodes.get(i).expect("a node of the cluster");
        node.execute("SET GLOBAL wsrep_provider_options = 'gmcast.isolate=0'")
            .await;
        self.wait_synced(i).await;
    }

    /// Replaces node `i` by one with an empty data directory (a disk replaced): shut down,
    /// wiped and started again, it joins by a full state transfer (rsync SST) from a donor;
    /// returns once it is synced. The shutdown is a clean one, so that the others see the node
    /// leave at once; a node killed and back within the failure detection's timeouts makes
    /// them rebuild their view twice over, which on two busy cores has cost the cluster its
    /// primary component.
    pub async fn replace(&mut self, i: usize) {
        let node = self.nodes.get_mut(i).expect("a node of the cluster");
        node.shutdown();
        let _ = std::fs::remove_dir_all(node.data());
        std::fs::create_dir_all(node.data()).expect("an empty data directory");
        node.own_by_server_user();
        let log = node.dir.join("error.log");
        let before = read_log(&log).len();
        node.spawn(&[]);
        self.wait_synced(i).await;
        let after = read_log(&log);
        let restart = after.get(before..).unwrap_or_default();
        assert!(
            restart.contains("SST completed"),
            "node {i} joined without a full state transfer; its log since the restart:\n{restart}"
        );
    }

    /// Kills node `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(node) = self.nodes.get_mut(i) {
            node.kill();
        }
    }

    /// Starts node `i` again from the position recovered from its data directory; it rejoins
    /// the cluster by an incremental state transfer, and the call returns once it is synced.
    pub async fn rejoin(&mut self, i: usize) {
        let log = self.nodes.get(i).map(|node| node.dir.join("error.log"));
        let before = log.as_ref().map_or(0, |log| read_log(log).len());
        if let Some(node) = self.nodes.get_mut(i) {
            let position = node.recovered_position();
            node.spawn(&[&format!("--wsrep-start-position={position}")]);
        }
        self.wait_synced(i).await;
        let after = log.as_ref().map(|log| read_log(log)).unwrap_or_default();
        let restart = after.get(before..).unwrap_or_default();
        // An IST, or none when the cluster committed nothing while the node was down (the
        // survivors may still have been waiting to declare it dead); never a full copy.
        let incremental =
            restart.contains("IST received") || restart.contains("state transfer needed: no");
        assert!(
            incremental && !restart.contains("SST completed"),
            "node {i} rejoined by a full state transfer, not IST; its log since the restart:\n{restart}"
        );
    }
}

/// A server's error log, empty when there is none yet.
fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Whether the tests run as root.
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Runs `command` to completion, failing the test with its output if it fails.
fn run(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: {command:?} did not start: {e}"));
    assert!(
        output.status.success(),
        "{what}: {command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The instant `after` from now.
pub fn deadline_in(after: Duration) -> Instant {
    Instant::now()
        .checked_add(after)
        .expect("the deadline is representable")
}
