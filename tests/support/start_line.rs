//! A barrier across OS processes, through Redis lists: each worker announces itself and blocks
//! on `BLPOP`; the parent waits for every announcement, then releases all workers at once. A
//! notification, not a sleep. Both sides connect through `redis_server`'s helpers, whose
//! response timeout outlasts the 30 s `BLPOP`s here.

use super::redis_server::{connect, connect_blocking};

/// Parent side: waits until `workers` have arrived at the `name` start line of the Redis at
/// `url`, then releases them.
pub fn release(url: &str, name: &str, workers: usize) {
    let mut redis = connect_blocking(url);
    for _ in 0..workers {
        let ready: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(format!("{name}:ready"))
            .arg(30)
            .query(&mut redis)
            .expect("blpop");
        assert!(ready.is_some(), "a worker did not get ready within 30 s");
    }
    let _: i64 = redis::cmd("RPUSH")
        .arg(format!("{name}:go"))
        .arg(vec!["go"; workers])
        .query(&mut redis)
        .expect("release the workers");
}

/// Worker side: announces this process at the `name` start line of the Redis at `url` and
/// waits to be released.
pub async fn arrive(url: &str, name: &str) {
    let mut redis = connect(url).await;
    let _: i64 = redis::cmd("RPUSH")
        .arg(format!("{name}:ready"))
        .arg(std::process::id())
        .query_async(&mut redis)
        .await
        .expect("announce");
    let go: Option<(String, String)> = redis::cmd("BLPOP")
        .arg(format!("{name}:go"))
        .arg(30)
        .query_async(&mut redis)
        .await
        .expect("wait for go");
    assert!(go.is_some(), "never released");
}

/// Worker side, with no parent to release them: announces this process at the `name` meeting
/// point of the Redis at `url` and waits until `workers` processes have; the last to arrive
/// lets them all go. For a barrier the parent cannot wait on (it is waiting for the workers'
/// exit, and should see at once one that failed instead of blocking on its announcement).
pub async fn meet(url: &str, name: &str, workers: usize) {
    let mut redis = connect(url).await;
    let arrived: usize = redis::cmd("INCR")
        .arg(format!("{name}:arrived"))
        .query_async(&mut redis)
        .await
        .expect("announce");
    if arrived == workers {
        let _: i64 = redis::cmd("RPUSH")
            .arg(format!("{name}:go"))
            .arg(vec!["go"; workers])
            .query_async(&mut redis)
            .await
            .expect("release the others");
    }
    let go: Option<(String, String)> = redis::cmd("BLPOP")
        .arg(format!("{name}:go"))
        .arg(30)
        .query_async(&mut redis)
        .await
        .expect("wait for the others");
    assert!(go.is_some(), "the other workers did not arrive within 30 s");
}
