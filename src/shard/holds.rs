//! A shard's holds on topics' interest: one per subscriber in the topic table and one per join
//! still waiting for its reply. The Redis core is told when a topic's count leaves or reaches
//! 0, and each such holding gets a generation of its own, so that a confirmation
//! (`TopicSubscribed`) sent for an earlier holding of the same topic — one that crossed the
//! shard's last leave and its next join — is not taken for the current one.
//!
//! What it owns: the counts and generations. What it must never do: talk to the Redis core
//! (its caller does, with what these methods return).

use std::collections::HashMap;

/// One topic's holding.
#[derive(Debug, Clone, Copy)]
struct Holding {
    count: u32,
    generation: u64,
}

/// The topics a shard holds.
#[derive(Debug, Default)]
pub struct Holds {
    by_topic: HashMap<String, Holding>,
    /// The generation of the last holding started (0 is never given).
    last_generation: u64,
}

impl Holds {
    /// Takes one hold on `topic`; the new holding's generation when it is the first.
    pub fn take(&mut self, topic: &str) -> Option<u64> {
        if let Some(holding) = self.by_topic.get_mut(topic) {
            holding.count += 1;
            return None;
        }
        self.last_generation += 1;
        let generation = self.last_generation;
        self.by_topic.insert(
            topic.to_owned(),
            Holding {
                count: 1,
                generation,
            },
        );
        Some(generation)
    }

    /// Gives one hold on `topic` back; the ended holding's generation when it was the last.
    pub fn give_back(&mut self, topic: &str) -> Option<u64> {
        let holding = self.by_topic.get_mut(topic)?;
        holding.count -= 1;
        if holding.count > 0 {
            return None;
        }
        self.by_topic.remove(topic).map(|h| h.generation)
    }

    /// The generation of the current holding of `topic`, if it is held.
    pub fn generation(&self, topic: &str) -> Option<u64> {
        self.by_topic.get(topic).map(|h| h.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_take_and_the_last_give_back_are_told_with_one_generation() {
        let mut holds = Holds::default();
        let first = holds.take("t").expect("the first hold starts a holding");
        assert_eq!(holds.take("t"), None);
        assert_eq!(holds.give_back("t"), None);
        assert_eq!(holds.generation("t"), Some(first));
        assert_eq!(holds.give_back("t"), Some(first));
        assert_eq!(holds.generation("t"), None);
        assert_eq!(
            holds.give_back("t"),
            None,
            "nothing held, nothing given back"
        );
    }

    #[test]
    fn a_topic_held_again_is_another_generation() {
        // A confirmation for the first holding, still queued when the topic is held again,
        // must not match the second.
        let mut holds = Holds::default();
        let first = holds.take("t").expect("first");
        holds.give_back("t");
        let second = holds.take("t").expect("again");
        assert_ne!(first, second);
        assert_eq!(holds.generation("t"), Some(second));
        assert_ne!(
            holds.take("u"),
            Some(second),
            "generations are per shard, not per topic"
        );
    }
}
