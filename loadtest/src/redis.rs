//! The Redis side of a run, spoken in raw RESP over blocking sockets on dedicated threads.
//!
//! Owns the open-loop publisher (downstream scenarios; classic `PUBLISH` or the publish function,
//! each topic's commands sent to the master the run's topology names), the `PSUBSCRIBE from:*`
//! receiver (upstream) and `INFO cpu`. A hand-written RESP writer/reader keeps the publisher cheap and pipelined; these
//! threads never touch the WebSocket clients.

use crate::resp::{encode_command, parse_resp, Resp};
use crate::scenario::PublishPath;
use crate::stamp::{find_stamp, now_us, payload_template, write_stamp, STAMP_POS};
use crate::stats::ThreadStats;
use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Redis's own CPU time (used_cpu_sys + used_cpu_user of `INFO cpu`) in µs.
pub fn redis_cpu_us(addr: SocketAddr) -> Option<u64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut cmd = Vec::new();
    encode_command(&mut cmd, &[b"INFO", b"cpu"]);
    s.write_all(&cmd).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Ok(Some((Resp::Bulk(Some(text)), _))) = parse_resp(&buf) {
            return parse_info_cpu(std::str::from_utf8(text).ok()?);
        }
    }
}

/// used_cpu_sys + used_cpu_user of an `INFO cpu` text, in µs.
pub fn parse_info_cpu(text: &str) -> Option<u64> {
    let mut total = 0.0;
    let mut found = 0;
    for line in text.lines() {
        if let Some((k, v)) = line.trim().split_once(':') {
            if k == "used_cpu_sys" || k == "used_cpu_user" {
                total += v.parse::<f64>().ok()?;
                found += 1;
            }
        }
    }
    (found == 2).then_some((total * 1e6) as u64)
}

/// The measured window shared by publisher, clients and subscriber: stamps in `[start, end)` count.
pub struct WindowClock {
    pub start_us: AtomicU64,
    pub end_us: AtomicU64,
}

impl Default for WindowClock {
    fn default() -> Self {
        WindowClock {
            start_us: AtomicU64::new(u64::MAX),
            end_us: AtomicU64::new(u64::MAX),
        }
    }
}

impl WindowClock {
    pub fn contains(&self, t_us: u64) -> bool {
        t_us >= self.start_us.load(Relaxed) && t_us < self.end_us.load(Relaxed)
    }
}

/// What an open-loop publisher did.
#[derive(Debug, Default)]
pub struct Published {
    /// Messages stamped inside the window, per topic index.
    pub in_window: Vec<u64>,
    /// Every message sent (warmup and window), per topic index.
    pub per_topic: Vec<u64>,
    pub total: u64,
    pub errors: u64,
    /// The first error Redis answered (a missing function, a `MOVED`…).
    pub first_error: Option<String>,
}

/// What an open-loop publisher is asked to do.
pub struct PublishPlan {
    /// The Redis masters publishes go to (one for a single Redis).
    pub targets: Vec<SocketAddr>,
    /// Topic names; publishes go round-robin over them.
    pub topics: Vec<String>,
    /// For each topic, the index into `targets` of the master serving its slot.
    pub topic_target: Vec<usize>,
    /// `PUBLISH to:<topic>:<event>` or `FCALL channel_publish 1 <topic> <event>`.
    pub path: PublishPath,
    pub event: String,
    /// Publishes per second.
    pub rate: f64,
    pub message_bytes: usize,
    /// Publishing stops at this time (µs, [`now_us`] clock).
    pub stop_at_us: u64,
}

/// Publishes `rate` messages/s round-robin over `topics` (`PUBLISH to:<topic>:<event>` or
/// `FCALL channel_publish 1 <topic> <event>`, each on its topic's master) until `stop_at_us`,
/// each stamped with its scheduled send time (open loop: a late publisher shows up as latency, not
/// as a lower rate). Replies are read and counted on one more thread per master.
pub fn publish_open_loop(
    plan: &PublishPlan,
    window: &WindowClock,
    sent_counter: &AtomicU64,
) -> Result<Published> {
    let PublishPlan {
        ref targets,
        ref topics,
        ref topic_target,
        path,
        ref event,
        rate,
        message_bytes,
        stop_at_us,
    } = *plan;
    let replies = Arc::new(ReplyCount::default());
    let done = Arc::new(AtomicBool::new(false));
    let mut socks = Vec::new();
    let mut readers = Vec::new();
    for addr in targets {
        let sock = TcpStream::connect(addr)
            .with_context(|| format!("publisher: connecting to Redis {addr}"))?;
        sock.set_nodelay(true)?;
        let reader = sock.try_clone()?;
        let (replies, done) = (replies.clone(), done.clone());
        readers.push(
            std::thread::Builder::new()
                .name("lt-pub-replies".into())
                .spawn(move || count_replies(reader, &replies, &done))?,
        );
        socks.push(sock);
    }
    // Pre-built commands per topic, the payload last, its stamp patched in place:
    // `PUBLISH to:<topic>:<event> <payload>` or `FCALL channel_publish 1 <topic> <event> <payload>`.
    let template = payload_template(message_bytes);
    let mut cmds: Vec<(Vec<u8>, usize)> = topics
        .iter()
        .map(|t| {
            let mut c = Vec::new();
            match path {
                PublishPath::Publish => {
                    let chan = format!("to:{t}:{event}");
                    encode_command(&mut c, &[b"PUBLISH", chan.as_bytes(), &template]);
                }
                PublishPath::Function => encode_command(
                    &mut c,
                    &[
                        b"FCALL",
                        b"channel_publish",
                        b"1",
                        t.as_bytes(),
                        event.as_bytes(),
                        &template,
                    ],
                ),
            }
            let pos = c.len() - 2 - template.len() + STAMP_POS;
            (c, pos)
        })
        .collect();
    let mut outs: Vec<Vec<u8>> = targets
        .iter()
        .map(|_| Vec::with_capacity(64 * 1024))
        .collect();
    let mut published = Published {
        in_window: vec![0; topics.len()],
        per_topic: vec![0; topics.len()],
        ..Default::default()
    };
    let t0 = now_us();
    let period_us = 1e6 / rate;
    let mut i: u64 = 0;
    loop {
        let now = now_us();
        if now >= stop_at_us {
            break;
        }
        let mut batch = 0;
        loop {
            let sched = t0 + (i as f64 * period_us) as u64;
            if sched > now || sched >= stop_at_us {
                break;
            }
            let topic = (i % topics.len() as u64) as usize;
            let (cmd, pos) = &mut cmds[topic];
            write_stamp(cmd, *pos, sched);
            outs[topic_target[topic]].extend_from_slice(cmd);
            published.per_topic[topic] += 1;
            batch += cmd.len();
            if window.contains(sched) {
                published.in_window[topic] += 1;
            }
            i += 1;
            if batch > 256 * 1024 {
                break;
            }
        }
        for (sock, out) in socks.iter_mut().zip(outs.iter_mut()) {
            if !out.is_empty() {
                sock.write_all(out).context("publisher: writing to Redis")?;
                out.clear();
            }
        }
        sent_counter.store(i, Relaxed);
        let next = t0 + (i as f64 * period_us) as u64;
        let now = now_us();
        if next > now {
            std::thread::sleep(Duration::from_micros(
                (next - now).min(stop_at_us.saturating_sub(now)),
            ));
        }
    }
    published.total = i;
    // Let the replies arrive, then stop the readers.
    let deadline = now_us() + 2_000_000;
    while replies.replies.load(Relaxed) < i && now_us() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    done.store(true, Relaxed);
    for sock in &socks {
        let _ = sock.shutdown(std::net::Shutdown::Both);
    }
    for r in readers {
        let _ = r.join();
    }
    published.errors = replies.errors.load(Relaxed);
    published.first_error = replies.first_error.lock().ok().and_then(|g| g.clone());
    Ok(published)
}

/// What the reply readers of a publisher counted.
#[derive(Default)]
struct ReplyCount {
    replies: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

/// Counts the replies on `sock` (one RESP value each: `:N` for PUBLISH, a bulk string for FCALL)
/// until `done` or the socket closes.
fn count_replies(mut sock: TcpStream, count: &ReplyCount, done: &AtomicBool) {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    while !done.load(Relaxed) {
        let n = match sock.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut pos = 0;
        while let Ok(Some((v, used))) = parse_resp(&buf[pos..]) {
            pos += used;
            count.replies.fetch_add(1, Relaxed);
            if let Resp::Error(e) = v {
                count.errors.fetch_add(1, Relaxed);
                if let Ok(mut first) = count.first_error.lock() {
                    first.get_or_insert_with(|| String::from_utf8_lossy(e).into_owned());
                }
            }
        }
        buf.drain(..pos);
    }
}

/// Receives `from:<pattern>` messages until `stop` is set, recording the stamps of payloads in
/// `stats` (upstream scenarios). Returns once subscribed through `ready`.
pub fn subscribe_and_measure(
    addr: SocketAddr,
    pattern: &str,
    window: Arc<WindowClock>,
    stats: Arc<ThreadStats>,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<Result<()>>,
) {
    let r = (|| -> Result<TcpStream> {
        let mut s = TcpStream::connect(addr)
            .with_context(|| format!("subscriber: connecting to Redis {addr}"))?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut cmd = Vec::new();
        encode_command(&mut cmd, &[b"PSUBSCRIBE", pattern.as_bytes()]);
        s.write_all(&cmd)?;
        Ok(s)
    })();
    let mut sock = match r {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
    let mut chunk = vec![0u8; 128 * 1024];
    let mut ready = Some(ready);
    while !stop.load(Relaxed) {
        let n = match sock.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => {
                stats.note_error(format!("subscriber: {e}"));
                break;
            }
        };
        let now = now_us();
        buf.extend_from_slice(&chunk[..n]);
        let mut pos = 0;
        loop {
            match parse_resp(&buf[pos..]) {
                Ok(Some((v, used))) => {
                    pos += used;
                    if let Resp::Array(items) = v {
                        match items.first() {
                            Some(Resp::Bulk(Some(b"pmessage"))) => {
                                if let Some(Resp::Bulk(Some(payload))) = items.get(3) {
                                    if let Some(t) = find_stamp(payload) {
                                        stats.record_delivery(window.contains(t), t, now);
                                    } else {
                                        stats.other_frames.fetch_add(1, Relaxed);
                                    }
                                }
                            }
                            Some(Resp::Bulk(Some(b"psubscribe"))) => {
                                if let Some(r) = ready.take() {
                                    let _ = r.send(Ok(()));
                                }
                            }
                            _ => {}
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    stats.note_error(format!("subscriber: {e}"));
                    return;
                }
            }
        }
        buf.drain(..pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_cpu_is_summed_in_us() {
        let t = "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:0.250000\r\nused_cpu_sys_children:9\r\n";
        assert_eq!(parse_info_cpu(t), Some(1_750_000));
        assert_eq!(parse_info_cpu("# CPU\r\n"), None);
    }

    /// A loopback "Redis" that records each command's arguments and answers an empty bulk
    /// string (what `FCALL channel_publish` returns), or `-MOVED …` for a command that names
    /// `moved_topic`. Returns its address and what it recorded once its client closed.
    fn recording_redis(
        moved_topic: &'static str,
    ) -> (SocketAddr, std::thread::JoinHandle<Vec<Vec<String>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 16 * 1024];
            loop {
                let n = match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return seen,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                let mut pos = 0;
                while let Ok(Some((Resp::Array(items), used))) = parse_resp(&buf[pos..]) {
                    pos += used;
                    let args: Vec<String> = items
                        .iter()
                        .map(|i| match i {
                            Resp::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
                            other => format!("{other:?}"),
                        })
                        .collect();
                    let reply: &[u8] = if args.iter().any(|a| a == moved_topic) {
                        b"-MOVED 866 127.0.0.1:1\r\n"
                    } else {
                        b"$0\r\n\r\n"
                    };
                    if s.write_all(reply).is_err() {
                        return seen;
                    }
                    seen.push(args);
                }
                buf.drain(..pos);
            }
        });
        (addr, handle)
    }

    #[test]
    fn function_publishes_go_to_each_topics_master_and_replies_are_counted() {
        let (a, seen_a) = recording_redis("none");
        let (b, seen_b) = recording_redis("t2");
        let topics: Vec<String> = ["t0", "t1", "t2"].iter().map(|t| t.to_string()).collect();
        let plan = PublishPlan {
            targets: vec![a, b],
            topics,
            topic_target: vec![0, 1, 1],
            path: PublishPath::Function,
            event: "msg".into(),
            rate: 600.0,
            message_bytes: 64,
            stop_at_us: now_us() + 100_000,
        };
        let sent = AtomicU64::new(0);
        let published = publish_open_loop(&plan, &WindowClock::default(), &sent).unwrap();
        let (seen_a, seen_b) = (seen_a.join().unwrap(), seen_b.join().unwrap());
        assert!(published.total >= 30, "{published:?}");
        assert_eq!(published.per_topic.iter().sum::<u64>(), published.total);
        assert_eq!(seen_a.len() as u64, published.per_topic[0]);
        assert_eq!(
            seen_b.len() as u64,
            published.per_topic[1] + published.per_topic[2]
        );
        for args in &seen_a {
            assert_eq!(&args[..5], ["FCALL", "channel_publish", "1", "t0", "msg"]);
            assert!(args[5].starts_with("{\"t\":"), "{args:?}");
        }
        assert!(seen_b.iter().all(|a| a[3] == "t1" || a[3] == "t2"));
        // Every `-MOVED` answer is an error, and the first one is kept.
        assert_eq!(published.errors, published.per_topic[2]);
        assert_eq!(
            published.first_error.as_deref(),
            Some("MOVED 866 127.0.0.1:1")
        );
    }

    #[test]
    fn classic_publishes_name_the_topics_channel() {
        let (a, seen) = recording_redis("none");
        let plan = PublishPlan {
            targets: vec![a],
            topics: vec!["room:1".into()],
            topic_target: vec![0],
            path: PublishPath::Publish,
            event: "ev".into(),
            rate: 200.0,
            message_bytes: 64,
            stop_at_us: now_us() + 50_000,
        };
        let published =
            publish_open_loop(&plan, &WindowClock::default(), &AtomicU64::new(0)).unwrap();
        let seen = seen.join().unwrap();
        assert_eq!(seen.len() as u64, published.total);
        assert!(seen
            .iter()
            .all(|a| a.len() == 3 && a[0] == "PUBLISH" && a[1] == "to:room:1:ev"));
        assert_eq!(published.errors, 0);
    }

    #[test]
    fn window_contains_half_open_interval() {
        let w = WindowClock::default();
        assert!(!w.contains(5));
        w.start_us.store(10, Relaxed);
        w.end_us.store(20, Relaxed);
        assert!(w.contains(10) && w.contains(19) && !w.contains(20) && !w.contains(9));
    }
}
