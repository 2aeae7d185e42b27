//! The Lua scripts of the Redis store, one file each (`scripts/*.lua`), so that each step that
//! must be atomic is one round trip. Every script touches only the keys it is given, all of one
//! entry and so of one hash tag: one Cluster slot.

/// KEYS: value, fence, lock, waiters. ARGV: fence generation seen, bytes, ttl ms, token, wake
/// channel, cache key. Returns 1 if stored, 0 if fenced off. Releases the lock if `token` owns
/// it, and wakes the key's waiters in other processes.
pub(super) const FILL: &str = include_str!("scripts/fill.lua");

/// KEYS: value, fence. ARGV: fence ttl ms, bus channel ("" for none), bus message, a random
/// generation. Publishing in the same script makes "deleted" and "announced" one atomic step: no
/// process can see the deletion without the message being on its way. A fence that is not a
/// number (written by something else) is replaced by the random generation: the script cannot
/// fail on what the keys hold, so a replayed batch cannot be stuck on one bad key. A missing
/// fence is made random too, not `INCR`ed: `INCR` makes 1 of nothing every time, so a load that
/// saw such a fence before a restart (which loses every fence) would match the one made after.
pub(super) const INVALIDATE: &str = include_str!("scripts/invalidate.lua");

/// KEYS: value, fence, lock, waiters. ARGV: token, lease ms, a random fence generation, fence
/// ttl ms, waiters ttl ms, "1" to ignore the value (it was unreadable).
/// The value if there is one (`{value}`); otherwise the fence generation and whether the lock
/// was taken (`{false, fence, 0|1}`). One atomic step, so a leader that arrives just after
/// another's fill takes that value instead of loading again. A missing fence is created with a
/// random generation, so that a fill after the server lost its keys (a restart) is refused. A
/// lock key no holder of ours could have written (another type, no expiry, a lease longer than
/// ours) is foreign bytes: deleted, so that it cannot stall every miss.
pub(super) const CLAIM: &str = include_str!("scripts/claim.lua");

/// KEYS: lock, waiters. ARGV: token, wake channel, cache key. Compare-and-delete, so only the
/// owner releases; a release wakes the key's waiters.
pub(super) const RELEASE: &str = include_str!("scripts/release.lua");

/// KEYS: lock. ARGV: token, lease ms. Extends the lease if `token` still owns the lock.
pub(super) const RENEW: &str = include_str!("scripts/renew.lua");

/// KEYS: a tag's generation. ARGV: bus channel ("" for none), bus message. Deletes the
/// generation (every entry stored under it becomes a miss; the next leader draws a new one)
/// and announces it in the same step.
pub(super) const INVALIDATE_TAG: &str = include_str!("scripts/invalidate_tag.lua");

/// KEYS: a tag's generation. ARGV: a random generation (decimal, below 10^19), ttl ms. The
/// tag's current generation, created if missing, and kept at least ttl from now (the entry
/// the capturing leader stores must not outlive it); bytes that are not one (another
/// program's) are replaced, so that a foreign key cannot keep every load of the tag uncached.
pub(super) const CAPTURE_TAG: &str = include_str!("scripts/capture_tag.lua");

/// KEYS: value, fence. ARGV: bytes, ttl ms, fence ttl ms, bus channel ("" for none), bus
/// message, a random generation. Write-through: advances the fence as an invalidation does (a
/// missing or foreign one made random; so an older load under way cannot overwrite the new
/// value), stores the value, and announces it on the bus so that peers drop their L1 copy; one
/// atomic step.
pub(super) const PUT: &str = include_str!("scripts/put.lua");
