//! Tests of the test harness itself (`tests/common`): the private Redis can be started, killed
//! and restarted on the same port, and the subscriber sees what is published.

mod common;

use std::time::Duration;

use common::RedisServer;

#[test]
fn private_redis_starts_on_a_free_port_and_restarts_on_the_same_port() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    assert_ne!(port, 6379, "tests must never use the shared Redis on 6379");
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));

    let mut conn = redis.connection();
    let pong: String = redis::cmd("PING").query(&mut conn).expect("PING answers");
    assert_eq!(pong, "PONG");

    redis.kill();
    assert!(redis.pid().is_none());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens on {port} after kill"
    );

    redis.restart();
    assert_eq!(redis.port(), port, "restart keeps the port");
    let mut conn = redis.connection();
    let pong: String = redis::cmd("PING")
        .query(&mut conn)
        .expect("PING answers after restart");
    assert_eq!(pong, "PONG");
}

#[test]
fn redis_subscriber_receives_published_bytes_exactly() {
    let redis = RedisServer::start();
    let subscriber = redis.subscribe("from:*");
    let payload: Vec<u8> = vec![0, 1, 2, 255, b'\n', b'{'];
    assert_eq!(redis.publish("from:room:1:ev", &payload), 1);
    let message = subscriber.recv_timeout(Duration::from_secs(5));
    assert_eq!(message.channel, "from:room:1:ev");
    assert_eq!(message.payload, payload);
    redis.publish("elsewhere", b"x");
    subscriber.expect_nothing(Duration::from_millis(200));
}
