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
    let mut fence = match read::<S::Value>(site, redis, &key).await {
        Lookup::Hit(value) => return shape.rebuild(value),
        Lookup::Miss(fence) => fence,
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
    let token = match redis.store.try_lock(key.as_str(), LEASE).await {
        Ok(Some(token)) => Some(token),
        Ok(None) => match wait_for_fill::<S::Value>(site, redis, &key).await {
            Lookup::Hit(value) => {
                let shared: AnyValue = Arc::new(value.clone());
                guard.complete(Outcome::Value(shared), || {});
                return shape.rebuild(value);
            }
            Lookup::Miss(latest) => {
                fence = latest;
                None
            }
        },
        Err(_) => None,
    };
    let ret = body.await;
    let outcome = match shape.produced(&ret) {
        Produced::Value(value) => {
            fill(site, redis, &key, value, fence, token.as_deref()).await;
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
}

async fn read<V: DeserializeOwned>(site: &Site, redis: &RedisBackend, key: &CacheKey) -> Lookup<V> {
    match redis.store.read(key.as_str()).await {
        Ok(read) => match read.value {
            None => Lookup::Miss(read.fence),
            Some(bytes) => match envelope::decode::<V, Bincode>(&bytes, site.version) {
                Ok((_, value)) => Lookup::Hit(value),
                Err(error) => {
                    tracing::warn!(
                        function = site.function,
                        key = key.as_str(),
                        %error,
                        "unreadable cache entry; treating it as a miss (the next fill replaces it)"
                    );
                    // A hit's read carries no fence; the fill that replaces the entry needs it.
                    Lookup::Miss(redis.store.fence(key.as_str()).await.unwrap_or(None))
                }
            },
        },
        // Fail open. A fill that does not know the fence carries none, so the fill script
        // refuses it wherever an invalidation left one.
        Err(_) => Lookup::Miss(None),
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
            hit @ Lookup::Hit(_) => return hit,
            miss if Instant::now() >= deadline => return miss,
            Lookup::Miss(_) => {}
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
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        });
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
        Err(error) => tracing::warn!(
            function = site.function,
            %error,
            "value could not be encoded; it is returned but not cached"
        ),
    }
}
