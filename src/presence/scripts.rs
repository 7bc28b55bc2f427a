//! The Lua scripts that change presence atomically in Redis.
//!
//! Each change and its published diff happen in one script, so that the version a diff carries
//! is exactly the version of the members hash after that change, and a joiner's state (read in
//! the same script as its join) is consistent with the diffs that follow it.

/// Join: add the entry and, if it is new, bump the version and publish the diff; remember the
/// topic for the node; return `{version}`, or `{version, HVALS}` when ARGV[6] is `1` (the
/// process has no copy of the topic's members yet, see [`crate::presence::replica`]).
/// Re-registering an entry that is already there (after a reconnect) changes nothing and
/// publishes nothing.
///
/// KEYS: members, version, node topics. ARGV: field, entry, topic, diff channel, diff JSON,
/// want members (`1` or `0`).
pub const JOIN: &str = r#"
local v
if redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  v = redis.call('INCR', KEYS[2])
  redis.call('PUBLISH', ARGV[4], v .. ' ' .. ARGV[5])
else
  v = tonumber(redis.call('GET', KEYS[2]) or '0')
end
redis.call('SADD', KEYS[3], ARGV[3])
if ARGV[6] == '1' then
  return {v, redis.call('HVALS', KEYS[1])}
end
return {v}
"#;

/// Snapshot: a topic's members and the version they are at, read atomically, to seed this
/// process's copy.
///
/// KEYS: members, version.
pub const SNAPSHOT: &str = r#"
return {tonumber(redis.call('GET', KEYS[2]) or '0'), redis.call('HVALS', KEYS[1])}
"#;

/// Leave: remove the entry and, if it was there, bump the version and publish the diff.
///
/// KEYS: members, version. ARGV: field, diff channel, diff JSON.
pub const LEAVE: &str = r#"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  local v = redis.call('INCR', KEYS[2])
  redis.call('PUBLISH', ARGV[2], v .. ' ' .. ARGV[3])
end
return 0
"#;

/// Liveness and clean-up of dead processes, run by every process at its refresh (and at the
/// next expiry of another process, see `redis::liveness`).
///
/// Time is Redis's (`TIME`), for the score written and the deaths read alike: processes on
/// hosts whose clocks disagree then still agree on who is dead, which a TTL of a few seconds
/// needs. It sets this node's score to now + ARGV[2] ms (or 0 when ARGV[2] is `stop`: the node
/// stops and its members leave at once); then every node whose score has passed has its
/// members removed, one leave diff per topic, and is forgotten. Idempotent, so every live
/// process may run it. Returns `{added, reaped, next}`: `added` is 1 when this node was not
/// listed (first refresh, or it was reaped: its members are gone and must be registered
/// again), `reaped` the number of dead nodes removed, `next` the ms until another node's
/// score passes (-1: no other node). The common case (nobody dead) costs `TIME`, `ZADD` and
/// one `ZRANGE` of two entries. (Touches keys it computes: not for Redis Cluster.)
///
/// ARGV: node, TTL in ms or `stop`.
pub const UPKEEP: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expires = 0
if ARGV[2] ~= 'stop' then expires = now + tonumber(ARGV[2]) end
local added = redis.call('ZADD', 'presence:nodes', string.format('%.0f', expires), ARGV[1])
local lowest = redis.call('ZRANGE', 'presence:nodes', 0, 1, 'WITHSCORES')
local reaped = 0
if lowest[2] and tonumber(lowest[2]) <= now then
  local dead = redis.call('ZRANGEBYSCORE', 'presence:nodes', '-inf', string.format('%.0f', now))
  for _, node in ipairs(dead) do
    local prefix = node .. ':'
    for _, topic in ipairs(redis.call('SMEMBERS', 'presence:node:' .. node)) do
      local members = 'presence:{' .. topic .. '}:members'
      local all = redis.call('HGETALL', members)
      local leaves = {}
      local any = false
      for i = 1, #all, 2 do
        if string.sub(all[i], 1, #prefix) == prefix then
          redis.call('HDEL', members, all[i])
          local ok, e = pcall(cjson.decode, all[i + 1])
          if ok and type(e) == 'table' and e.key then
            if not leaves[e.key] then leaves[e.key] = {metas = {}} end
            table.insert(leaves[e.key].metas, e.meta)
            any = true
          end
        end
      end
      if any then
        local v = redis.call('INCR', 'presence:{' .. topic .. '}:version')
        local diff = '{"joins":{},"leaves":' .. cjson.encode(leaves) .. '}'
        redis.call('PUBLISH', 'presence:diff:' .. topic, v .. ' ' .. diff)
      end
    end
    redis.call('DEL', 'presence:node:' .. node)
    redis.call('ZREM', 'presence:nodes', node)
    reaped = reaped + 1
  end
  lowest = redis.call('ZRANGE', 'presence:nodes', 0, 1, 'WITHSCORES')
end
local next = -1
for i = 1, #lowest, 2 do
  if lowest[i] ~= ARGV[1] then
    next = tonumber(lowest[i + 1]) - now
    break
  end
end
return {added, reaped, next}
"#;
