//! A real local Redis Cluster: 3 masters and 3 replicas, each a `redis-server
//! --cluster-enabled yes` on free loopback ports (its cluster bus on another free port), joined
//! with `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes` and waited on until
//! every node reports `cluster_state:ok` and every master has its replica. Every node is killed
//! when the cluster is dropped (a failed test included). Both programs come with Debian's
//! `redis-server` package; a test that cannot start them fails.
//!
//! [`RedisCluster::start_without_replicas`] starts masters only, each serving its slots
//! whatever the others do (`cluster-require-full-coverage no`).
//!
//! [`RedisCluster::start_secured`] starts one whose nodes speak only TLS (`--port 0`), between
//! themselves and to their replicas too, require client certificates, and know one ACL user
//! (the default user off): what a managed cluster asks of a client.

use std::process::Command;
use std::time::{Duration, Instant};

use super::redis_server::{free_port, RedisServer};
use super::tls::{Pki, PkiFiles};

/// How long the test's own connections may take to connect and to answer.
const TEST_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// What the nodes require of a client: nothing (the default), TLS with a client certificate
/// of a test CA, an ACL user, or both.
#[derive(Clone, Default)]
pub struct Security {
    /// TLS only: the certificates' PEM text (for clients) and files (for the servers).
    pub tls: Option<(Pki, PkiFiles)>,
    /// The ACL user (name, password) that `redis-cli`, the replicas and the test's own
    /// connections use, allowed everything; the default user is then off.
    pub user: Option<(String, String)>,
    /// More ACL users, each as `--user` rules (`app on >password ~prefix:* +get ...`).
    pub more_users: Vec<String>,
}

impl Security {
    /// The URL of the node on `port`, as a client of this cluster writes it.
    pub fn url(&self, port: u16) -> String {
        let user = self.user.as_ref();
        self.url_as(
            port,
            user.map(|(user, password)| (user.as_str(), password.as_str())),
        )
    }

    /// [`url`](Self::url) with another user's credentials, or none.
    pub fn url_as(&self, port: u16, user: Option<(&str, &str)>) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let auth = user.map_or(String::new(), |(user, password)| {
            format!("{user}:{password}@")
        });
        format!("{scheme}://{auth}127.0.0.1:{port}/")
    }

    /// `redis-server` arguments for a node.
    fn node_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some((_, files)) = &self.tls {
            args.extend(files.server_args());
            for option in ["--tls-cluster", "--tls-replication"] {
                args.extend([option.to_owned(), "yes".to_owned()]);
            }
        }
        if let Some((user, password)) = &self.user {
            args.extend(
                format!(
                    "--user default off --user {user} on >{password} ~* &* +@all \
                     --masteruser {user} --masterauth {password}"
                )
                .split_whitespace()
                .map(str::to_owned),
            );
        }
        for rules in &self.more_users {
            args.push("--user".to_owned());
            args.extend(rules.split_whitespace().map(str::to_owned));
        }
        args
    }

    /// `redis-cli` arguments to reach a node.
    fn cli_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some((_, files)) = &self.tls {
            args.extend(files.cli_args());
        }
        if let Some((user, password)) = &self.user {
            args.extend(
                ["--user", user, "--pass", password, "--no-auth-warning"].map(str::to_owned),
            );
        }
        args
    }

    /// A client for `url` that trusts the test CA and presents the client certificate.
    fn client(&self, url: &str) -> redis::Client {
        match &self.tls {
            None => redis::Client::open(url).expect("valid url"),
            Some((pki, _)) => tls_client(url, pki),
        }
    }
}

#[cfg(feature = "tls")]
fn tls_client(url: &str, pki: &Pki) -> redis::Client {
    redis::Client::build_with_tls(url, certificates(pki)).expect("valid url and certificates")
}

#[cfg(not(feature = "tls"))]
fn tls_client(_: &str, _: &Pki) -> redis::Client {
    panic!("a TLS cluster needs the `tls` feature: declare it in the test's required-features")
}

#[cfg(feature = "tls")]
fn certificates(pki: &Pki) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: Some(redis::ClientTlsConfig {
            client_cert: pki.client.0.clone().into_bytes(),
            client_key: pki.client.1.clone().into_bytes(),
        }),
        root_cert: Some(pki.ca.clone().into_bytes()),
    }
}

/// How long a node may go unanswered before the others fail it over: short, so that the
/// failover test takes seconds, and far above a loaded 2-core machine's stalls.
pub const NODE_TIMEOUT_MS: u64 = 1_500;

/// A cluster that speaks only TLS, with client certificates of a test CA made for it, and
/// knows one ACL user: [`RedisCluster::start_tls_acl`].
pub struct TlsAclCluster {
    pub cluster: RedisCluster,
    pub pki: Pki,
    /// The PEM files (removed when this is dropped).
    pub files: PkiFiles,
    dir: std::path::PathBuf,
    /// The user the application connects as, and its password.
    app: (String, String),
}

impl TlsAclCluster {
    /// Every node's URL with the application's user: the seeds a backend is given.
    pub fn app_seeds(&self) -> Vec<String> {
        let (user, password) = &self.app;
        self.cluster
            .nodes
            .iter()
            .filter(|node| node.is_running())
            .map(|node| {
                self.cluster
                    .security
                    .url_as(node.port(), Some((user, password)))
            })
            .collect()
    }
}

impl Drop for TlsAclCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The nodes of a running cluster.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    security: Security,
    /// Whether every master has a replica (what [`wait_until_ok`](Self::wait_until_ok) waits
    /// for too).
    replicated: bool,
}

impl RedisCluster {
    /// Starts 6 nodes, joins them as 3 masters with one replica each, and waits until the
    /// cluster serves every slot.
    pub fn start() -> RedisCluster {
        RedisCluster::start_secured(Security::default())
    }

    /// [`start_secured`](Self::start_secured) with TLS only (a new CA, client certificates
    /// required), an `admin` user for the cluster's own commands, and the application's user
    /// `user`, allowed what `rules` say (`~prefix:* +get ...`).
    pub fn start_tls_acl(user: &str, password: &str, rules: &str) -> TlsAclCluster {
        let pki = Pki::make();
        let dir = std::env::temp_dir().join(format!("cachette-cluster-pki-{}", std::process::id()));
        let files = pki.write_to(&dir);
        let cluster = RedisCluster::start_secured(Security {
            tls: Some((pki.clone(), files.clone())),
            user: Some(("admin".to_owned(), "admin-pa55".to_owned())),
            more_users: vec![format!("{user} on >{password} {rules}")],
        });
        TlsAclCluster {
            cluster,
            pki,
            files,
            dir,
            app: (user.to_owned(), password.to_owned()),
        }
    }

    /// `masters` masters (3 or more) and no replica, with `cluster-require-full-coverage no`: a
    /// master that dies takes only its own slots away, and the others keep serving theirs (what
    /// a deployment without replicas that wants partial availability configures), as long as
    /// they are a majority of the masters.
    pub fn start_without_replicas(masters: usize) -> RedisCluster {
        RedisCluster::start_nodes(
            Security::default(),
            masters,
            false,
            &["--cluster-require-full-coverage", "no"],
        )
    }

    /// [`start`](Self::start), the nodes requiring what `security` says of every client.
    pub fn start_secured(security: Security) -> RedisCluster {
        RedisCluster::start_nodes(security, 6, true, &[])
    }

    /// `count` nodes: 3 masters with a replica each (`replicated`), else `count` masters; each
    /// given `extra` arguments too.
    fn start_nodes(
        security: Security,
        count: usize,
        replicated: bool,
        extra: &[&str],
    ) -> RedisCluster {
        let started = Instant::now();
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| {
                let mut args: Vec<String> = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &NODE_TIMEOUT_MS.to_string(),
                    "--cluster-port",
                    &free_port().to_string(),
                    // A replica promotes itself whatever its lag: the tests' data is tiny.
                    "--cluster-replica-validity-factor",
                    "0",
                ]
                .map(str::to_owned)
                .to_vec();
                args.extend(extra.iter().map(|arg| (*arg).to_owned()));
                args.extend(security.node_args());
                RedisServer::start_with(args, security.tls.is_some())
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let output = Command::new("redis-cli")
            .args(security.cli_args())
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", if replicated { "1" } else { "0" }])
            .arg("--cluster-yes")
            .output()
            .unwrap_or_else(|error| {
                panic!("cannot run redis-cli ({error}); it comes with Debian's redis-server")
            });
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster {
            nodes,
            security,
            replicated,
        };
        cluster.wait_until_ok(Duration::from_secs(30));
        eprintln!(
            "cluster of {count} nodes up in {:?} (ports {})",
            started.elapsed(),
            addresses.join(" ")
        );
        cluster
    }

    /// Kills every node (for a cluster held in a `static`, which is never dropped).
    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }

    /// Freezes every running node (SIGSTOP).
    pub fn pause_all(&self) {
        for node in self.nodes.iter().filter(|node| node.is_running()) {
            node.pause();
        }
    }

    /// Thaws every running node (SIGCONT); a node not paused ignores it.
    pub fn resume_all(&self) {
        for node in self.nodes.iter().filter(|node| node.is_running()) {
            node.resume();
        }
    }

    /// Every node's URL: the seeds a client may be given.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|node| node.is_running())
            .map(|node| self.security.url(node.port()))
            .collect()
    }

    /// The node whose port is `port`.
    pub fn node_by_port(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|node| node.port() == port)
            .expect("a node of this cluster")
    }

    /// The port of the master now serving `key`'s slot (asked of a running node).
    pub fn master_port_of(&self, key: &str) -> u16 {
        self.master_ports_of(&[key])[0]
    }

    /// [`master_port_of`](Self::master_port_of) for each of `keys`, over one connection.
    pub fn master_ports_of(&self, keys: &[&str]) -> Vec<u16> {
        let mut redis = self.any_connection();
        let ranges: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut redis)
            .expect("cluster slots");
        let mut masters: Vec<((i64, i64), u16)> = Vec::new();
        for range in ranges {
            let redis::Value::Array(items) = range else {
                continue;
            };
            let bounds: (i64, i64) = (
                redis::from_redis_value(items[0].clone()).expect("start"),
                redis::from_redis_value(items[1].clone()).expect("end"),
            );
            let redis::Value::Array(master) = &items[2] else {
                panic!("a master entry")
            };
            masters.push((
                bounds,
                redis::from_redis_value(master[1].clone()).expect("port"),
            ));
        }
        keys.iter()
            .map(|key| {
                let slot: i64 = redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(*key)
                    .query(&mut redis)
                    .expect("keyslot");
                masters
                    .iter()
                    .find(|((start, end), _)| (*start..=*end).contains(&slot))
                    .map(|(_, port)| *port)
                    .unwrap_or_else(|| panic!("no master serves slot {slot}"))
            })
            .collect()
    }

    /// The slot ranges (first, last) the master on `port` serves, as a running node sees it.
    pub fn slot_ranges_of(&self, port: u16) -> Vec<(i64, i64)> {
        let ranges: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut self.any_connection())
            .expect("cluster slots");
        ranges
            .iter()
            .filter(|range| {
                let redis::Value::Array(master) = &range[2] else {
                    panic!("a master entry")
                };
                redis::from_redis_value::<u16>(master[1].clone()).expect("port") == port
            })
            .map(|range| {
                (
                    redis::from_redis_value(range[0].clone()).expect("first"),
                    redis::from_redis_value(range[1].clone()).expect("last"),
                )
            })
            .collect()
    }

    /// Every running node's port.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| node.is_running())
            .map(RedisServer::port)
            .collect()
    }

    /// The ports of the masters now serving slots.
    pub fn master_ports(&self) -> Vec<u16> {
        self.master_ports_asking(self.any_connection())
    }

    /// [`master_ports`](Self::master_ports) as the node on `port` sees them (when another node
    /// may be frozen, and [`any_connection`](Self::any_connection) could pick it).
    pub fn master_ports_seen_by(&self, port: u16) -> Vec<u16> {
        self.master_ports_asking(self.node_connection(port))
    }

    fn master_ports_asking(&self, mut redis: redis::Connection) -> Vec<u16> {
        let ranges: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut redis)
            .expect("cluster slots");
        let mut ports: Vec<u16> = ranges
            .iter()
            .map(|range| {
                let redis::Value::Array(master) = &range[2] else {
                    panic!("a master entry")
                };
                redis::from_redis_value(master[1].clone()).expect("port")
            })
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// A blocking connection to a running node (any), for the cluster's own commands.
    pub fn any_connection(&self) -> redis::Connection {
        let node = self
            .nodes
            .iter()
            .find(|node| node.is_running())
            .expect("a running node");
        self.node_connection(node.port())
    }

    /// A blocking connection to the node on `port` (as the cluster's security requires).
    pub fn node_connection(&self, port: u16) -> redis::Connection {
        let url = self.security.url(port);
        let connection = self
            .security
            .client(&url)
            .get_connection_with_timeout(TEST_CONNECTION_TIMEOUT)
            .unwrap_or_else(|error| panic!("connect to the test cluster's node {port}: {error}"));
        connection
            .set_read_timeout(Some(TEST_CONNECTION_TIMEOUT))
            .expect("set the read timeout");
        connection
    }

    /// A cluster connection of the test's own, for planting and checking keys.
    pub async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
        let mut builder = redis::cluster::ClusterClient::builder(self.seeds())
            .connection_timeout(TEST_CONNECTION_TIMEOUT)
            .response_timeout(Duration::from_secs(10));
        #[cfg(feature = "tls")]
        if let Some((pki, _)) = &self.security.tls {
            builder = builder.certs(certificates(pki));
        }
        builder
            .build()
            .expect("cluster client")
            .get_async_connection()
            .await
            .expect("connect to the test cluster")
    }

    /// Waits until every running node reports `cluster_state:ok` and sees every slot served,
    /// and (in a replicated cluster) every master has a replica in sync.
    pub fn wait_until_ok(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let Err(why) = self.state() else { return };
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ok within {limit:?}: {why}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn state(&self) -> Result<(), String> {
        let mut masters_with_replica = 0;
        for node in self.nodes.iter().filter(|node| node.is_running()) {
            let mut redis = self.node_connection(node.port());
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut redis)
                .map_err(|error| error.to_string())?;
            if !info.contains("cluster_state:ok") || !info.contains("cluster_slots_ok:16384") {
                return Err(format!("node {}: {info}", node.port()));
            }
            let replication: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut redis)
                .map_err(|error| error.to_string())?;
            if replication.contains("role:master") && replication.contains("connected_slaves:1") {
                masters_with_replica += 1;
            }
            if replication.contains("role:slave") && !replication.contains("master_link_status:up")
            {
                return Err(format!("replica {} not in sync", node.port()));
            }
        }
        if self.replicated
            && masters_with_replica < 3
            && self.nodes.iter().all(RedisServer::is_running)
        {
            return Err(format!("{masters_with_replica} masters have a replica"));
        }
        Ok(())
    }
}
