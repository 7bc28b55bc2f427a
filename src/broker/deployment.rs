//! How the broker reaches Redis in each deployment (docs/operations.md, "Redis deployments"):
//! one Redis at a URL, the master a set of sentinels names at this moment, or a Redis Cluster.
//!
//! What it owns: turning a [`RedisDeployment`] into a [`Connector`] that hands out a fresh
//! connection to the node that takes writes *now*, or (on a cluster, and for the parts that
//! route by slot) the [`ClusterTopology`] to follow. In Sentinel mode every call asks the
//! sentinels again (the redis crate's `sentinel` support: `SENTINEL MASTERS`, then `ROLE` on
//! the node named, so a stale answer is skipped), so the reader's and the publisher's ordinary
//! reconnect loop is all it takes to follow a failover; and [`is_failover_sign`] says which
//! errors mean "this node is no longer the master" so that they end the connection.
//!
//! What it must never do: keep a connection itself, retry on its own (the callers pace their
//! reconnects with [`super::backoff`]), or log a password (addresses are logged without user
//! info).

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Duration;

use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::IntoConnectionInfo;

use super::cluster_topology::ClusterTopology;
use super::sentinel::MasterSwitches;
use crate::config::RedisDeployment;

/// How long one connection attempt to a Redis node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a deployment cannot be used at all (a configuration problem, not a Redis outage).
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    /// The address list or URL does not parse as the redis crate needs it.
    #[error("invalid Redis address: {0}")]
    Address(#[from] redis::RedisError),
}

/// Hands out connections to the current master. One per thread that talks to Redis (the
/// Sentinel client caches its connections to the sentinels, so it is not shared).
pub struct Connector {
    kind: ConnectorKind,
    /// The sentinels' switches of the master (never moves in single mode).
    switches: Arc<MasterSwitches>,
    /// The switch count when the last connection was made.
    connected_at: Cell<u64>,
}

enum ConnectorKind {
    Single(redis::Client),
    Sentinel {
        client: RefCell<SentinelClient>,
        master: String,
    },
    /// A Redis Cluster: the slot map, read from the seeds (and every node seen since).
    Cluster(RefCell<ClusterTopology>),
}

impl Connector {
    /// A connector for `deployment`; fails only on a configuration problem.
    pub fn new(
        deployment: &RedisDeployment,
        switches: Arc<MasterSwitches>,
    ) -> Result<Connector, DeploymentError> {
        let kind = match deployment {
            RedisDeployment::Single { url } => {
                ConnectorKind::Single(redis::Client::open(url.as_str())?)
            }
            RedisDeployment::Sentinel { sentinels, master } => {
                // The master and its replicas take the credentials given with the first
                // sentinel (docs/configuration.md): a deployment usually shares one password.
                let first = sentinels
                    .first()
                    .map(|s| s.as_str().into_connection_info())
                    .transpose()?;
                let node_info = first.map(|info| {
                    SentinelNodeConnectionInfo::default()
                        .set_redis_connection_info(info.redis_settings().clone())
                });
                let client = SentinelClient::build(
                    sentinels.iter().map(String::as_str).collect(),
                    master.clone(),
                    node_info,
                    SentinelServerType::Master,
                )?;
                ConnectorKind::Sentinel {
                    client: RefCell::new(client),
                    master: master.clone(),
                }
            }
            RedisDeployment::Cluster { seeds } => {
                ConnectorKind::Cluster(RefCell::new(ClusterTopology::from_seeds(seeds)?))
            }
        };
        Ok(Connector {
            kind,
            connected_at: Cell::new(switches.current()),
            switches,
        })
    }

    /// A new connection to the node that takes writes now (in Sentinel mode: asked from the
    /// sentinels at this call), and its address for logs (`host:port`, no credentials).
    /// On a cluster: a connection to any node that answers (`PUBLISH` reaches every node of a
    /// cluster, so the reader's `PSUBSCRIBE` may be on any of them).
    pub fn connect(&self) -> redis::RedisResult<(redis::Connection, String)> {
        if let ConnectorKind::Cluster(topology) = &self.kind {
            return connect_any_node(&mut topology.borrow_mut());
        }
        let client = self.master_client()?;
        let address = address_of(&client);
        let conn = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        Ok((conn, address))
    }

    /// A client of the node that takes writes now (asked from the sentinels in Sentinel
    /// mode), for a caller that makes its own kind of connection; counts as a (re)connect for
    /// [`Self::master_switched`].
    pub fn master_client(&self) -> redis::RedisResult<redis::Client> {
        // Counted before asking: a switch announced during the question makes the connection
        // be replaced once more rather than kept on a stale master.
        self.connected_at.set(self.switches.current());
        match &self.kind {
            ConnectorKind::Single(client) => Ok(client.clone()),
            ConnectorKind::Sentinel { client, .. } => client.borrow_mut().get_client(),
            ConnectorKind::Cluster(topology) => {
                let topology = topology.borrow();
                let node = topology.known_nodes().first().ok_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no seed"))
                })?;
                topology.client_for(node)
            }
        }
    }

    /// Who owns which slot now: on a cluster, the slot map read from its nodes; otherwise one
    /// node (the single Redis, or the master the sentinels name at this call) that owns every
    /// slot. Counts as a (re)connect for [`Self::master_switched`].
    pub fn topology(&self) -> redis::RedisResult<ClusterTopology> {
        if let ConnectorKind::Cluster(topology) = &self.kind {
            self.connected_at.set(self.switches.current());
            let mut topology = topology.borrow_mut();
            topology
                .refresh()
                .map_err(|err| std::io::Error::new(std::io::ErrorKind::NotConnected, err))?;
            return Ok(topology.clone());
        }
        let client = self.master_client()?;
        ClusterTopology::single(&client).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "this part of channel needs a plain TCP address (not TLS or a unix socket)",
            ))
        })
    }

    /// True when the sentinels switched the master since the last [`Self::connect`]: the
    /// connection in use may be on the old master (which keeps taking commands until the
    /// sentinels demote it) and must be replaced.
    pub fn master_switched(&self) -> bool {
        self.switches.current() != self.connected_at.get()
    }

    /// What the connector follows, for logs: `single` or `sentinel master <name>`.
    pub fn describe(&self) -> String {
        match &self.kind {
            ConnectorKind::Single(_) => "single".to_owned(),
            ConnectorKind::Sentinel { master, .. } => format!("sentinel master {master}"),
            ConnectorKind::Cluster(_) => "cluster".to_owned(),
        }
    }
}

/// A connection to the first node of the cluster that answers, the slot map read first (so
/// that nodes seen since the seeds are tried too, and a lost seed is not asked first).
fn connect_any_node(
    topology: &mut ClusterTopology,
) -> redis::RedisResult<(redis::Connection, String)> {
    // A cluster that cannot say its slots is tried node by node all the same.
    let _ = topology.refresh();
    let mut last_error = None;
    for node in topology.known_nodes() {
        match topology
            .client_for(node)
            .and_then(|client| client.get_connection_with_timeout(CONNECT_TIMEOUT))
        {
            Ok(conn) => return Ok((conn, node.to_string())),
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "no cluster node known",
        ))
    }))
}

/// `host:port` of a client, without user info.
fn address_of(client: &redis::Client) -> String {
    client.get_connection_info().addr().to_string()
}

/// True when one reply of a pipeline says that the node is not (or no longer) the master: a
/// write refused with READONLY, or a node that says its master is down or that it is still
/// loading. The connection must then be replaced (and, under Sentinel, the master asked
/// again) rather than used further. (Errors of single commands end the connection anyway.)
pub fn is_failover_reply(reply: &redis::Value) -> bool {
    match reply {
        redis::Value::ServerError(err) => {
            matches!(err.code(), "READONLY" | "MASTERDOWN" | "LOADING")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_connector_builds_without_contacting_anyone() {
        let connector = Connector::new(
            &RedisDeployment::Cluster {
                seeds: vec!["redis://127.0.0.1:1".into(), "redis://127.0.0.1:2".into()],
            },
            Arc::default(),
        )
        .expect("seeds parse");
        assert_eq!(connector.describe(), "cluster");
        // Nothing listens on ports 1 and 2: no node answers, nothing hangs or panics.
        assert!(connector.connect().is_err());
        assert!(connector.topology().is_err());
    }

    #[test]
    fn sentinel_connector_builds_without_contacting_anyone() {
        let connector = Connector::new(
            &RedisDeployment::Sentinel {
                sentinels: vec!["redis://:pw@127.0.0.1:1".into()],
                master: "m".into(),
            },
            Arc::default(),
        )
        .expect("addresses parse");
        assert_eq!(connector.describe(), "sentinel master m");
        // Nothing listens on port 1: asking for the master fails, it does not hang or panic.
        assert!(connector.connect().is_err());
    }

    #[test]
    fn readonly_replies_are_failover_signs() {
        let reply = |text: &[u8]| redis::parse_redis_value(text).expect("a RESP error line parses");
        assert!(is_failover_reply(&reply(
            b"-READONLY You can't write against a read only replica.\r\n"
        )));
        assert!(is_failover_reply(&reply(
            b"-MASTERDOWN Link with MASTER is down\r\n"
        )));
        assert!(!is_failover_reply(&reply(b"-ERR unknown command\r\n")));
        assert!(!is_failover_reply(&reply(b":1\r\n")));
    }
}
