//! The scripts the publisher runs by hash (`EVALSHA`), and what every new connection to a
//! master loads before it is used: the presence scripts and the publish function.
//!
//! What it owns: the scripts' hashes (computed here, the same on every node) and the set-up of
//! a connection. What it must never do: run anything but `SCRIPT LOAD` and `FUNCTION LOAD`.

use crate::presence::scripts;

/// The hashes of the presence scripts.
pub struct LoadedScripts {
    pub join: String,
    pub leave: String,
    pub upkeep: String,
    pub snapshot: String,
    pub reap_topic: String,
    pub reaped: String,
}

const ALL: [&str; 6] = [
    scripts::JOIN,
    scripts::LEAVE,
    scripts::UPKEEP,
    scripts::SNAPSHOT,
    scripts::REAP_TOPIC,
    scripts::REAPED,
];

impl LoadedScripts {
    /// The hashes Redis gives these scripts (SHA-1 of the source).
    pub fn hashes() -> LoadedScripts {
        let hash = |source: &str| redis::Script::new(source).get_hash().to_owned();
        LoadedScripts {
            join: hash(scripts::JOIN),
            leave: hash(scripts::LEAVE),
            upkeep: hash(scripts::UPKEEP),
            snapshot: hash(scripts::SNAPSHOT),
            reap_topic: hash(scripts::REAP_TOPIC),
            reaped: hash(scripts::REAPED),
        }
    }
}

/// Loads every script and installs the publish function on the node `conn` reaches (at each
/// new connection: a promoted replica or a new master gets them too).
pub fn set_up_connection(
    conn: &mut redis::Connection,
    history: super::function::HistorySettings,
) -> redis::RedisResult<()> {
    for source in ALL {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(source)
            .query::<String>(conn)?;
    }
    super::function::install(conn, history)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_the_sha1_redis_gives() {
        // `redis-cli SCRIPT LOAD "return 0"` answers this hash.
        assert_eq!(
            redis::Script::new("return 0").get_hash(),
            "06d3d9b2060dd51343d5f19f0e531f15c507e3d1"
        );
        let loaded = LoadedScripts::hashes();
        assert_ne!(loaded.join, loaded.leave);
        assert_eq!(loaded.upkeep.len(), 40);
    }
}
