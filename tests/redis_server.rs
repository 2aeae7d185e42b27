//! The Redis test helper works: a real server that tests can kill, pause and restart.

mod support;

use std::time::Duration;

use redis::AsyncCommands;
use support::redis_server::RedisServer;

async fn connect(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(server.url()).expect("valid url");
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_millis(300)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect to the test server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_server_can_be_paused_killed_and_restarted() {
    let mut server = RedisServer::start();
    let mut connection = connect(&server).await;
    let () = connection.set("k", "v").await.expect("set");
    let value: String = connection.get("k").await.expect("get");
    assert_eq!(value, "v");

    server.pause();
    let paused: redis::RedisResult<String> = connection.get("k").await;
    assert!(
        paused.is_err(),
        "a paused server does not answer within the timeout"
    );
    server.resume();

    server.kill();
    let killed: redis::RedisResult<String> = connection.get("k").await;
    assert!(killed.is_err(), "a killed server does not answer");

    server.restart();
    let mut connection = connect(&server).await;
    let after: Option<String> = connection.get("k").await.expect("get after restart");
    assert_eq!(after, None, "a restarted server starts empty");
}

#[test]
fn servers_get_distinct_ports() {
    let (a, b) = (RedisServer::start(), RedisServer::start());
    assert_ne!(a.port(), b.port());
}
