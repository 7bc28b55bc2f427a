//! The `channel` binary under test, run as a child process on a free port.
//!
//! It is started exactly as an operator would start it (`channel serve --port P --redis-url U
//! --jwt-secret S --shards N [--config FILE]`), its stderr and stdout go to a log file that is
//! printed when the test panics, and it is stopped on `Drop` (SIGTERM, then SIGKILL).

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::http::try_http_raw;
use super::redis_server::RedisServer;
use super::{free_port, log_tail, scratch_dir};

/// The JWT secret the test servers use unless a test asks for another.
pub const TEST_JWT_SECRET: &str = "channel-test-secret-0123456789abcdef";

/// How long the server may take to answer on its port after it is spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `Drop` waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How a test wants the server started. `ServerOptions::default()` is one shard, the test
/// secret, no config file.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `--shards N`.
    pub shards: usize,
    /// `--jwt-secret S`; `None` leaves it out (the server then makes a random one).
    pub jwt_secret: Option<String>,
    /// Contents of a TOML file passed as `--config FILE`.
    pub config: Option<String>,
    /// Further arguments after the standard ones.
    pub extra_args: Vec<String>,
    /// Environment variables for the child (on top of the test's, with `CHANNEL_*` removed).
    pub env: Vec<(String, String)>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            shards: 1,
            jwt_secret: Some(TEST_JWT_SECRET.to_string()),
            config: None,
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl ServerOptions {
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    pub fn jwt_secret(mut self, secret: Option<&str>) -> Self {
        self.jwt_secret = secret.map(str::to_string);
        self
    }

    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_string());
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }
}

/// A running `channel serve`.
pub struct ChannelServer {
    child: Option<Child>,
    port: u16,
    log_path: PathBuf,
    jwt_secret: Option<String>,
}

impl ChannelServer {
    /// Starts the server against `redis` and waits until it answers HTTP on its port.
    pub fn start(redis: &RedisServer, opts: ServerOptions) -> ChannelServer {
        Self::start_with_redis_url(&redis.url(), opts)
    }

    /// Starts the server against any Redis URL (for example one where nothing listens, to test
    /// a server that starts while Redis is down).
    pub fn start_with_redis_url(redis_url: &str, opts: ServerOptions) -> ChannelServer {
        Self::start_with_redis_args(&["--redis-url", redis_url], opts)
    }

    /// Starts the server with the flags that choose its Redis deployment (for example
    /// `["--redis-sentinel", "127.0.0.1:26379", "--redis-sentinel-master", "m"]`).
    pub fn start_with_redis_args(redis_args: &[&str], opts: ServerOptions) -> ChannelServer {
        let redis_args: Vec<String> = redis_args.iter().map(|a| a.to_string()).collect();
        let dir = scratch_dir("channel");
        let config_path = write_config(&dir, &opts);
        let mut last_failure = String::new();
        for attempt in 0..3 {
            let port = free_port();
            let log_path = dir.join(format!("channel-{port}-{attempt}.log"));
            match try_start(&redis_args, port, &opts, config_path.as_deref(), log_path) {
                Ok(server) => return server,
                Err(failure) => {
                    last_failure = failure.message;
                    // Lost the race for the port to another process: try another port.
                    if !failure.port_taken {
                        break;
                    }
                }
            }
        }
        panic!("`channel serve` did not start: {last_failure}");
    }

    /// Starts the server on a given `port` (say, the port of a server that was just stopped,
    /// to test that clients come back to a restarted server) and waits until it answers. Does
    /// not fall back to another port: a port still held (for example by a process that has not
    /// exited yet) is retried for up to 5 s, then the test fails with the server's log.
    pub fn start_on_port(redis: &RedisServer, port: u16, opts: ServerOptions) -> ChannelServer {
        let dir = scratch_dir("channel");
        let config_path = write_config(&dir, &opts);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut attempt = 0;
        loop {
            let log_path = dir.join(format!("channel-{port}-{attempt}.log"));
            let redis_args = ["--redis-url".to_string(), redis.url()];
            match try_start(&redis_args, port, &opts, config_path.as_deref(), log_path) {
                Ok(server) => return server,
                Err(failure) => {
                    if !failure.port_taken || Instant::now() >= deadline {
                        panic!(
                            "`channel serve` did not start on port {port}: {}",
                            failure.message
                        );
                    }
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Sends `signal` (for example `libc::SIGTERM`) and returns at once, so that a test can
    /// watch the shutdown while it happens; [`ChannelServer::wait_for_exit`] then reaps it.
    pub fn send_signal(&self, signal: libc::c_int) {
        let child = self
            .child
            .as_ref()
            .expect("send_signal() asked of a server that was already stopped");
        // SAFETY: kill(2) on the pid of our own child only delivers a signal. The child is not
        // reaped before `wait_for_exit`/`terminate`, so the pid cannot have been reused.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
    }

    /// Waits up to `timeout` for the process to exit by itself, sending no signal; returns its
    /// status, or `None` if it was still running (it is left running).
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => return None,
            }
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `ws://127.0.0.1:<port>/websocket?vsn=<vsn>`.
    pub fn ws_url(&self, vsn: &str) -> String {
        format!("ws://127.0.0.1:{}/websocket?vsn={vsn}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JWT secret the server was started with, if one was given.
    pub fn jwt_secret(&self) -> Option<&str> {
        self.jwt_secret.as_deref()
    }

    /// The process id; panics if the server was already stopped.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("pid() asked of a server that was already stopped")
    }

    /// Everything the server wrote to stderr and stdout so far (the last 500 lines).
    pub fn log(&self) -> String {
        log_tail(&self.log_path, 500)
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit; returns its status, or
    /// `None` if it was still running (it is then killed).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal_and_wait(libc::SIGTERM, timeout)
    }

    /// Sends SIGINT and waits like [`ChannelServer::terminate`].
    pub fn interrupt(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal_and_wait(libc::SIGINT, timeout)
    }

    /// Kills the server with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn signal_and_wait(&mut self, signal: libc::c_int, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // SAFETY: kill(2) on the pid of our own unreaped child only delivers a signal.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    /// Ready means: `/healthz` answers with any HTTP status (503 is fine: Redis may be down on
    /// purpose), or the port has accepted connections for a while without answering HTTP.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut accepting_since: Option<Instant> = None;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("it exited with {status} before answering"));
                }
            }
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
                let since = *accepting_since.get_or_insert_with(Instant::now);
                let probe = try_http_raw(
                    self.addr(),
                    b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
                    Duration::from_secs(2),
                );
                if matches!(&probe, Ok(raw) if raw.starts_with(b"HTTP/1."))
                    || since.elapsed() > Duration::from_secs(5)
                {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "it did not answer on port {} within {READY_TIMEOUT:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for ChannelServer {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        if std::thread::panicking() {
            eprintln!(
                "--- channel server on port {} (log {}) ---\n{}",
                self.port,
                self.log_path.display(),
                self.log()
            );
        }
        let _ = self.terminate(STOP_TIMEOUT);
        self.child = None;
    }
}

/// Why one start failed: the server's answer and log, and whether its port was taken.
struct StartFailure {
    message: String,
    port_taken: bool,
}

/// One start of `channel serve` on `port`, waiting until it answers; on failure the process is
/// gone and its log is in the failure (not printed again on drop).
fn try_start(
    redis_args: &[String],
    port: u16,
    opts: &ServerOptions,
    config_path: Option<&std::path::Path>,
    log_path: PathBuf,
) -> Result<ChannelServer, StartFailure> {
    let child = spawn_serve(redis_args, port, opts, config_path, &log_path);
    let mut server = ChannelServer {
        child: Some(child),
        port,
        log_path,
        jwt_secret: opts.jwt_secret.clone(),
    };
    let Err(failure) = server.wait_ready() else {
        return Ok(server);
    };
    let log = server.log();
    let port_taken = log.contains("in use") || log.contains("AddrInUse");
    server.kill();
    server.child = None;
    Err(StartFailure {
        message: format!("{failure}\n--- server log ---\n{log}"),
        port_taken,
    })
}

/// Writes the options' config file (if any) into `dir`; returns its path.
fn write_config(dir: &std::path::Path, opts: &ServerOptions) -> Option<PathBuf> {
    opts.config.as_ref().map(|toml| {
        let path = dir.join("channel.toml");
        std::fs::write(&path, toml).expect("the scratch dir is writable");
        path
    })
}

/// Starts `channel serve` with `opts`, its output to `log_path`. The developer's own CHANNEL_*
/// settings never leak into a test; the log has no colour codes (failing tests print it).
fn spawn_serve(
    redis_args: &[String],
    port: u16,
    opts: &ServerOptions,
    config_path: Option<&std::path::Path>,
    log_path: &std::path::Path,
) -> Child {
    let log = std::fs::File::create(log_path).expect("the scratch dir is writable");
    let log_err = log.try_clone().expect("a file handle can be cloned");
    let mut command = Command::new(env!("CARGO_BIN_EXE_channel"));
    command
        .arg("serve")
        .args(["--port", &port.to_string()])
        .args(redis_args)
        .args(["--shards", &opts.shards.to_string()]);
    if let Some(secret) = &opts.jwt_secret {
        command.args(["--jwt-secret", secret]);
    }
    if let Some(path) = config_path {
        command.arg("--config").arg(path);
    }
    command.args(&opts.extra_args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CHANNEL_") {
            command.env_remove(&name);
        }
    }
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "info");
    }
    command.env("RUST_BACKTRACE", "1");
    command.env("NO_COLOR", "1");
    for (name, value) in &opts.env {
        command.env(name, value);
    }
    command
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", env!("CARGO_BIN_EXE_channel")))
}
