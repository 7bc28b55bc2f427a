//! A real Sentinel deployment for the tests of one binary: a master, a replica and three
//! sentinels, each a `redis-server` process on a free port of 127.0.0.1 (never 6379), with
//! short sentinel timeouts so that a failover takes about a second or two.
//!
//! The deployment is shared by every test of a binary ([`SentinelDeployment::shared`]): it is
//! made once and lives until the test process exits. Its processes are spawned from one
//! long-lived thread with `PR_SET_PDEATHSIG`, so that the kernel kills them when the test
//! process ends (a `static` is never dropped); tests that fail over take the deployment's
//! lock for their whole length, so they run one after the other.
//!
//! It never sleeps where it can wait for an event: every wait polls the sentinels or the
//! nodes for the state it needs, with a deadline that fails the test.

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::redis_process::{data_node_args, RedisProcess};
use super::{free_port, log_tail, scratch_dir};

/// The master's name in the sentinels.
pub const MASTER_NAME: &str = "channel-test";
/// How long the sentinels may take to agree on a new master (down-after 1 s + election +
/// promotion, with margin for a loaded machine).
const SWITCH_TIMEOUT: Duration = Duration::from_secs(30);

/// A master + replica + 3 sentinels.
pub struct SentinelDeployment {
    /// The two data nodes; which one is master changes with failovers.
    data: Vec<RedisProcess>,
    sentinels: Vec<RedisProcess>,
}

impl SentinelDeployment {
    /// The deployment of this test binary, started on first use, locked for the caller.
    pub fn shared() -> MutexGuard<'static, SentinelDeployment> {
        static DEPLOYMENT: OnceLock<Mutex<SentinelDeployment>> = OnceLock::new();
        let deployment = DEPLOYMENT
            .get_or_init(|| Mutex::new(SentinelDeployment::start()))
            .lock()
            // A test that failed while holding it leaves processes that still work.
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        deployment.settle();
        deployment
    }

    fn start() -> SentinelDeployment {
        let dir = scratch_dir("sentinel");
        let master_port = free_port();
        let replica_port = free_port();
        let mut master = RedisProcess::new(master_port, dir.clone(), data_node_args(master_port));
        master.start();
        let mut replica_args = data_node_args(replica_port);
        replica_args.extend([
            "--replicaof".to_string(),
            "127.0.0.1".to_string(),
            master_port.to_string(),
        ]);
        let mut replica = RedisProcess::new(replica_port, dir.clone(), replica_args);
        replica.start();
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 2000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir = dir.display()
                ),
            )
            .expect("the scratch dir is writable");
            let args = vec![conf.display().to_string(), "--sentinel".to_string()];
            let mut sentinel = RedisProcess::new(port, dir.clone(), args);
            sentinel.start();
            sentinels.push(sentinel);
        }
        let deployment = SentinelDeployment {
            data: vec![master, replica],
            sentinels,
        };
        deployment.wait_ready_for_failover();
        deployment
    }

    /// `127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`, for `--redis-sentinel`.
    pub fn sentinel_list(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The flags that point `channel serve` at this deployment.
    pub fn serve_args(&self) -> Vec<String> {
        vec![
            "--redis-sentinel".to_string(),
            self.sentinel_list(),
            "--redis-sentinel-master".to_string(),
            MASTER_NAME.to_string(),
        ]
    }

    /// The master's port as the first sentinel that answers sees it.
    pub fn master_port(&self) -> u16 {
        for sentinel in &self.sentinels {
            if let Some(port) = master_port_seen_by(sentinel.port) {
                return port;
            }
        }
        panic!("no sentinel names a master for {MASTER_NAME}")
    }

    /// `redis://127.0.0.1:<port>` of the current master.
    pub fn master_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.master_port())
    }

    /// Every data node's URL (master and replica).
    pub fn data_urls(&self) -> Vec<String> {
        self.data.iter().map(RedisProcess::url).collect()
    }

    /// `SENTINEL FAILOVER`, then waits until every sentinel names the new master; returns the
    /// moment the first sentinel did (the switch) and the new master's port. Call
    /// [`Self::settle`] before the next failover.
    pub fn failover(&mut self) -> (Instant, u16) {
        let old = self.master_port();
        let mut conn = connect(self.sentinels[0].port);
        let _: () = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER_NAME)
            .query(&mut conn)
            .unwrap_or_else(|e| panic!("SENTINEL FAILOVER refused: {e}"));
        self.wait_for_switch_from(old)
    }

    /// Waits until the deployment could fail over again (call at the end of a test that
    /// failed over, so that the next test finds it ready).
    pub fn settle(&self) {
        self.wait_ready_for_failover();
    }

    /// `kill -9` of the master; returns its port. Follow with [`Self::wait_for_switch_from`]
    /// and [`Self::restart_killed`].
    pub fn kill_master(&mut self) -> u16 {
        let old = self.master_port();
        self.node(old).kill();
        old
    }

    /// Starts the data node on `port` again (killed by [`Self::kill_master`]): the sentinels
    /// make it a replica of the new master. Returns once a failover could happen again, so
    /// that the next test can fail over too.
    pub fn restart_killed(&mut self, port: u16) {
        let node = self.node(port);
        // Back as a plain node (no --replicaof): the sentinels reconfigure it.
        node.args_mut().truncate(12);
        node.start();
        self.wait_ready_for_failover();
    }

    fn node(&mut self, port: u16) -> &mut RedisProcess {
        self.data
            .iter_mut()
            .find(|n| n.port == port)
            .expect("the port is one of the data nodes")
    }

    /// True when the sentinels name `port` as the master, if any answers.
    pub fn is_master(&self, port: u16) -> bool {
        self.master_port() == port
    }

    /// Polls the sentinels until one names a master other than `old`: that is the switch
    /// (returned with the new master's port). Then waits until all three agree.
    pub fn wait_for_switch_from(&self, old: u16) -> (Instant, u16) {
        let deadline = Instant::now() + SWITCH_TIMEOUT;
        let (switch, new) = loop {
            let seen = self
                .sentinels
                .iter()
                .filter_map(|s| master_port_seen_by(s.port))
                .find(|port| *port != old);
            if let Some(new) = seen {
                break (Instant::now(), new);
            }
            assert!(
                Instant::now() < deadline,
                "no sentinel switched away from {old} within {SWITCH_TIMEOUT:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        while !self
            .sentinels
            .iter()
            .all(|s| master_port_seen_by(s.port) == Some(new))
        {
            assert!(
                Instant::now() < deadline,
                "the sentinels do not agree on {new}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        (switch, new)
    }

    /// Waits until a failover can happen: every sentinel knows the other two and one replica
    /// that is up and in sync, and the master accepts writes.
    fn wait_ready_for_failover(&self) {
        let deadline = Instant::now() + SWITCH_TIMEOUT;
        loop {
            if self.sentinels.iter().all(|s| sentinel_ready(s.port)) && self.replica_in_sync() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Sentinel deployment did not become ready for a failover\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn replica_in_sync(&self) -> bool {
        let master = self.master_port();
        self.data.iter().filter(|n| n.port != master).all(|n| {
            let Ok(mut conn) = try_connect(n.port) else {
                return false;
            };
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut conn)
                .unwrap_or_default();
            info.contains("role:slave")
                && info.contains(&format!("master_port:{master}"))
                && info.contains("master_link_status:up")
        })
    }

    /// The last lines of every process's log, for failure messages.
    pub fn logs(&self) -> String {
        self.data
            .iter()
            .chain(&self.sentinels)
            .map(|n| format!("--- port {} ---\n{}", n.port, log_tail(&n.log_path(), 15)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The master's port as the sentinel on `port` sees it, if it answers.
fn master_port_seen_by(port: u16) -> Option<u16> {
    let mut conn = try_connect(port).ok()?;
    let addr: Option<(String, String)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(MASTER_NAME)
        .query(&mut conn)
        .ok()?;
    addr?.1.parse().ok()
}

/// True when the sentinel on `port` sees its master up, two other sentinels and a replica
/// that is up.
fn sentinel_ready(port: u16) -> bool {
    let Ok(mut conn) = try_connect(port) else {
        return false;
    };
    let Ok(master): redis::RedisResult<std::collections::HashMap<String, String>> =
        redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(MASTER_NAME)
            .query(&mut conn)
    else {
        return false;
    };
    let Ok(replicas): redis::RedisResult<Vec<std::collections::HashMap<String, String>>> =
        redis::cmd("SENTINEL")
            .arg("REPLICAS")
            .arg(MASTER_NAME)
            .query(&mut conn)
    else {
        return false;
    };
    master.get("flags").map(String::as_str) == Some("master")
        && master.get("num-other-sentinels").map(String::as_str) == Some("2")
        && replicas
            .iter()
            .filter(|r| r.get("flags").map(String::as_str) == Some("slave"))
            .count()
            >= 1
}

fn try_connect(port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let conn = client.get_connection_with_timeout(Duration::from_millis(500))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(conn)
}

fn connect(port: u16) -> redis::Connection {
    try_connect(port).unwrap_or_else(|e| panic!("cannot connect to 127.0.0.1:{port}: {e}"))
}
