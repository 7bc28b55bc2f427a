//! The publish function (docs/protocol.md, "The publish function"): the Redis function library
//! `channel` that every `serve` installs on the master, the name of a topic's sharded channel,
//! and the envelope the function publishes there.
//!
//! Backends call `FCALL channel_publish 1 <topic> <event> <payload>`. The function checks its
//! arguments, appends the message to the topic's history (the stream
//! `channel:history:{<topic>}`, the newest `history_size` entries, expiring `history_ttl_secs`
//! after the last publish, with the epoch in `channel:epoch:{<topic>}`), then `SPUBLISH`es on
//! `channel:to:{<topic>}` (the hash tag puts every key and the channel in the topic's slot) the
//! envelope
//!
//! ```text
//! ch1\n<event>\n<position>\n<payload bytes>
//! ```
//!
//! and returns the position (`<epoch>.<entry id>`, [`crate::history::Position`]), all in one
//! atomic call. With `history_size = 0` the position is the empty string, as a hand-publisher's
//! may be. The library's second function, `channel_history` (read-only, `FCALL_RO`), answers
//! a joiner's `since` in one round trip (docs/protocol.md, "Positions and recovery").
//!
//! What it owns: the library's source and version, the channel name, encoding and decoding
//! the envelope, reading `channel_history`'s answer. What it must never do: talk to Redis itself (the publisher installs the
//! library, the sharded subscriber reads the channel).

use crate::history::{HistoryEntry, HistoryPage, Position};

/// What the function keeps of each topic: baked into the library at `FUNCTION LOAD` (the
/// function's callers pass only the topic, the event and the payload). Every process loads the
/// library with its own settings, so the processes of one deployment should agree on them; the
/// last one to (re)connect wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistorySettings {
    /// Newest messages kept per topic (`history_size`); 0 keeps none and gives no positions.
    pub size: u64,
    /// Seconds the history lives after the topic's last publish (`history_ttl_secs`).
    pub ttl_secs: u64,
}

/// The library's source with `settings` baked in, loaded with `FUNCTION LOAD REPLACE` on every
/// (re)connect to a master.
pub fn library(settings: HistorySettings) -> String {
    LIBRARY_TEMPLATE
        .replace("@HISTORY_SIZE@", &settings.size.to_string())
        .replace("@HISTORY_TTL@", &settings.ttl_secs.max(1).to_string())
}

const LIBRARY_TEMPLATE: &str = r#"#!lua name=channel
-- channel's publish function (docs/protocol.md, "The publish function" and "Positions and
-- recovery"). Installed by every `channel serve`; do not edit by hand: it is replaced on the
-- next (re)connect.
local HISTORY_SIZE = @HISTORY_SIZE@
local HISTORY_TTL = @HISTORY_TTL@

-- Every key of a topic carries the hash tag {<topic>}: one slot per topic.
local function history_keys(topic)
  return 'channel:history:{' .. topic .. '}', 'channel:epoch:{' .. topic .. '}'
end

-- Compares two stream entry ids '<ms>-<seq>': -1, 0 or 1.
local function compare_ids(a, b)
  local am, as = string.match(a, '^(%d+)%-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)%-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  if am ~= bm then return am < bm and -1 or 1 end
  if as ~= bs then return as < bs and -1 or 1 end
  return 0
end

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
  if HISTORY_SIZE > 0 then
    local stream, epoch_key = history_keys(topic)
    local epoch = redis.call('GET', epoch_key)
    if not epoch or redis.call('EXISTS', stream) == 0 then
      -- The history is new or was lost (expired, deleted, Redis data lost): a new epoch, so
      -- that positions of the old one are known to be of another history.
      local now = redis.call('TIME')
      epoch = now[1] .. string.format('%06d', tonumber(now[2]))
      redis.call('SET', epoch_key, epoch)
    end
    local id = redis.call('XADD', stream, 'MAXLEN', HISTORY_SIZE, '*', 'e', event, 'p', payload)
    redis.call('EXPIRE', stream, HISTORY_TTL)
    redis.call('EXPIRE', epoch_key, HISTORY_TTL)
    position = epoch .. '.' .. id
  end
  redis.call('SPUBLISH', 'channel:to:{' .. topic .. '}', 'ch1\n' .. event .. '\n' .. position .. '\n' .. payload)
  return position
end

-- Reads a topic's history: FCALL_RO channel_history 1 <topic> <since epoch> <since id> <limit>
-- (since empty: the newest <limit> messages). Returns {epoch, latest id, recovered, then id,
-- event, payload of each message, oldest first}; epoch and latest id are empty without history.
local function channel_history(keys, args)
  local topic = keys[1]
  if topic == nil or topic == '' or #keys ~= 1 or #args ~= 3 then
    return redis.error_reply('ERR channel_history: expected 1 key (the topic) and 3 arguments')
  end
  local since_epoch, since_id, limit = args[1], args[2], tonumber(args[3])
  if limit == nil or limit < 0 or (since_epoch ~= '' and not string.match(since_id, '^%d+%-%d+$')) then
    return redis.error_reply('ERR channel_history: bad since or limit')
  end
  local stream, epoch_key = history_keys(topic)
  local epoch = redis.call('GET', epoch_key)
  if not epoch or redis.call('EXISTS', stream) == 0 then
    return {'', '', 0}
  end
  local info = redis.call('XINFO', 'STREAM', stream)
  local last, deleted = '0-0', '0-0'
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      last = info[i + 1]
    elseif info[i] == 'max-deleted-entry-id' then
      deleted = info[i + 1]
    end
  end
  local recovered = 0
  local entries = {}
  if since_epoch == '' then
    if limit > 0 then
      local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', limit)
      for i = #newest, 1, -1 do
        entries[#entries + 1] = newest[i]
      end
    end
  elseif since_epoch == epoch and compare_ids(since_id, deleted) >= 0 then
    -- Trimming takes the oldest first, so while the message at since is still here every
    -- message after it is too (XDEL, which could take one from the middle, moves
    -- max-deleted-entry-id; trimming does not, hence this test and not that one).
    local from = redis.call('XRANGE', stream, since_id, '+', 'COUNT', limit + 2)
    if #from > 0 and from[1][1] == since_id and #from <= limit + 1 then
      recovered = 1
      for i = 2, #from do
        entries[#entries + 1] = from[i]
      end
    end
  end
  local reply = {epoch, last, recovered}
  for _, entry in ipairs(entries) do
    local fields = entry[2]
    reply[#reply + 1] = entry[1]
    reply[#reply + 1] = fields[2]
    reply[#reply + 1] = fields[4]
  end
  return reply
end

redis.register_function('channel_publish', channel_publish)
redis.register_function{function_name = 'channel_history', callback = channel_history, flags = {'no-writes'}}
"#;

/// The library's read function: `FCALL_RO channel_history 1 <topic> <since epoch> <since
/// entry id> <limit>`.
pub const HISTORY_FUNCTION: &str = "channel_history";

/// Reads what `channel_history` returns: `{epoch, latest id, recovered, (id, event, payload)…}`;
/// `None` when it is not that shape (counted by the caller as a failed read).
pub fn read_history_reply(value: redis::Value) -> Option<HistoryPage> {
    let redis::Value::Array(items) = value else {
        return None;
    };
    let mut items = items.into_iter();
    let text = |value: Option<redis::Value>| -> Option<Vec<u8>> {
        match value? {
            redis::Value::BulkString(bytes) => Some(bytes),
            redis::Value::SimpleString(text) => Some(text.into_bytes()),
            _ => None,
        }
    };
    let epoch = String::from_utf8(text(items.next())?).ok()?;
    let latest = String::from_utf8(text(items.next())?).ok()?;
    let recovered = matches!(items.next()?, redis::Value::Int(1));
    if epoch.is_empty() {
        return Some(HistoryPage::default());
    }
    let epoch: u64 = epoch.parse().ok()?;
    let mut page = HistoryPage {
        latest: Some(Position::of_entry(epoch, &latest).ok()?),
        recovered,
        entries: Vec::with_capacity(items.len() / 3),
    };
    while let Some(id) = items.next() {
        let id = String::from_utf8(text(Some(id))?).ok()?;
        let event = String::from_utf8(text(items.next())?).ok()?;
        let payload = text(items.next())?;
        page.entries.push(HistoryEntry {
            position: Position::of_entry(epoch, &id).ok()?,
            event,
            payload,
        });
    }
    Some(page)
}

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
pub fn install(conn: &mut redis::Connection, settings: HistorySettings) -> redis::RedisResult<()> {
    let loaded: redis::RedisResult<String> = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(library(settings))
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
    fn the_history_functions_reply_is_read_into_positions() {
        use redis::Value::{Array, BulkString, Int};
        let bulk = |s: &str| BulkString(s.as_bytes().to_vec());
        let page = read_history_reply(Array(vec![
            bulk("17"),
            bulk("1000-1"),
            Int(1),
            bulk("1000-0"),
            bulk("msg"),
            bulk("{}"),
            bulk("1000-1"),
            bulk("raw"),
            BulkString(vec![0, 255]),
        ]))
        .expect("a well-formed reply");
        let at = |ms, seq| Position { epoch: 17, ms, seq };
        assert_eq!(page.latest, Some(at(1000, 1)));
        assert!(page.recovered);
        assert_eq!(page.entries.len(), 2);
        assert_eq!(page.entries[0].position, at(1000, 0));
        assert_eq!(page.entries[1].payload, vec![0, 255]);
        // No history at all.
        let empty = read_history_reply(Array(vec![bulk(""), bulk(""), Int(0)]));
        assert_eq!(empty, Some(HistoryPage::default()));
        // Not that shape.
        assert_eq!(read_history_reply(Int(1)), None);
        assert_eq!(
            read_history_reply(Array(vec![bulk("x"), bulk("1-0"), Int(0)])),
            None
        );
        assert_eq!(
            read_history_reply(Array(vec![bulk("1"), bulk("1-0"), Int(1), bulk("1-0")])),
            None,
            "a truncated entry"
        );
    }

    #[test]
    fn the_library_bakes_in_the_settings() {
        let source = library(HistorySettings {
            size: 7,
            ttl_secs: 60,
        });
        assert!(source.contains("local HISTORY_SIZE = 7\n"));
        assert!(source.contains("local HISTORY_TTL = 60\n"));
        assert!(!source.contains('@'));
    }

    #[test]
    fn not_an_envelope_is_refused() {
        assert_eq!(open_envelope(b"speed\n\npayload"), None);
        assert_eq!(open_envelope(b"ch1\nspeed"), None);
        assert_eq!(open_envelope(b"ch1\n\n\nx"), None);
        assert_eq!(open_envelope(b"ch1\na:b\n\nx"), None);
    }
}
