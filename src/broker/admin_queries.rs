//! The admin channel's questions that only Redis can answer for the whole deployment: which
//! topics have members, and how many sockets a client id has. Run on the publisher thread
//! (they are rare and may scan), answered through the asking shard's inbox.

use std::collections::{BTreeMap, HashSet};

use serde_json::{json, Value};

use super::commands::UpstreamCommand;
use super::publisher::RedisPublisher;
use crate::inbox::ShardMessage;
use crate::presence;
use crate::protocol::Refusal;

/// The Redis channel every process listens to for control messages (`disconnect <id>`).
pub const CONTROL_CHANNEL: &str = "channel:control";
/// Prefix of the control message asking every process to disconnect a client id.
pub const DISCONNECT_PREFIX: &str = "disconnect ";

/// What an admin asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminQuery {
    /// Topics with their member counts (for the join state and `list`).
    Topics,
    /// Close every socket of this client id in every process.
    Disconnect(String),
    /// A topic's newest messages (at most `limit`), from its history.
    History {
        /// The topic.
        topic: String,
        /// The most messages returned.
        limit: u64,
    },
}

/// Every topic's presence entries, by scanning the members hashes.
fn scan_members(conn: &mut redis::Connection) -> redis::RedisResult<Vec<(String, Vec<Vec<u8>>)>> {
    let pattern = "presence:{*}:members";
    let keys: Vec<String> = {
        let iter: redis::Iter<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter(conn)?;
        iter.collect::<redis::RedisResult<Vec<String>>>()?
    };
    let mut topics = Vec::with_capacity(keys.len());
    for key in keys {
        let Some(topic) = key
            .strip_prefix("presence:{")
            .and_then(|rest| rest.strip_suffix("}:members"))
        else {
            continue;
        };
        let values: Vec<Vec<u8>> = redis::cmd("HVALS").arg(&key).query(conn)?;
        if !values.is_empty() {
            topics.push((topic.to_owned(), values));
        }
    }
    Ok(topics)
}

/// `{"topics": {"<topic>": {"members": <distinct ids>, "metas": <joins>}}}` for the whole
/// deployment.
pub fn topics(conn: &mut redis::Connection) -> redis::RedisResult<Value> {
    let mut out = BTreeMap::new();
    for (topic, values) in scan_members(conn)? {
        let mut ids = HashSet::new();
        for value in &values {
            if let Ok(entry) = serde_json::from_slice::<Value>(value) {
                if let Some(id) = entry.get("key").and_then(Value::as_str) {
                    ids.insert(id.to_owned());
                }
            }
        }
        out.insert(
            topic,
            json!({ "members": ids.len(), "metas": values.len() }),
        );
    }
    Ok(json!({ "topics": out }))
}

/// Counts the sockets of `id` (distinct connections among its presences), then asks every
/// process to close them. Returns `{"id", "disconnected", "processes"}`.
pub fn disconnect(conn: &mut redis::Connection, id: &str) -> redis::RedisResult<Value> {
    let mut sockets = HashSet::new();
    for (_, values) in scan_members(conn)? {
        for value in &values {
            let Ok(entry) = serde_json::from_slice::<Value>(value) else {
                continue;
            };
            if entry.get("key").and_then(Value::as_str) != Some(id) {
                continue;
            }
            if let Some(phx_ref) = entry.pointer("/meta/phx_ref").and_then(Value::as_str) {
                sockets.insert(presence::socket_of_phx_ref(phx_ref).to_owned());
            }
        }
    }
    let processes: i64 = redis::cmd("PUBLISH")
        .arg(CONTROL_CHANNEL)
        .arg(format!("{DISCONNECT_PREFIX}{id}"))
        .query(conn)?;
    Ok(json!({ "id": id, "disconnected": sockets.len(), "processes": processes }))
}

/// `{"topic", "position": <latest or null>, "messages": [{"position", "event", "payload"}]}`,
/// oldest first; a payload that is not JSON is given as `{"bytes": <length>}`.
pub fn history(conn: &mut redis::Connection, topic: &str, limit: u64) -> redis::RedisResult<Value> {
    let reply: redis::RedisResult<redis::Value> = redis::cmd("FCALL_RO")
        .arg(super::function::HISTORY_FUNCTION)
        .arg(1)
        .arg(topic)
        .arg("")
        .arg("")
        .arg(limit)
        .query(conn);
    let reply = match reply {
        Ok(reply) => reply,
        // Redis answered with an error (no functions before Redis 7, …): say so, and keep the
        // connection, which is fine.
        Err(err) if !err.is_io_error() && !err.is_timeout() && !err.is_connection_dropped() => {
            return Ok(json!({ "topic": topic, "error": err.to_string() }));
        }
        Err(err) => return Err(err),
    };
    let Some(page) = super::function::read_history_reply(reply) else {
        return Ok(
            json!({ "topic": topic, "error": "channel_history answered in an unknown shape" }),
        );
    };
    let messages: Vec<Value> = page
        .entries
        .iter()
        .map(|entry| {
            let payload = serde_json::from_slice::<Value>(&entry.payload)
                .unwrap_or_else(|_| json!({ "bytes": entry.payload.len() }));
            json!({
                "position": entry.position.to_string(),
                "event": entry.event,
                "payload": payload,
            })
        })
        .collect();
    Ok(json!({
        "topic": topic,
        "position": page.latest.map(|p| p.to_string()),
        "messages": messages,
    }))
}

impl RedisPublisher {
    /// Runs one admin query; a Redis failure fails the connection like a pipeline would.
    pub(super) fn answer_admin(
        &self,
        conn: &mut redis::Connection,
        command: UpstreamCommand,
    ) -> redis::RedisResult<()> {
        let UpstreamCommand::Admin { query, ticket } = command else {
            return Ok(());
        };
        let result = match &query {
            AdminQuery::Topics => topics(conn),
            AdminQuery::Disconnect(id) => disconnect(conn, id),
            AdminQuery::History { topic, limit } => history(conn, topic, *limit),
        };
        let shard = ticket.shard;
        match result {
            Ok(value) => {
                self.send(
                    shard,
                    ShardMessage::AdminAnswer {
                        ticket,
                        answer: Ok(value),
                    },
                );
                Ok(())
            }
            Err(err) => {
                let answer = Err(Refusal::BackendUnavailable.to_string());
                self.send(shard, ShardMessage::AdminAnswer { ticket, answer });
                Err(err)
            }
        }
    }
}
