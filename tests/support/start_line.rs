//! A barrier across OS processes, through Redis lists: each worker announces itself and blocks
//! on `BLPOP`; the parent waits for every announcement, then releases all workers at once. A
//! notification, not a sleep.

use redis::aio::MultiplexedConnection;

/// Parent side: waits until `workers` have arrived at the `name` start line, then releases them.
pub fn release(redis: &mut redis::Connection, name: &str, workers: usize) {
    for _ in 0..workers {
        let ready: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(format!("{name}:ready"))
            .arg(30)
            .query(redis)
            .expect("blpop");
        assert!(ready.is_some(), "a worker did not get ready within 30 s");
    }
    let _: i64 = redis::cmd("RPUSH")
        .arg(format!("{name}:go"))
        .arg(vec!["go"; workers])
        .query(redis)
        .expect("release the workers");
}

/// Worker side: announces this process at the `name` start line and waits to be released.
pub async fn arrive(redis: &MultiplexedConnection, name: &str) {
    let _: i64 = redis::cmd("RPUSH")
        .arg(format!("{name}:ready"))
        .arg(std::process::id())
        .query_async(&mut redis.clone())
        .await
        .expect("announce");
    let go: Option<(String, String)> = redis::cmd("BLPOP")
        .arg(format!("{name}:go"))
        .arg(30)
        .query_async(&mut redis.clone())
        .await
        .expect("wait for go");
    assert!(go.is_some(), "never released");
}
