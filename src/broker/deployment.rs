//! How the broker reaches Redis in each deployment (docs/operations.md, "Redis deployments"):
//! one Redis at a URL, or the master a set of sentinels names at this moment.
//!
//! What it owns: turning a [`RedisDeployment`] into a [`Connector`] that hands out a fresh
//! connection to the node that takes writes *now*. In Sentinel mode every call asks the
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
    /// Cluster mode is accepted by the configuration but not served yet.
    #[error(
        "redis_cluster: Redis Cluster mode is not supported yet by this build of channel \
         (use redis_url or redis_sentinels + redis_sentinel_master; docs/operations.md)"
    )]
    ClusterNotSupported,
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
            RedisDeployment::Cluster { .. } => return Err(DeploymentError::ClusterNotSupported),
        };
        Ok(Connector {
            kind,
            connected_at: Cell::new(switches.current()),
            switches,
        })
    }

    /// A new connection to the node that takes writes now (in Sentinel mode: asked from the
    /// sentinels at this call), and its address for logs (`host:port`, no credentials).
    pub fn connect(&self) -> redis::RedisResult<(redis::Connection, String)> {
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
        }
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
        }
    }
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
    fn cluster_is_refused_with_a_sentence() {
        let err = Connector::new(
            &RedisDeployment::Cluster {
                seeds: vec!["redis://127.0.0.1:7000".into()],
            },
            Arc::default(),
        )
        .err()
        .expect("cluster is not served yet");
        assert!(err.to_string().contains("not supported yet"), "{err}");
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
