//! A TCP proxy in front of the test MariaDB, which a test can stop and start again: the cheapest
//! way to make a database vanish for one server (as a killed proxy or a network partition would)
//! without a private `mariadbd` of its own. Stopping it refuses new connections and cuts the open
//! ones, so the server sees both a refused connect and a pooled connection gone dead.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::harness::{Database, MYSQL_URL_DEFAULT};
use crate::mariadbd::free_port;

/// A proxy on `127.0.0.1:port` to the test MariaDB; stopped until [`Proxy::start`].
pub struct Proxy {
    /// The port it listens on, the same after every restart.
    pub port: u16,
    target: SocketAddr,
    accepting: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A stopped proxy to the MariaDB at `FLASHSALE_TEST_MYSQL_URL`, on a free port.
    pub fn to_test_mariadb() -> Proxy {
        let server_url = std::env::var("FLASHSALE_TEST_MYSQL_URL")
            .unwrap_or_else(|_| MYSQL_URL_DEFAULT.to_owned());
        Proxy {
            port: free_port(),
            target: host_port(&server_url)
                .parse()
                .unwrap_or_else(|e| panic!("{server_url} names no IP address and port: {e}")),
            accepting: None,
        }
    }

    /// `database`'s URL with the proxy in place of the database server.
    pub fn url_of(&self, database: &Database) -> String {
        let url = database.url();
        url.replacen(host_port(url), &format!("127.0.0.1:{}", self.port), 1)
    }

    /// Listens and forwards every connection until [`Proxy::stop`].
    pub async fn start(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap_or_else(|e| panic!("the proxy binds port {}: {e}", self.port));
        let target = self.target;
        self.accepting = Some(tokio::spawn(async move {
            // Dropped with this task, which aborts every connection it forwards.
            let mut pipes = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                pipes.spawn(forward(client, target));
            }
        }));
    }

    /// Stops listening and cuts every forwarded connection.
    pub async fn stop(&mut self) {
        if let Some(accepting) = self.accepting.take() {
            accepting.abort();
            let _ = accepting.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(accepting) = self.accepting.take() {
            accepting.abort();
        }
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr) {
    if let Ok(mut server) = TcpStream::connect(target).await {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    }
}

/// The `host:port` of a `scheme://user@host:port/...` URL.
fn host_port(url: &str) -> &str {
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = authority.split(['/', '?']).next().unwrap_or(authority);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}
