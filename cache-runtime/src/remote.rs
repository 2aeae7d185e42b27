//! The call path of a remote (Redis) backend: read the envelope, and on a miss load once per
//! key in this process (single-flight) and once across processes (the Redis lock), then fill
//! with the fence generation read before the load.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::{follow, Next, RedisBackend};
use crate::envelope::{self, Bincode, Times};
use crate::flight::{Outcome, Role};
use crate::key::CacheKey;
use crate::log_gate::LogGate;
use crate::shape::{AnyValue, Produced, ReturnShape};
use crate::site::Site;

/// How long a lock holder may load before others give up waiting and load themselves.
const LEASE: Duration = Duration::from_secs(10);

/// Runs an async `#[cached]` function whose backend is remote.
pub async fn cached_remote<R, S, F>(site: &'static Site, shape: S, key: CacheKey, body: F) -> R
where
    S: ReturnShape<R>,
    S::Value: Serialize + DeserializeOwned,
    F: Future<Output = R>,
{
    let Some(backend) = site.backend().filter(|_| key.is_usable()) else {
        return body.await;
    };
    let Some(redis) = backend.redis() else {
        return crate::call::cached(site, shape, key, body).await;
    };
    // `None` once Redis failed during this call: the rest of the call then leaves Redis alone,
    // so a slow or dead Redis costs a caller at most one operation timeout.
    let mut fence = match read::<S::Value>(site, redis, &key).await {
        Lookup::Hit(value) => return shape.rebuild(value),
        Lookup::Miss(fence) => Some(fence),
        Lookup::Unavailable => None,
    };
    let guard = loop {
        match backend.flights().join(&key) {
            Role::Leader(guard) => break guard,
            Role::Follower(flight) => {
                match follow(site, shape, key.as_str(), flight.wait().await) {
                    Next::Return(ret) => return ret,
                    Next::RunUncached => return body.await,
                    Next::Retry => {}
                }
            }
        }
    };
    // Across processes: one loader per key; the others wait for its fill.
    let mut token = None;
    if fence.is_some() {
        match redis.store.try_lock(key.as_str(), LEASE).await {
            Ok(Some(taken)) => token = Some(taken),
            Ok(None) => match wait_for_fill::<S::Value>(site, redis, &key).await {
                Lookup::Hit(value) => {
                    let shared: AnyValue = Arc::new(value.clone());
                    guard.complete(Outcome::Value(shared), || {});
                    return shape.rebuild(value);
                }
                Lookup::Miss(latest) => fence = Some(latest),
                Lookup::Unavailable => fence = None,
            },
            Err(_) => fence = None,
        }
    }
    let ret = body.await;
    let outcome = match shape.produced(&ret) {
        Produced::Value(value) => {
            if let Some(fence) = fence {
                fill(site, redis, &key, value, fence, token.as_deref()).await;
            }
            Outcome::Value(Arc::new(value.clone()))
        }
        produced => {
            if let Some(token) = &token {
                let _ = redis.store.release(key.as_str(), token).await;
            }
            match produced {
                Produced::Absent => Outcome::Absent,
                _ => Outcome::Failed,
            }
        }
    };
    guard.complete(outcome, || {});
    ret
}

enum Lookup<V> {
    Hit(V),
    /// A miss, with the fence generation a fill must carry.
    Miss(Option<i64>),
    /// Redis failed, timed out or is behind an open breaker: a miss that should not touch
    /// Redis again in this call (fail open).
    Unavailable,
}

async fn read<V: DeserializeOwned>(site: &Site, redis: &RedisBackend, key: &CacheKey) -> Lookup<V> {
    match redis.store.read(key.as_str()).await {
        Ok(read) => match read.value {
            None => Lookup::Miss(read.fence),
            Some(bytes) => match envelope::decode::<V, Bincode>(&bytes, site.version) {
                // Redis' PX expires entries; the envelope's own bound also catches an entry
                // whose key TTL was lost (a PERSIST, a restore from a dump).
                Ok((header, value)) if header.stale_until_ms > now_ms() => Lookup::Hit(value),
                Ok(_) => Lookup::Miss(read.fence),
                Err(error) => {
                    static GATE: LogGate = LogGate::new();
                    if let Some(suppressed) = GATE.admit() {
                        tracing::warn!(
                            function = site.function,
                            key = key.as_str(),
                            %error,
                            suppressed,
                            "unreadable cache entry; treating it as a miss (the next fill \
                             replaces it)"
                        );
                    }
                    Lookup::Miss(read.fence)
                }
            },
        },
        Err(_) => Lookup::Unavailable,
    }
}

/// Waits for another process's fill, polling with bounded backoff until the lease runs out.
async fn wait_for_fill<V: DeserializeOwned>(
    site: &Site,
    redis: &RedisBackend,
    key: &CacheKey,
) -> Lookup<V> {
    let deadline = Instant::now() + LEASE;
    let mut delay = Duration::from_millis(2);
    loop {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
        match read::<V>(site, redis, key).await {
            Lookup::Miss(_) if Instant::now() < deadline => {}
            done => return done,
        }
    }
}

async fn fill<V: Serialize>(
    site: &Site,
    redis: &RedisBackend,
    key: &CacheKey,
    value: &V,
    fence: Option<i64>,
    token: Option<&str>,
) {
    let now = now_ms();
    let ttl = u64::try_from(site.ttl.as_millis()).unwrap_or(u64::MAX);
    let times = Times {
        created_at_ms: now,
        fresh_until_ms: now.saturating_add(ttl),
        stale_until_ms: now.saturating_add(ttl),
    };
    match envelope::encode::<V, Bincode>(value, site.version, times) {
        Ok(bytes) => {
            let _ = redis
                .store
                .fill(key.as_str(), fence, &bytes, site.ttl, token)
                .await;
        }
        Err(error) => {
            static GATE: LogGate = LogGate::new();
            if let Some(suppressed) = GATE.admit() {
                tracing::warn!(
                    function = site.function,
                    %error,
                    suppressed,
                    "value could not be encoded; it is returned but not cached"
                );
            }
        }
    }
}

/// Wall-clock milliseconds, as envelopes record them (shared by every process).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::test_redis_server::RedisServer;
    use crate::expansion::SiteState;
    use crate::key::KeyBuilder;

    static SITE: Site = Site {
        function: "t",
        template: "t",
        backend: "redis",
        ttl: Duration::from_secs(60),
        version: 0,
        state: SiteState::new(),
    };

    #[tokio::test]
    async fn an_envelope_past_its_stale_time_is_a_miss_even_without_a_key_ttl() {
        let server = RedisServer::start();
        let redis = RedisBackend::builder()
            .url(server.url())
            .build()
            .expect("valid configuration");
        let key = KeyBuilder::new().lit("k").finish();
        let now = now_ms();
        let envelope = |stale_until_ms| {
            let times = Times {
                created_at_ms: now - 10_000,
                fresh_until_ms: stale_until_ms,
                stale_until_ms,
            };
            envelope::encode::<u64, Bincode>(&7, 0, times).expect("encodes")
        };
        let ttl = Duration::from_secs(60);
        let fill = |bytes: Vec<u8>| {
            let store = Arc::clone(&redis.store);
            async move { store.fill("k", None, &bytes, ttl, None).await }
        };
        assert!(fill(envelope(now + 60_000)).await.expect("up"));
        assert!(matches!(
            read::<u64>(&SITE, &redis, &key).await,
            Lookup::Hit(7)
        ));
        assert!(fill(envelope(now - 1)).await.expect("up"));
        assert!(matches!(
            read::<u64>(&SITE, &redis, &key).await,
            Lookup::Miss(None)
        ));
    }
}
