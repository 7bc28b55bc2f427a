//! The admin channel's questions that only Redis can answer for the whole deployment: which
//! topics have members, who they are, which sockets and topics a client id has, and how many
//! sockets a disconnect closes. Run on the publisher thread (they are rare and may scan),
//! answered through the asking shard's inbox.

use std::collections::{BTreeMap, HashSet};

use serde_json::{json, Value};

use super::commands::UpstreamCommand;
use super::master_links::{MasterLinks, Route};
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
    /// One topic's presence members, with their metas and processes.
    Presence(String),
    /// One client id's sockets (with their process) and the topics each joined.
    Client(String),
    /// A topic's newest messages (at most `limit`), from its history.
    History {
        /// The topic.
        topic: String,
        /// The most messages returned.
        limit: u64,
    },
}

/// Most metas one `presence` answer lists (the count is always complete).
pub const MAX_LISTED_METAS: usize = 10_000;

/// The process part of a `phx_ref` (`<node>.<shard>.<conn>.<n>` → `<node>`).
fn node_of_phx_ref(phx_ref: &str) -> &str {
    let mut parts = phx_ref.rsplitn(4, '.');
    let node = parts.nth(3);
    node.unwrap_or(phx_ref)
}

/// `{"topic", "members": [{"id", "metas": [{"phx_ref", "online_at", "node"}]}], "metas",
/// "truncated"}`: the topic's presence entries grouped by id (ids sorted), at most
/// [`MAX_LISTED_METAS`] metas listed.
pub fn presence(links: &mut MasterLinks, topic: &str) -> redis::RedisResult<Value> {
    let key = presence::members_key(topic);
    let mut hvals = redis::cmd("HVALS");
    hvals.arg(&key);
    let values: Vec<Vec<u8>> =
        redis::FromRedisValue::from_redis_value(links.query(Route::key(&key), hvals)?)?;
    let mut members: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for value in values.iter().take(MAX_LISTED_METAS) {
        let Ok(entry) = serde_json::from_slice::<Value>(value) else {
            continue;
        };
        let Some(id) = entry.get("key").and_then(Value::as_str) else {
            continue;
        };
        let mut meta = entry.get("meta").cloned().unwrap_or(Value::Null);
        if let Some(phx_ref) = meta.get("phx_ref").and_then(Value::as_str) {
            let node = node_of_phx_ref(phx_ref).to_owned();
            meta["node"] = json!(node);
        }
        members.entry(id.to_owned()).or_default().push(meta);
    }
    let members: Vec<Value> = members
        .into_iter()
        .map(|(id, metas)| json!({ "id": id, "metas": metas }))
        .collect();
    Ok(json!({
        "topic": topic,
        "members": members,
        "metas": values.len(),
        "truncated": values.len() > MAX_LISTED_METAS,
    }))
}

/// The `phx_ref` of every presence entry of `id` among a topic's `values`.
fn phx_refs_of<'a>(values: &'a [Vec<u8>], id: &'a str) -> impl Iterator<Item = String> + 'a {
    values.iter().filter_map(move |value| {
        let entry = serde_json::from_slice::<Value>(value).ok()?;
        if entry.get("key").and_then(Value::as_str) != Some(id) {
            return None;
        }
        entry
            .pointer("/meta/phx_ref")
            .and_then(Value::as_str)
            .map(str::to_owned)
    })
}

/// `{"id", "sockets": [{"socket", "node", "topics": [...]}]}`: every socket of `id` found in
/// presence (a socket joined to no channel is not there), with the topics it joined.
pub fn client(links: &mut MasterLinks, id: &str) -> redis::RedisResult<Value> {
    let mut sockets: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for (topic, values) in links.for_each_master(scan_members)?.into_iter().flatten() {
        for phx_ref in phx_refs_of(&values, id) {
            let socket = presence::socket_of_phx_ref(&phx_ref).to_owned();
            let node = node_of_phx_ref(&phx_ref).to_owned();
            let (_, topics) = sockets.entry(socket).or_insert((node, Vec::new()));
            topics.push(topic.clone());
        }
    }
    let sockets: Vec<Value> = sockets
        .into_iter()
        .map(|(socket, (node, mut topics))| {
            topics.sort();
            json!({ "socket": socket, "node": node, "topics": topics })
        })
        .collect();
    Ok(json!({ "id": id, "sockets": sockets }))
}

/// Every topic's presence entries on one node, by scanning the members hashes (on a cluster,
/// run on every master).
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
pub fn topics(links: &mut MasterLinks) -> redis::RedisResult<Value> {
    let mut out = BTreeMap::new();
    for (topic, values) in links.for_each_master(scan_members)?.into_iter().flatten() {
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
/// process to close them. Returns `{"id", "disconnected", "processes"}`: the processes that
/// got the request (on a cluster: the live processes, see below).
pub fn disconnect(links: &mut MasterLinks, id: &str) -> redis::RedisResult<Value> {
    let mut sockets = HashSet::new();
    for (_, values) in links.for_each_master(scan_members)?.into_iter().flatten() {
        for phx_ref in phx_refs_of(&values, id) {
            sockets.insert(presence::socket_of_phx_ref(&phx_ref).to_owned());
        }
    }
    let mut publish = redis::cmd("PUBLISH");
    publish
        .arg(CONTROL_CHANNEL)
        .arg(format!("{DISCONNECT_PREFIX}{id}"));
    // A cluster propagates it to every node: every process's reader gets it. There PUBLISH
    // counts only the receivers on the node it was sent to, so the processes asked are the
    // live ones (every live process listens to the control channel).
    let receivers: i64 =
        redis::FromRedisValue::from_redis_value(links.query(Route::AnyMaster, publish)?)?;
    let processes = if links.is_cluster() {
        let mut live = redis::cmd("EVAL");
        live.arg(presence::scripts::LIVE_PROCESSES)
            .arg(1)
            .arg(presence::PROCESSES_KEY);
        redis::FromRedisValue::from_redis_value(
            links.query(Route::key(presence::PROCESSES_KEY), live)?,
        )?
    } else {
        receivers
    };
    Ok(json!({ "id": id, "disconnected": sockets.len(), "processes": processes }))
}

/// `{"topic", "position": <latest or null>, "messages": [{"position", "event", "payload"}]}`,
/// oldest first; a payload that is not JSON is given as `{"bytes": <length>}`.
pub fn history(links: &mut MasterLinks, topic: &str, limit: u64) -> redis::RedisResult<Value> {
    let mut fcall = redis::cmd("FCALL_RO");
    fcall
        .arg(super::function::HISTORY_FUNCTION)
        .arg(1)
        .arg(topic)
        .arg("")
        .arg("")
        .arg(limit);
    // The function's key is the topic: its slot's master has the history.
    let reply = links.query(Route::key(topic), fcall);
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
        conn: &mut MasterLinks,
        command: UpstreamCommand,
    ) -> redis::RedisResult<()> {
        let UpstreamCommand::Admin { query, ticket } = command else {
            return Ok(());
        };
        let result = match &query {
            AdminQuery::Topics => topics(conn),
            AdminQuery::Disconnect(id) => disconnect(conn, id),
            AdminQuery::Presence(topic) => presence(conn, topic),
            AdminQuery::Client(id) => client(conn, id),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_of_a_presence_is_its_phx_ref_without_shard_conn_and_count() {
        assert_eq!(node_of_phx_ref("n1.0.12.3"), "n1");
        assert_eq!(node_of_phx_ref("host.a.b.1.2.3"), "host.a.b");
        assert_eq!(node_of_phx_ref("odd"), "odd");
    }
}
