//! The Lua scripts that change presence atomically in Redis.
//!
//! Each change and its published diff happen in one script, so that the version a diff carries
//! is exactly the version of the members hash after that change, and a joiner's state (read in
//! the same script as its join) is consistent with the diffs that follow it.

/// Join: add the entry and, if it is new, bump the version and publish the diff; return
/// `{version}`, or `{version, HVALS}` when ARGV[5] is `1` (the process has no copy of the topic's
/// members yet, see [`crate::presence::replica`]). Re-registering an entry that is already
/// there (after a reconnect) changes nothing and publishes nothing. The process's list of
/// topics (for clean-up when it dies) is another slot's key: the publisher adds to it in the
/// same pipeline, not here (docs/presence.md, "On a Redis Cluster").
///
/// KEYS: members, version. ARGV: field, entry, diff channel, diff JSON, want members (`1` or
/// `0`).
pub const JOIN: &str = r#"
local v
if redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  v = redis.call('INCR', KEYS[2])
  redis.call('PUBLISH', ARGV[3], v .. ' ' .. ARGV[4])
else
  v = tonumber(redis.call('GET', KEYS[2]) or '0')
end
if ARGV[5] == '1' then
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

/// Liveness, and finding dead processes, run by every process at its refresh (and at the next
/// expiry of another process, see `broker::liveness`). Touches only keys of the
/// `{_processes}` slot: on a Redis Cluster the members of a dead process, which live in their
/// topics' slots, are removed afterwards by [`REAP_TOPIC`], one call per topic, and the process
/// is then forgotten by [`REAPED`] (docs/presence.md, "On a Redis Cluster").
///
/// Time is Redis's (`TIME`), for the score written and the deaths read alike: processes on
/// hosts whose clocks disagree then still agree on who is dead, which a TTL of a few seconds
/// needs. It sets this node's score to now + ARGV[2] ms (or 0 when ARGV[2] is `stop`: the node
/// stops and is found dead at once); then every node whose score has passed is moved to the
/// reaping set (its topic list renamed), so that exactly one state says it is dead. Returns
/// `{added, dead, next, reaping}`: `added` is 1 when this node was not listed (first refresh,
/// or it was found dead: its members are being removed and must be registered again), `dead`
/// the number of nodes found dead by this call, `next` the ms until another node's score
/// passes (-1: no other node), and `reaping` every node still being reaped with its topics,
/// `{{node, {topic, …}}, …}` (empty in the common case), for whoever runs it to finish (it is
/// idempotent, so a reaper that dies half-way is replaced by the next caller).
///
/// KEYS: the expiry set, the reaping set. ARGV: node, TTL in ms or `stop`.
pub const UPKEEP: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expires = 0
if ARGV[2] ~= 'stop' then expires = now + tonumber(ARGV[2]) end
local added = redis.call('ZADD', KEYS[1], string.format('%.0f', expires), ARGV[1])
local lowest = redis.call('ZRANGE', KEYS[1], 0, 1, 'WITHSCORES')
local dead_count = 0
if lowest[2] and tonumber(lowest[2]) <= now then
  local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
  for _, node in ipairs(dead) do
    local topics = 'presence:{_processes}:topics:' .. node
    local reaping = 'presence:{_processes}:reaping:' .. node
    if redis.call('EXISTS', topics) == 1 then
      redis.call('SUNIONSTORE', reaping, reaping, topics)
      redis.call('DEL', topics)
    end
    redis.call('SADD', KEYS[2], node)
    redis.call('ZREM', KEYS[1], node)
    dead_count = dead_count + 1
  end
  lowest = redis.call('ZRANGE', KEYS[1], 0, 1, 'WITHSCORES')
end
local next = -1
for i = 1, #lowest, 2 do
  if lowest[i] ~= ARGV[1] then
    next = tonumber(lowest[i + 1]) - now
    break
  end
end
local reaping = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  table.insert(reaping, {node, redis.call('SMEMBERS', 'presence:{_processes}:reaping:' .. node)})
end
return {added, dead_count, next, reaping}
"#;

/// Removes a dead process's members from one topic, with one leave diff. Idempotent.
///
/// KEYS: members, version. ARGV: the dead node's field prefix (`<node>:`), diff channel.
pub const REAP_TOPIC: &str = r#"
local prefix = ARGV[1]
local all = redis.call('HGETALL', KEYS[1])
local leaves = {}
local any = false
for i = 1, #all, 2 do
  if string.sub(all[i], 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[1], all[i])
    local ok, e = pcall(cjson.decode, all[i + 1])
    if ok and type(e) == 'table' and e.key then
      if not leaves[e.key] then leaves[e.key] = {metas = {}} end
      table.insert(leaves[e.key].metas, e.meta)
      any = true
    end
  end
end
if any then
  local v = redis.call('INCR', KEYS[2])
  local diff = '{"joins":{},"leaves":' .. cjson.encode(leaves) .. '}'
  redis.call('PUBLISH', ARGV[2], v .. ' ' .. diff)
end
return 0
"#;

/// Forgets a dead process once [`REAP_TOPIC`] ran for every topic it had.
///
/// KEYS: the reaping set. ARGV: node.
pub const REAPED: &str = r#"
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('DEL', 'presence:{_processes}:reaping:' .. ARGV[1])
return 0
"#;

/// How many processes are alive now (their liveness not expired, by Redis's clock).
///
/// KEYS: the expiry set.
pub const LIVE_PROCESSES: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%.0f', now), '+inf')
"#;
