//! The shard's local topic table: which of this shard's connections are joined to a topic.
//!
//! Owned by one executor, so plain `RefCell` access with no lock. Subscribers are kept in an
//! `IndexMap` so that fan-out walks contiguous memory and a leave is O(1). A topic exists
//! while it has a local subscriber and is forgotten when its last one leaves. The caller is
//! told whether a connection was added or removed: it holds the topic's interest for each
//! subscriber (and for each join still waiting, `super::recovery`).

use std::collections::HashMap;
use std::rc::Rc;

use indexmap::IndexMap;

use super::connection::Conn;

/// Topic → local subscribers.
#[derive(Default)]
pub struct TopicTable {
    topics: HashMap<String, IndexMap<u64, Rc<Conn>>>,
}

impl TopicTable {
    /// Adds `conn` to `topic`; true when it was not a subscriber of it yet.
    pub fn subscribe(&mut self, topic: &str, conn: &Rc<Conn>) -> bool {
        match self.topics.get_mut(topic) {
            Some(subscribers) => subscribers.insert(conn.id, Rc::clone(conn)).is_none(),
            None => {
                let mut subscribers = IndexMap::new();
                subscribers.insert(conn.id, Rc::clone(conn));
                self.topics.insert(topic.to_owned(), subscribers);
                true
            }
        }
    }

    /// Removes connection `conn_id` from `topic`; true when it was a subscriber of it.
    pub fn unsubscribe(&mut self, topic: &str, conn_id: u64) -> bool {
        let Some(subscribers) = self.topics.get_mut(topic) else {
            return false;
        };
        let removed = subscribers.swap_remove(&conn_id).is_some();
        if subscribers.is_empty() {
            self.topics.remove(topic);
        }
        removed
    }

    /// The local subscribers of `topic`.
    pub fn subscribers(&self, topic: &str) -> Option<&IndexMap<u64, Rc<Conn>>> {
        self.topics.get(topic)
    }
}
