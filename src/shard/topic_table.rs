//! The shard's local topic table: which of this shard's connections are joined to a topic.
//!
//! Owned by one executor, so plain `RefCell` access with no lock. Subscribers are kept in an
//! `IndexMap` so that fan-out walks contiguous memory and a leave is O(1). A topic exists
//! while it has a local subscriber and is forgotten when its last one leaves. The caller is
//! told whether a connection was added or removed: it holds the topic's interest for each
//! subscriber (and for each join still waiting, `super::recovery`). Each topic also counts the
//! messages fanned out to it, for the admin channel's per-topic rates
//! ([`super::topic_rates`]).

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

use indexmap::IndexMap;

use super::connection::Conn;

/// Topic → local subscribers.
#[derive(Default)]
pub struct TopicTable {
    topics: HashMap<String, LocalTopic>,
}

/// One topic's local subscribers and the messages fanned out to it since they were last taken.
#[derive(Default)]
struct LocalTopic {
    subscribers: IndexMap<u64, Rc<Conn>>,
    delivered: Cell<u64>,
}

impl TopicTable {
    /// Adds `conn` to `topic`; true when it was not a subscriber of it yet.
    pub fn subscribe(&mut self, topic: &str, conn: &Rc<Conn>) -> bool {
        match self.topics.get_mut(topic) {
            Some(local) => local.subscribers.insert(conn.id, Rc::clone(conn)).is_none(),
            None => {
                let mut local = LocalTopic::default();
                local.subscribers.insert(conn.id, Rc::clone(conn));
                self.topics.insert(topic.to_owned(), local);
                true
            }
        }
    }

    /// Removes connection `conn_id` from `topic`; true when it was a subscriber of it.
    pub fn unsubscribe(&mut self, topic: &str, conn_id: u64) -> bool {
        let Some(local) = self.topics.get_mut(topic) else {
            return false;
        };
        let removed = local.subscribers.swap_remove(&conn_id).is_some();
        if local.subscribers.is_empty() {
            self.topics.remove(topic);
        }
        removed
    }

    /// The local subscribers of `topic`.
    pub fn subscribers(&self, topic: &str) -> Option<&IndexMap<u64, Rc<Conn>>> {
        self.topics.get(topic).map(|local| &local.subscribers)
    }

    /// The local subscribers of `topic`, counting one message fanned out to it.
    pub fn deliver_to(&self, topic: &str) -> Option<&IndexMap<u64, Rc<Conn>>> {
        let local = self.topics.get(topic)?;
        local.delivered.set(local.delivered.get() + 1);
        Some(&local.subscribers)
    }

    /// The topics that had messages since the last call, with how many; their counts restart.
    pub fn take_delivered(&self) -> Vec<(String, u64)> {
        self.topics
            .iter()
            .filter_map(|(topic, local)| {
                let n = local.delivered.take();
                (n > 0).then(|| (topic.clone(), n))
            })
            .collect()
    }
}
