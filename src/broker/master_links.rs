//! The publisher's connections to the master(s): one to the master of a single Redis or of a
//! Sentinel set, one per master of a Redis Cluster, each command routed by its key's slot.
//!
//! What it owns: the connections, the slot map they follow ([`ClusterTopology`]), and
//! answering each command of a pipeline on its own, within one deadline ([`IO_DEADLINE`]). On
//! a cluster a master that fails (or answers `MOVED`) fails only the commands routed to it:
//! their callers answer `backend unavailable`, the connection is dropped, and the slot map is
//! read again before the next pipeline, so that after a failover the promoted replica takes
//! the slot's commands. Every new connection first runs the caller's set-up (scripts, the
//! publish function): a master that appears (a promotion, a new node) gets the function.
//!
//! What it must never do: retry a command on its own (a `PUBLISH` sent twice is delivered
//! twice; only a `MOVED` or `ASK` reply, which says the command did not run, is retried once:
//! at the slot's owner after `MOVED`, at the migration's target with `ASKING` after `ASK`), or
//! wait on a node longer than the deadline.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::cluster_topology::{slot_of, ClusterTopology, NodeAddress};

/// How long a pipeline may take, from sending it to its last reply, before the connection is
/// declared dead. Enforced over the whole pipeline: each reply is read with the time that is
/// left (redis-rs's own pipeline query would give every reply the full socket timeout, so a
/// stalled Redis would hold a batch of N for N times the deadline).
pub const IO_DEADLINE: Duration = Duration::from_secs(3);
/// How long a connection attempt to one node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed connection attempt, a node is not tried again for this long (its commands
/// fail at once meanwhile).
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);
/// While a failover is under way the slot map is read at most this often (not at every
/// pipeline).
const REREAD_PAUSE: Duration = Duration::from_millis(100);

/// Where a command goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The master of this slot.
    Slot(u16),
    /// Any master (`PUBLISH`: a cluster propagates it to every node).
    AnyMaster,
}

impl Route {
    /// The master of `key`'s slot.
    pub fn key(key: &str) -> Route {
        Route::Slot(slot_of(key.as_bytes()))
    }

    /// The master of the slot of a topic's keys (each tagged `{<topic>}`), computed without
    /// building a key unless the topic itself holds a brace (then its tag may not be the
    /// topic: the slot is its members key's, the first key of every presence script).
    pub fn topic(topic: &str) -> Route {
        if topic.contains(['{', '}']) {
            Route::key(&crate::presence::members_key(topic))
        } else {
            Route::Slot(slot_of(topic.as_bytes()))
        }
    }
}

/// What runs on every new connection (loading scripts, installing the publish function).
pub type SetUp = Box<dyn Fn(&mut redis::Connection) -> redis::RedisResult<()> + Send>;

/// The connections and the slot map.
pub struct MasterLinks {
    topology: ClusterTopology,
    links: HashMap<NodeAddress, redis::Connection>,
    /// Nodes whose last connection attempt failed, and when.
    refused: HashMap<NodeAddress, Instant>,
    /// A node failed or moved a slot: read the slot map again before the next use.
    stale: bool,
    /// When the slot map was last read (it is read at most every [`REREAD_PAUSE`]).
    last_read: Option<Instant>,
    set_up: SetUp,
}

impl MasterLinks {
    /// Connects to every master of `topology` (read again first on a cluster). Fails when no
    /// master can be reached (a lost single Redis, or a lost cluster).
    pub fn open(mut topology: ClusterTopology, set_up: SetUp) -> redis::RedisResult<MasterLinks> {
        topology
            .refresh()
            .map_err(|err| std::io::Error::new(std::io::ErrorKind::NotConnected, err))?;
        let mut links = MasterLinks {
            topology,
            links: HashMap::new(),
            refused: HashMap::new(),
            stale: false,
            last_read: Some(Instant::now()),
            set_up,
        };
        let mut last_error = None;
        for master in links.topology.masters().to_vec() {
            if let Err(err) = links.connect(&master) {
                last_error = Some(err);
            }
        }
        if links.links.is_empty() {
            return Err(last_error.unwrap_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "no master in the slot map",
                )
                .into()
            }));
        }
        Ok(links)
    }

    /// True on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.topology.is_cluster()
    }

    /// Masters of the slot map that have no connection now (for `/healthz`).
    pub fn unreachable_masters(&self) -> Vec<String> {
        self.topology
            .masters()
            .iter()
            .filter(|m| !self.links.contains_key(*m))
            .map(ToString::to_string)
            .collect()
    }

    fn connect(&mut self, node: &NodeAddress) -> redis::RedisResult<()> {
        if let Some(at) = self.refused.get(node) {
            if at.elapsed() < RECONNECT_PAUSE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("{node} refused a connection moments ago"),
                )
                .into());
            }
        }
        let attempt = (|| {
            let mut conn = self
                .topology
                .client_for(node)?
                .get_connection_with_timeout(CONNECT_TIMEOUT)?;
            conn.set_read_timeout(Some(IO_DEADLINE))?;
            conn.set_write_timeout(Some(IO_DEADLINE))?;
            (self.set_up)(&mut conn)?;
            Ok::<_, redis::RedisError>(conn)
        })();
        match attempt {
            Ok(conn) => {
                self.refused.remove(node);
                if self.topology.is_cluster() {
                    info!(master = %node, "redis publisher connected to a cluster master");
                }
                self.links.insert(node.clone(), conn);
                Ok(())
            }
            Err(err) => {
                self.refused.insert(node.clone(), Instant::now());
                Err(err)
            }
        }
    }

    /// Reads the slot map again when a node failed, and connects to masters that have no
    /// connection (new ones get the set-up). On a single node this does nothing. Fails only
    /// when no node of the cluster answers.
    pub fn follow_topology(&mut self) -> redis::RedisResult<()> {
        if !self.topology.is_cluster() {
            return Ok(());
        }
        let may_read = self.last_read.is_none_or(|at| at.elapsed() >= REREAD_PAUSE);
        if self.stale && may_read {
            self.last_read = Some(Instant::now());
            self.topology
                .refresh()
                .map_err(|err| std::io::Error::new(std::io::ErrorKind::NotConnected, err))?;
            self.stale = false;
            let masters = self.topology.masters().to_vec();
            self.links.retain(|node, _| masters.contains(node));
        }
        for master in self.topology.masters().to_vec() {
            if !self.links.contains_key(&master) {
                if let Err(err) = self.connect(&master) {
                    self.stale = true;
                    tracing::debug!(%master, %err, "cluster master unreachable");
                }
            }
        }
        Ok(())
    }

    /// Marks the slot map to be read again (the caller saw a sign that it moved, or reads it
    /// with every presence upkeep).
    pub fn mark_stale(&mut self) {
        self.stale = true;
    }

    fn node_for(&self, route: Route) -> Option<NodeAddress> {
        match route {
            Route::Slot(slot) => self.topology.master_of_slot(slot).cloned(),
            Route::AnyMaster => self
                .topology
                .masters()
                .iter()
                .find(|m| self.links.contains_key(*m))
                .or_else(|| self.topology.masters().first())
                .cloned(),
        }
    }

    /// Sends `commands` (one pipeline per master) and returns one reply per command, in
    /// order; `None` for a command whose master could not be reached or failed meanwhile.
    /// `Err` when nothing could be sent at all: on a single node, its connection failed (every
    /// command failed, the caller reconnects); on a cluster, no master answered.
    pub fn pipeline(
        &mut self,
        commands: &[(Route, redis::Cmd)],
    ) -> redis::RedisResult<Vec<Option<redis::Value>>> {
        if !self.topology.is_cluster() {
            return self.single_pipeline(commands);
        }
        self.follow_topology()?;
        let mut replies: Vec<Option<redis::Value>> = vec![None; commands.len()];
        let mut by_node: HashMap<NodeAddress, Vec<usize>> = HashMap::new();
        for (index, (route, _)) in commands.iter().enumerate() {
            if let Some(node) = self.node_for(*route) {
                by_node.entry(node).or_default().push(index);
            }
        }
        let mut moved = Vec::new();
        let mut asked: HashMap<NodeAddress, Vec<usize>> = HashMap::new();
        let deadline = Instant::now() + IO_DEADLINE;
        // Send every node its pipeline first, then read: the nodes work in parallel.
        let mut sent = Vec::new();
        for (node, indices) in by_node {
            if !self.links.contains_key(&node) && self.connect(&node).is_err() {
                self.stale = true;
                continue;
            }
            let packed = pack(indices.iter().map(|&index| &commands[index].1));
            let conn = self.links.get_mut(&node).expect("connected just above");
            match conn.send_packed_command(&packed) {
                Ok(()) => sent.push((node, indices)),
                Err(err) => self.drop_link(&node, &err),
            }
        }
        for (node, indices) in sent {
            let conn = self
                .links
                .get_mut(&node)
                .expect("kept while its replies are read");
            match read_replies(conn, indices.len(), deadline) {
                Ok(values) => {
                    for (index, value) in indices.into_iter().zip(values) {
                        if let Some(target) = ask_target(&value) {
                            asked.entry(target).or_default().push(index);
                        } else if is_moved(&value) {
                            moved.push(index);
                        } else {
                            replies[index] = Some(value);
                        }
                    }
                }
                Err(err) => self.drop_link(&node, &err),
            }
        }
        for (node, indices) in asked {
            self.ask(&node, commands, &indices, &mut replies);
        }
        if !moved.is_empty() {
            // The command did not run: the slot moved. Read the map and send it once more.
            self.stale = true;
            self.last_read = None;
            self.follow_topology()?;
            let retry: Vec<(Route, redis::Cmd)> =
                moved.iter().map(|&i| commands[i].clone()).collect();
            let mut again = Vec::new();
            let mut groups: HashMap<NodeAddress, Vec<usize>> = HashMap::new();
            for (k, (route, _)) in retry.iter().enumerate() {
                if let Some(node) = self.node_for(*route) {
                    groups.entry(node).or_default().push(k);
                }
            }
            for (node, ks) in groups {
                let Some(conn) = self.links.get_mut(&node) else {
                    continue;
                };
                let packed = pack(ks.iter().map(|&k| &retry[k].1));
                let result = conn
                    .send_packed_command(&packed)
                    .and_then(|()| read_replies(conn, ks.len(), Instant::now() + IO_DEADLINE));
                match result {
                    Ok(values) => again.extend(ks.into_iter().zip(values)),
                    Err(err) => self.drop_link(&node, &err),
                }
            }
            for (k, value) in again {
                if !is_moved(&value) {
                    replies[moved[k]] = Some(value);
                }
            }
        }
        if self.links.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "no master of the cluster is reachable",
            )
            .into());
        }
        Ok(replies)
    }

    /// Sends each of `indices`' commands once more, to the node an `ASK` named (the slot is
    /// being migrated there and the command's keys already moved), each preceded by `ASKING`
    /// as the cluster protocol asks. The slot map is not read again: until the migration ends
    /// the source still owns the slot. A command answered anything but its own reply (another
    /// redirection, a lost node) stays unanswered.
    fn ask(
        &mut self,
        node: &NodeAddress,
        commands: &[(Route, redis::Cmd)],
        indices: &[usize],
        replies: &mut [Option<redis::Value>],
    ) {
        if !self.links.contains_key(node) && self.connect(node).is_err() {
            return;
        }
        let asking = redis::cmd("ASKING");
        let packed = pack(
            indices
                .iter()
                .flat_map(|&index| [&asking, &commands[index].1]),
        );
        let conn = self.links.get_mut(node).expect("connected just above");
        let result = conn
            .send_packed_command(&packed)
            .and_then(|()| read_replies(conn, 2 * indices.len(), Instant::now() + IO_DEADLINE));
        match result {
            Ok(values) => {
                // Every other reply is ASKING's `OK`.
                for (&index, value) in indices.iter().zip(values.into_iter().skip(1).step_by(2)) {
                    if !is_moved(&value) {
                        replies[index] = Some(value);
                    }
                }
            }
            Err(err) => self.drop_link(node, &err),
        }
    }

    fn single_pipeline(
        &mut self,
        commands: &[(Route, redis::Cmd)],
    ) -> redis::RedisResult<Vec<Option<redis::Value>>> {
        let node = self.topology.masters()[0].clone();
        let Some(conn) = self.links.get_mut(&node) else {
            return Err(
                std::io::Error::new(std::io::ErrorKind::NotConnected, "no connection").into(),
            );
        };
        conn.send_packed_command(&pack(commands.iter().map(|(_, cmd)| cmd)))?;
        let values = read_replies(conn, commands.len(), Instant::now() + IO_DEADLINE)?;
        Ok(values.into_iter().map(Some).collect())
    }

    /// One command; `Err` when its master failed (the caller treats it as a failed pipeline).
    pub fn query(&mut self, route: Route, cmd: redis::Cmd) -> redis::RedisResult<redis::Value> {
        let mut replies = self.pipeline(&[(route, cmd)])?;
        match replies.pop().flatten() {
            Some(redis::Value::ServerError(err)) => Err(redis::RedisError::from(err)),
            Some(value) => Ok(value),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the master of this slot is unreachable",
            )
            .into()),
        }
    }

    /// Runs `f` on every connected master (admin scans), stopping at the first error.
    pub fn for_each_master<T>(
        &mut self,
        mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<Vec<T>> {
        self.follow_topology()?;
        let mut out = Vec::new();
        for master in self.topology.masters().to_vec() {
            let Some(conn) = self.links.get_mut(&master) else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    format!("cluster master {master} is unreachable"),
                )
                .into());
            };
            match f(conn) {
                Ok(value) => out.push(value),
                Err(err) => {
                    self.drop_link(&master, &err);
                    return Err(err);
                }
            }
        }
        Ok(out)
    }

    fn drop_link(&mut self, node: &NodeAddress, err: &dyn std::fmt::Display) {
        if self.topology.is_cluster() {
            warn!(master = %node, %err, "redis cluster master lost; reading the slot map again");
        }
        self.links.remove(node);
        self.stale = true;
    }
}

/// The commands as one pipeline's bytes (packed in place, no copy of a command).
fn pack<'a>(commands: impl Iterator<Item = &'a redis::Cmd>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for cmd in commands {
        cmd.write_packed_command(&mut bytes);
    }
    bytes
}

/// True for a `MOVED` (or `ASK`) redirection: the command did not run on this node.
fn is_moved(value: &redis::Value) -> bool {
    matches!(value, redis::Value::ServerError(err) if matches!(err.code(), "MOVED" | "ASK"))
}

/// The node an `ASK` redirection names (`ASK <slot> <host>:<port>`): the slot is migrating
/// there and this command's keys are already on it.
fn ask_target(value: &redis::Value) -> Option<NodeAddress> {
    let redis::Value::ServerError(err) = value else {
        return None;
    };
    if err.code() != "ASK" {
        return None;
    }
    let (_slot, address) = err.details()?.split_once(' ')?;
    let (host, port) = address.rsplit_once(':')?;
    Some(NodeAddress {
        host: host.to_owned(),
        port: port.parse().ok()?,
    })
}

/// Reads `count` replies, all before `deadline`.
fn read_replies(
    conn: &mut redis::Connection,
    count: usize,
    deadline: Instant,
) -> redis::RedisResult<Vec<redis::Value>> {
    let mut replies = Vec::with_capacity(count);
    for _ in 0..count {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "redis pipeline deadline passed",
            )
            .into());
        }
        conn.set_read_timeout(Some(left))?;
        replies.push(conn.recv_response()?);
    }
    conn.set_read_timeout(Some(IO_DEADLINE))?;
    Ok(replies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(text: &str) -> redis::Value {
        redis::parse_redis_value(format!("-{text}\r\n").as_bytes())
            .expect("an error reply parses as a value")
    }

    #[test]
    fn an_ask_names_the_node_to_ask_and_a_moved_does_not() {
        assert_eq!(
            ask_target(&server_error("ASK 3999 127.0.0.1:7002")),
            Some(NodeAddress {
                host: "127.0.0.1".into(),
                port: 7002
            })
        );
        assert_eq!(ask_target(&server_error("MOVED 3999 127.0.0.1:7002")), None);
        assert_eq!(ask_target(&server_error("ASK 3999")), None);
        assert!(is_moved(&server_error("MOVED 3999 127.0.0.1:7002")));
        assert!(is_moved(&server_error("ASK 3999 127.0.0.1:7002")));
        assert!(!is_moved(&server_error("ERR wrong")));
    }

    #[test]
    fn every_key_of_a_valid_topic_shares_one_slot() {
        for topic in ["room:1", "a{b}c", "x}", "{", "{}", "a}b{c"] {
            assert!(crate::protocol::names::is_valid_topic(topic));
            let slots = [
                crate::presence::members_key(topic),
                crate::presence::version_key(topic),
            ]
            .map(|key| slot_of(key.as_bytes()));
            assert_eq!(slots[0], slots[1], "{topic}");
        }
    }

    #[test]
    fn a_topic_routes_to_the_slot_of_its_keys() {
        for topic in ["room:1", "weather:wind", "a{b}c", "}x", "{"] {
            assert_eq!(
                Route::topic(topic),
                Route::key(&crate::presence::members_key(topic)),
                "{topic}"
            );
        }
    }
}
