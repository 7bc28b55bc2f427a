//! The other direction of the mailbox: a shard telling the Redis core that it gained its first
//! or lost its last local subscriber of a topic (the core keeps the routing table).

/// One shard's change of interest in one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterestChange {
    /// The shard whose interest changed.
    pub shard: usize,
    /// The topic it concerns.
    pub topic: String,
    /// True when the shard gained its first subscriber, false when it lost its last one.
    pub interested: bool,
    /// Which of the shard's holdings of the topic this gain starts or this loss ends: a
    /// confirmation carries it back, so that the shard does not take a confirmation of an
    /// earlier holding for the current one.
    pub generation: u64,
}
