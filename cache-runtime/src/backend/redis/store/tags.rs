//! Tag generations in Redis (`backend/tags.rs` says what they are): one key per tag, under the
//! tag's own hash tag (`<prefix>:1:{<tag>}:g`), so that each script touches one slot; reads of
//! a value and its tags' generations are sent in one round trip, each answered on its own:
//! pipelined on one server, and on a cluster, where a pipeline must keep to one slot and these
//! keys are of several, sent all at once on the multiplexed node connections.

use std::time::Duration;

use redis::Value;

use super::super::keys::Role;
use super::super::pending::tag_target;
use super::{millis, Announce, RedisStore, Scope, StoreError};
use crate::key::CacheKey;
use crate::log_gate::LogGate;

/// A tag generation is drawn below this, so that its decimal form has at most 19 digits: the
/// capture script takes what looks longer for foreign bytes.
const GENERATION_BOUND: u64 = 10_000_000_000_000_000_000;

/// What a tagged read found: the value's bytes, and each tag's current generation (`None`: the
/// tag has none, so no entry of it can be served).
pub(crate) type TaggedRead = (Option<Vec<u8>>, Vec<Option<u64>>);

impl RedisStore {
    /// A tagged site's read: `GET` of the value and of each tag's generation, pipelined (one
    /// round trip). Refused while an invalidation of the key or of one of the tags is pending.
    pub(crate) async fn get_tagged(
        &self,
        cache_key: &str,
        tags: &[CacheKey],
    ) -> Result<TaggedRead, StoreError> {
        self.settle_pending(cache_key).await?;
        self.tags_settled(tags)?;
        let mut commands = Vec::with_capacity(tags.len() + 1);
        let mut get = redis::cmd("GET");
        get.arg(self.key_arg(cache_key, Role::Value));
        commands.push(get);
        for tag in tags {
            let mut get = redis::cmd("GET");
            get.arg(self.key_arg(tag.as_str(), Role::Generation));
            commands.push(get);
        }
        let scopes: Vec<Scope<'_>> = std::iter::once(cache_key)
            .chain(tags.iter().map(CacheKey::as_str))
            .map(Scope::Entry)
            .collect();
        let mut replies = self.each_answered(&commands, &scopes).await?;
        if replies.len() != tags.len() + 1 {
            return Err(unexpected("a tagged read"));
        }
        // A generation key of another type (a reply error about it) is no generation: a miss,
        // and the leader's capture replaces it. Failing the read instead kept the whole
        // family uncached, since a failed read makes the call leave Redis alone.
        let generations = replies
            .split_off(1)
            .iter()
            .map(|reply| match reply {
                Ok(reply) => generation(reply),
                Err(error) => {
                    foreign_generation(error);
                    None
                }
            })
            .collect();
        let bytes = match replies.pop() {
            Some(Ok(Value::BulkString(bytes))) => Some(bytes),
            Some(Ok(Value::Nil)) | None => None,
            Some(Ok(_)) => return Err(unexpected("a tagged read")),
            Some(Err(error)) => return Err(self.recorded(error)),
        };
        Ok((bytes, generations))
    }

    /// A loading leader's capture, before it loads: each tag's current generation, created if
    /// missing, in one round trip (one script per tag, each on its tag's slot). A generation
    /// key lives at least `ttl` from the last capture (an existing one's expiry is extended,
    /// never shortened); one that expires only makes its entries misses.
    pub(crate) async fn capture_tags(
        &self,
        tags: &[CacheKey],
        ttl: Duration,
    ) -> Result<Vec<u64>, StoreError> {
        self.tags_settled(tags)?;
        let commands: Vec<redis::Cmd> = tags
            .iter()
            .map(|tag| {
                let mut eval = redis::cmd("EVAL");
                eval.arg(super::super::scripts::CAPTURE_TAG)
                    .arg(1)
                    .arg(self.key_arg(tag.as_str(), Role::Generation))
                    .arg(fastrand::u64(..GENERATION_BOUND))
                    .arg(millis(ttl).max(1));
                eval
            })
            .collect();
        let scopes: Vec<Scope<'_>> = tags.iter().map(|tag| Scope::Entry(tag.as_str())).collect();
        let mut generations = Vec::with_capacity(tags.len());
        for reply in self.each_answered(&commands, &scopes).await? {
            match reply {
                Ok(reply) => generations.push(generation(&reply)),
                Err(error) => return Err(self.recorded(error)),
            }
        }
        match generations.into_iter().collect::<Option<Vec<u64>>>() {
            Some(generations) if generations.len() == tags.len() => Ok(generations),
            _ => Err(unexpected("a tag capture")),
        }
    }

    /// Runs `commands` in one round trip, each answered on its own: a pipeline on one server;
    /// on a cluster, where redis-rs refuses a pipeline whose keys span slots (and a tag's
    /// generation is in the tag's slot, not the entry's), every command sent at once on the
    /// multiplexed node connections, as replays are, each under the breaker of its master
    /// (`scopes`, one per command) and a timeout of its own: a tag on a dead master then
    /// fails its own entries, not the others on its breaker. A command that fails in transit
    /// (or is refused) fails them all, which each breaker has counted.
    async fn each_answered(
        &self,
        commands: &[redis::Cmd],
        scopes: &[Scope<'_>],
    ) -> Result<Vec<redis::RedisResult<Value>>, StoreError> {
        let connection = self.connection().await?;
        if self.target.is_cluster() {
            let calls = commands.iter().zip(scopes).map(|(command, scope)| {
                let mut connection = connection.clone();
                async move {
                    self.guarded(*scope, command.query_async::<Value>(&mut connection))
                        .await
                }
            });
            let mut replies = Vec::with_capacity(commands.len());
            for result in futures_util::future::join_all(calls).await {
                match result {
                    Ok(value) => replies.push(Ok(value)),
                    Err(StoreError::Redis(error)) if !super::is_transport_failure(&error) => {
                        replies.push(Err(error));
                    }
                    Err(error) => return Err(error),
                }
            }
            return Ok(replies);
        }
        self.guarded(Scope::Whole, async move {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for command in commands {
                pipe.add_command(command.clone());
            }
            let mut connection = connection;
            pipe.query_async(&mut connection).await
        })
        .await
    }

    /// One command's error, counted as the store counts a failed operation.
    fn recorded(&self, error: redis::RedisError) -> StoreError {
        self.record(
            Scope::Whole,
            &Err::<(), _>(StoreError::Redis(error.clone())),
        );
        StoreError::Redis(error)
    }

    /// Deletes the tag's generation, publishing `announce` in the same script. If it does not
    /// reach Redis, it is kept and replayed until it does, and the tag is pending meanwhile.
    pub(crate) async fn invalidate_tag(
        &self,
        tag: &str,
        announce: Announce<'_>,
    ) -> Result<(), StoreError> {
        let target = tag_target(tag);
        let sent = self.pending.mark();
        let result = async {
            if self.pending.any() {
                match self.replay_batch(false).await {
                    Err(error) if self.replay_failure_stops(&error) => return Err(error),
                    _ => {}
                }
            }
            let mut connection = self.connection().await?;
            let invocation = self.tag_invalidation(tag, announce);
            let _: i64 = self
                .guarded(Scope::Entry(tag), invocation.invoke_async(&mut connection))
                .await?;
            Ok(())
        }
        .await;
        match &result {
            Ok(()) => self.pending.confirm([target.as_str()], sent, false),
            Err(_) => self.keep_for_replay(&target, announce),
        }
        result
    }

    pub(super) fn tag_invalidation(
        &self,
        tag: &str,
        announce: Announce<'_>,
    ) -> redis::ScriptInvocation<'_> {
        let (channel, message) = announce.unwrap_or(("", ""));
        let mut invocation = self.invalidate_tag_script.prepare_invoke();
        invocation
            .key(self.keys(tag).key(Role::Generation))
            .arg(channel)
            .arg(message);
        invocation
    }

    /// Refuses the call while an invalidation of one of `tags` is pending: Redis may still hold
    /// their old generations.
    fn tags_settled(&self, tags: &[CacheKey]) -> Result<(), StoreError> {
        if self.pending.any()
            && tags
                .iter()
                .any(|tag| self.pending.holds(&tag_target(tag.as_str())))
        {
            return Err(StoreError::Pending);
        }
        Ok(())
    }
}

/// A generation as Redis holds it (decimal text); anything else is none.
fn generation(reply: &Value) -> Option<u64> {
    match reply {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(text) => text.parse().ok(),
        _ => None,
    }
}

/// Logs, rate-limited, a generation key Redis refused to read (another type): a miss.
fn foreign_generation(error: &redis::RedisError) {
    static GATE: LogGate = LogGate::new();
    if let Some(suppressed) = GATE.admit() {
        tracing::warn!(
            %error,
            suppressed,
            "a tag's generation key holds something else; its entries miss until a load replaces it"
        );
    }
}

fn unexpected(what: &'static str) -> StoreError {
    StoreError::Redis(redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply",
        what.to_owned(),
    )))
}

#[cfg(test)]
mod tests {
    use super::super::RedisSettings;
    use super::*;
    use crate::backend::test_redis_server::RedisServer;
    use crate::key::KeyBuilder;

    fn store(server: &RedisServer) -> std::sync::Arc<RedisStore> {
        let settings = RedisSettings {
            prefix: "test".to_owned(),
            op_timeout: Duration::from_millis(200),
            ..RedisSettings::default()
        };
        RedisStore::new(super::super::tests::server_target(server), settings)
    }

    fn tag(name: &str) -> CacheKey {
        KeyBuilder::new().lit(name).finish()
    }

    const TTL: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_capture_creates_once_and_an_invalidation_forgets() {
        let server = RedisServer::start();
        let store = store(&server);
        let tags = [tag("a"), tag("b")];
        let first = store.capture_tags(&tags, TTL).await.expect("up");
        assert_eq!(store.capture_tags(&tags, TTL).await.expect("up"), first);
        let (value, current) = store.get_tagged("k", &tags).await.expect("up");
        assert_eq!(value, None);
        assert_eq!(current, vec![Some(first[0]), Some(first[1])]);
        store.invalidate_tag("a", None).await.expect("up");
        let (_, current) = store.get_tagged("k", &tags).await.expect("up");
        assert_eq!(current, vec![None, Some(first[1])], "only `a` is forgotten");
        let second = store.capture_tags(&tags, TTL).await.expect("up");
        assert_ne!(second[0], first[0], "a new random generation");
        assert_eq!(second[1], first[1]);
        let mut raw = server.connection().await;
        let ttl: i64 = redis::cmd("PTTL")
            .arg("test:1:{a}:g")
            .query_async(&mut raw)
            .await
            .expect("pttl");
        assert!(
            ttl > 0 && ttl <= 60_000,
            "the generation key expires: {ttl}"
        );
    }

    /// Review 14: a leader that captures an existing generation stores an entry meant to live
    /// its ttl from now; the generation must live at least that long too, or the entry (and
    /// every entry of the tag, whichever site made the key first and how short its ttl) turns
    /// into a miss when the key made by the first capture expires.
    #[tokio::test]
    async fn a_capture_keeps_the_generation_for_its_ttl() {
        let server = RedisServer::start();
        let store = store(&server);
        let tags = [tag("lives")];
        let short = Duration::from_millis(400);
        let first = store.capture_tags(&tags, short).await.expect("up");
        tokio::time::sleep(Duration::from_millis(250)).await;
        // A leader of a longer-lived site: its entry lives a minute from now.
        assert_eq!(store.capture_tags(&tags, TTL).await.expect("up"), first);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_, current) = store.get_tagged("k", &tags).await.expect("up");
        assert_eq!(
            current,
            vec![Some(first[0])],
            "the generation outlives the capture that promised it a minute"
        );
    }

    #[tokio::test]
    async fn foreign_bytes_under_a_generation_are_no_generation_and_replaced() {
        let server = RedisServer::start();
        let store = store(&server);
        let mut raw = server.connection().await;
        for foreign in ["not a number", "99999999999999999999999", "-3"] {
            let _: () = redis::cmd("SET")
                .arg("test:1:{t}:g")
                .arg(foreign)
                .query_async(&mut raw)
                .await
                .expect("set");
            let (_, current) = store.get_tagged("k", &[tag("t")]).await.expect("up");
            assert_eq!(current, vec![None], "{foreign:?}");
            let captured = store.capture_tags(&[tag("t")], TTL).await.expect("up");
            let (_, current) = store.get_tagged("k", &[tag("t")]).await.expect("up");
            assert_eq!(current, vec![Some(captured[0])], "{foreign:?} replaced");
        }
        let _: () = redis::cmd("RPUSH")
            .arg("test:1:{l}:g")
            .arg("x")
            .query_async(&mut raw)
            .await
            .expect("rpush");
        let (_, current) = store
            .get_tagged("k", &[tag("l")])
            .await
            .expect("a list is no generation, not a failed read");
        assert_eq!(current, vec![None]);
        let captured = store
            .capture_tags(&[tag("l")], TTL)
            .await
            .expect("a list is replaced");
        let (_, current) = store.get_tagged("k", &[tag("l")]).await.expect("up");
        assert_eq!(current, vec![Some(captured[0])]);
    }

    #[tokio::test]
    async fn a_pending_tag_is_not_read_nor_captured_from_redis() {
        let server = RedisServer::start();
        let store = store(&server);
        let tags = [tag("t")];
        let old = store.capture_tags(&tags, TTL).await.expect("up");
        store.pending.push(&tag_target("t"), None);
        {
            // Another caller is replaying: this one's settle step goes on without replaying,
            // and must still refuse what Redis holds for the tag.
            let _replaying = store.pending.start_replay().expect("free");
            assert!(matches!(
                store.get_tagged("k", &tags).await,
                Err(StoreError::Pending)
            ));
            assert!(matches!(
                store.capture_tags(&tags, TTL).await,
                Err(StoreError::Pending)
            ));
            let (_, other) = store
                .get_tagged("k", &[tag("u")])
                .await
                .expect("another tag");
            assert_eq!(other, vec![None]);
        }
        // The replay deletes the generation, and the tag is settled.
        while store.pending.any() {
            store.replay_batch(false).await.expect("up");
        }
        let (_, current) = store.get_tagged("k", &tags).await.expect("settled");
        assert_eq!(current, vec![None], "the replay forgot {old:?}");
    }
}
