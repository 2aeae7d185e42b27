//! Write-through (`#[cache_put]`): the new value stored under the key in one script that also
//! advances the fence, so that a load that began before it (and read the old data) has its
//! fill refused, and announces it on the bus.

use std::time::Duration;

use super::super::keys::Role;
use super::{millis, random_generation, Announce, RedisStore, Scope, StoreError};

impl RedisStore {
    /// Stores `bytes` under `cache_key` for `ttl`, fencing off older fills ([`PUT`]). If it does
    /// not reach Redis, the key's invalidation is kept for replay instead: the old value must
    /// not outlive the mutation either way.
    ///
    /// [`PUT`]: super::super::scripts::PUT
    pub(crate) async fn put(
        &self,
        cache_key: &str,
        bytes: &[u8],
        ttl: Duration,
        announce: Announce<'_>,
    ) -> Result<(), StoreError> {
        let result = async {
            self.settle_pending(cache_key).await?;
            let keys = self.keys(cache_key);
            let (channel, message) = announce.unwrap_or(("", ""));
            let mut invocation = self.put_script.prepare_invoke();
            invocation
                .key(keys.key(Role::Value))
                .key(keys.key(Role::Fence))
                .arg(bytes)
                .arg(millis(ttl).max(1))
                .arg(millis(self.settings.fence_ttl))
                .arg(channel)
                .arg(message)
                .arg(random_generation());
            let mut connection = self.connection().await?;
            let _: i64 = self
                .guarded(
                    Scope::Entry(cache_key),
                    invocation.invoke_async(&mut connection),
                )
                .await?;
            Ok(())
        }
        .await;
        match &result {
            // Already pending: its replay deletes whatever is there.
            Err(StoreError::Pending) => {}
            Err(_) => self.keep_for_replay(cache_key, announce),
            Ok(()) => {}
        }
        result
    }
}
