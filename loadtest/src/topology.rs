//! Which Redis master each topic's publishes go to, and which masters' CPU a run reads.
//!
//! A single Redis is one master serving every topic. A Redis Cluster is asked once, before the
//! run, with `CLUSTER SLOTS` on the first seed that answers; each topic goes to the master
//! serving its slot (CRC16 of the topic, or of its `{hash tag}`, modulo 16384), which is where
//! `FCALL channel_publish 1 <topic> …` must run. Classic `PUBLISH` could go to any node; it is
//! sent to the same master so that both paths spread the publisher's commands alike and the
//! per-master CPU compares like with like. The map is not followed during a run (a run does not
//! move slots); a publish sent to a master that lost the slot is answered `MOVED` and counted as
//! an error.
//!
//! It owns the slot arithmetic and the `CLUSTER SLOTS` reading; it never keeps a connection.

use crate::resp::{encode_command, parse_resp, Resp};
use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Slots of every Redis Cluster.
const SLOTS: u16 = 16384;

/// The masters a run publishes to.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// Every master, in the order `CLUSTER SLOTS` first names them (one for a single Redis).
    pub masters: Vec<SocketAddr>,
    /// `(first slot, last slot, index into masters)`, sorted; empty for a single Redis.
    ranges: Vec<(u16, u16, usize)>,
}

impl Topology {
    /// A single Redis: one master for every topic.
    pub fn single(addr: SocketAddr) -> Topology {
        Topology {
            masters: vec![addr],
            ranges: Vec::new(),
        }
    }

    /// A Redis Cluster, asked through the first of `seeds` (`host:port`) that answers.
    pub fn discover(seeds: &[String]) -> Result<Topology> {
        let mut last = anyhow!("no seed given");
        for seed in seeds {
            match cluster_slots(seed).and_then(|reply| Topology::from_cluster_slots(&reply)) {
                Ok(t) => return Ok(t),
                Err(e) => last = e.context(format!("CLUSTER SLOTS on {seed}")),
            }
        }
        Err(last)
    }

    /// Reads a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, …], replicas…], …]`.
    fn from_cluster_slots(reply: &[u8]) -> Result<Topology> {
        let Some((Resp::Array(entries), _)) = parse_resp(reply)? else {
            bail!("CLUSTER SLOTS did not answer an array");
        };
        let mut masters: Vec<SocketAddr> = Vec::new();
        let mut ranges = Vec::new();
        for entry in entries {
            let Resp::Array(fields) = entry else {
                bail!("a CLUSTER SLOTS entry is not an array");
            };
            let (Some(Resp::Int(start)), Some(Resp::Int(end)), Some(Resp::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                bail!("a CLUSTER SLOTS entry lacks start, end or master");
            };
            let (Some(Resp::Bulk(Some(host))), Some(Resp::Int(port))) =
                (master.first(), master.get(1))
            else {
                bail!("a CLUSTER SLOTS master lacks host or port");
            };
            let host = std::str::from_utf8(host).context("master host")?;
            let addr = format!("{host}:{port}")
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| anyhow!("cannot resolve {host}:{port}"))?;
            let index = match masters.iter().position(|m| *m == addr) {
                Some(i) => i,
                None => {
                    masters.push(addr);
                    masters.len() - 1
                }
            };
            let slot = |v: i64| u16::try_from(v).ok().filter(|s| *s < SLOTS);
            let (Some(start), Some(end)) = (slot(*start), slot(*end)) else {
                bail!("a CLUSTER SLOTS range is out of 0..16384");
            };
            ranges.push((start, end, index));
        }
        ranges.sort_unstable();
        let covered: u32 = ranges.iter().map(|(a, b, _)| u32::from(b - a) + 1).sum();
        if covered != u32::from(SLOTS) {
            bail!("the cluster serves {covered} of {SLOTS} slots: is it whole (cluster_state:ok)?");
        }
        Ok(Topology { masters, ranges })
    }

    /// The index (into [`Self::masters`]) of the master serving `topic`.
    pub fn master_of(&self, topic: &str) -> usize {
        if self.ranges.is_empty() {
            return 0;
        }
        let slot = key_slot(topic.as_bytes());
        self.ranges
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .map_or(0, |(_, _, m)| *m)
    }
}

/// The hash slot of `key`: CRC16 (XMODEM) of the key, or of its hash tag (the part between the
/// first `{` and the next `}`, when not empty), modulo 16384 — as Redis Cluster computes it.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16_xmodem(hashed) % SLOTS
}

/// CRC16-CCITT (XMODEM), as in Redis's `crc16.c` (the `crc16` crate, as the server uses).
fn crc16_xmodem(data: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(data)
}

/// The raw `CLUSTER SLOTS` reply of the node at `seed` (`host:port`).
fn cluster_slots(seed: &str) -> Result<Vec<u8>> {
    let addr = seed
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow!("cannot resolve {seed}"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut cmd = Vec::new();
    encode_command(&mut cmd, &[b"CLUSTER", b"SLOTS"]);
    s.write_all(&cmd)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed before the CLUSTER SLOTS reply");
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_resp(&buf)? {
            Some((Resp::Error(e), _)) => bail!("{}", String::from_utf8_lossy(e)),
            Some(_) => return Ok(buf),
            None => {}
        }
    }
}

/// `host:port,host:port` (a `redis://` prefix is accepted and dropped) → seed list.
pub fn parse_seed_list(list: &str) -> Result<Vec<String>> {
    let seeds: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.strip_prefix("redis://").unwrap_or(s).to_string())
        .collect();
    if seeds.is_empty() || seeds.iter().any(|s| !s.contains(':') || s.contains('@')) {
        bail!("--redis-cluster takes host:port[,host:port…] without credentials, got {list:?}");
    }
    Ok(seeds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slot_matches_redis() {
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        // `CLUSTER KEYSLOT foo` is 12182; a hash tag hashes only its inside.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{lt:7}:history"), key_slot(b"lt:7"));
        assert_eq!(key_slot(b"a{}b"), crc16_xmodem(b"a{}b") % SLOTS);
    }

    #[test]
    fn cluster_slots_reply_maps_topics_to_their_master() {
        let mut reply = Vec::new();
        reply.extend_from_slice(b"*2\r\n");
        reply.extend_from_slice(
            b"*4\r\n:0\r\n:8191\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$2\r\nid\r\n*3\r\n$9\r\n127.0.0.1\r\n:7004\r\n$2\r\nir\r\n",
        );
        reply.extend_from_slice(
            b"*3\r\n:8192\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:7002\r\n$2\r\nid\r\n",
        );
        let t = Topology::from_cluster_slots(&reply).unwrap();
        assert_eq!(t.masters.len(), 2);
        assert_eq!(t.masters[0].port(), 7001);
        // foo → 12182 → the second master.
        assert_eq!(t.master_of("foo"), 1);
        assert_eq!(t.master_of("123456789"), if 0x31C3 <= 8191 { 0 } else { 1 });
        // A map that leaves slots uncovered is refused.
        let mut partial = b"*1\r\n".to_vec();
        partial.extend_from_slice(
            b"*3\r\n:0\r\n:8191\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$2\r\nid\r\n",
        );
        assert!(Topology::from_cluster_slots(&partial).is_err());
        assert_eq!(Topology::single(t.masters[1]).master_of("foo"), 0);
    }

    #[test]
    fn seed_lists_are_parsed() {
        assert_eq!(
            parse_seed_list("127.0.0.1:7001, redis://127.0.0.1:7002").unwrap(),
            vec!["127.0.0.1:7001", "127.0.0.1:7002"]
        );
        assert!(parse_seed_list("").is_err());
        assert!(parse_seed_list("redis://u:p@h:1").is_err());
    }
}
