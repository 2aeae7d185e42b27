//! Replaying invalidations that did not reach Redis (`pending.rs` keeps them): one batch per
//! operation of later calls, the rest by a background task, and the purge after an overflow.

use std::sync::atomic::Ordering;
use std::sync::Weak;

use super::super::keys::{bus_channel, FLUSH_MESSAGE, KEY_FORMAT};
use super::super::pending::as_tag;
use super::{is_transport_failure, Announce, Connection, RedisStore, Scope, StoreError};
use crate::log_gate::LogGate;

/// Pending invalidations replayed per round trip: a pipeline of this many script calls.
const REPLAY_BATCH: usize = 200;

/// Pending keys a cluster's replay looks at for a batch (the keys of a master whose breaker is
/// open are left out, each found by its slot).
const REPLAY_SCAN: usize = 4 * REPLAY_BATCH;

impl RedisStore {
    /// What every operation on `cache_key` does first while invalidations are pending: replay
    /// one batch (one round trip, so a call pays a bounded time for it), then refuse the key
    /// if its own invalidation is still unconfirmed, so nothing stale is read or stored.
    pub(super) async fn settle_pending(&self, cache_key: &str) -> Result<(), StoreError> {
        if !self.pending.any() {
            return Ok(());
        }
        match self.replay_batch(false).await {
            // Redis is unwell: so would this operation be; one timeout per call.
            Err(error) if self.replay_failure_stops(&error) => return Err(error),
            _ => {}
        }
        if self.pending.overflowed() {
            // The purge is the background replayer's, never a caller's: it walks the keyspace.
            self.replay_in_background();
        }
        if self.pending.holds(cache_key) {
            return Err(StoreError::Pending);
        }
        Ok(())
    }

    /// Whether a replay's failure fails the operation it came before. On a cluster it does
    /// not: the failures are of the replayed keys' masters (each counted by its breaker), and
    /// the operation's master may be well; its own breaker decides.
    pub(super) fn replay_failure_stops(&self, error: &StoreError) -> bool {
        error.is_transport() && !self.target.is_cluster()
    }

    /// Queues an invalidation for replay without trying it now: for the further keys of a call
    /// whose first invalidation found Redis unreachable (one timeout per call).
    pub(crate) fn keep_for_replay(&self, cache_key: &str, announce: Announce<'_>) {
        let announce = announce.map(|(channel, message)| (channel.to_owned(), message.to_owned()));
        self.pending.push(cache_key, announce);
        self.replay_in_background();
    }

    /// Replays one batch of pending invalidations in one round trip, unless another caller is
    /// replaying (then `false`); after an overflow, once the queue is empty, `may_purge` lets it
    /// run the purge. Each invalidation stays pending until Redis confirms it; one that Redis
    /// refuses for itself (a reply error about its keys) is dropped, logged, so that it cannot
    /// hold up the others forever.
    pub(super) async fn replay_batch(&self, may_purge: bool) -> Result<bool, StoreError> {
        let Some(_replaying) = self.pending.start_replay() else {
            return Ok(false);
        };
        // Taken before the batch: a key queued again while it is replayed stays queued.
        let sent = self.pending.mark();
        let cluster = self.target.is_cluster();
        let batch = if cluster {
            // The keys of a master whose breaker is open stay out: they would be refused, and
            // hold up the live masters' behind them.
            let now = self.settings.clock.instant();
            if self.breakers.refuse_everything(now) {
                // A frozen cluster: no key to look for (each would cost its slot).
                Vec::new()
            } else {
                self.pending.batch_where(REPLAY_BATCH, REPLAY_SCAN, |key| {
                    !self.breakers.would_refuse(replay_scope(key), || now)
                })
            }
        } else {
            self.pending.batch(REPLAY_BATCH)
        };
        if batch.is_empty() && self.pending.batch(1).len() == 1 {
            // Every key pending is behind an open breaker: nothing replayed.
            return Ok(false);
        }
        if !batch.is_empty() {
            let invocations: Vec<_> = batch
                .iter()
                .map(|(key, announce)| {
                    let announce = announce.as_ref().map(|(c, m)| (c.as_str(), m.as_str()));
                    match as_tag(key) {
                        Some(tag) => self.tag_invalidation(tag, announce),
                        None => self.invalidation(key, announce),
                    }
                })
                .collect();
            let connection = self.connection().await?;
            let results = if cluster {
                // A pipeline must keep to one slot: every script sent at once on the
                // multiplexed node connections (one round trip's time), each under its
                // master's breaker and a timeout of its own.
                let calls = batch
                    .iter()
                    .zip(&invocations)
                    .map(|((key, _), invocation)| {
                        let mut connection = connection.clone();
                        async move {
                            self.guarded(
                                replay_scope(key),
                                invocation.invoke_async::<redis::Value>(&mut connection),
                            )
                            .await
                        }
                    });
                futures_util::future::join_all(calls).await
            } else {
                self.guarded(
                    Scope::Whole,
                    replay_pipeline(
                        &[&self.invalidate_script, &self.invalidate_tag_script],
                        &invocations,
                        connection,
                    ),
                )
                .await?
                .into_iter()
                .map(|result| result.map_err(StoreError::Redis))
                .collect()
            };
            let mut confirmed = Vec::with_capacity(batch.len());
            let mut transport = None;
            for ((key, _), result) in batch.iter().zip(results) {
                match result {
                    Ok(_) => confirmed.push(key.as_str()),
                    Err(StoreError::Redis(error)) if !is_transport_failure(&error) => {
                        static GATE: LogGate = LogGate::new();
                        if let Some(suppressed) = GATE.admit() {
                            tracing::error!(
                                prefix = %self.settings.prefix,
                                key = key.as_str(),
                                %error,
                                suppressed,
                                "redis refused a replayed invalidation; dropping it"
                            );
                        }
                        confirmed.push(key.as_str());
                    }
                    Err(error) => {
                        transport.get_or_insert(error);
                    }
                }
            }
            self.pending.confirm(confirmed.iter().copied(), sent, false);
            tracing::info!(
                prefix = %self.settings.prefix,
                replayed = confirmed.len(),
                "replayed invalidations that had not reached redis"
            );
            if let Some(error) = transport {
                return Err(error);
            }
        }
        if may_purge && self.pending.overflowed() && self.pending.batch(1).is_empty() {
            // An overflow while the purge runs is not covered by it (its scan may have passed
            // the keys refused): the queue stays overflowed for another purge.
            let sent = self.pending.mark();
            self.purge().await?;
            self.pending.confirm([], sent, true);
        }
        Ok(true)
    }

    /// Returns once nothing is pending, having started the background replayer if none runs
    /// (one queued without a runtime, or whose task ended with its runtime). It only watches
    /// the queue and is unbounded: the caller bounds it (`drain.rs`).
    pub(crate) async fn until_drained(&self) {
        if self.pending.any() {
            self.replay_in_background();
        }
        self.pending.until_empty().await;
    }

    /// Whether nothing is pending, an overflow's purge included.
    pub(crate) fn drained(&self) -> bool {
        !self.pending.any()
    }

    /// Keeps replaying until nothing is pending, in a task of its own, so that a process that
    /// only writes (and never reads again) still delivers its invalidations once Redis answers.
    pub(super) fn replay_in_background(&self) {
        if self.replayer_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut replayer = Replayer(Some(Weak::clone(&self.this)));
        // On cachette's own runtime: one spawned on the caller's would sit, its flag set, on a
        // runtime nothing drives any more (a sync bridge's, kept for `block_on`). With no
        // runtime to be had, the task is dropped unrun and `replayer` clears the flag: the next
        // operation that reaches Redis replays.
        crate::background::spawn(async move {
            loop {
                let Some(store) = replayer.0.as_ref().and_then(Weak::upgrade) else {
                    return;
                };
                let replayed = matches!(store.replay_batch(true).await, Ok(true));
                if !store.pending.any() {
                    store.replayer_running.store(false, Ordering::Release);
                    // Something queued between the check and the flag found the flag still
                    // set and left it to this task: carry on, unless another task took over.
                    if !store.pending.any() || store.replayer_running.swap(true, Ordering::AcqRel) {
                        replayer.disarm();
                        return;
                    }
                }
                if replayed {
                    // Redis answers: the next batch at once.
                    continue;
                }
                let pause = store.settings.breaker.probe_interval / 4;
                drop(store);
                tokio::time::sleep(pause).await;
            }
        });
    }

    /// Deletes every entry and every fence under the prefix (so loads under way store nothing),
    /// and tells tiered peers to drop their L1: what a replay ends with after the queue
    /// overflowed, since the lost keys are no longer known. O(keys under the prefix), for a rare
    /// disaster, one `SCAN` page per round trip.
    async fn purge(&self) -> Result<(), StoreError> {
        let timeout = self.settings.op_timeout;
        // A cluster's keys are spread over its masters: each is scanned on a connection of its
        // own (the cluster client would send a `SCAN` to one node only).
        let masters = self
            .guarded(Scope::Whole, self.target.masters(timeout))
            .await?;
        let mut purged = 0usize;
        for master in &masters {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.settings.connect_timeout))
                .set_response_timeout(None);
            let mut connection = self
                .guarded(
                    Scope::Whole,
                    master.get_multiplexed_async_connection_with_config(&config),
                )
                .await?;
            purged += self.purge_node(&mut connection).await?;
        }
        let mut connection = self.connection().await?;
        let _: Result<(), _> = self
            .guarded(
                Scope::Whole,
                redis::cmd("PUBLISH")
                    .arg(bus_channel(&self.settings.prefix))
                    .arg(FLUSH_MESSAGE)
                    .query_async(&mut connection),
            )
            .await;
        tracing::warn!(
            prefix = %self.settings.prefix,
            purged,
            "the invalidation queue had overflowed: every entry under the prefix was deleted"
        );
        Ok(())
    }

    /// The purge on one node (the server, or one master of a cluster): the number of values
    /// deleted.
    async fn purge_node(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
    ) -> Result<usize, StoreError> {
        let pattern = format!("{}:{}:*", self.settings.prefix, KEY_FORMAT);
        let mut cursor = 0u64;
        let mut purged = 0usize;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .guarded(
                    Scope::Whole,
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1_000)
                        .query_async(connection),
                )
                .await?;
            let mut pipe = redis::pipe();
            for key in &keys {
                match key.last() {
                    Some(b'v') => {
                        pipe.cmd("DEL").arg(key).ignore();
                        purged += 1;
                    }
                    // Deleted, not advanced: a fence may hold foreign bytes, and a fill needs
                    // the fence it saw, while a claim after this makes a new one.
                    Some(b'f') => {
                        pipe.cmd("DEL").arg(key).ignore();
                    }
                    _ => {}
                }
            }
            if !pipe.is_empty() {
                // A direct connection to the node that holds these keys: keys of several slots
                // may share a pipeline there.
                self.guarded(Scope::Whole, pipe.query_async::<()>(connection))
                    .await?;
            }
            if next == 0 {
                return Ok(purged);
            }
            cursor = next;
        }
    }
}

/// Runs the invalidations of one replay batch on one server in one round trip, a pipeline,
/// each confirmed on its own.
async fn replay_pipeline(
    scripts: &[&redis::Script],
    invocations: &[redis::ScriptInvocation<'_>],
    mut connection: Connection,
) -> redis::RedisResult<Vec<redis::RedisResult<redis::Value>>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for script in scripts {
        pipe.load_script(script).ignore();
    }
    for invocation in invocations {
        pipe.invoke_script(invocation);
    }
    pipe.query_async(&mut connection).await
}

/// The breaker scope of a pending invalidation: its key's, or its tag's.
fn replay_scope(key: &str) -> Scope<'_> {
    Scope::Entry(as_tag(key).unwrap_or(key))
}

/// The background replayer's claim on [`RedisStore::replayer_running`]: cleared when its task
/// ends other than by finding nothing pending (dropped with its runtime, say), so that a later
/// failure starts another.
struct Replayer(Option<Weak<RedisStore>>);

impl Replayer {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Replayer {
    fn drop(&mut self) {
        if let Some(store) = self.0.as_ref().and_then(Weak::upgrade) {
            store.replayer_running.store(false, Ordering::Release);
        }
    }
}
