//! Which shards want which topics: the Redis core's routing table.
//!
//! A shard tells the reader when it gains its first local subscriber of a topic and when it
//! loses its last one; the reader then hands a downstream message only to interested shards
//! (docs/architecture.md, "Invariants"). Changes travel over a channel and are applied by the reader
//! thread alone, so the table itself needs no lock.

use std::collections::HashMap;

use crossbeam_channel::Receiver;

use crate::inbox::InterestChange;

/// Topic → bit mask of interested shards, owned by the reader thread.
#[derive(Debug, Default, Clone)]
pub struct InterestTable {
    shards_by_topic: HashMap<String, u64>,
}

impl InterestTable {
    /// Applies every change waiting in `changes`, in the order the shards sent them.
    pub fn apply_pending(&mut self, changes: &Receiver<InterestChange>) {
        while let Ok(change) = changes.try_recv() {
            self.apply(change);
        }
    }

    /// Applies one change.
    pub fn apply(&mut self, change: InterestChange) {
        self.apply_and_tell(change);
    }

    /// Applies one change; returns `Some(true)` when the process gained the topic (its first
    /// interested shard), `Some(false)` when it lost it (its last), `None` otherwise: what the
    /// sharded subscriber turns into `SSUBSCRIBE` / `SUNSUBSCRIBE`.
    pub fn apply_and_tell(&mut self, change: InterestChange) -> Option<bool> {
        let bit = 1u64 << change.shard;
        if change.interested {
            let mask = self.shards_by_topic.entry(change.topic).or_insert(0);
            let gained = *mask == 0;
            *mask |= bit;
            gained.then_some(true)
        } else if let Some(mask) = self.shards_by_topic.get_mut(&change.topic) {
            *mask &= !bit;
            if *mask == 0 {
                self.shards_by_topic.remove(&change.topic);
                return Some(false);
            }
            None
        } else {
            None
        }
    }

    /// Every topic with at least one interested shard.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.shards_by_topic.keys().map(String::as_str)
    }

    /// The shards interested in `topic`, as a bit mask (0 when none).
    pub fn shards_for(&self, topic: &str) -> u64 {
        self.shards_by_topic.get(topic).copied().unwrap_or(0)
    }

    /// How many topics have at least one interested shard.
    #[cfg(test)]
    pub fn topic_count(&self) -> usize {
        self.shards_by_topic.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbox::mask::shards_in;

    fn change(shard: usize, topic: &str, interested: bool) -> InterestChange {
        InterestChange {
            shard,
            topic: topic.to_owned(),
            interested,
            generation: 1,
        }
    }

    #[test]
    fn only_interested_shards_are_listed() {
        let mut table = InterestTable::default();
        table.apply(change(0, "a", true));
        table.apply(change(3, "a", true));
        table.apply(change(1, "b", true));
        assert_eq!(
            shards_in(table.shards_for("a")).collect::<Vec<_>>(),
            vec![0, 3]
        );
        assert_eq!(
            shards_in(table.shards_for("b")).collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(table.shards_for("c"), 0);
    }

    #[test]
    fn topic_is_forgotten_when_last_shard_loses_interest() {
        let mut table = InterestTable::default();
        table.apply(change(0, "a", true));
        table.apply(change(1, "a", true));
        table.apply(change(0, "a", false));
        assert_eq!(
            shards_in(table.shards_for("a")).collect::<Vec<_>>(),
            vec![1]
        );
        table.apply(change(1, "a", false));
        assert_eq!(table.topic_count(), 0);
    }

    #[test]
    fn the_process_gains_a_topic_with_its_first_shard_and_loses_it_with_its_last() {
        let mut table = InterestTable::default();
        assert_eq!(table.apply_and_tell(change(0, "a", true)), Some(true));
        assert_eq!(table.apply_and_tell(change(1, "a", true)), None);
        assert_eq!(table.apply_and_tell(change(0, "a", false)), None);
        assert_eq!(table.apply_and_tell(change(1, "a", false)), Some(false));
        assert_eq!(table.apply_and_tell(change(1, "a", false)), None);
        assert_eq!(table.topics().count(), 0);
    }

    #[test]
    fn changes_are_applied_in_order() {
        let (tx, rx) = crossbeam_channel::unbounded();
        tx.send(change(0, "a", true)).unwrap();
        tx.send(change(0, "a", false)).unwrap();
        tx.send(change(0, "a", true)).unwrap();
        let mut table = InterestTable::default();
        table.apply_pending(&rx);
        assert_eq!(table.shards_for("a"), 1);
    }
}
