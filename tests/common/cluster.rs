//! A real Redis Cluster for the tests of one binary (issue 13): six `redis-server` processes on
//! free ports of 127.0.0.1 (never 6379), made into 3 masters + 3 replicas by `redis-cli --cluster
//! create … --cluster-replicas 1`, with a short `cluster-node-timeout` so that a replica is
//! promoted a second or two after its master is killed.
//!
//! The cluster is shared by every test of a binary ([`RedisCluster::shared`]): made once, it
//! lives until the test process exits. Its processes are spawned with `PR_SET_PDEATHSIG`
//! (`whole_process.rs`), so the kernel kills them when the test process ends (a `static` is never
//! dropped). A test holds the cluster's lock for its whole length; taking the lock brings back
//! any node an earlier test killed (as a replica) and waits until the cluster is whole again, so
//! each test starts from six nodes, `cluster_state:ok`, every node agreeing on the slot map and
//! every master with a replica in sync.
//!
//! What it owns: the processes, their ports and logs, and the operations tests do to a cluster
//! (kill a master, bring it back, move a slot, publish on the node owning a topic). What it must
//! never do: sleep where it can wait for a state (every wait polls `CLUSTER NODES`, `CLUSTER
//! INFO`, `ROLE` or `INFO replication` against a deadline that fails the test), or leave a
//! process behind.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::redis_process::{data_node_args, RedisProcess};
use super::{free_port, log_tail, scratch_dir, ChannelServer, ServerOptions};

/// Masters of the cluster; each has one replica.
pub const MASTERS: usize = 3;
/// Slots of every Redis Cluster.
pub const SLOTS: u32 = 16384;
/// `cluster-node-timeout`: a master unreachable this long is failed over.
pub const NODE_TIMEOUT_MS: u64 = 1000;
/// How long the cluster may take to form, to promote a replica or to agree on a change (node
/// timeout + election + gossip, with a wide margin for a loaded 2-core machine).
const AGREE_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two polls of the nodes.
const POLL: Duration = Duration::from_millis(20);

/// One `redis-server` of the cluster, a master or a replica (which one changes with failovers),
/// with the cluster bus on `bus_port` (chosen free too, since `port + 10000` may not be). A
/// restarted node keeps its `nodes-<port>.conf`, so it rejoins with its identity, and the
/// cluster makes it a replica if its slots moved meanwhile.
fn cluster_node(port: u16, bus_port: u16, dir: &std::path::Path) -> RedisProcess {
    let mut args = data_node_args(port);
    args.extend(
        [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &format!("nodes-{port}.conf"),
            "--cluster-port",
            &bus_port.to_string(),
            "--cluster-node-timeout",
            &NODE_TIMEOUT_MS.to_string(),
            // A replica whose master was just killed may always stand for election.
            "--cluster-replica-validity-factor",
            "0",
            // Replicas stay with their master: the topology only changes when a test changes it.
            "--cluster-allow-replica-migration",
            "no",
            // A node that comes back syncs at once (the default waits 5 s for more replicas).
            "--repl-diskless-sync-delay",
            "0",
            "--dir",
            &dir.display().to_string(),
        ]
        .iter()
        .map(|a| a.to_string()),
    );
    RedisProcess::new(port, dir.to_path_buf(), args)
}

/// One node as another node's `CLUSTER NODES` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    pub port: u16,
    /// `myself`, `master`, `slave`, `fail?`, `fail`, `handshake`, …
    pub flags: Vec<String>,
    /// The master's id for a replica, `None` for a master.
    pub master_id: Option<String>,
    /// Slot ranges served (masters), inclusive; importing/migrating markers left out.
    pub slots: Vec<(u16, u16)>,
}

impl NodeView {
    pub fn is_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    pub fn is_failing(&self) -> bool {
        self.flags.iter().any(|f| f == "fail" || f == "fail?")
    }
}

/// A `kill -9` of the master owning a slot, and the replica that took over.
#[derive(Debug, Clone, Copy)]
pub struct Failover {
    pub slot: u16,
    pub killed: u16,
    pub promoted: u16,
    /// When the killed master's process was gone.
    pub killed_at: Instant,
    /// The first moment the replica answered `ROLE` as a master.
    pub promoted_at: Instant,
    /// When every live node agreed that the promoted node serves the slot and said
    /// `cluster_state:ok`.
    pub settled_at: Instant,
}

/// A slot moved from one master to another.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub slot: u16,
    pub from: u16,
    pub to: u16,
    /// Keys of the slot moved with `MIGRATE`.
    pub keys_moved: usize,
}

/// A slot between `SETSLOT MIGRATING`/`IMPORTING` and `SETSLOT NODE`
/// ([`RedisCluster::begin_slot_migration`]).
#[derive(Debug)]
pub struct PendingMigration {
    pub slot: u16,
    pub from: u16,
    pub to: u16,
    to_id: String,
}

/// Three masters, three replicas.
pub struct RedisCluster {
    nodes: Vec<RedisProcess>,
}

impl RedisCluster {
    /// The cluster of this test binary, made on first use, whole again and locked for the
    /// caller.
    pub fn shared() -> MutexGuard<'static, RedisCluster> {
        static CLUSTER: OnceLock<Mutex<RedisCluster>> = OnceLock::new();
        let mut cluster = CLUSTER
            .get_or_init(|| Mutex::new(RedisCluster::start()))
            .lock()
            // A test that failed while holding it leaves processes that still work.
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cluster.make_whole();
        cluster
    }

    fn start() -> RedisCluster {
        let dir = scratch_dir("cluster");
        let mut nodes: Vec<RedisProcess> = (0..MASTERS * 2)
            .map(|_| cluster_node(free_port(), free_port(), &dir))
            .collect();
        for node in &mut nodes {
            node.start();
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let output = match create.stdin(Stdio::null()).output() {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-cli not found: install it (apt-get install redis-tools)")
            }
            Err(e) => panic!("cannot run redis-cli --cluster create: {e}"),
        };
        let cluster = RedisCluster { nodes };
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed ({}):\n{}\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            cluster.logs()
        );
        cluster.wait_whole();
        cluster
    }

    /// A `channel serve` process on this cluster.
    pub fn serve(&self, opts: ServerOptions) -> ChannelServer {
        let args = self.serve_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ChannelServer::start_with_redis_args(&args, opts)
    }

    /// `127.0.0.1:p1,…,127.0.0.1:p6`: every node, for `--redis-cluster` (any of them is a seed).
    pub fn seed_list(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The flags that point `channel serve` at this cluster.
    pub fn serve_args(&self) -> Vec<String> {
        vec!["--redis-cluster".to_string(), self.seed_list()]
    }

    /// The ports of every node, running or not.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The ports of the nodes whose process runs.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.port)
            .collect()
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn node_url(port: u16) -> String {
        format!("redis://127.0.0.1:{port}")
    }

    /// A plain (not cluster-aware) connection to the node on `port`.
    pub fn connection(&self, port: u16) -> redis::Connection {
        connect(port)
    }

    /// The master serving `slot`, as the first live node that answers sees it.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        let view = self.any_view();
        master_of_slot_in(&view, slot)
            .unwrap_or_else(|| panic!("no master serves slot {slot} in {view:?}\n{}", self.logs()))
    }

    /// The master serving `key`'s slot (for a topic: the node `FCALL channel_publish 1 <topic>`
    /// must reach).
    pub fn master_of(&self, key: &str) -> u16 {
        self.master_of_slot(key_slot(key.as_bytes()))
    }

    /// The masters serving slots, by port.
    pub fn masters(&self) -> Vec<u16> {
        let mut masters: Vec<u16> = self
            .any_view()
            .iter()
            .filter(|n| n.is_master() && !n.slots.is_empty() && !n.is_failing())
            .map(|n| n.port)
            .collect();
        masters.sort_unstable();
        masters
    }

    /// A master other than `port`.
    pub fn other_master_than(&self, port: u16) -> u16 {
        self.masters()
            .into_iter()
            .find(|m| *m != port)
            .expect("a cluster of three masters has another one")
    }

    /// The replicas of the master on `port` that are not failing.
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        let view = self.any_view();
        let Some(master) = view.iter().find(|n| n.port == port) else {
            return Vec::new();
        };
        view.iter()
            .filter(|n| n.master_id.as_deref() == Some(master.id.as_str()) && !n.is_failing())
            .map(|n| n.port)
            .collect()
    }

    /// `kill -9` of the master serving `key`'s slot; waits until its replica is promoted and the
    /// cluster is ok again without it. The killed node stays down until
    /// [`Self::restart_killed`] (or the next [`Self::shared`]).
    pub fn kill_master_of(&mut self, key: &str) -> Failover {
        let slot = key_slot(key.as_bytes());
        let killed = self.master_of_slot(slot);
        let replicas = self.replicas_of(killed);
        assert!(
            !replicas.is_empty(),
            "master {killed} has no replica to promote\n{}",
            self.logs()
        );
        self.node_mut(killed).kill();
        let killed_at = Instant::now();
        let deadline = killed_at + AGREE_TIMEOUT;
        let (promoted, promoted_at) = loop {
            if let Some(port) = replicas
                .iter()
                .copied()
                .find(|p| role_of(*p) == Some(Role::Master))
            {
                break (port, Instant::now());
            }
            assert!(
                Instant::now() < deadline,
                "no replica of {killed} ({replicas:?}) was promoted within {AGREE_TIMEOUT:?}\n{}",
                self.logs()
            );
            std::thread::sleep(POLL);
        };
        self.wait_until_agreed(deadline, |views| {
            views
                .iter()
                .all(|v| master_of_slot_in(v, slot) == Some(promoted))
        });
        Failover {
            slot,
            killed,
            promoted,
            killed_at,
            promoted_at,
            settled_at: Instant::now(),
        }
    }

    /// Starts the node on `port` again (killed by [`Self::kill_master_of`]): it rejoins as a
    /// replica of the master that took its slots. Returns once it is one, in sync, and the
    /// cluster is whole.
    pub fn restart_killed(&mut self, port: u16) {
        self.node_mut(port).start();
        self.wait_whole();
    }

    /// Moves `key`'s slot to the master on `to` the way `redis-cli --cluster reshard` does:
    /// `SETSLOT IMPORTING` on the target, `SETSLOT MIGRATING` on the source, `MIGRATE` of every
    /// key of the slot, then `SETSLOT NODE` on the target, the source and the other masters.
    /// Returns once every node agrees that `to` serves the slot.
    pub fn migrate_slot_of(&mut self, key: &str, to: u16) -> Migration {
        let pending = self.begin_slot_migration(key, to);
        self.finish_slot_migration(pending)
    }

    /// The first half of [`Self::migrate_slot_of`]: `SETSLOT IMPORTING` on the target and
    /// `MIGRATING` on the source, nothing moved yet. Until [`Self::finish_slot_migration`], the
    /// source serves the slot's keys it still has and answers `ASK` (towards the target) for
    /// the others, so a test can act while the slot is between the two. Finish it in the same
    /// test: a slot left half-migrated stays so for the next tests.
    pub fn begin_slot_migration(&mut self, key: &str, to: u16) -> PendingMigration {
        let slot = key_slot(key.as_bytes());
        let from = self.master_of_slot(slot);
        assert_ne!(from, to, "slot {slot} of {key:?} is already on {to}");
        let from_id = my_id(from);
        let to_id = my_id(to);
        cluster_setslot(&mut connect(to), slot, &["IMPORTING", &from_id]);
        cluster_setslot(&mut connect(from), slot, &["MIGRATING", &to_id]);
        PendingMigration {
            slot,
            from,
            to,
            to_id,
        }
    }

    /// `MIGRATE` of every key of a pending migration's slot from the source to the target
    /// (the source answers `ASK` for them from then on); how many keys moved.
    pub fn move_slot_keys(&self, pending: &PendingMigration) -> usize {
        let PendingMigration { slot, from, to, .. } = *pending;
        let mut source = connect(from);
        let mut keys_moved = 0;
        loop {
            let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query(&mut source)
                .unwrap_or_else(|e| panic!("CLUSTER GETKEYSINSLOT {slot} on {from}: {e}"));
            if keys.is_empty() {
                return keys_moved;
            }
            keys_moved += keys.len();
            let _: redis::Value = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("REPLACE")
                .arg("KEYS")
                .arg(&keys)
                .query(&mut source)
                .unwrap_or_else(|e| panic!("MIGRATE of slot {slot} from {from} to {to}: {e}"));
        }
    }

    /// The second half of [`Self::migrate_slot_of`]: `MIGRATE` of every key of the slot
    /// ([`Self::move_slot_keys`]), then `SETSLOT NODE` everywhere; returns once every node
    /// agrees that the target serves it.
    pub fn finish_slot_migration(&mut self, pending: PendingMigration) -> Migration {
        let keys_moved = self.move_slot_keys(&pending);
        let PendingMigration {
            slot,
            from,
            to,
            to_id,
        } = pending;
        let mut source = connect(from);
        // The target first, so that it serves the slot before the source starts redirecting.
        cluster_setslot(&mut connect(to), slot, &["NODE", &to_id]);
        cluster_setslot(&mut source, slot, &["NODE", &to_id]);
        for master in self.masters() {
            if master != from && master != to {
                cluster_setslot(&mut connect(master), slot, &["NODE", &to_id]);
            }
        }
        self.wait_until_agreed(Instant::now() + AGREE_TIMEOUT, |views| {
            views.iter().all(|v| master_of_slot_in(v, slot) == Some(to))
        });
        Migration {
            slot,
            from,
            to,
            keys_moved,
        }
    }

    /// `FCALL channel_publish 1 <topic> <event> <payload>` on the master owning the topic's slot,
    /// following `MOVED` and `ASK` as a cluster client does. Redis's answer, or its error.
    pub fn fcall_publish(
        &self,
        topic: &str,
        event: &str,
        payload: impl AsRef<[u8]>,
    ) -> redis::RedisResult<redis::Value> {
        Self::fcall_publish_via(self.master_of(topic), topic, event, payload)
    }

    /// As [`Self::fcall_publish`], but first sent to the node on `port` (which may redirect).
    pub fn fcall_publish_via(
        port: u16,
        topic: &str,
        event: &str,
        payload: impl AsRef<[u8]>,
    ) -> redis::RedisResult<redis::Value> {
        let mut fcall = redis::cmd("FCALL");
        fcall
            .arg("channel_publish")
            .arg(1)
            .arg(topic)
            .arg(event)
            .arg(payload.as_ref());
        Self::query_following_redirects(port, &fcall)
    }

    /// Runs `cmd` on the node on `port`, following up to 5 `MOVED`/`ASK` redirections.
    pub fn query_following_redirects(
        port: u16,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<redis::Value> {
        let mut port = port;
        let mut asking = false;
        let mut redirections = 0;
        loop {
            let mut conn = try_connect(port)?;
            if asking {
                redis::cmd("ASKING").query::<()>(&mut conn)?;
            }
            match cmd.query::<redis::Value>(&mut conn) {
                Err(e) if redirections < 5 && matches!(e.code(), Some("MOVED") | Some("ASK")) => {
                    asking = e.code() == Some("ASK");
                    port = e
                        .redirect_node()
                        .and_then(|(addr, _slot)| addr.rsplit_once(':'))
                        .and_then(|(_host, p)| p.parse().ok())
                        .ok_or(e)?;
                    redirections += 1;
                }
                other => return other,
            }
        }
    }

    /// Classic `PUBLISH channel payload` on the node on `port` (the cluster propagates it to
    /// every node); returns the receivers Redis counted on that node.
    pub fn publish_on(&self, port: u16, channel: &str, payload: impl AsRef<[u8]>) -> i64 {
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload.as_ref())
            .query(&mut connect(port))
            .unwrap_or_else(|e| panic!("PUBLISH {channel} on {port} failed: {e}"))
    }

    /// How many connections hold `SSUBSCRIBE` to the sharded `channel`, as the master serving
    /// its slot counts them (`PUBSUB SHARDNUMSUB`; a sharded channel lives on its slot's
    /// nodes only).
    pub fn shard_subscribers(&self, channel: &str) -> i64 {
        let owner = self.master_of(channel);
        let (_, count): (String, i64) = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(channel)
            .query(&mut connect(owner))
            .unwrap_or_else(|e| panic!("PUBSUB SHARDNUMSUB {channel} on {owner}: {e}"));
        count
    }

    /// Every live node's `CLUSTER NODES`, by the node's port.
    pub fn views(&self) -> BTreeMap<u16, Vec<NodeView>> {
        self.live_ports()
            .into_iter()
            .filter_map(|p| cluster_nodes(p).map(|v| (p, v)))
            .collect()
    }

    /// The last lines of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "--- cluster node {} ({}) ---\n{}",
                    n.port,
                    if n.is_running() { "running" } else { "killed" },
                    log_tail(&n.log_path(), 15)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn node_mut(&mut self, port: u16) -> &mut RedisProcess {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("the port is one of the cluster's nodes")
    }

    /// The first live node's view of the cluster.
    fn any_view(&self) -> Vec<NodeView> {
        self.live_ports()
            .into_iter()
            .find_map(cluster_nodes)
            .unwrap_or_else(|| panic!("no cluster node answers CLUSTER NODES\n{}", self.logs()))
    }

    /// Starts one more node and introduces it with `CLUSTER MEET`, as `redis-cli --cluster
    /// add-node` does but without copying the functions: a master that serves no slot until
    /// one is migrated to it ([`Self::migrate_slot_of`]). Returns its port once every node
    /// knows it. The cluster then has a master without a replica, which [`Self::shared`] does
    /// not count as whole: a test that grows the cluster must be alone in its binary.
    pub fn add_master(&mut self) -> u16 {
        let mut node = cluster_node(free_port(), free_port(), &scratch_dir("cluster-grow"));
        node.start();
        let port = node.port;
        let bus_port = node
            .args_mut()
            .windows(2)
            .find(|pair| pair[0] == "--cluster-port")
            .map(|pair| pair[1].clone())
            .expect("a cluster node has a bus port");
        self.nodes.push(node);
        let _: () = redis::cmd("CLUSTER")
            .arg("MEET")
            .arg("127.0.0.1")
            .arg(port)
            .arg(&bus_port)
            .query(&mut connect(self.nodes[0].port))
            .unwrap_or_else(|e| panic!("CLUSTER MEET 127.0.0.1 {port} {bus_port}: {e}"));
        let new_id = my_id(port);
        self.wait_until_agreed(Instant::now() + AGREE_TIMEOUT, |views| {
            views.iter().all(|view| {
                view.iter().any(|n| {
                    n.id == new_id
                        && n.is_master()
                        && !n.flags.iter().any(|f| f == "handshake" || f == "noaddr")
                })
            })
        });
        port
    }

    /// `kill -9` of every node: the whole cluster is lost (data too: nodes keep no dump).
    /// [`Self::make_whole`] brings them back with their identities and slots.
    pub fn kill_every_node(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }

    /// Restarts every killed node, then waits until the cluster is whole.
    pub fn make_whole(&mut self) {
        for node in self.nodes.iter_mut().filter(|n| !n.is_running()) {
            node.start();
        }
        self.wait_whole();
    }

    /// Waits until all six nodes run and agree, every node says `cluster_state:ok`, no node is
    /// flagged failing, there are [`MASTERS`] masters serving all slots, and each has a replica
    /// whose replication link is up.
    fn wait_whole(&self) {
        let deadline = Instant::now() + AGREE_TIMEOUT;
        loop {
            if self.is_whole() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not become whole within {AGREE_TIMEOUT:?}: views {:#?}\n{}",
                self.views(),
                self.logs()
            );
            std::thread::sleep(POLL);
        }
    }

    fn is_whole(&self) -> bool {
        if self.live_ports().len() != self.nodes.len() {
            return false;
        }
        let views = self.views();
        if views.len() != self.nodes.len()
            || !views_agree(views.values())
            || !self.live_ports().into_iter().all(cluster_state_ok)
        {
            return false;
        }
        // No node sees another failing or still in handshake.
        if views
            .values()
            .flatten()
            .any(|n| n.is_failing() || n.flags.iter().any(|f| f == "handshake" || f == "noaddr"))
        {
            return false;
        }
        let Some(view) = views.values().next() else {
            return false;
        };
        let masters: Vec<&NodeView> = view.iter().filter(|n| !n.slots.is_empty()).collect();
        masters.len() == MASTERS
            && masters.iter().all(|m| {
                view.iter()
                    .filter(|r| r.master_id.as_deref() == Some(m.id.as_str()))
                    .any(|r| replica_link_up(r.port, m.port))
            })
    }

    /// Waits until every live node says `cluster_state:ok`, all live nodes' slot maps agree and
    /// `done` holds for their views; panics at `deadline`.
    fn wait_until_agreed(&self, deadline: Instant, done: impl Fn(&[Vec<NodeView>]) -> bool) {
        loop {
            let views: Vec<Vec<NodeView>> = self.views().into_values().collect();
            if views.len() == self.live_ports().len()
                && views_agree(views.iter())
                && done(&views)
                && self.live_ports().into_iter().all(cluster_state_ok)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not agree within {AGREE_TIMEOUT:?}: views {views:#?}\n{}",
                self.logs()
            );
            std::thread::sleep(POLL);
        }
    }
}

/// The hash slot of `key`, as Redis Cluster computes it: the server's own
/// (`channel::broker::cluster_topology::slot_of`), which the harness self-test checks against
/// `CLUSTER KEYSLOT`.
pub use channel::broker::cluster_topology::slot_of as key_slot;

/// The sharded channel the publish function publishes a topic's messages on
/// (docs/protocol.md, "The publish function").
pub fn sharded_channel(topic: &str) -> String {
    format!("channel:to:{{{topic}}}")
}

/// Parses `CLUSTER NODES` text.
pub fn parse_cluster_nodes(text: &str) -> Vec<NodeView> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            // `ip:port@cport[,hostname]`
            let port = fields[1]
                .split('@')
                .next()?
                .rsplit_once(':')?
                .1
                .parse()
                .ok()?;
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|a| (a, a)),
                })
                .collect();
            Some(NodeView {
                id: fields[0].to_string(),
                port,
                flags: fields[2].split(',').map(str::to_string).collect(),
                master_id: (fields[3] != "-").then(|| fields[3].to_string()),
                slots,
            })
        })
        .collect()
}

/// The port of the master serving `slot` in one node's view.
fn master_of_slot_in(view: &[NodeView], slot: u16) -> Option<u16> {
    view.iter()
        .find(|n| n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
        .map(|n| n.port)
}

/// The slot map of one view: (first slot, last slot, master port), sorted.
fn slot_map(view: &[NodeView]) -> Vec<(u16, u16, u16)> {
    let mut map: Vec<(u16, u16, u16)> = view
        .iter()
        .flat_map(|n| n.slots.iter().map(move |(a, b)| (*a, *b, n.port)))
        .collect();
    map.sort_unstable();
    map
}

/// True when every view has the same slot map and it covers every slot.
fn views_agree<'a>(mut views: impl Iterator<Item = &'a Vec<NodeView>>) -> bool {
    let Some(first) = views.next() else {
        return false;
    };
    let map = slot_map(first);
    let covered: u32 = map.iter().map(|(a, b, _)| u32::from(b - a) + 1).sum();
    covered == SLOTS && views.all(|v| slot_map(v) == map)
}

fn cluster_nodes(port: u16) -> Option<Vec<NodeView>> {
    let mut conn = try_connect(port).ok()?;
    let text: String = redis::cmd("CLUSTER").arg("NODES").query(&mut conn).ok()?;
    Some(parse_cluster_nodes(&text))
}

fn cluster_state_ok(port: u16) -> bool {
    try_connect(port)
        .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
        .is_ok_and(|info| info.contains("cluster_state:ok"))
}

fn my_id(port: u16) -> String {
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query(&mut connect(port))
        .unwrap_or_else(|e| panic!("CLUSTER MYID on {port}: {e}"))
}

fn cluster_setslot(conn: &mut redis::Connection, slot: u16, rest: &[&str]) {
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg(rest)
        .query(conn)
        .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} {rest:?}: {e}"));
}

#[derive(Debug, PartialEq, Eq)]
enum Role {
    Master,
    Replica,
}

/// The node's own idea of its role (`ROLE`), if it answers.
fn role_of(port: u16) -> Option<Role> {
    let mut conn = try_connect(port).ok()?;
    let role: redis::Value = redis::cmd("ROLE").query(&mut conn).ok()?;
    let redis::Value::Array(items) = role else {
        return None;
    };
    match items.first() {
        Some(redis::Value::BulkString(b)) if b == b"master" => Some(Role::Master),
        Some(redis::Value::BulkString(b)) if b == b"slave" => Some(Role::Replica),
        _ => None,
    }
}

/// True when the node on `replica` replicates `master` and its link is up.
fn replica_link_up(replica: u16, master: u16) -> bool {
    try_connect(replica)
        .and_then(|mut c| {
            redis::cmd("INFO")
                .arg("replication")
                .query::<String>(&mut c)
        })
        .is_ok_and(|info| {
            info.contains("role:slave")
                && info.contains(&format!("master_port:{master}\r"))
                && info.contains("master_link_status:up")
        })
}

fn try_connect(port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(RedisCluster::node_url(port))?;
    let conn = client.get_connection_with_timeout(Duration::from_millis(500))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(conn)
}

fn connect(port: u16) -> redis::Connection {
    try_connect(port).unwrap_or_else(|e| panic!("cannot connect to 127.0.0.1:{port}: {e}"))
}
