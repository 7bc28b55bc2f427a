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

/// A one-connection WebSocket server on a thread, running `script` on the accepted socket.
fn websocket_peer(
    script: impl FnOnce(tungstenite::WebSocket<std::net::TcpStream>) + Send + 'static,
) -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = listener.local_addr().expect("bound").port();
    let peer = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("the test connects");
        script(tungstenite::accept(stream).expect("the test's handshake is valid"));
    });
    (format!("ws://127.0.0.1:{port}/websocket?vsn=2.0.0"), peer)
}

#[test]
fn test_socket_reports_text_binary_and_close_frames_exactly() {
    let (url, peer) = websocket_peer(|mut ws| {
        let heartbeat = ws.read().expect("the test sends a heartbeat");
        assert_eq!(
            heartbeat.into_text().expect("text").as_str(),
            r#"[null,"1","phoenix","heartbeat",{}]"#
        );
        ws.send(tungstenite::Message::text(
            r#"[null,"1","phoenix","phx_reply",{"status":"ok","response":{}}]"#,
        ))
        .expect("send reply");
        ws.send(tungstenite::Message::binary(vec![
            2, 4, 2, b'r', b'o', b'o', b'm', b'e', b'v', 0xff, 0x00,
        ]))
        .expect("send broadcast");
        ws.close(Some(tungstenite::protocol::CloseFrame {
            code: 1012.into(),
            reason: "restart".into(),
        }))
        .expect("send close");
        while ws.read().is_ok() {}
    });
    let mut socket = common::TestSocket::connect(&url);
    assert_eq!(
        socket.heartbeat(),
        serde_json::json!([null, "1", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );
    let broadcast = socket.recv_binary_timeout(Duration::from_secs(5));
    assert_eq!(
        common::decode_binary_broadcast(&broadcast),
        ("room".to_string(), "ev".to_string(), vec![0xff, 0x00])
    );
    assert_eq!(
        socket.expect_close(Duration::from_secs(5)),
        (1012, "restart".to_string())
    );
    drop(socket);
    peer.join().expect("the peer script passed");
}

#[test]
fn test_socket_receive_gives_up_at_its_deadline_instead_of_hanging() {
    let (url, peer) = websocket_peer(|mut ws| {
        // Say nothing until the test closes.
        while ws.read().is_ok() {}
    });
    let mut socket = common::TestSocket::connect(&url);
    let started = std::time::Instant::now();
    assert_eq!(socket.try_recv_frame(Duration::from_millis(300)), None);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "waited {waited:?}"
    );
    socket.expect_no_message(Duration::from_millis(100));
    socket.close(1000, "done");
    drop(socket);
    peer.join().expect("the peer ends when the test closes");
}

#[test]
fn http_client_decodes_content_length_and_chunked_bodies() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = listener.local_addr().expect("bound");
    let peer = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let answers: [&[u8]; 2] = [
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"token\":\"t\"}",
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnot \r\n5\r\nfound\r\n0\r\n\r\n",
        ];
        for answer in answers {
            let (mut stream, _) = listener.accept().expect("the test connects");
            let mut head = [0u8; 1024];
            let _ = stream.read(&mut head);
            stream.write_all(answer).expect("write the answer");
        }
    });
    let ok = common::http_request(addr, "POST", "/token", &[], b"{}");
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("content-type"), Some("application/json"));
    assert_eq!(ok.json(), serde_json::json!({"token": "t"}));
    let missing = common::http_request(addr, "GET", "/nope", &[], b"");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.text(), "not found");
    peer.join().expect("the peer answered both");
}
