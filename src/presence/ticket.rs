//! The return address of a join waiting for its topic's presence state.

/// Identifies the join waiting for its presence state.
#[derive(Debug, Clone)]
pub struct PresenceTicket {
    /// The shard of the connection.
    pub shard: usize,
    /// The connection, local to the shard.
    pub conn: u64,
    /// The joined topic.
    pub topic: String,
    /// The phx_ref of the join; a state for an older join of the same topic is ignored.
    pub phx_ref: String,
}
