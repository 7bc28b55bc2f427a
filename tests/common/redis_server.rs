//! A private `redis-server` for one test, on a free port, a pattern subscriber to watch what
//! the server under test publishes, and a `MONITOR` to watch the commands it runs, as they run.
//!
//! The Redis is started in the foreground (not daemonized) so that the test owns the process:
//! it is killed on `Drop`, and `kill`/`restart` let a test take Redis away under a running
//! server. It keeps nothing on disk and never uses port 6379.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{free_port, log_tail, scratch_dir};

/// How long `redis-server` may take to answer PING after it is spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` child process bound to 127.0.0.1 on a port of its own.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    starts: usize,
    /// Further `redis-server` arguments, kept across restarts.
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts a fresh, empty Redis on a free port and waits until it answers PING.
    ///
    /// Panics with an install hint if `redis-server` is not on PATH.
    pub fn start() -> RedisServer {
        RedisServer::start_with_args(&[])
    }

    /// Like [`RedisServer::start`] with further `redis-server` arguments (for example
    /// `["--enable-debug-command", "local"]` for `DEBUG SLEEP`), kept across restarts.
    pub fn start_with_args(args: &[&str]) -> RedisServer {
        let dir = scratch_dir("redis");
        let mut last_failure = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                child: None,
                port,
                dir: dir.clone(),
                starts: 0,
                extra_args: args.iter().map(|a| a.to_string()).collect(),
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                // Another process took the port between probe and bind: try another one.
                Err(failure) => last_failure = failure,
            }
        }
        panic!("redis-server did not start after 5 attempts; last failure:\n{last_failure}");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id of the running `redis-server`, if it is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills Redis with SIGKILL (no goodbye to its clients) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills Redis if it runs, then starts a new, empty one on the same port and waits until it
    /// answers PING. Subscriptions and data of the old one are gone.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(failure) if Instant::now() >= deadline => {
                    panic!(
                        "redis-server did not restart on port {}:\n{failure}",
                        self.port
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// A new synchronous connection to this Redis.
    pub fn connection(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).expect("a redis:// URL we built parses");
        client
            .get_connection_with_timeout(READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("cannot connect to test Redis at {}: {e}", self.url()))
    }

    /// `FCALL channel_publish 1 <topic> <event> <payload>` (the publish function every server
    /// installs); Redis's answer (the position). Fails the test on an error.
    pub fn fcall_publish(
        &self,
        topic: &str,
        event: &str,
        payload: impl AsRef<[u8]>,
    ) -> redis::Value {
        redis::cmd("FCALL")
            .arg("channel_publish")
            .arg(1)
            .arg(topic)
            .arg(event)
            .arg(payload.as_ref())
            .query(&mut self.connection())
            .unwrap_or_else(|e| panic!("FCALL channel_publish on {topic} failed: {e}"))
    }

    /// Connections holding `SSUBSCRIBE` to `topic`'s sharded channel (`PUBSUB SHARDNUMSUB`).
    pub fn shard_subscribers(&self, topic: &str) -> i64 {
        let (_, count): (String, i64) = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(super::cluster::sharded_channel(topic))
            .query(&mut self.connection())
            .expect("PUBSUB SHARDNUMSUB works on Redis 7");
        count
    }

    /// `PUBLISH channel payload`; returns how many subscribers received it.
    pub fn publish(&self, channel: &str, payload: impl AsRef<[u8]>) -> i64 {
        let mut conn = self.connection();
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload.as_ref())
            .query(&mut conn)
            .unwrap_or_else(|e| panic!("PUBLISH {channel} to test Redis failed: {e}"))
    }

    /// Subscribes to `pattern` (`PSUBSCRIBE`) and returns once the subscription is active.
    /// Messages are collected by a background thread until the subscriber is dropped or Redis
    /// goes away.
    pub fn subscribe(&self, pattern: &str) -> RedisSubscriber {
        RedisSubscriber::start(self, pattern)
    }

    /// A `MONITOR` connection: every command Redis runs from now on, in the order it runs them.
    pub fn monitor(&self) -> RedisMonitor {
        let mut conn = self.connection();
        let ok: String = redis::cmd("MONITOR")
            .query(&mut conn)
            .unwrap_or_else(|e| panic!("MONITOR on test Redis failed: {e}"));
        assert_eq!(ok, "OK", "MONITOR answered {ok:?}");
        RedisMonitor { conn }
    }

    /// The log of the current (or last) `redis-server` process.
    pub fn log(&self) -> String {
        log_tail(&self.log_path(), 200)
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .join(format!("redis-{}-{}.log", self.port, self.starts))
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log_path = self.log_path();
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("cannot clone log handle: {e}"))?;
        let spawned = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "yes"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                panic!("redis-server not found: install it (apt-get install redis-server)")
            }
            Err(e) => panic!("cannot spawn redis-server: {e}"),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "redis-server on port {} exited with {status}:\n{}",
                    self.port,
                    log_tail(&log_path, 50)
                ));
            }
            if ping(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-server on port {} did not answer PING within {READY_TIMEOUT:?}:\n{}",
                    self.port,
                    log_tail(&log_path, 50)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- test redis-server on port {} (log {}) ---\n{}",
                self.port,
                self.log_path().display(),
                self.log()
            );
        }
        self.kill();
    }
}

/// True if something on `port` answers `PING` with `+PONG`.
pub(super) fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// One message seen by a [`RedisSubscriber`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisMessage {
    pub channel: String,
    pub payload: Vec<u8>,
}

impl RedisMessage {
    /// The payload as UTF-8 text (lossy), for assertions on JSON payloads.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A `PSUBSCRIBE` on its own connection and thread, collecting every message it sees.
pub struct RedisSubscriber {
    pattern: String,
    rx: Receiver<RedisMessage>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RedisSubscriber {
    fn start(redis: &RedisServer, pattern: &str) -> RedisSubscriber {
        Self::start_on(redis.connection(), pattern)
    }

    /// `PSUBSCRIBE pattern` on the Redis at `url` (a node of a Sentinel deployment, say).
    pub fn on_url(url: &str, pattern: &str) -> RedisSubscriber {
        let client = redis::Client::open(url).expect("a redis:// URL the test built parses");
        let conn = client
            .get_connection_with_timeout(READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        Self::start_on(conn, pattern)
    }

    fn start_on(mut conn: redis::Connection, pattern: &str) -> RedisSubscriber {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let thread_stop = stop.clone();
        let thread_pattern = pattern.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("redis-sub {pattern}"))
            .spawn(move || {
                let mut pubsub = conn.as_pubsub();
                if let Err(e) = pubsub.psubscribe(&thread_pattern) {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
                // The read timeout lets the thread notice `stop`; it is not a test deadline.
                if let Err(e) = pubsub.set_read_timeout(Some(Duration::from_millis(100))) {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                while !thread_stop.load(Ordering::Relaxed) {
                    match pubsub.get_message() {
                        Ok(msg) => {
                            let message = RedisMessage {
                                channel: msg.get_channel_name().to_string(),
                                payload: msg.get_payload_bytes().to_vec(),
                            };
                            if tx.send(message).is_err() {
                                return;
                            }
                        }
                        Err(e) if e.is_timeout() => continue,
                        // Redis went away (a test killed it): this subscriber is finished.
                        Err(_) => return,
                    }
                }
            })
            .expect("spawning a thread works");
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("PSUBSCRIBE {pattern} on test Redis failed: {e}"),
            Err(_) => panic!("PSUBSCRIBE {pattern} on test Redis did not complete"),
        }
        RedisSubscriber {
            pattern: pattern.to_string(),
            rx,
            stop,
            thread: Some(thread),
        }
    }

    /// The next message, or `None` if none arrives within `timeout`.
    pub fn try_recv_timeout(&self, timeout: Duration) -> Option<RedisMessage> {
        match self.rx.recv_timeout(timeout) {
            Ok(message) => Some(message),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// The next message; panics if none arrives within `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> RedisMessage {
        self.try_recv_timeout(timeout).unwrap_or_else(|| {
            panic!(
                "no Redis message on pattern {:?} within {timeout:?}",
                self.pattern
            )
        })
    }

    /// Panics if any message arrives within `period`.
    pub fn expect_nothing(&self, period: Duration) {
        if let Some(message) = self.try_recv_timeout(period) {
            panic!(
                "expected no Redis message on pattern {:?}, got {} {:?}",
                self.pattern,
                message.channel,
                message.text()
            );
        }
    }
}

impl Drop for RedisSubscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A connection in `MONITOR` mode. Each line is as Redis prints it, e.g.
/// `1765000000.123456 [0 lua] "ZADD" "presence:{_processes}:expiry" "1765000006123" "abc"`: the Redis clock,
/// the client (`lua` for a command run by a script), then the command and its arguments, quoted.
pub struct RedisMonitor {
    conn: redis::Connection,
}

impl RedisMonitor {
    /// The next line that satisfies `pred`, and when it arrived; panics after `timeout`.
    pub fn next_where(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> (String, Instant) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no matching MONITOR line within {timeout:?}"
            );
            self.conn
                .set_read_timeout(Some(left))
                .expect("a positive read timeout is accepted");
            let line = match self.conn.recv_response() {
                Ok(redis::Value::SimpleString(line)) => line,
                Ok(other) => panic!("MONITOR sent {other:?}"),
                Err(e) if e.is_timeout() => panic!("no matching MONITOR line within {timeout:?}"),
                Err(e) => panic!("MONITOR connection failed: {e}"),
            };
            if pred(&line) {
                return (line, Instant::now());
            }
        }
    }
}
