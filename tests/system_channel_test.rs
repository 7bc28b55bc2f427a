//! The `system` channel (docs/protocol.md, "Presence and the built-in channels"): a joined client receives the server's own `datetime`
//! tick every `datetime_interval_ms`, with the exact broadcast frame shape and a process-wide
//! counter; 0 disables it; nobody else receives it; and no tick is built while nobody listens.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::phoenix::*;
use common::{http_request, Frame, ServerOptions, TestSocket};

const SYSTEM: &str = "system";

fn with_interval(ms: u64) -> Setup {
    Setup::with_channel_keys(&format!("datetime_interval_ms = {ms}"))
}

/// The next `datetime` tick on `socket`: checks the exact frame and returns (datetime, counter).
fn next_tick(socket: &mut TestSocket) -> (SystemTime, u64) {
    let text = match next(socket) {
        Frame::Text(text) => text,
        other => panic!("expected a datetime tick, got {other:?}"),
    };
    let frame: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("tick is not JSON ({e}): {text}"));
    let response = &frame[4]["response"];
    let datetime = response["datetime"]
        .as_str()
        .unwrap_or_else(|| panic!("tick without a datetime string: {text}"));
    let counter = response["counter"]
        .as_u64()
        .unwrap_or_else(|| panic!("tick without a numeric counter: {text}"));
    assert_eq!(
        text,
        format!(
            r#"[null,null,"system","datetime",{{"status":"ok","response":{{"datetime":"{datetime}","counter":{counter}}}}}]"#
        ),
        "a tick is exactly the broadcast frame of docs/protocol.md"
    );
    // RFC 3339 in UTC with milliseconds: 2026-11-27T08:30:00.123Z
    assert_eq!(datetime.len(), 24, "datetime {datetime:?} has milliseconds");
    assert!(datetime.ends_with('Z'), "datetime {datetime:?} is UTC");
    assert_eq!(
        &datetime[19..20],
        ".",
        "datetime {datetime:?} has milliseconds"
    );
    let at = humantime::parse_rfc3339(datetime)
        .unwrap_or_else(|e| panic!("datetime {datetime:?} is not RFC 3339: {e}"));
    (at, counter)
}

/// The value of an unlabelled series in `/metrics`.
fn metric(s: &Setup, name: &str) -> f64 {
    let body = http_request(s.server.addr(), "GET", "/metrics", &[], b"").text();
    body.lines()
        .find_map(|line| {
            let (series, value) = line.split_once(' ')?;
            (series == name)
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or_else(|| panic!("no series {name} in /metrics:\n{body}"))
}

#[test]
fn joined_client_receives_datetime_ticks_with_an_increasing_counter() {
    let s = with_interval(100);
    let mut socket = s.joined(SYSTEM);
    let (first_at, first) = next_tick(&mut socket);
    let started = Instant::now();
    let mut previous = first;
    for _ in 0..4 {
        let (at, counter) = next_tick(&mut socket);
        assert_eq!(
            counter,
            previous + 1,
            "the counter increases by one per tick"
        );
        previous = counter;
        let skew = match SystemTime::now().duration_since(at) {
            Ok(behind) => behind,
            Err(ahead) => ahead.duration(),
        };
        assert!(
            skew < Duration::from_secs(2),
            "datetime {at:?} is now, not {skew:?} off"
        );
        assert!(at >= first_at, "datetimes do not go backwards");
    }
    let four_intervals = started.elapsed();
    assert!(
        four_intervals >= Duration::from_millis(300) && four_intervals <= Duration::from_secs(2),
        "four ticks 100 ms apart took {four_intervals:?}"
    );
}

#[test]
fn datetime_interval_comes_from_the_config_file() {
    let s = with_interval(250);
    let mut socket = s.joined(SYSTEM);
    next_tick(&mut socket);
    let started = Instant::now();
    next_tick(&mut socket);
    next_tick(&mut socket);
    let two_intervals = started.elapsed();
    assert!(
        two_intervals >= Duration::from_millis(400) && two_intervals <= Duration::from_millis(1500),
        "two ticks 250 ms apart took {two_intervals:?}"
    );
}

#[test]
fn datetime_interval_zero_disables_the_tick() {
    let s = with_interval(0);
    let mut socket = s.joined(SYSTEM);
    if let Some(frame) = try_next(&mut socket, Duration::from_millis(700)) {
        panic!("no tick with datetime_interval_ms = 0, got {frame:?}");
    }
    assert_eq!(metric(&s, "channel_system_ticks_total"), 0.0);
}

#[test]
fn client_not_joined_to_system_receives_no_ticks() {
    let s = with_interval(100);
    let mut listener = s.joined(SYSTEM);
    let mut other = s.joined("room:1");
    let mut bystander = s.v2();
    next_tick(&mut listener);
    next_tick(&mut listener);
    if let Some(frame) = try_next(&mut other, Duration::from_millis(400)) {
        panic!("a client joined elsewhere got {frame:?}");
    }
    if let Some(frame) = try_next(&mut bystander, Duration::from_millis(100)) {
        panic!("a client joined nowhere got {frame:?}");
    }
}

#[test]
fn leaving_system_stops_the_ticks() {
    let s = with_interval(100);
    let mut socket = TestSocket::connect(&s.server.ws_url("2.0.0"));
    socket.join_ok(SYSTEM, &s.token(SYSTEM));
    next_tick(&mut socket);
    let reply = socket.leave(SYSTEM);
    assert_eq!(reply[4]["status"], "ok", "leave reply {reply}");
    // Then the phx_close of the leave; a tick already queued may precede it.
    loop {
        match next(&mut socket) {
            Frame::Text(text) if text.contains(r#""phx_close""#) => break,
            Frame::Text(text) if text.contains(r#""datetime""#) => continue,
            other => panic!("expected the phx_close of the leave, got {other:?}"),
        }
    }
    if let Some(frame) = try_next(&mut socket, Duration::from_millis(400)) {
        panic!("a tick after the leave: {frame:?}");
    }
}

#[test]
fn no_tick_is_built_while_nobody_is_joined() {
    let s = with_interval(50);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        metric(&s, "channel_system_ticks_total"),
        0.0,
        "ticks were built with nobody joined"
    );
    let mut socket = s.joined(SYSTEM);
    next_tick(&mut socket);
    drop(socket);
    wait_until(
        Duration::from_secs(5),
        "the system channel has no listening shard",
        || metric(&s, "channel_system_listening_shards") == 0.0,
    );
    // At most one tick may have been in flight when the last subscriber went away.
    let after_leave = metric(&s, "channel_system_ticks_total");
    std::thread::sleep(Duration::from_millis(400));
    let later = metric(&s, "channel_system_ticks_total");
    assert!(
        later <= after_leave + 1.0,
        "ticks went on with nobody joined: {after_leave} then {later}"
    );
}

#[test]
fn subscribers_on_two_shards_receive_the_same_ticks() {
    let s = Setup::with(
        ServerOptions::default()
            .shards(2)
            .config("[channel]\ndatetime_interval_ms = 100\n"),
    );
    let [mut on0, mut on1] = s.one_socket_per_shard();
    join_ok_exact(&mut on0, SYSTEM, &s.token(SYSTEM));
    join_ok_exact(&mut on1, SYSTEM, &s.token(SYSTEM));
    // Both shards listen from the second join on: from then, every tick reaches both.
    let (_, start) = next_tick(&mut on1);
    let mut seen0 = Vec::new();
    while seen0.last().is_none_or(|c| *c < start + 3) {
        seen0.push(next_tick(&mut on0).1);
    }
    let seen1: Vec<u64> = (0..3).map(|_| next_tick(&mut on1).1).collect();
    assert_eq!(seen1, vec![start + 1, start + 2, start + 3]);
    for counter in &seen1 {
        assert!(
            seen0.contains(counter),
            "tick {counter} reached shard 1 but not shard 0 ({seen0:?})"
        );
    }
}
