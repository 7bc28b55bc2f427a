//! [`Shards`]: every shard's inbox, by shard index, and the three ways other threads hand a
//! message to them (one shard, the shards of a mask, all shards).
//!
//! What it must never do: block. A full inbox drops the message for that shard and counts it
//! (see [`ShardInbox::send`]); the senders here report how many shards refused.

use std::sync::Arc;

use super::mailbox::{ShardInbox, ShardMessage};
use super::mask::shards_in;

/// The process's shard inboxes. Cheap to clone (one `Arc` per shard).
#[derive(Debug, Clone)]
pub struct Shards {
    inboxes: Arc<[Arc<ShardInbox>]>,
}

impl Shards {
    /// `count` empty inboxes, each bounded to `capacity` messages and `max_bytes` of
    /// broadcast payloads.
    pub fn new(count: usize, capacity: usize, max_bytes: usize) -> Self {
        Shards {
            inboxes: (0..count)
                .map(|_| Arc::new(ShardInbox::new(capacity, max_bytes)))
                .collect(),
        }
    }

    /// How many shards there are.
    pub fn count(&self) -> usize {
        self.inboxes.len()
    }

    /// Shard `shard`'s inbox (its receiving side).
    ///
    /// Panics when `shard` is not below [`Shards::count`]: shards are fixed at start.
    pub fn inbox(&self, shard: usize) -> &Arc<ShardInbox> {
        &self.inboxes[shard]
    }

    /// Every inbox, by shard index.
    pub fn inboxes(&self) -> impl Iterator<Item = &Arc<ShardInbox>> {
        self.inboxes.iter()
    }

    /// Hands `message` to shard `shard`. False when it was dropped (a full inbox, or no such
    /// shard).
    pub fn send(&self, shard: usize, message: ShardMessage) -> bool {
        self.inboxes
            .get(shard)
            .is_some_and(|inbox| inbox.send(message))
    }

    /// Hands a message made by `make` to every shard whose bit is set in `mask`. Returns how
    /// many shards dropped theirs.
    pub fn send_masked(&self, mask: u64, make: impl Fn() -> ShardMessage) -> u64 {
        shards_in(mask)
            .filter(|&shard| !self.send(shard, make()))
            .count() as u64
    }

    /// Hands a message made by `make` to every shard. Returns how many shards dropped theirs.
    pub fn send_all(&self, make: impl Fn() -> ShardMessage) -> u64 {
        self.inboxes
            .iter()
            .filter(|inbox| !inbox.send(make()))
            .count() as u64
    }

    /// Messages dropped by every inbox since start.
    pub fn dropped(&self) -> u64 {
        self.inboxes.iter().map(|inbox| inbox.dropped()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_sends_reach_only_the_shards_of_the_mask() {
        let shards = Shards::new(3, 1, 1 << 20);
        assert_eq!(
            shards.send_masked(0b101, || ShardMessage::RedisStateChanged),
            0
        );
        assert!(shards.inbox(0).try_recv().is_some());
        assert!(shards.inbox(1).try_recv().is_none());
        assert!(shards.inbox(2).try_recv().is_some());
    }

    #[test]
    fn drops_are_reported_per_shard() {
        let shards = Shards::new(2, 1, 1 << 20);
        assert!(shards.send(1, ShardMessage::RedisStateChanged));
        assert_eq!(shards.send_all(|| ShardMessage::RedisStateChanged), 1);
        assert!(
            !shards.send(2, ShardMessage::RedisStateChanged),
            "no shard 2"
        );
        assert_eq!(shards.dropped(), 1);
    }
}
