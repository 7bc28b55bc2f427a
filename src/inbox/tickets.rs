//! The return addresses carried through the Redis core: who asked, so that the answer finds
//! its way back to one connection of one shard.

/// Identifies an admin connection waiting for an answer from Redis.
#[derive(Debug, Clone)]
pub struct AdminTicket {
    /// The shard of the connection.
    pub shard: usize,
    /// The connection, local to the shard.
    pub conn: u64,
    /// The join reference of the admin channel.
    pub join_ref: Option<String>,
    /// How the answer goes back to the admin.
    pub answer_as: AdminAnswerAs,
}

/// How an admin answer is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAnswerAs {
    /// Pushed as the join's `state`.
    JoinState,
    /// The reply to the push with this reference.
    Reply {
        /// The push's own reference, echoed in the reply.
        msg_ref: Option<String>,
    },
}

/// What the shard needs to answer a push once Redis has (or has not) accepted it.
#[derive(Debug, Clone)]
pub struct PushAck {
    /// The connection that pushed, local to the shard.
    pub conn: u64,
    /// The join reference the push carried.
    pub join_ref: Option<String>,
    /// The push's own reference, echoed in the reply.
    pub msg_ref: Option<String>,
    /// The topic it was pushed on.
    pub topic: String,
}

/// The publisher's verdict on one push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Redis accepted the `PUBLISH`.
    Published,
    /// Redis was down, stalled or the queue was full: the client gets `backend unavailable`.
    BackendUnavailable,
}

/// Identifies a join waiting for its topic's history (PROTOCOL §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryTicket {
    /// The shard of the joining connection.
    pub shard: usize,
    /// The waiting join, unique within the shard.
    pub join: u64,
}
