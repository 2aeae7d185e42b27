#[invalidates("user:<id>", "profile:<id>")]
async fn rename_user(id: u64, name: String, db: &Db) -> Result<(), DbError> {
    db.rename(id, name).await
}
