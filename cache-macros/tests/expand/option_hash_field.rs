#[cached(ttl = "5m", key = "search:<filter:hash>:<user.id>", cache_none)]
async fn search<'a>(user: &'a User, filter: Filter) -> Option<Vec<Hit>>
where
    Filter: Send,
{
    None
}
