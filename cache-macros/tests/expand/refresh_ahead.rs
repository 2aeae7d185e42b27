#[cached(
    ttl = "60s",
    key = "user:<id>",
    backend = "tiered",
    refresh = "50s",
    stale = "10m",
    timeout = "300ms"
)]
pub async fn get_user(id: u64, db: Arc<Db>) -> Result<User, DbError> {
    db.load(id).await
}
