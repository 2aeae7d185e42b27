#[cached(ttl = "60s", key = "user:<id>")]
pub async fn get_user(id: u64, db: &Db) -> Result<User, DbError> {
    db.load(id).await
}
