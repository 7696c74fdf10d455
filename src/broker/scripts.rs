//! The server-side Lua scripts. Each runs atomically in Redis, so numbering,
//! storing and publishing a message (or changing presence and announcing it)
//! can never be seen half done by another node.
//!
//! Every payload published on a channel starts with one header line,
//! `<seq> <epoch> <origin-node> <except-user> <room>\n`, then the frame's
//! JSON (`-` for an absent field; seq 0 = an unnumbered frame such as
//! `user_left`). Room names, user ids, epochs and node ids contain no space
//! or newline (checked), so the header splits without parsing JSON.

/// KEYS: seq, epoch, log, boot.
/// ARGV: boot id expected, epoch candidate, MAXLEN, ts, JSON prefix, JSON
/// suffix, origin node, room, max age ms (0: none), n channels,
/// channels..., m list keys, keys...
/// Returns {seq, epoch}; error `BOOT` when the broker's data was lost.
///
/// Retention: `MAXLEN ~` bounds the count. An age bound trims the oldest
/// entries (at most 64 per publish, so the work is spread over publishes)
/// and lets an idle room's log expire as a whole; `seq` and `epoch` never
/// expire, so numbering goes on and a resume past the kept part reports
/// `recovered: false`.
pub(crate) const PUBLISH: &str = r#"
if redis.call('GET', KEYS[4]) ~= ARGV[1] then
  return redis.error_reply('BOOT broker data lost')
end
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[2], epoch)
end
local seq = redis.call('INCR', KEYS[1])
local s = string.format('%d', seq)
local frame = ARGV[5] .. s .. ARGV[6]
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], s .. '-0', 'seq', s, 'ts', ARGV[4], 'frame', frame)
local age = tonumber(ARGV[9])
if age > 0 then
  local cutoff = tonumber(ARGV[4]) - age
  local old = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 64)
  local keep = nil
  for _, e in ipairs(old) do
    local f = e[2]
    local ts = nil
    for i = 1, #f, 2 do
      if f[i] == 'ts' then ts = tonumber(f[i + 1]) end
    end
    if ts and ts >= cutoff then keep = e[1] break end
  end
  if keep then
    redis.call('XTRIM', KEYS[3], 'MINID', keep)
  elseif #old > 0 then
    local last = tonumber(string.match(old[#old][1], '^(%d+)'))
    redis.call('XTRIM', KEYS[3], 'MINID', string.format('%d-0', last + 1))
  end
  redis.call('PEXPIRE', KEYS[3], age)
end
local payload = s .. ' ' .. epoch .. ' ' .. ARGV[7] .. ' - ' .. ARGV[8] .. '\n' .. frame
local n = tonumber(ARGV[10])
for i = 1, n do
  redis.call('PUBLISH', ARGV[10 + i], payload)
end
local m = tonumber(ARGV[11 + n])
for i = 1, m do
  redis.call('SADD', ARGV[11 + n + i], ARGV[8])
end
return {seq, epoch}
"#;

/// KEYS: seq, epoch, read, boot, pu. ARGV: boot id, epoch candidate, user,
/// reads (the most markers of other users to return; 0: none).
/// Returns {seq, epoch, read marker, members, {user, seq, ...}}: `members`
/// counts the users present on any node, the asking user included (its
/// presence is added just after); the markers are the highest ones above
/// 0 (for `joined.reads`). Creates the epoch of a new room.
pub(crate) const STATE: &str = r#"
if redis.call('GET', KEYS[4]) ~= ARGV[1] then
  return redis.error_reply('BOOT broker data lost')
end
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[2], epoch)
end
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local read = tonumber(redis.call('HGET', KEYS[3], ARGV[3]) or '0')
local members = redis.call('HLEN', KEYS[5])
if redis.call('HEXISTS', KEYS[5], ARGV[3]) == 0 then members = members + 1 end
local want = tonumber(ARGV[4])
local reads = {}
if want > 0 then
  local all = redis.call('HGETALL', KEYS[3])
  local marks = {}
  for i = 1, #all, 2 do
    local n = tonumber(all[i + 1])
    if all[i] ~= ARGV[3] and n > 0 then marks[#marks + 1] = {all[i], n} end
  end
  table.sort(marks, function(a, b) return a[2] > b[2] end)
  for i = 1, math.min(want, #marks) do
    reads[#reads + 1] = marks[i][1]
    reads[#reads + 1] = marks[i][2]
  end
end
return {seq, epoch, read, members, reads}
"#;

/// KEYS: read, seq. ARGV: user, seq. The marker only grows and never passes
/// the room's seq. Returns {changed 0/1, marker}.
pub(crate) const SET_READ: &str = r#"
local top = tonumber(redis.call('GET', KEYS[2]) or '0')
local want = math.min(tonumber(ARGV[2]), top)
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if want > cur then
  redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', want))
  return {1, want}
end
return {0, cur}
"#;

/// KEYS: pn (room: `user|node` -> name JSON), pu (room: user -> nodes),
/// np (node: set of `room|user`).
/// ARGV: user, node, name JSON, room, n channels, channels...
/// Returns 1 when the user became present in the cluster (and `user_joined`
/// was published), else 0.
pub(crate) const PRESENCE_ADD: &str = r#"
local created = redis.call('HSET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], ARGV[3])
if created == 0 then return 0 end
redis.call('SADD', KEYS[3], ARGV[4] .. '|' .. ARGV[1])
if redis.call('HINCRBY', KEYS[2], ARGV[1], 1) ~= 1 then return 0 end
local payload = '0 - ' .. ARGV[2] .. ' ' .. ARGV[1] .. ' ' .. ARGV[4] ..
  '\n{"type":"user_joined","room":"' .. ARGV[4] .. '","user":"' .. ARGV[1] ..
  '","name":' .. ARGV[3] .. '}'
for i = 1, tonumber(ARGV[5]) do
  redis.call('PUBLISH', ARGV[5 + i], payload)
end
return 1
"#;

/// KEYS: pn, pu, np. ARGV: user, node, room, n channels, channels...
/// Returns 1 when the user left the cluster's presence (and `user_left` was
/// published), else 0.
pub(crate) const PRESENCE_REMOVE: &str = r#"
if redis.call('HDEL', KEYS[1], ARGV[1] .. '|' .. ARGV[2]) == 0 then return 0 end
redis.call('SREM', KEYS[3], ARGV[3] .. '|' .. ARGV[1])
if redis.call('HINCRBY', KEYS[2], ARGV[1], -1) > 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
local payload = '0 - ' .. ARGV[2] .. ' ' .. ARGV[1] .. ' ' .. ARGV[3] ..
  '\n{"type":"user_left","room":"' .. ARGV[3] .. '","user":"' .. ARGV[1] .. '"}'
for i = 1, tonumber(ARGV[4]) do
  redis.call('PUBLISH', ARGV[4 + i], payload)
end
return 1
"#;

/// No KEYS (it walks the node registry, so it needs a single Redis, not a
/// Redis Cluster). ARGV: key prefix, this node, mode.
/// mode `sweep`: every registered node other than this one whose heartbeat
/// key expired is taken down; mode `self`: this node is (clean stop, or a
/// fresh start under a reused node id).
/// Taking a node down removes its presence entries, publishes `user_left`
/// for each user who is then present on no node, and unregisters it.
/// Returns the flat list room1, user1, room2, user2... of those users.
pub(crate) const NODE_DOWN: &str = r#"
local P, me, mode = ARGV[1], ARGV[2], ARGV[3]
local out = {}
local function channels(room)
  local x, y = string.match(room, '^dm:([^:]+):(.+)$')
  if x then return {P .. 'user:' .. x, P .. 'user:' .. y} end
  return {P .. 'room:' .. room}
end
local function down(node)
  for _, m in ipairs(redis.call('SMEMBERS', P .. 'np:' .. node)) do
    local bar = string.find(m, '|', 1, true)
    local room, user = string.sub(m, 1, bar - 1), string.sub(m, bar + 1)
    local tag = P .. '{' .. room .. '}:'
    if redis.call('HDEL', tag .. 'pn', user .. '|' .. node) == 1 then
      if redis.call('HINCRBY', tag .. 'pu', user, -1) <= 0 then
        redis.call('HDEL', tag .. 'pu', user)
        local payload = '0 - ' .. node .. ' ' .. user .. ' ' .. room ..
          '\n{"type":"user_left","room":"' .. room .. '","user":"' .. user .. '"}'
        for _, ch in ipairs(channels(room)) do redis.call('PUBLISH', ch, payload) end
        table.insert(out, room)
        table.insert(out, user)
      end
    end
  end
  redis.call('DEL', P .. 'np:' .. node)
  redis.call('SREM', P .. 'nodes', node)
end
if mode == 'self' then
  down(me)
  redis.call('DEL', P .. 'hb:' .. me)
else
  for _, node in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
    if node ~= me and redis.call('EXISTS', P .. 'hb:' .. node) == 0 then
      down(node)
    end
  end
end
return out
"#;

/// No KEYS (walks the user's room set). ARGV: key prefix, user.
/// Returns the flat list room1, seq1, read1, room2...
pub(crate) const ROOMS_OF: &str = r#"
local P, user = ARGV[1], ARGV[2]
local out = {}
for _, room in ipairs(redis.call('SMEMBERS', P .. 'rooms:' .. user)) do
  local tag = P .. '{' .. room .. '}:'
  table.insert(out, room)
  table.insert(out, tonumber(redis.call('GET', tag .. 'seq') or '0'))
  table.insert(out, tonumber(redis.call('HGET', tag .. 'read', user) or '0'))
end
return out
"#;

/// All scripts, loaded at every (re)connect so EVALSHA normally hits.
pub(crate) const ALL: &[&str] = &[
    PUBLISH,
    STATE,
    SET_READ,
    PRESENCE_ADD,
    PRESENCE_REMOVE,
    NODE_DOWN,
    ROOMS_OF,
];
