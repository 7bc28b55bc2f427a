//! `GET /metrics` (issue 4): Prometheus text that a Prometheus parser reads, every series that
//! docs/operations.md lists, and counters that move by exactly what the traffic did: connects,
//! joins and refusals by reason, pushes, downstream frames and bytes, the Redis-receive latency
//! histogram, slow consumers and Redis reconnects.

mod common;

use std::time::{Duration, Instant};

use common::phoenix::*;
use common::{http_request, ServerOptions, TestSocket};
use prometheus_parse::{Scrape, Value};

/// How long a counter may take to catch up with what the client already saw (a frame is
/// counted once its write returned, which may be just after the client read it).
const CATCH_UP: Duration = Duration::from_secs(5);
/// How long the server may take to notice that Redis went away and came back.
const RECONNECT_WAIT: Duration = Duration::from_secs(20);
/// How long a flood may take to fill a client's socket buffers and outbound queue.
const SLOW_CONSUMER_WAIT: Duration = Duration::from_secs(20);

/// Every series the server exposes; docs/operations.md must describe each one.
const SERIES: &[&str] = &[
    "channel_connections",
    "channel_connections_opened_total",
    "channel_connections_closed_total",
    "channel_joined_channels",
    "channel_joins_total",
    "channel_join_refusals_total",
    "channel_origin_refusals_total",
    "channel_recovery_joins_total",
    "channel_replayed_messages_total",
    "channel_messages_received_total",
    "channel_received_bytes_total",
    "channel_pushes_published_total",
    "channel_pushes_failed_total",
    "channel_frames_sent_total",
    "channel_sent_bytes_total",
    "channel_slow_consumer_closes_total",
    "channel_shard_inbox_drops_total",
    "channel_downstream_latency_seconds",
    "channel_redis_reconnects_total",
    "channel_redis_connected",
    "channel_redis_messages_received_total",
    "channel_redis_messages_unrouted_total",
    "channel_redis_gap_filled_total",
    "channel_redis_gap_lost_total",
    "channel_system_ticks_total",
    "channel_system_listening_shards",
];

/// One parsed scrape, summed over shards.
struct Metrics(Scrape);

impl Metrics {
    fn scrape(s: &Setup) -> Metrics {
        let response = http_request(s.server.addr(), "GET", "/metrics", &[], b"");
        assert_eq!(response.status, 200, "GET /metrics: {}", response.text());
        let text = response.text();
        let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))
            .unwrap_or_else(|e| panic!("/metrics is not Prometheus text ({e}):\n{text}"));
        Metrics(scrape)
    }

    /// The sum over every sample of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let samples: Vec<_> = self
            .0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .collect();
        assert!(
            !samples.is_empty(),
            "no sample of {name} with labels {labels:?} in /metrics"
        );
        samples
            .iter()
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                other => panic!("{name} is not a single number: {other:?}"),
            })
            .sum()
    }

    fn get(&self, name: &str) -> f64 {
        self.sum(name, &[])
    }

    fn refusals(&self, reason: &str) -> f64 {
        self.sum("channel_join_refusals_total", &[("reason", reason)])
    }
}

/// Scrapes until `condition` holds (counters catch up with the client), then returns that
/// scrape; panics with `what` after [`CATCH_UP`].
fn scrape_when(s: &Setup, what: &str, condition: impl Fn(&Metrics) -> bool) -> Metrics {
    scrape_within(CATCH_UP, s, what, condition)
}

/// Like [`scrape_when`] with another deadline.
fn scrape_within(
    timeout: Duration,
    s: &Setup,
    what: &str,
    condition: impl Fn(&Metrics) -> bool,
) -> Metrics {
    let deadline = Instant::now() + timeout;
    loop {
        let metrics = Metrics::scrape(s);
        if condition(&metrics) {
            return metrics;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads every frame until the socket has been quiet for a while (join replies, presence).
fn drain(socket: &mut TestSocket) {
    while socket.try_recv_frame(Duration::from_millis(300)).is_some() {}
}

fn two_shards(keys: &str) -> Setup {
    Setup::with(
        ServerOptions::default()
            .shards(2)
            .config(&format!("[channel]\n{keys}\n")),
    )
}

#[test]
fn metrics_are_prometheus_text_with_every_documented_series() {
    let s = two_shards("");
    let response = http_request(s.server.addr(), "GET", "/metrics", &[], b"");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let metrics = Metrics::scrape(&s);
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .expect("docs/operations.md exists");
    for name in SERIES {
        assert!(
            metrics.0.samples.iter().any(|s| s.metric == *name),
            "series {name} missing from /metrics"
        );
        assert!(
            metrics.0.docs.contains_key(*name),
            "series {name} has no HELP"
        );
        assert!(
            docs.contains(&format!("`{name}`")),
            "docs/operations.md does not describe {name}"
        );
    }
    // Nothing undocumented either.
    for sample in &metrics.0.samples {
        let base = sample
            .metric
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            SERIES.contains(&base),
            "series {} is exposed but not listed",
            sample.metric
        );
    }
    // Per-shard series have one sample per shard.
    let shards: Vec<_> = metrics
        .0
        .samples
        .iter()
        .filter(|s| s.metric == "channel_connections")
        .map(|s| s.labels.get("shard").map(str::to_owned))
        .collect();
    assert_eq!(shards.len(), 2, "{shards:?}");
    assert_eq!(metrics.get("channel_connections"), 0.0);
    assert_eq!(metrics.get("channel_redis_connected"), 1.0);
}

#[test]
fn counters_move_as_traffic_moves() {
    let s = two_shards("max_channels_per_socket = 2");
    let before = Metrics::scrape(&s);

    // Connect: one connection opened, one open.
    let mut socket = s.v2();
    let after_connect = scrape_when(&s, "the connection is counted", |m| {
        m.get("channel_connections") == before.get("channel_connections") + 1.0
    });
    assert_eq!(
        after_connect.get("channel_connections_opened_total"),
        before.get("channel_connections_opened_total") + 1.0
    );

    // Two joins ok, then one refusal of each reason.
    let mut sent = Vec::new();
    let mut send = |socket: &mut TestSocket, text: String| {
        socket.send_text(&text);
        sent.push(text);
    };
    for (n, topic) in ["room:1", "room:2"].iter().enumerate() {
        let token = s.token(topic);
        send(
            &mut socket,
            format!(r#"["j{n}","j{n}","{topic}","phx_join",{{"token":"{token}"}}]"#),
        );
        expect_text(
            &mut socket,
            &ok_reply(Some(&format!("j{n}")), &format!("j{n}"), topic, "{}"),
        );
    }
    let foreign = s.token("room:2");
    send(
        &mut socket,
        format!(r#"["u","u","room:9","phx_join",{{"token":"{foreign}"}}]"#),
    );
    expect_text(
        &mut socket,
        &error_reply(Some("u"), "u", "room:9", "unauthorized"),
    );
    send(
        &mut socket,
        r#"["i","i","phoenix","phx_join",{}]"#.to_owned(),
    );
    expect_text(
        &mut socket,
        &error_reply(Some("i"), "i", "phoenix", "invalid topic"),
    );
    let third = s.token("room:3");
    send(
        &mut socket,
        format!(r#"["t","t","room:3","phx_join",{{"token":"{third}"}}]"#),
    );
    expect_text(
        &mut socket,
        &error_reply(Some("t"), "t", "room:3", "too many channels joined"),
    );

    // One push, published to Redis.
    send(
        &mut socket,
        r#"["j0","p","room:1","shout",{"n":1}]"#.to_owned(),
    );
    expect_text(&mut socket, &ok_reply(Some("j0"), "p", "room:1", "{}"));
    drain(&mut socket);

    let received_bytes: usize = sent.iter().map(String::len).sum();
    let after_client = scrape_when(&s, "the client's messages are counted", |m| {
        m.get("channel_messages_received_total")
            == before.get("channel_messages_received_total") + sent.len() as f64
    });
    let delta = |name: &str| after_client.get(name) - before.get(name);
    assert_eq!(delta("channel_received_bytes_total"), received_bytes as f64);
    assert_eq!(delta("channel_joins_total"), 2.0);
    assert_eq!(delta("channel_joined_channels"), 2.0);
    for reason in ["unauthorized", "invalid topic", "too many channels joined"] {
        assert_eq!(
            after_client.refusals(reason) - before.refusals(reason),
            1.0,
            "refusals for {reason:?}"
        );
    }
    assert_eq!(delta("channel_pushes_published_total"), 1.0);
    assert_eq!(delta("channel_pushes_failed_total"), 0.0);

    // One downstream message: one frame of known size, one latency observation.
    let frame = r#"[null,null,"room:1","wind",{"speed":12}]"#;
    assert_eq!(s.redis.publish("to:room:1:wind", r#"{"speed":12}"#), 1);
    expect_text(&mut socket, frame);
    let after_downstream = scrape_when(&s, "the downstream frame is counted", |m| {
        m.get("channel_frames_sent_total") > after_client.get("channel_frames_sent_total")
    });
    let delta = |name: &str| after_downstream.get(name) - after_client.get(name);
    assert_eq!(delta("channel_frames_sent_total"), 1.0);
    // A text frame under 126 bytes: two header bytes, then the text.
    assert_eq!(delta("channel_sent_bytes_total"), (2 + frame.len()) as f64);
    assert_eq!(delta("channel_redis_messages_received_total"), 1.0);
    assert_eq!(delta("channel_downstream_latency_seconds_count"), 1.0);
    let latency = delta("channel_downstream_latency_seconds_sum");
    assert!(
        latency > 0.0 && latency < 1.0,
        "one Redis-receive → queued latency of {latency} s"
    );

    // A message for a topic nobody here joined is received from Redis but not routed.
    assert_eq!(s.redis.publish("to:nobody:wind", "{}"), 1);
    let after_unrouted = scrape_when(&s, "the unrouted message is counted", |m| {
        m.get("channel_redis_messages_unrouted_total")
            == after_downstream.get("channel_redis_messages_unrouted_total") + 1.0
    });
    assert_eq!(
        after_unrouted.get("channel_frames_sent_total"),
        after_downstream.get("channel_frames_sent_total")
    );

    // Disconnect: closed once, nothing open, no channel left joined.
    drop(socket);
    // The closed counter and the open gauge are two updates: a scrape may fall between them.
    let after_close = scrape_when(&s, "the connection is closed", |m| {
        m.get("channel_connections_closed_total")
            == before.get("channel_connections_closed_total") + 1.0
            && m.get("channel_connections") == before.get("channel_connections")
    });
    assert_eq!(
        after_close.get("channel_joined_channels"),
        before.get("channel_joined_channels")
    );
}

#[test]
fn slow_consumer_close_is_counted() {
    let s = Setup::with_channel_keys("outbound_queue_bytes = 65536");
    let mut socket = s.joined("room:1");
    let _ = socket2::SockRef::from(socket.inner().get_ref()).set_recv_buffer_size(4096);
    s.flood_topic("room:1");
    // The client reads nothing: the queue passes its limit and the connection is closed with
    // 1013 (limits_test pins what the client sees). Counted once, when it overflows.
    let metrics = scrape_within(
        SLOW_CONSUMER_WAIT,
        &s,
        "the slow consumer is counted",
        |m| m.get("channel_slow_consumer_closes_total") >= 1.0,
    );
    assert_eq!(metrics.get("channel_slow_consumer_closes_total"), 1.0);
    assert!(
        metrics.get("channel_downstream_latency_seconds_count") >= 1.0,
        "the flood was observed in the latency histogram"
    );
}

#[test]
fn redis_reconnects_are_counted() {
    let mut s = Setup::new();
    let before = Metrics::scrape(&s);
    assert_eq!(before.get("channel_redis_reconnects_total"), 0.0);
    s.redis.restart();
    let after = scrape_within(RECONNECT_WAIT, &s, "both Redis connections are back", |m| {
        m.get("channel_redis_connected") == 1.0 && m.get("channel_redis_reconnects_total") >= 2.0
    });
    // The subscriber and the publisher each came back once.
    assert_eq!(after.get("channel_redis_reconnects_total"), 2.0);
}
