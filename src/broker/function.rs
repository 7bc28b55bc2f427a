//! The publish function (docs/protocol.md, "The publish function"): the Redis function library
//! `channel` that every `serve` installs on the master, the name of a topic's sharded channel,
//! and the envelope the function publishes there.
//!
//! Backends call `FCALL channel_publish 1 <topic> <event> <payload>`. The function checks its
//! arguments, then `SPUBLISH`es on `channel:to:{<topic>}` (the hash tag puts the channel in the
//! topic's slot) the envelope
//!
//! ```text
//! ch1\n<event>\n<position>\n<payload bytes>
//! ```
//!
//! and returns the position as a string. Positions come with history (issue 14): until then
//! the field and the return value are the empty string. The envelope has room for them now, so
//! that neither backends (who treat the return value as an opaque string) nor processes of
//! this version (which read the field and ignore it) break when they appear.
//!
//! What it owns: the library's source and version, the channel name, encoding and decoding
//! the envelope. What it must never do: talk to Redis itself (the publisher installs the
//! library, the sharded subscriber reads the channel).

/// The library's source, loaded with `FUNCTION LOAD REPLACE` on every (re)connect to a master.
pub const LIBRARY: &str = r#"#!lua name=channel
-- channel's publish function (docs/protocol.md, "The publish function"). Installed by every
-- `channel serve`; do not edit by hand: it is replaced on the next (re)connect.
local function channel_publish(keys, args)
  local topic, event, payload = keys[1], args[1], args[2]
  if topic == nil or topic == '' or #keys ~= 1 then
    return redis.error_reply('ERR channel_publish: expected 1 key (the topic)')
  end
  if payload == nil or #args ~= 2 then
    return redis.error_reply('ERR channel_publish: expected 2 arguments (event, payload)')
  end
  if string.find(topic, '[{}]') then
    return redis.error_reply('ERR channel_publish: a topic with "{" or "}" cannot be published with the function (its sharded channel would hash to another slot); use PUBLISH to:<topic>:<event>')
  end
  if event == '' or string.find(event, '[:\n]') then
    return redis.error_reply('ERR channel_publish: the event must be non-empty, without ":" or a newline')
  end
  local position = ''
  redis.call('SPUBLISH', 'channel:to:{' .. topic .. '}', 'ch1\n' .. event .. '\n' .. position .. '\n' .. payload)
  return position
end
redis.register_function('channel_publish', channel_publish)
"#;

const SHARDED_PREFIX: &str = "channel:to:{";
const ENVELOPE_MAGIC: &[u8] = b"ch1\n";

/// The sharded channel of `topic`: `channel:to:{<topic>}`.
pub fn sharded_channel(topic: &str) -> String {
    let mut name = String::with_capacity(SHARDED_PREFIX.len() + topic.len() + 1);
    name.push_str(SHARDED_PREFIX);
    name.push_str(topic);
    name.push('}');
    name
}

/// The topic of a sharded channel name, if it is one of ours.
pub fn topic_of_sharded_channel(channel: &[u8]) -> Option<&str> {
    let inner = channel
        .strip_prefix(SHARDED_PREFIX.as_bytes())?
        .strip_suffix(b"}")?;
    let topic = std::str::from_utf8(inner).ok()?;
    (!topic.is_empty()).then_some(topic)
}

/// One message read from a sharded channel.
#[derive(Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The Phoenix event.
    pub event: &'a str,
    /// The position (empty until history exists).
    pub position: &'a str,
    /// The payload bytes, as the backend gave them.
    pub payload: &'a [u8],
}

/// Reads an envelope; `None` when the bytes are not one (the message is then counted as
/// malformed and dropped).
pub fn open_envelope(bytes: &[u8]) -> Option<Envelope<'_>> {
    let rest = bytes.strip_prefix(ENVELOPE_MAGIC)?;
    let event_end = rest.iter().position(|&b| b == b'\n')?;
    let (event, rest) = (&rest[..event_end], &rest[event_end + 1..]);
    let position_end = rest.iter().position(|&b| b == b'\n')?;
    let (position, payload) = (&rest[..position_end], &rest[position_end + 1..]);
    let event = std::str::from_utf8(event).ok()?;
    if event.is_empty() || event.contains(':') {
        return None;
    }
    Some(Envelope {
        event,
        position: std::str::from_utf8(position).ok()?,
        payload,
    })
}

/// An envelope as the function builds it: the unit tests' model of the Lua code (the
/// integration tests check the real function against [`open_envelope`]).
#[cfg(test)]
pub fn seal_envelope(event: &str, position: &str, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(ENVELOPE_MAGIC.len() + event.len() + position.len() + 2);
    bytes.extend_from_slice(ENVELOPE_MAGIC);
    bytes.extend_from_slice(event.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(position.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(payload);
    bytes
}

/// Installs the library on the node `conn` is connected to (`FUNCTION LOAD REPLACE`), at
/// every (re)connect of the publisher: after a failover the new master gets it even if it was
/// never replicated there. A Redis older than 7 has no functions: that is logged and the
/// classic `PUBLISH` path goes on working; a node that refuses it otherwise (READONLY, an
/// error in transit) fails the connection like any other command.
pub fn install(conn: &mut redis::Connection) -> redis::RedisResult<()> {
    let loaded: redis::RedisResult<String> = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(LIBRARY)
        .query(conn);
    match loaded {
        Ok(_) => Ok(()),
        Err(err) if err.code() == Some("ERR") && err.to_string().contains("unknown command") => {
            tracing::warn!(
                "this Redis has no functions (Redis < 7): FCALL channel_publish is unavailable; \
                 classic PUBLISH to:<topic>:<event> works"
            );
            Ok(())
        }
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_channel_carries_the_topic_as_hash_tag() {
        assert_eq!(sharded_channel("weather:wind"), "channel:to:{weather:wind}");
        assert_eq!(
            topic_of_sharded_channel(b"channel:to:{weather:wind}"),
            Some("weather:wind")
        );
        assert_eq!(topic_of_sharded_channel(b"channel:to:{}"), None);
        assert_eq!(topic_of_sharded_channel(b"to:weather:wind"), None);
    }

    #[test]
    fn envelope_round_trips_with_binary_payload_and_newlines() {
        let payload = b"{\"a\":1}\n\x00\xff";
        let sealed = seal_envelope("speed", "", payload);
        assert_eq!(
            open_envelope(&sealed),
            Some(Envelope {
                event: "speed",
                position: "",
                payload
            })
        );
        let later = seal_envelope("speed", "7-0", b"x");
        assert_eq!(open_envelope(&later).map(|e| e.position), Some("7-0"));
    }

    #[test]
    fn not_an_envelope_is_refused() {
        assert_eq!(open_envelope(b"speed\n\npayload"), None);
        assert_eq!(open_envelope(b"ch1\nspeed"), None);
        assert_eq!(open_envelope(b"ch1\n\n\nx"), None);
        assert_eq!(open_envelope(b"ch1\na:b\n\nx"), None);
    }
}
