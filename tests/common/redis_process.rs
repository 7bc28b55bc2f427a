//! One `redis-server` process of a multi-process test deployment (a cluster node, a Sentinel data
//! node or a sentinel): started with its arguments in a scratch directory, logged to a file per
//! start, killed with `kill -9`, started again with the same arguments.
//!
//! What it owns: the process and its log. What it must never do: outlive the test process (it is
//! spawned with `PR_SET_PDEATHSIG`, `whole_process.rs`) or wait without a deadline.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::whole_process::spawn_for_the_whole_process;
use super::{log_tail, redis_server::ping};

/// How long a started process may take to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// One `redis-server` process.
pub struct RedisProcess {
    pub port: u16,
    dir: PathBuf,
    /// Arguments after `redis-server`.
    args: Vec<String>,
    child: Option<Child>,
    starts: usize,
}

/// The arguments every data node of a test deployment starts with: `port` on 127.0.0.1, in the
/// foreground, no persistence (a dump file named by port, never written on its own).
pub fn data_node_args(port: u16) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dbfilename",
        &format!("dump-{port}.rdb"),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

impl RedisProcess {
    /// A process on `port` run in `dir` with `args` (not started yet).
    pub fn new(port: u16, dir: PathBuf, args: Vec<String>) -> RedisProcess {
        RedisProcess {
            port,
            dir,
            args,
            child: None,
            starts: 0,
        }
    }

    /// The arguments of the next start (a node restarted in another role).
    pub fn args_mut(&mut self) -> &mut Vec<String> {
        &mut self.args
    }

    /// The log of the current (or last) start.
    pub fn log_path(&self) -> PathBuf {
        self.dir
            .join(format!("node-{}-{}.log", self.port, self.starts))
    }

    /// Starts the process (again) and waits until it answers PING.
    pub fn start(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).expect("the scratch dir is writable");
        let log_err = log.try_clone().expect("a file handle can be cloned");
        let mut command = Command::new("redis-server");
        command
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        self.child = Some(spawn_for_the_whole_process(command));
        let deadline = Instant::now() + READY_TIMEOUT;
        while !ping(self.port) {
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            assert!(
                exited.is_none(),
                "redis-server on port {} exited ({}) before answering PING:\n{}",
                self.port,
                exited.map(|status| status.to_string()).unwrap_or_default(),
                log_tail(&self.log_path(), 40)
            );
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING:\n{}",
                self.port,
                log_tail(&self.log_path(), 40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`, and the process reaped.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}
