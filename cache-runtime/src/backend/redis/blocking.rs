//! Plain (blocking) connections for synchronous `#[invalidates]` functions, which cannot await.
//!
//! Every use is bounded by one deadline, the store's operation timeout, covering the wait for a
//! connection, connecting and the command: a frozen Redis costs each caller at most that, however
//! many call at once. No lock is held across network I/O, and at most [`MAX_CONNECTIONS`]
//! connections exist, so a failing Redis sees no storm of reconnections (the breaker, checked
//! before, turns callers away once failures repeat).

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use redis::RedisResult;

use super::connection::{BlockingConnection as Connection, Target};

/// Enough for the synchronous mutations of one process; more would only add connections that
/// a frozen Redis holds up.
const MAX_CONNECTIONS: usize = 4;

/// A deadline that never comes in practice (about 30 years, as Tokio's far future).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

pub(crate) struct BlockingConnections {
    target: Arc<Target>,
    pool: Mutex<Pool>,
    returned: Condvar,
}

#[derive(Default)]
struct Pool {
    idle: Vec<Connection>,
    /// Connections in existence: idle, in use or being made.
    open: usize,
}

/// Why no command was sent: the deadline passed waiting for a connection or making one.
#[derive(Debug)]
pub(crate) enum Unsent {
    Deadline,
    Connect(redis::RedisError),
}

impl BlockingConnections {
    pub(crate) fn new(target: Arc<Target>) -> Self {
        BlockingConnections {
            target,
            pool: Mutex::new(Pool::default()),
            returned: Condvar::new(),
        }
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        // Every critical section only moves a connection or a count.
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `command` on a connection within `budget`, connecting within `connect_timeout` (and
    /// the budget) if no idle connection is free. A connection whose command failed is dropped.
    pub(crate) fn run<T>(
        &self,
        budget: Duration,
        connect_timeout: Duration,
        command: impl FnOnce(&mut dyn redis::ConnectionLike) -> RedisResult<T>,
    ) -> Result<RedisResult<T>, Unsent> {
        // A budget no clock can add (configured in code) means no deadline, as for the
        // async calls' `tokio::time::timeout`, rather than a panic.
        let now = Instant::now();
        let deadline = now.checked_add(budget).unwrap_or_else(|| now + FAR_FUTURE);
        let mut connection = self.take(deadline, connect_timeout)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            self.put_back(connection);
            return Err(Unsent::Deadline);
        }
        let result = connection
            .set_timeouts(remaining)
            .and_then(|()| command(connection.as_connection_like()));
        match result {
            Ok(value) => {
                self.put_back(connection);
                Ok(Ok(value))
            }
            Err(error) => {
                self.discard();
                Ok(Err(error))
            }
        }
    }

    fn take(&self, deadline: Instant, connect_timeout: Duration) -> Result<Connection, Unsent> {
        let mut pool = self.pool();
        loop {
            if let Some(connection) = pool.idle.pop() {
                return Ok(connection);
            }
            if pool.open < MAX_CONNECTIONS {
                pool.open += 1;
                drop(pool);
                // Halved: redis-rs bounds the TCP connect and then, separately, the set-up
                // commands it sends by this timeout, and a frozen server lets both run out.
                let remaining = deadline.saturating_duration_since(Instant::now()) / 2;
                let timeout = connect_timeout.min(remaining);
                if timeout.is_zero() {
                    self.discard();
                    return Err(Unsent::Deadline);
                }
                return self.target.connect_blocking(timeout).map_err(|error| {
                    self.discard();
                    Unsent::Connect(error)
                });
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Unsent::Deadline);
            }
            pool = self
                .returned
                .wait_timeout(pool, remaining)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn put_back(&self, connection: Connection) {
        self.pool().idle.push(connection);
        self.returned.notify_one();
    }

    /// Forgets a connection that was dropped or never made, making room for a new one.
    fn discard(&self) {
        self.pool().open -= 1;
        self.returned.notify_one();
    }
}
