impl Repo {
    /// Docs and attributes are kept.
    #[cached(ttl = 300, skip(db), backend = "memory.small", version = 2)]
    fn count(&self, tenant: &str, active: Option<bool>, db: &Db) -> usize {
        db.count(tenant, active)
    }
}
