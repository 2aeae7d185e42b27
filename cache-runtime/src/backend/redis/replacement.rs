//! The store's async connection in use, and its replacement on a cluster after a timeout or an
//! error that says the way to a node is broken ([`calls_for_a_fresh_connection`]).
//!
//! The store drops a request that timed out, so redis-rs's cluster client sees no error and
//! never refreshes its slot map: a master that hangs keeps its slots in that map after its
//! replica took them over. A fresh connection learns the slots anew. But a fresh connection may
//! take longer to answer than the operation timeout (TLS handshakes with every node in a debug
//! build on a loaded machine), and the one in use may be sound again (the fault was brief). So
//! the replacement is built beside the connection in use, in a task of its own, bounded, and
//! swapped in only once it has connected (the slot map learnt) and a master has answered it;
//! until then, and if it fails, the connection in use keeps serving. One master, not every one:
//! a master down with no replica would otherwise keep out every replacement for as long as it
//! is down, while the connection in use may be routing another shard to a hung node. At most one attempt is under way (one marked
//! so past its bound is not running, and is taken over), and the
//! next starts no sooner than [`backoff`] after the last one started. A server's connection
//! (redis-rs's `ConnectionManager`) reconnects on its own in a task of its own and follows no
//! slot map: it is never replaced.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use super::connection::{Connection, Target};

/// The connection in use, made on first use, and the state of its replacement.
pub(crate) struct ConnectionSlot {
    /// Made on first use, not at configuration: creating a connection spawns tasks, which
    /// need a runtime that configuration time may not have.
    in_use: RwLock<Option<Connection>>,
    /// The attempts: the one under way, and when the last started.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    attempts: Mutex<Attempts>,
}

#[derive(Default)]
struct Attempts {
    /// The attempt under way, if any; cleared by its [`InFlight`] on every way out.
    in_flight: Option<u64>,
    /// When the last attempt started.
    last_started: Option<Instant>,
    next_id: u64,
}

/// How long after one replacement attempt starts the next may start, and how long an attempt
/// may take: max(1 s, 2 x the connect timeout). An attempt connects to the seeds, asks for the
/// slot map and connects to every node of it (each step within the connect timeout, the nodes
/// at once, and most of them the seeds' own connections), then pings every master. Attempts
/// spaced by less would each cost every node a connection while the cluster is already
/// struggling, and one slower than that would be overtaken by the next.
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) fn backoff(connect_timeout: Duration) -> Duration {
    (connect_timeout * 2).max(Duration::from_secs(1))
}

impl ConnectionSlot {
    pub(crate) fn new() -> Arc<ConnectionSlot> {
        Arc::new(ConnectionSlot {
            in_use: RwLock::new(None),
            attempts: Mutex::new(Attempts::default()),
        })
    }

    /// The connection in use, made (without connecting: its first command connects) on first
    /// use.
    pub(crate) fn get(
        &self,
        target: &Target,
        connect_timeout: Duration,
    ) -> redis::RedisResult<Connection> {
        let read = self.in_use.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(connection) = read.as_ref() {
            return Ok(connection.clone());
        }
        drop(read);
        let mut slot = self.in_use.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        // The tasks a connection spawns at creation go to cachette's runtime, which outlives
        // the caller's (`background.rs`); the ones its first command and its reconnections
        // spawn go to the runtime whose context polls the command: cachette's too, since
        // `guarded` polls there.
        let connection = crate::background::enter(|| target.connect_lazy(connect_timeout))?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// After a timeout (or an error for which [`calls_for_a_fresh_connection`]): on a cluster,
    /// starts building a replacement in the background (on cachette's runtime,
    /// `background.rs`) unless one is under way or the last started less than [`backoff`] ago.
    #[cfg(feature = "cluster")]
    pub(crate) fn renew(self: &Arc<Self>, target: &Arc<Target>, connect_timeout: Duration) {
        if !target.is_cluster() {
            return;
        }
        let bound = backoff(connect_timeout);
        let Some(in_flight) = self.begin(Instant::now(), bound) else {
            return;
        };
        let target = Arc::clone(target);
        // Without any runtime the task is dropped unrun, and `in_flight` with it.
        crate::background::spawn(async move {
            // Released when this task ends, panics or is dropped with its runtime.
            let in_flight = in_flight;
            let attempt = target.connect_and_ping_a_master(connect_timeout);
            let outcome = match tokio::time::timeout(bound, attempt).await {
                Ok(Some(outcome)) => outcome,
                Ok(None) => return,
                Err(_) => {
                    tracing::debug!(
                        "a fresh redis cluster connection did not answer within {bound:?}; \
                         the one in use stays"
                    );
                    return;
                }
            };
            match outcome {
                // A reply error (a user without `PING`) still shows the masters answering.
                Ok((connection, Ok(_))) => in_flight.slot.install(connection),
                Ok((connection, Err(error))) if !super::store::is_transport_failure(&error) => {
                    in_flight.slot.install(connection);
                }
                Ok((_, Err(error))) | Err(error) => tracing::debug!(
                    %error,
                    "a fresh redis cluster connection failed; the one in use stays"
                ),
            }
        });
    }

    /// Takes the right to run an attempt now, if no attempt is under way and the last started
    /// `backoff` or more before `now`. An attempt still marked under way a `backoff` after it
    /// started is not running (each is bounded by the backoff): its task sits on a runtime
    /// that nothing drives (attempts run on cachette's runtime, so only if that one could not
    /// start and a sync bridge's, kept for `block_on`, took it), so this one takes over, and
    /// the stale one's end, if it ever comes, clears nothing.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    fn begin(self: &Arc<Self>, now: Instant, backoff: Duration) -> Option<InFlight> {
        let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        if attempts
            .last_started
            .is_some_and(|at| now.saturating_duration_since(at) < backoff)
        {
            return None;
        }
        let id = attempts.next_id;
        attempts.next_id += 1;
        attempts.in_flight = Some(id);
        attempts.last_started = Some(now);
        Some(InFlight {
            slot: Arc::clone(self),
            id,
        })
    }

    #[cfg(test)]
    fn in_flight(&self) -> bool {
        self.attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .in_flight
            .is_some()
    }

    /// Puts `connection` in use; the one it replaces goes once the operations holding it end.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    fn install(&self, connection: Connection) {
        *self.in_use.write().unwrap_or_else(PoisonError::into_inner) = Some(connection);
    }
}

/// Whether `error`, the answer to one of the store's operations on a cluster, says that the
/// way to a node is broken, so that a fresh connection (a new slot map, new node connections)
/// may serve where the one in use does not, as a timeout does: the connection dropped, reset
/// or refused, redis-rs without a connection for the slot, its own timeout, a node that does
/// not serve the slot (`CLUSTERDOWN`: a node restarted on the address without its cluster
/// configuration, slots no longer assigned where the map says) or that is now a replica
/// (`READONLY`). Not the cluster's ordinary answers (`MOVED`, `ASK`, `TRYAGAIN`: redis-rs
/// follows or retries them, and resharding sends them by the thousand), a node that is there
/// but starting or syncing (`LOADING`, `MASTERDOWN`: the route is right), refused credentials
/// (the configuration's fault, named by the store's diagnosis), nor an error about the request
/// (a script's, `WRONGTYPE`, `NOPERM`).
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) fn calls_for_a_fresh_connection(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(
        error.kind(),
        ErrorKind::Io
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(ServerErrorKind::ClusterDown | ServerErrorKind::ReadOnly)
    ) || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
}

/// The right to run the one replacement attempt under way; dropping it (the attempt's end, a
/// panic, its task dropped) lets the next one start.
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
struct InFlight {
    slot: Arc<ConnectionSlot>,
    id: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut attempts = self
            .slot
            .attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if attempts.in_flight == Some(self.id) {
            attempts.in_flight = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_way_to_a_node_calls_for_a_fresh_connection_and_a_cluster_answer_does_not() {
        use redis::{ErrorKind, RedisError, ServerErrorKind};
        let io = |kind| RedisError::from(std::io::Error::new(kind, "test"));
        let answer = |kind, text| RedisError::from((ErrorKind::Server(kind), text));
        for error in [
            io(std::io::ErrorKind::ConnectionRefused),
            io(std::io::ErrorKind::ConnectionReset),
            io(std::io::ErrorKind::BrokenPipe),
            io(std::io::ErrorKind::TimedOut),
            RedisError::from((ErrorKind::ClusterConnectionNotFound, "no connection")),
            answer(ServerErrorKind::ClusterDown, "Hash slot not served"),
            answer(
                ServerErrorKind::ReadOnly,
                "You can't write against a read only replica.",
            ),
        ] {
            assert!(calls_for_a_fresh_connection(&error), "{error}");
        }
        for error in [
            answer(ServerErrorKind::Moved, "3999 127.0.0.1:6381"),
            answer(ServerErrorKind::Ask, "3999 127.0.0.1:6381"),
            answer(
                ServerErrorKind::TryAgain,
                "Multiple keys request during rehashing",
            ),
            answer(ServerErrorKind::BusyLoading, "Redis is loading the dataset"),
            answer(ServerErrorKind::MasterDown, "Link with MASTER is down"),
            answer(ServerErrorKind::ResponseError, "ERR Error running script"),
            answer(ServerErrorKind::NoPerm, "this user has no permissions"),
            RedisError::from((ErrorKind::AuthenticationFailed, "WRONGPASS")),
            RedisError::from((ErrorKind::UnexpectedReturnType, "not an integer")),
        ] {
            assert!(!calls_for_a_fresh_connection(&error), "{error}");
        }
    }

    #[test]
    fn the_backoff_is_twice_the_connect_timeout_and_at_least_a_second() {
        assert_eq!(backoff(Duration::from_secs(3)), Duration::from_secs(6));
        assert_eq!(backoff(Duration::from_millis(200)), Duration::from_secs(1));
    }

    #[test]
    fn one_attempt_at_a_time_and_the_next_only_after_the_backoff() {
        let (slot, t0, backoff) = (
            ConnectionSlot::new(),
            Instant::now(),
            Duration::from_secs(2),
        );
        let first = slot.begin(t0, backoff).expect("the first attempt");
        assert!(
            slot.begin(t0 + backoff / 2, backoff).is_none(),
            "a second attempt while the first is under way"
        );
        drop(first);
        assert!(
            slot.begin(t0 + backoff / 2, backoff).is_none(),
            "an attempt within the backoff of the last one's start"
        );
        let second = slot.begin(t0 + backoff, backoff);
        assert!(second.is_some(), "the next attempt after the backoff");
    }

    /// An attempt is bounded by the backoff: one still marked under way past it is not running
    /// (its task sits on a runtime nothing drives), and must not hold off every later attempt.
    #[test]
    fn an_attempt_stuck_past_its_bound_does_not_hold_off_the_next() {
        let (slot, t0, backoff) = (
            ConnectionSlot::new(),
            Instant::now(),
            Duration::from_secs(2),
        );
        let stuck = slot.begin(t0, backoff).expect("the first attempt");
        let next = slot
            .begin(t0 + 3 * backoff, backoff)
            .expect("the next attempt, past the stuck one's bound");
        drop(stuck);
        assert!(
            slot.in_flight(),
            "the stuck one's end clears nothing of the next"
        );
        drop(next);
        assert!(!slot.in_flight());
    }

    #[test]
    fn an_attempt_refused_for_its_backoff_leaves_none_under_way() {
        let (slot, t0, backoff) = (
            ConnectionSlot::new(),
            Instant::now(),
            Duration::from_secs(2),
        );
        drop(slot.begin(t0, backoff));
        assert!(slot.begin(t0, backoff).is_none());
        assert!(!slot.in_flight());
    }

    #[test]
    fn an_attempt_that_panics_or_is_dropped_lets_the_next_one_start() {
        let (slot, t0, backoff) = (
            ConnectionSlot::new(),
            Instant::now(),
            Duration::from_secs(1),
        );
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a runtime")
        };
        let in_flight = slot.begin(t0, backoff).expect("the first attempt");
        let panicked = runtime().block_on(async move {
            tokio::spawn(async move {
                let _in_flight = in_flight;
                panic!("an attempt that panics");
            })
            .await
        });
        assert!(panicked.expect_err("it panicked").is_panic());
        assert!(!slot.in_flight(), "released by the panic");

        let in_flight = slot
            .begin(t0 + backoff, backoff)
            .expect("the second attempt");
        let stopping = runtime();
        stopping.spawn(async move {
            let _in_flight = in_flight;
            std::future::pending::<()>().await;
        });
        // A runtime shutting down drops the tasks it still holds.
        drop(stopping);
        assert!(!slot.in_flight(), "released on drop");
        assert!(slot.begin(t0 + 2 * backoff, backoff).is_some());
    }

    /// The attempt's task runs on cachette's runtime: one started by a call on a runtime that
    /// goes idle once its `block_on` returns still runs to its end and clears its flag.
    #[cfg(feature = "cluster")]
    #[test]
    fn an_attempt_started_from_an_idle_runtime_runs_to_its_end() {
        use super::super::connection::TlsMaterial;
        let connect_timeout = Duration::from_millis(200);
        // A seed nobody listens on: the attempt fails at once (its bound, a second, at worst).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let seeds = [format!("redis://127.0.0.1:{port}")];
        let target = Arc::new(
            Target::cluster(&seeds, &TlsMaterial::default(), connect_timeout).expect("a target"),
        );
        let slot = ConnectionSlot::new();
        let idle = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        idle.block_on(async { slot.renew(&target, connect_timeout) });
        let deadline = Instant::now() + 5 * backoff(connect_timeout);
        while slot.in_flight() {
            assert!(
                Instant::now() < deadline,
                "the attempt is still marked under way {:?} after it started",
                5 * backoff(connect_timeout)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(idle);
    }
}
