//! Where a store's connections go: one server, or a Redis Cluster (feature `cluster`), each
//! optionally over TLS (feature `tls`). The rest of the store sees one [`Connection`] type and
//! asks a [`Target`] for the nodes that publish (pub/sub) and hold keys (the purge).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisResult};

/// TLS material for `rediss://` endpoints (feature `tls`): a CA to trust instead of the
/// system's, and a client certificate.
#[derive(Clone, Default)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) struct TlsMaterial {
    /// PEM: the certificates to trust; `None` trusts the system's roots.
    pub(crate) ca: Option<Vec<u8>>,
    /// PEM: the client certificate chain and its private key.
    pub(crate) identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsMaterial {
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    fn is_set(&self) -> bool {
        self.ca.is_some() || self.identity.is_some()
    }

    /// Every PEM holds what it is for: a PEM without a certificate would otherwise be accepted
    /// (redis-rs parses what it finds, which may be nothing), and every handshake would fail,
    /// far from the mistake.
    #[cfg(feature = "tls")]
    pub(crate) fn check(&self) -> Result<(), crate::error::ConfigError> {
        let bad = |part, reason| crate::error::ConfigError::BadTls { part, reason };
        if let Some(ca) = &self.ca {
            check_certificates(ca).map_err(|reason| bad(CA_PART, reason))?;
        }
        if let Some((chain, key)) = &self.identity {
            check_certificates(chain).map_err(|reason| bad(CLIENT_CERT_PART, reason))?;
            check_private_key(key).map_err(|reason| bad(CLIENT_KEY_PART, reason))?;
        }
        Ok(())
    }
}

/// What [`ConfigError::BadTls`](crate::ConfigError::BadTls) names.
#[cfg(feature = "tls")]
pub(crate) const CA_PART: &str = "CA certificates (tls_ca_pem)";
#[cfg(feature = "tls")]
pub(crate) const CLIENT_CERT_PART: &str = "client certificate (tls_client_cert_pem)";
#[cfg(feature = "tls")]
pub(crate) const CLIENT_KEY_PART: &str = "client private key (tls_client_cert_pem)";

/// Why `pem` is not a usable list of certificates: none in it, or one malformed.
#[cfg(feature = "tls")]
pub(crate) fn check_certificates(pem: &[u8]) -> Result<(), String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut certificates = 0;
    for certificate in CertificateDer::pem_slice_iter(pem) {
        certificate.map_err(|error| format!("a malformed PEM certificate ({error})"))?;
        certificates += 1;
    }
    if certificates == 0 {
        return Err("no PEM certificate (`-----BEGIN CERTIFICATE-----`) in it".to_owned());
    }
    Ok(())
}

/// Why `pem` is not a usable private key.
#[cfg(feature = "tls")]
pub(crate) fn check_private_key(pem: &[u8]) -> Result<(), String> {
    use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
    // The error names what is missing or malformed, never the key's bytes.
    PrivateKeyDer::from_pem_slice(pem)
        .map(drop)
        .map_err(|error| format!("no usable PEM private key ({error})"))
}

/// The server or cluster a store talks to.
// One per store, behind an `Arc`: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Target {
    /// One server (or a proxy that looks like one).
    Server(Client),
    /// A Redis Cluster: the client that routes by slot, and a client per seed, from which the
    /// masters are found for pub/sub and the purge.
    #[cfg(feature = "cluster")]
    Cluster {
        client: redis::cluster::ClusterClient,
        seeds: Vec<Client>,
    },
}

/// A store's async connection: reconnecting, multiplexed, shared by clones.
#[derive(Clone)]
pub(crate) enum Connection {
    Server(ConnectionManager),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Server(connection) => connection.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Server(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            #[cfg(feature = "cluster")]
            Connection::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Server(connection) => connection.get_db(),
            #[cfg(feature = "cluster")]
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

/// A blocking connection, for synchronous invalidations.
pub(crate) enum BlockingConnection {
    Server(redis::Connection),
    #[cfg(feature = "cluster")]
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl BlockingConnection {
    pub(crate) fn set_timeouts(&self, timeout: Duration) -> RedisResult<()> {
        match self {
            BlockingConnection::Server(connection) => {
                connection.set_read_timeout(Some(timeout))?;
                connection.set_write_timeout(Some(timeout))
            }
            #[cfg(feature = "cluster")]
            BlockingConnection::Cluster(connection) => {
                connection.set_read_timeout(Some(timeout))?;
                connection.set_write_timeout(Some(timeout))
            }
        }
    }

    /// The connection itself, for a command (a cluster connection routes it by its key).
    pub(crate) fn as_connection_like(&mut self) -> &mut dyn redis::ConnectionLike {
        match self {
            BlockingConnection::Server(connection) => connection,
            #[cfg(feature = "cluster")]
            BlockingConnection::Cluster(connection) => &mut **connection,
        }
    }
}

impl Target {
    /// One server at `url`.
    pub(crate) fn server(url: &str, tls: &TlsMaterial) -> RedisResult<Target> {
        Ok(Target::Server(client(url, tls)?))
    }

    /// A cluster reached through `seeds` (any of its nodes; the client finds the rest).
    #[cfg(feature = "cluster")]
    pub(crate) fn cluster(
        seeds: &[String],
        tls: &TlsMaterial,
        connect_timeout: Duration,
    ) -> RedisResult<Target> {
        let seeds = seeds
            .iter()
            .map(|url| client(url, tls))
            .collect::<RedisResult<Vec<_>>>()?;
        // redis-rs takes the first seed's credentials for every node and refuses two different
        // ones, but not a password on a later seed only, which it drops.
        let credentials = |seed: &Client| {
            let settings = seed.get_connection_info().redis_settings();
            (
                settings.username().map(str::to_owned),
                settings.password().map(str::to_owned),
            )
        };
        if let Some(first) = seeds.first() {
            if seeds
                .iter()
                .any(|seed| credentials(seed) != credentials(first))
            {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "the seeds carry different credentials; give every seed the same user and \
                     password",
                )));
            }
        }
        #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
        let mut builder = redis::cluster::ClusterClient::builder(
            seeds.iter().map(|seed| seed.get_connection_info().clone()),
        )
        .connection_timeout(connect_timeout);
        #[cfg(feature = "tls")]
        if tls.is_set() {
            builder = builder.certs(certificates(tls));
        }
        Ok(Target::Cluster {
            client: builder.build()?,
            seeds,
        })
    }

    /// Whether commands of different slots must not share a pipeline.
    pub(crate) fn is_cluster(&self) -> bool {
        !matches!(self, Target::Server(_))
    }

    /// The store's connection, made without connecting: the first command connects.
    pub(crate) fn connect_lazy(&self, connect_timeout: Duration) -> RedisResult<Connection> {
        match self {
            Target::Server(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    // `guarded` bounds every operation, reconnection waits included; a second
                    // timer per request inside the connection would only double the cost.
                    .set_response_timeout(None);
                Ok(Connection::Server(ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    config,
                )?))
            }
            #[cfg(feature = "cluster")]
            Target::Cluster { client, .. } => {
                // The response timeout bounds the client's own slot refreshes (a hung node
                // would stall a fresh connection's first); `guarded` bounds the operations.
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(connect_timeout)
                    .set_response_timeout(connect_timeout);
                Ok(Connection::Cluster(
                    client.get_pending_async_connection_with_config(config),
                ))
            }
        }
    }

    /// A new cluster connection, connected now (seeds, slot map, every node of it, each step
    /// within `timeout`), with the first answer of a master to a `PING` sent to every master:
    /// what may replace the one in use (`replacement.rs`). One master, not every one: a master
    /// that is down with no replica to take over (its slots fail open either way) would
    /// otherwise keep every replacement out, whatever else the fresh connection fixes. `None` on
    /// a server, whose connection reconnects on its own.
    #[cfg(feature = "cluster")]
    pub(crate) async fn connect_and_ping_a_master(
        &self,
        timeout: Duration,
    ) -> Option<RedisResult<(Connection, RedisResult<redis::Value>)>> {
        use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
        let Target::Cluster { client, .. } = self else {
            return None;
        };
        let config = redis::cluster::ClusterConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        let connected = async {
            let mut connection = client.get_async_connection_with_config(config).await?;
            let first_master = RoutingInfo::MultiNode((
                MultipleNodeRoutingInfo::AllMasters,
                Some(ResponsePolicy::OneSucceeded),
            ));
            let answer = connection
                .route_command(redis::cmd("PING"), first_master)
                .await;
            Ok((Connection::Cluster(connection), answer))
        };
        Some(connected.await)
    }

    /// A new blocking connection, connecting within `timeout` (a cluster's within its
    /// configured connection timeout per node).
    pub(crate) fn connect_blocking(&self, timeout: Duration) -> RedisResult<BlockingConnection> {
        match self {
            Target::Server(client) => client
                .get_connection_with_timeout(timeout)
                .map(BlockingConnection::Server),
            #[cfg(feature = "cluster")]
            Target::Cluster { client, .. } => {
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout);
                client
                    .get_connection_with_config(config)
                    .map(|connection| BlockingConnection::Cluster(Box::new(connection)))
            }
        }
    }

    /// The nodes that hold keys and run scripts: the server, or every master of the cluster
    /// (asked of the seeds in turn with `CLUSTER SLOTS`, within `timeout` each).
    #[cfg_attr(not(feature = "cluster"), allow(unused_variables))]
    pub(crate) async fn masters(&self, timeout: Duration) -> RedisResult<Vec<Client>> {
        match self {
            Target::Server(client) => Ok(vec![client.clone()]),
            #[cfg(feature = "cluster")]
            Target::Cluster { seeds, .. } => cluster_masters(seeds, timeout).await,
        }
    }
}

/// Why connections fail, when it is the configuration's fault: what a log line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The server refused the user or password (`WRONGPASS`, `NOAUTH`, `NOPERM`).
    Credentials,
    /// The TLS handshake failed: an untrusted or mismatched certificate, or no client one.
    Tls,
    /// Anything else (down, unreachable, too slow).
    Other,
}

impl Refusal {
    pub(crate) fn of(error: &redis::RedisError) -> Refusal {
        let text = error.to_string();
        let has = |needle: &str| text.to_ascii_lowercase().contains(needle);
        if error.kind() == redis::ErrorKind::AuthenticationFailed
            || ["wrongpass", "noauth", "noperm", "invalid username-password"]
                .iter()
                .any(|needle| has(needle))
        {
            Refusal::Credentials
        } else if ["certificate", "handshake", "tls", "ssl"]
            .iter()
            .any(|needle| has(needle))
        {
            Refusal::Tls
        } else {
            Refusal::Other
        }
    }
}

impl Target {
    /// Connects once, outside the reconnecting connection (which retries and so shows a caller
    /// only a timeout), to learn why connections fail: the error of a fresh connection to the
    /// server, or of the seed whose error names a configuration cause (else the first's), or
    /// `None` if one connects.
    pub(crate) async fn diagnose(&self, timeout: Duration) -> Option<redis::RedisError> {
        let clients: &[Client] = match self {
            Target::Server(client) => std::slice::from_ref(client),
            // Every seed, at once: the first may be down (a replaced node) while the others
            // would name the cause.
            #[cfg(feature = "cluster")]
            Target::Cluster { seeds, .. } => seeds,
        };
        let attempts = clients.iter().map(|client| attempt(client, timeout));
        // `None` (no cause to name) if any connects.
        let errors: Vec<redis::RedisError> = futures_util::future::join_all(attempts)
            .await
            .into_iter()
            .collect::<Option<_>>()?;
        let mut errors = errors.into_iter();
        let first = errors.next()?;
        if Refusal::of(&first) != Refusal::Other {
            return Some(first);
        }
        errors
            .find(|error| Refusal::of(error) != Refusal::Other)
            .or(Some(first))
    }
}

/// A fresh connection to `client` and a `PING`: the error, or `None` if it answers.
async fn attempt(client: &Client, timeout: Duration) -> Option<redis::RedisError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let attempt = async {
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("PING")
            .query_async::<redis::Value>(&mut connection)
            .await
    };
    match tokio::time::timeout(timeout * 2, attempt).await {
        Ok(Ok(_)) => None,
        Ok(Err(error)) => Some(error),
        Err(_) => Some(redis::RedisError::from((
            redis::ErrorKind::Io,
            "no answer to a connection attempt",
        ))),
    }
}

/// A client for `url`, with the TLS material if there is any.
fn client(url: &str, tls: &TlsMaterial) -> RedisResult<Client> {
    #[cfg(feature = "tls")]
    {
        install_crypto_provider();
        if tls.is_set() {
            return Client::build_with_tls(url, certificates(tls));
        }
    }
    #[cfg(not(feature = "tls"))]
    let _ = tls;
    Client::open(url)
}

/// rustls needs a process-wide crypto provider, which redis-rs leaves to the application:
/// ring's, unless the application installed one first.
#[cfg(feature = "tls")]
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(feature = "tls")]
fn certificates(tls: &TlsMaterial) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: tls
            .identity
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
        root_cert: tls.ca.clone(),
    }
}

/// The masters, from the first seed to answer `CLUSTER SLOTS`.
#[cfg(feature = "cluster")]
async fn cluster_masters(seeds: &[Client], timeout: Duration) -> RedisResult<Vec<Client>> {
    let (seed, ranges) = cluster_slots(seeds, timeout).await?;
    let mut masters: Vec<(String, u16)> = Vec::new();
    for (_, master) in ranges {
        if !masters.contains(&master) {
            masters.push(master);
        }
    }
    let seed_info = seed.get_connection_info();
    masters
        .into_iter()
        .map(|(host, port)| {
            use redis::ConnectionAddr;
            let addr = match seed_info.addr().clone() {
                ConnectionAddr::TcpTls {
                    insecure,
                    tls_params,
                    ..
                } => ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure,
                    tls_params,
                },
                _ => ConnectionAddr::Tcp(host, port),
            };
            Client::open(seed_info.clone().set_addr(addr))
        })
        .collect()
}

/// Slot ranges (first, last, inclusive) and the master serving each.
#[cfg(feature = "cluster")]
pub(crate) type SlotRanges = Vec<((u16, u16), (String, u16))>;

impl Target {
    /// Which master serves which slots, from the first seed to answer `CLUSTER SLOTS`: what a
    /// cluster's breakers are chosen by (`breakers.rs`). `None` on a server.
    #[cfg(feature = "cluster")]
    pub(crate) async fn slot_ranges(&self, timeout: Duration) -> Option<RedisResult<SlotRanges>> {
        let Target::Cluster { seeds, .. } = self else {
            return None;
        };
        Some(
            cluster_slots(seeds, timeout)
                .await
                .map(|(_, ranges)| ranges),
        )
    }
}

/// `CLUSTER SLOTS`, from the first seed to answer, and that seed: the seeds are asked at once,
/// since one that hangs (a frozen node, a black-holed address) would otherwise use up the
/// caller's whole timeout before the next is tried.
#[cfg(feature = "cluster")]
async fn cluster_slots(seeds: &[Client], timeout: Duration) -> RedisResult<(&Client, SlotRanges)> {
    if seeds.is_empty() {
        return Err(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "no seed nodes",
        )));
    }
    let asks = seeds.iter().map(|seed| {
        Box::pin(async move {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout));
            let slots = async {
                let mut connection = seed
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async::<redis::Value>(&mut connection)
                    .await
            };
            match tokio::time::timeout(timeout * 2, slots).await {
                Ok(Ok(reply)) => Ok((seed, parse_slots(seed, reply)?)),
                Ok(Err(error)) => Err(error),
                Err(_) => Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "CLUSTER SLOTS timed out",
                ))),
            }
        })
    });
    futures_util::future::select_ok(asks)
        .await
        .map(|(answer, _)| answer)
}

/// The ranges of a `CLUSTER SLOTS` reply and their masters (a master that does not know its
/// own address is given the seed's host, which reaches it).
#[cfg(feature = "cluster")]
fn parse_slots(seed: &Client, reply: redis::Value) -> RedisResult<SlotRanges> {
    use redis::{ConnectionAddr, FromRedisValue, Value};
    let ranges = Vec::<Value>::from_redis_value(reply)?;
    let mut parsed = Vec::with_capacity(ranges.len());
    for range in ranges {
        let mut items = Vec::<Value>::from_redis_value(range)?.into_iter();
        let (Some(first), Some(last), Some(master)) = (items.next(), items.next(), items.next())
        else {
            continue;
        };
        let (first, last) = (u16::from_redis_value(first)?, u16::from_redis_value(last)?);
        let mut node = Vec::<Value>::from_redis_value(master)?.into_iter();
        let (Some(host), Some(port)) = (node.next(), node.next()) else {
            continue;
        };
        let mut host = String::from_redis_value(host)?;
        let port = u16::from_redis_value(port)?;
        if host.is_empty() || host == "?" {
            host = match seed.get_connection_info().addr() {
                ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.clone(),
                _ => host,
            };
        }
        parsed.push(((first, last), (host, port)));
    }
    Ok(parsed)
}
