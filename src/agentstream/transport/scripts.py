"""Lua scripts that make read-check-write steps on a consumer group atomic."""

from __future__ import annotations

#: The commands the scripts run, by the transport operation that runs them: an
#: ACL user needs them all (and EVALSHA), and a refusal names them.
COMMANDS: dict[str, tuple[str, ...]] = {
    "xclaim": ("evalsha", "xpending", "xrange", "xack", "xclaim"),
    "xgroup delconsumer": ("evalsha", "xinfo", "xgroup"),
    "lease": ("evalsha", "get", "set", "del"),
    "xadd/xdel": ("evalsha", "xdel", "xadd"),
    "xtrim": ("evalsha", "exists", "xinfo", "xpending", "xtrim", "xlen", "xrange"),
}

# KEYS[1] stream; ARGV group, consumer, min_idle_ms, id...
# Claims each id that is still pending and idle for at least min_idle_ms. An id
# whose entry left the stream is acknowledged and reported as lost instead, so
# that it is never retried forever. Returns {claimed, lost}, where each claimed
# item is {id, fields, delivery_count}.
CLAIM = """
local claimed, lost = {}, {}
local group, consumer, min_idle = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i = 4, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], group, id, id, 1)
  if #p > 0 and tonumber(p[1][3]) >= min_idle then
    if #redis.call('XRANGE', KEYS[1], id, id) == 0 then
      redis.call('XACK', KEYS[1], group, id)
      lost[#lost + 1] = id
    else
      local r = redis.call('XCLAIM', KEYS[1], group, consumer, min_idle, id)
      if #r > 0 then
        claimed[#claimed + 1] = {r[1][1], r[1][2], tonumber(p[1][4]) + 1}
      end
    end
  end
end
return {claimed, lost}
"""

# KEYS[1] stream; ARGV group, owner, new_owner, id...
# Hands the ids that owner still owns to new_owner (owner itself to renew a
# lease), resetting their idle time without raising their delivery count. An id
# another consumer took over is left alone: taking it back would let two live
# consumers handle it. An id whose entry left the stream is acknowledged and
# reported as lost (XCLAIM would drop it from the group without a word); on a
# renewal its owner still has the data in hand and handles it, and only counts
# it as lost if that fails: then the id is pending nowhere and gone, which the
# last branch reports (as it does when the stream or group was deleted).
# Returns {moved, lost}.
TRANSFER = """
local moved, lost = {}, {}
local group, owner, new_owner = ARGV[1], ARGV[2], ARGV[3]
for i = 4, #ARGV do
  local id = ARGV[i]
  if #redis.call('XPENDING', KEYS[1], group, id, id, 1, owner) > 0 then
    if #redis.call('XRANGE', KEYS[1], id, id) == 0 then
      redis.call('XACK', KEYS[1], group, id)
      lost[#lost + 1] = id
    else
      redis.call('XCLAIM', KEYS[1], group, new_owner, 0, id, 'JUSTID')
      moved[#moved + 1] = id
    end
  elseif owner ~= new_owner
      and #redis.call('XPENDING', KEYS[1], group, id, id, 1) == 0
      and #redis.call('XRANGE', KEYS[1], id, id) == 0 then
    -- Pending nowhere and gone from the stream: the stream or the group was
    -- deleted under its handler.
    lost[#lost + 1] = id
  end
end
return {moved, lost}
"""

# KEYS[1] stream; ARGV group, min_idle_ms, mode ("only" or "except"), name...
# Removes consumers that own no pending entries and have been idle for at least
# min_idle_ms, among the names given ("only") or all but them ("except").
# Checking and deleting in one script means a consumer that reads an entry
# meanwhile is never deleted with it (that would drop the entry from the group).
# Returns the removed names.
DELETE_IDLE_CONSUMERS = """
local group, min_idle, only = ARGV[1], tonumber(ARGV[2]), ARGV[3] == 'only'
local listed = {}
for i = 4, #ARGV do listed[ARGV[i]] = true end
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], group)) do
  local info = {}
  for j = 1, #c, 2 do info[c[j]] = c[j + 1] end
  local name = info['name']
  if (listed[name] == true) == only and tonumber(info['pending']) == 0
     and tonumber(info['idle']) >= min_idle then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], group, name)
    removed[#removed + 1] = name
  end
end
return removed
"""

# KEYS[1] lease key; ARGV token, ttl_ms
# Takes the lease when it is free, or extends it when this token holds it.
# Returns 1 when the caller holds the lease afterwards, else 0.
LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return 1
end
return 0
"""

# KEYS[1] lease key; ARGV token
# Gives the lease up, only if this token still holds it.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] source stream, KEYS[2] target stream; ARGV entry id, field, value, ...
# Moves one entry: deletes it from the source and, only if it was still there,
# adds its fields to the target. Two operators replaying the same entry at once
# thus add it once. Returns the new id, or false when the entry was gone.
MOVE = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then
  return false
end
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
return redis.call('XADD', KEYS[2], '*', unpack(fields))
"""

# KEYS[1] stream; ARGV max_len (0: no cap), chunk
# Processed-only retention. First removes the entries that every consumer group
# has acknowledged: those below the oldest id any group still has pending or
# not yet read (XTRIM MINID). Then, if the stream is still longer than max_len,
# removes up to `chunk` of its oldest entries even though some group still needs
# them, and counts per group those it had not read yet (lost to it for sure)
# and those pending in it (in a consumer's hands, or lost if that consumer is
# gone). A stream without groups keeps everything but the cap. Atomic, so
# every removal is counted once, by one caller.
# Returns {removed_acknowledged, removed_by_cap, over_cap_left,
#          {group, unread, pending, ...}}.
TRIM = """
local key, max_len, chunk = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
if redis.call('EXISTS', key) == 0 then return {0, 0, 0, {}} end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local groups, floor = {}, nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
  local info = {}
  for j = 1, #g, 2 do info[g[j]] = g[j + 1] end
  local last = info['last-delivered-id']
  local ms = string.match(last, '^(%d+)-')
  local _, seq = parse(last)
  -- Everything up to last-delivered-id and not pending was acknowledged.
  local g_floor = ms .. '-' .. tostring(seq + 1)
  if seq >= 2^53 then g_floor = last end
  if tonumber(info['pending']) > 0 then
    local oldest = redis.call('XPENDING', key, info['name'])[2]
    if less(oldest, g_floor) then g_floor = oldest end
  end
  groups[#groups + 1] = {info['name'], last}
  if floor == nil or less(g_floor, floor) then floor = g_floor end
end
local acknowledged = 0
if floor ~= nil then
  acknowledged = redis.call('XTRIM', key, 'MINID', floor)
end
local length = redis.call('XLEN', key)
if max_len <= 0 or length <= max_len then return {acknowledged, 0, 0, {}} end
local excess = math.min(length - max_len, chunk)
-- The first entry kept is the (excess + 1)-th: trim below it, exactly.
local rows = redis.call('XRANGE', key, '-', '+', 'COUNT', excess + 1)
local dropped = {}
for _, g in ipairs(groups) do
  local name, last = g[1], g[2]
  local unread, pending = 0, 0
  for i = 1, excess do
    local id = rows[i][1]
    if less(last, id) then
      unread = unread + 1
    elseif #redis.call('XPENDING', key, name, id, id, 1) > 0 then
      pending = pending + 1
    end
  end
  if unread + pending > 0 then
    dropped[#dropped + 1] = name
    dropped[#dropped + 1] = unread
    dropped[#dropped + 1] = pending
  end
end
local removed = redis.call('XTRIM', key, 'MINID', rows[excess + 1][1])
return {acknowledged, removed, length - removed - max_len, dropped}
"""
