//! Redis Cluster topology: which master owns which hash slot, as the cluster's nodes say.
//!
//! What it owns: the list of nodes worth asking (the seeds, then every node a slot map named),
//! the last slot map read with `CLUSTER SLOTS`, the slot of a key, and a client for any node
//! (with the seeds' credentials). Single and Sentinel deployments are the degenerate case:
//! one node owns every slot ([`ClusterTopology::single`]).
//!
//! Why our own and not the redis crate's cluster client: the crate's sync cluster connection
//! cannot hold sharded subscriptions, and its pipelines fail or retry as a whole, while the
//! publisher must answer each push on its own (never a false `ok`, never a silent retry of a
//! `PUBLISH`) within one deadline; its async cluster client needs a tokio runtime. What we
//! need from it is small: slot ranges and their masters (docs/operations.md, "Redis Cluster").
//!
//! What it must never do: keep connections (callers own theirs), block longer than
//! [`ASK_TIMEOUT`] a node, or log a password.

use std::fmt;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;
/// How long asking one node for the slot map may take.
const ASK_TIMEOUT: Duration = Duration::from_millis(1000);

/// `host:port` of a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddress {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the first `{` and the
/// next `}`, when not empty) or of the whole key, modulo [`SLOTS`].
pub fn slot_of(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % SLOTS
}

/// Who owns which slot, and how to reach a node.
#[derive(Debug, Clone)]
pub struct ClusterTopology {
    /// Nodes to ask for the slot map, the one that answered last first.
    known: Vec<NodeAddress>,
    /// Connection settings of the first seed (credentials, protocol), used for every node.
    template: ConnectionInfo,
    /// Slot ranges `(first, last, master index)`, sorted by `first`.
    ranges: Vec<(u16, u16, usize)>,
    /// The masters of the last slot map.
    masters: Vec<NodeAddress>,
    /// False for a single node that owns every slot (single Redis, or Sentinel's master).
    is_cluster: bool,
}

/// Why the slot map could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("no Redis Cluster node answered CLUSTER SLOTS (last error: {0})")]
    NoNodeAnswered(String),
}

impl ClusterTopology {
    /// A topology discovered from `seeds` (`redis://[user:password@]host:port` each); nothing
    /// is asked until [`Self::refresh`].
    pub fn from_seeds(seeds: &[String]) -> redis::RedisResult<ClusterTopology> {
        let mut known = Vec::new();
        let mut template = None;
        for seed in seeds {
            let info = seed.as_str().into_connection_info()?;
            let ConnectionAddr::Tcp(host, port) = info.addr() else {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "redis_cluster: seeds must be plain TCP addresses (host:port or redis://…)",
                )));
            };
            known.push(NodeAddress {
                host: host.clone(),
                port: *port,
            });
            template.get_or_insert(info);
        }
        let template = template.ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "redis_cluster: at least one seed node is needed",
            ))
        })?;
        Ok(ClusterTopology {
            known,
            template,
            ranges: Vec::new(),
            masters: Vec::new(),
            is_cluster: true,
        })
    }

    /// One node that owns every slot: the single Redis, or the master Sentinel named.
    pub fn single(client: &redis::Client) -> Option<ClusterTopology> {
        let info = client.get_connection_info().clone();
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        let node = NodeAddress {
            host: host.clone(),
            port: *port,
        };
        Some(ClusterTopology {
            known: vec![node.clone()],
            template: info,
            ranges: vec![(0, SLOTS - 1, 0)],
            masters: vec![node],
            is_cluster: false,
        })
    }

    /// True for a Redis Cluster (false for one node that owns every slot).
    pub fn is_cluster(&self) -> bool {
        self.is_cluster
    }

    /// Reads the slot map again from the first node that answers; on success that node is
    /// asked first next time. A single node has nothing to read.
    pub fn refresh(&mut self) -> Result<(), TopologyError> {
        if !self.is_cluster {
            return Ok(());
        }
        let mut last_error = String::from("no node known");
        for index in 0..self.known.len() {
            let node = self.known[index].clone();
            match self.ask_slots(&node) {
                Ok(slots) => {
                    self.adopt(&node, slots);
                    let answered = self.known.remove(index);
                    self.known.insert(0, answered);
                    return Ok(());
                }
                Err(err) => last_error = format!("{node}: {err}"),
            }
        }
        Err(TopologyError::NoNodeAnswered(last_error))
    }

    fn ask_slots(&self, node: &NodeAddress) -> redis::RedisResult<redis::Value> {
        let mut conn = self
            .client_for(node)?
            .get_connection_with_timeout(ASK_TIMEOUT)?;
        conn.set_read_timeout(Some(ASK_TIMEOUT))?;
        conn.set_write_timeout(Some(ASK_TIMEOUT))?;
        redis::cmd("CLUSTER").arg("SLOTS").query(&mut conn)
    }

    /// Takes the reply of `CLUSTER SLOTS` asked from `asked` (whose empty host names mean
    /// "the node you asked").
    fn adopt(&mut self, asked: &NodeAddress, slots: redis::Value) {
        let mut ranges = Vec::new();
        let mut masters: Vec<NodeAddress> = Vec::new();
        let redis::Value::Array(entries) = slots else {
            return;
        };
        for entry in entries {
            let redis::Value::Array(parts) = entry else {
                continue;
            };
            let mut parts = parts.into_iter();
            let (Some(first), Some(last)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (redis::Value::Int(first), redis::Value::Int(last)) = (first, last) else {
                continue;
            };
            let nodes: Vec<NodeAddress> = parts.filter_map(|n| node_of(n, asked)).collect();
            let Some(master) = nodes.first() else {
                continue;
            };
            let index = match masters.iter().position(|m| m == master) {
                Some(index) => index,
                None => {
                    masters.push(master.clone());
                    masters.len() - 1
                }
            };
            let (Ok(first), Ok(last)) = (u16::try_from(first), u16::try_from(last)) else {
                continue;
            };
            ranges.push((first, last, index));
            for node in nodes {
                if !self.known.contains(&node) {
                    self.known.push(node);
                }
            }
        }
        ranges.sort_unstable();
        self.ranges = ranges;
        self.masters = masters;
    }

    /// The master that owns `slot` in the last slot map read.
    pub fn master_of_slot(&self, slot: u16) -> Option<&NodeAddress> {
        let at = self.ranges.partition_point(|&(first, _, _)| first <= slot);
        let &(first, last, index) = self.ranges.get(at.checked_sub(1)?)?;
        (first <= slot && slot <= last).then(|| &self.masters[index])
    }

    /// The master that owns `key`'s slot.
    pub fn master_of_key(&self, key: &[u8]) -> Option<&NodeAddress> {
        self.master_of_slot(slot_of(key))
    }

    /// Every master of the last slot map.
    pub fn masters(&self) -> &[NodeAddress] {
        &self.masters
    }

    /// Every node worth asking, the last that answered first.
    pub fn known_nodes(&self) -> &[NodeAddress] {
        &self.known
    }

    /// A client of `node` with the deployment's credentials.
    pub fn client_for(&self, node: &NodeAddress) -> redis::RedisResult<redis::Client> {
        let info = self
            .template
            .clone()
            .set_addr(ConnectionAddr::Tcp(node.host.clone(), node.port));
        redis::Client::open(info)
    }
}

/// `[host, port, id, …]` of a `CLUSTER SLOTS` entry.
fn node_of(value: redis::Value, asked: &NodeAddress) -> Option<NodeAddress> {
    let redis::Value::Array(parts) = value else {
        return None;
    };
    let host = match parts.first()? {
        redis::Value::BulkString(host) => String::from_utf8(host.clone()).ok()?,
        redis::Value::SimpleString(host) => host.clone(),
        redis::Value::Nil => String::new(),
        _ => return None,
    };
    let port = match parts.get(1)? {
        redis::Value::Int(port) => u16::try_from(*port).ok()?,
        _ => return None,
    };
    // An empty (or `?`) host means "the address you reached me at".
    let host = if host.is_empty() || host == "?" {
        asked.host.clone()
    } else {
        host
    };
    Some(NodeAddress { host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag_like_redis() {
        // Values from `redis-cli CLUSTER KEYSLOT`.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"channel:to:{room:1}"), slot_of(b"room:1"));
        // An empty tag hashes the whole key.
        assert_eq!(
            slot_of(b"{}x"),
            crc16::State::<crc16::XMODEM>::calculate(b"{}x") % SLOTS
        );
    }

    fn reply(text: &str) -> redis::Value {
        redis::parse_redis_value(text.as_bytes()).expect("a RESP reply parses")
    }

    #[test]
    fn a_slot_map_is_read_with_empty_hosts_meaning_the_node_asked() {
        let mut topology =
            ClusterTopology::from_seeds(&["redis://:pw@10.0.0.1:7000".into()]).expect("parses");
        let asked = NodeAddress {
            host: "10.0.0.1".into(),
            port: 7000,
        };
        topology.adopt(
            &asked,
            reply(concat!(
                "*2\r\n",
                "*4\r\n:0\r\n:8191\r\n*3\r\n$0\r\n\r\n:7000\r\n$2\r\nid\r\n*3\r\n$8\r\n10.0.0.2\r\n:7001\r\n$2\r\nid\r\n",
                "*3\r\n:8192\r\n:16383\r\n*3\r\n$8\r\n10.0.0.3\r\n:7002\r\n$2\r\nid\r\n",
            )),
        );
        assert_eq!(topology.master_of_slot(0), Some(&asked));
        assert_eq!(topology.master_of_slot(8191), Some(&asked));
        assert_eq!(topology.master_of_slot(8192).map(|n| n.port), Some(7002));
        assert_eq!(topology.masters().len(), 2);
        // The replica is now known and asked if the masters do not answer.
        assert!(topology.known_nodes().iter().any(|n| n.port == 7001));
        // The credentials of the seed go to every node.
        let client = topology
            .client_for(&topology.masters()[1])
            .expect("a client");
        assert_eq!(
            client.get_connection_info().redis_settings().password(),
            Some("pw")
        );
    }

    #[test]
    fn a_slot_no_range_covers_has_no_master() {
        let mut topology =
            ClusterTopology::from_seeds(&["redis://10.0.0.1:7000".into()]).expect("parses");
        let asked = topology.known_nodes()[0].clone();
        topology.adopt(
            &asked,
            reply("*1\r\n*3\r\n:100\r\n:200\r\n*2\r\n$1\r\na\r\n:1\r\n"),
        );
        assert_eq!(topology.master_of_slot(99), None);
        assert_eq!(
            topology.master_of_slot(150).map(|n| n.host.as_str()),
            Some("a")
        );
        assert_eq!(topology.master_of_slot(201), None);
    }
}
