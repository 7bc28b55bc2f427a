//! What the shards (and the publisher itself) ask of Redis: the commands of the broker's
//! upstream queue, with the return addresses their answers go to.
//!
//! What it must never do: carry anything a shard still needs (a command owns its strings and
//! bytes, and crosses threads once).

use bytes::Bytes;

use super::admin_queries::AdminQuery;
use crate::history::Position;
use crate::inbox::{AdminTicket, HistoryTicket, PushAck};
use crate::presence::{Presence, PresenceTicket};

/// One message to publish, and who to tell when it is done.
#[derive(Debug)]
pub struct PublishRequest {
    /// The Redis channel, `from:<topic>:<event>`.
    pub channel: String,
    /// The payload exactly as the client sent it.
    pub payload: Bytes,
    /// Which shard and connection wait for the outcome; `None` for fire-and-forget.
    pub origin: Option<(usize, PushAck)>,
}

/// What the shards ask of Redis.
#[derive(Debug)]
pub enum UpstreamCommand {
    /// A client's push.
    Publish(PublishRequest),
    /// A presence joined `topic`; the shard wants the resulting state.
    PresenceJoin {
        /// The joined topic.
        topic: String,
        /// Who joined.
        presence: Presence,
        /// Where the state goes.
        ticket: PresenceTicket,
    },
    /// Read a topic's members to seed this process's copy (made by the publisher itself when
    /// the copy asks for a snapshot; its waiting joins are served from it).
    PresenceSnapshot {
        /// The topic.
        topic: String,
    },
    /// A presence left `topic` (leave, rejoin or disconnect).
    PresenceLeave {
        /// The topic left.
        topic: String,
        /// Who left.
        presence: Presence,
    },
    /// Read a topic's history for a join (`FCALL_RO channel_history`, pipelined).
    History {
        /// The topic.
        topic: String,
        /// The join's `since`; `None` asks for the latest position only.
        since: Option<Position>,
        /// The most messages to return (`history_size`).
        limit: u64,
        /// Where the answer goes.
        ticket: HistoryTicket,
    },
    /// Look at the stop flag and the probe request now (sent by the reader and at shutdown, so
    /// that an idle publisher can sleep until it has work).
    Wake,
    /// A question from the admin channel (not pipelined: it may scan).
    Admin {
        /// What is asked.
        query: AdminQuery,
        /// Who asked.
        ticket: AdminTicket,
    },
}
