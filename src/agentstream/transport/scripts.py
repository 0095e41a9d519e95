"""Lua scripts that make read-check-write steps on a consumer group atomic."""

from __future__ import annotations

# Every script starts with these helpers and runs its commands through them:
# call() raises a command's error as redis.call() does, try() returns it as
# redis.pcall() does. Redis 7.0 words a command refused by the ACL inside a
# script without naming it ("The user executing the script can't run this
# command or subcommand"); both rewrite that error to name the command, in the
# words Redis uses outside scripts, so that the refusal says what to grant.
_PRELUDE = """\
local function acl_named(err, command, subcommand)
  local name = string.lower(command)
  if name == 'xinfo' or name == 'xgroup' then
    name = name .. '|' .. string.lower(subcommand)
  end
  if string.find(err, "can't run this command", 1, true) then
    return "NOPERM this user has no permissions to run the '" .. name
      .. "' command"
  end
  if string.find(err, "can't access at least one of the keys", 1, true) then
    return "NOPERM this user has no permissions to access one of the keys "
      .. "used as arguments of the '" .. name .. "' command"
  end
  return err
end
local function try(command, ...)
  local reply = redis.pcall(command, ...)
  if type(reply) == 'table' and reply.err then
    reply.err = acl_named(reply.err, command, (...))
  end
  return reply
end
local function call(...)
  local reply = try(...)
  if type(reply) == 'table' and reply.err then error(reply) end
  return reply
end
"""

# Error records are dropped with try() throughout: bookkeeping (a key of another
# type in their place) never stops a claim, an acknowledgement or a dead letter.

# KEYS[1] stream, KEYS[2] error records; ARGV group, consumer, min_idle_ms, id...
# Claims each id that is still pending and idle for at least min_idle_ms. An id
# whose entry left the stream is acknowledged (and its error record dropped) and
# reported as lost instead, so that it is never retried forever. Returns {claimed, lost}, where each claimed
# item is {id, fields, delivery_count}.
CLAIM = (
    _PRELUDE
    + """
local claimed, lost = {}, {}
local group, consumer, min_idle = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i = 4, #ARGV do
  local id = ARGV[i]
  local p = call('XPENDING', KEYS[1], group, id, id, 1)
  if #p > 0 and tonumber(p[1][3]) >= min_idle then
    if #call('XRANGE', KEYS[1], id, id) == 0 then
      call('XACK', KEYS[1], group, id)
      try('HDEL', KEYS[2], id)
      lost[#lost + 1] = id
    else
      local r = call('XCLAIM', KEYS[1], group, consumer, min_idle, id)
      if #r > 0 then
        claimed[#claimed + 1] = {r[1][1], r[1][2], tonumber(p[1][4]) + 1}
      end
    end
  end
end
return {claimed, lost}
"""
)

# KEYS[1] stream, KEYS[2] error records; ARGV group, owner, new_owner, id...
# Hands the ids that owner still owns to new_owner (owner itself to renew a
# lease), resetting their idle time without raising their delivery count. An id
# another consumer took over is left alone: taking it back would let two live
# consumers handle it. An id whose entry left the stream is acknowledged and
# reported as lost (XCLAIM would drop it from the group without a word); on a
# renewal its owner still has the data in hand and handles it, and only counts
# it as lost if that fails: then the id is pending nowhere and gone, which the
# last branch reports (as it does when the stream or group was deleted).
# Returns {moved, lost}.
TRANSFER = (
    _PRELUDE
    + """
local moved, lost = {}, {}
local group, owner, new_owner = ARGV[1], ARGV[2], ARGV[3]
for i = 4, #ARGV do
  local id = ARGV[i]
  if #call('XPENDING', KEYS[1], group, id, id, 1, owner) > 0 then
    if #call('XRANGE', KEYS[1], id, id) == 0 then
      call('XACK', KEYS[1], group, id)
      try('HDEL', KEYS[2], id)
      lost[#lost + 1] = id
    else
      call('XCLAIM', KEYS[1], group, new_owner, 0, id, 'JUSTID')
      moved[#moved + 1] = id
    end
  elseif owner ~= new_owner
      and #call('XPENDING', KEYS[1], group, id, id, 1) == 0
      and #call('XRANGE', KEYS[1], id, id) == 0 then
    -- Pending nowhere and gone from the stream: the stream or the group was
    -- deleted under its handler.
    lost[#lost + 1] = id
  end
end
return {moved, lost}
"""
)

# KEYS[1] stream; ARGV group, min_idle_ms, mode ("only" or "except"), name...
# Removes consumers that own no pending entries and have been idle for at least
# min_idle_ms, among the names given ("only") or all but them ("except").
# Checking and deleting in one script means a consumer that reads an entry
# meanwhile is never deleted with it (that would drop the entry from the group).
# Returns the removed names.
DELETE_IDLE_CONSUMERS = (
    _PRELUDE
    + """
local group, min_idle, only = ARGV[1], tonumber(ARGV[2]), ARGV[3] == 'only'
local listed = {}
for i = 4, #ARGV do listed[ARGV[i]] = true end
local removed = {}
for _, c in ipairs(call('XINFO', 'CONSUMERS', KEYS[1], group)) do
  local info = {}
  for j = 1, #c, 2 do info[c[j]] = c[j + 1] end
  local name = info['name']
  if (listed[name] == true) == only and tonumber(info['pending']) == 0
     and tonumber(info['idle']) >= min_idle then
    call('XGROUP', 'DELCONSUMER', KEYS[1], group, name)
    removed[#removed + 1] = name
  end
end
return removed
"""
)

# KEYS[1] lease key; ARGV token, ttl_ms
# Takes the lease when it is free, or extends it when this token holds it.
# Returns 1 when the caller holds the lease afterwards, else 0.
LEASE = (
    _PRELUDE
    + """
local holder = call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return 1
end
return 0
"""
)

# KEYS[1] lease key; ARGV token
# Gives the lease up, only if this token still holds it.
RELEASE = (
    _PRELUDE
    + """
if call('GET', KEYS[1]) == ARGV[1] then
  return call('DEL', KEYS[1])
end
return 0
"""
)

# KEYS[1] source stream, KEYS[2] target stream; ARGV entry id, field, value, ...
# Moves one entry: adds its fields to the target and, only once that write
# succeeded, deletes it from the source. An entry no longer in the source is
# left alone, so two operators replaying the same entry at once add it once.
# Redis does not undo a script's writes when a later command fails, hence the
# order, and try(): a refused XADD (the target holds another type, OOM) leaves
# the source untouched. (No harmless XDEL first to meet an ACL refusal before
# the XADD: a script's first write lifts Redis's maxmemory check off the writes
# after it. The replay command checks the permissions beforehand.) Returns
# {1, new id}, {0} when the entry was gone, or {-1, error} when the target
# refused it.
MOVE = (
    _PRELUDE
    + """
if #call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  return {0}
end
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
local new_id = try('XADD', KEYS[2], '*', unpack(fields))
if type(new_id) == 'table' and new_id.err then
  return {-1, new_id.err}
end
call('XDEL', KEYS[1], ARGV[1])
return {1, new_id}
"""
)

# KEYS[1] stream, KEYS[2] dead-letter stream, KEYS[3] error records;
# ARGV group, entry id, max_len, error, ack ("ack", or "ackdel" to acknowledge
# with XACKDEL ... ACKED in processed retention, XACK where the server lacks it),
# field, value, ...
# Dead-letters one entry: the XACK (and dropping its error record) happens only
# once the XADD succeeded. A MULTI would not do: Redis runs the XACK of a
# transaction even when its XADD fails (WRONGTYPE, OOM). When it fails, the
# entry stays pending and, unless an earlier failure's record is there, error
# becomes its record, so that a later dead letter still says why. (The worker
# checks at start that the ACL allows the XACK; see MOVE for why not here.)
# Returns {1, new id}, or {0, XADD's error}.
DEAD_LETTER = (
    _PRELUDE
    + """
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
local new_id = try(
  'XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(fields))
if type(new_id) == 'table' and new_id.err then
  try('HSETNX', KEYS[3], ARGV[2], ARGV[4])
  return {0, new_id.err}
end
local acked = nil
if ARGV[5] == 'ackdel' then
  acked = try('XACKDEL', KEYS[1], ARGV[1], 'ACKED', 'IDS', 1, ARGV[2])
end
if acked == nil or (type(acked) == 'table' and acked.err) then
  call('XACK', KEYS[1], ARGV[1], ARGV[2])
end
try('HDEL', KEYS[3], ARGV[2])
return {1, new_id}
"""
)

# KEYS[1] stream, KEYS[2] error records; ARGV group, cursor, count
# Drops the error records of entries no longer pending in the group (acknowledged
# by an operator or another tool), COUNT fields per call along an HSCAN cursor;
# all of them when the stream or the group is gone. Returns the next cursor.
PRUNE_ERROR_RECORDS = (
    _PRELUDE
    + """
local scan = call('HSCAN', KEYS[2], ARGV[2], 'COUNT', ARGV[3])
local gone = {}
for i = 1, #scan[2], 2 do
  local id = scan[2][i]
  local p = try('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if type(p) == 'table' and p.err then
    if string.find(p.err, 'NOGROUP', 1, true) then
      call('DEL', KEYS[2])
      return '0'
    end
    gone[#gone + 1] = id  -- not an entry id: never ours
  elseif #p == 0 then
    gone[#gone + 1] = id
  end
end
if #gone > 0 then call('HDEL', KEYS[2], unpack(gone)) end
return scan[1]
"""
)

# KEYS[1] stream; ARGV group, cap
# What the backlog figures are computed from, read at one instant: the stream's
# length and first and last entry ids, the group's last-delivered id, its
# entries-read and lag as Redis reports them, the pending summary, the server's
# clock, and how many entries lie after and up to the last-delivered id (each
# counted up to cap + 1, and only when both sides hold entries: XRANGE returns
# whole entries, so a count costs what it reads).
# Returns {0} without stream, {1} without group, else
# {2, length, first_id, last_id, last_delivered_id, entries_read, lag, pending,
#  oldest_pending_id, consumers, time_s, time_us, after, upto}.
GROUP_STATE = (
    _PRELUDE
    + """
local function map(flat)
  local m = {}
  for i = 1, #flat, 2 do m[flat[i]] = flat[i + 1] end
  return m
end
if call('EXISTS', KEYS[1]) == 0 then return {0} end
local group
for _, g in ipairs(call('XINFO', 'GROUPS', KEYS[1])) do
  local m = map(g)
  if m['name'] == ARGV[1] then group = m break end
end
if group == nil then return {1} end
local s = map(call('XINFO', 'STREAM', KEYS[1]))
local summary = call('XPENDING', KEYS[1], ARGV[1])
local d = group['last-delivered-id']
local function count(first, last, n)
  return #call('XRANGE', KEYS[1], first, last, 'COUNT', n)
end
local after, upto = count('(' .. d, '+', 1), count('-', d, 1)
if after > 0 and upto > 0 then  -- else the lag is 0 or the length: no count
  local cap = tonumber(ARGV[2]) + 1
  after, upto = count('(' .. d, '+', cap), count('-', d, cap)
end
local first = s['first-entry'] and s['first-entry'][1]
local last = s['last-entry'] and s['last-entry'][1]
local now = call('TIME')
-- A nil would end the reply's array there: Redis before 7 has no lag.
return {2, s['length'], first or false, last or false, d,
  group['entries-read'] or false, group['lag'] or false, summary[1],
  summary[2] or false, group['consumers'], now[1], now[2], after, upto}
"""
)

# KEYS[1] partition lease, KEYS[2] its fencing counter; ARGV member, ttl_ms
# Takes a free partition lease with a new fencing token (INCR of the counter,
# so each owner in turn holds a larger one). The lease value is
# "<token>:<member>". Returns the token, or 0 when another member holds it.
ACQUIRE_PARTITION = (
    _PRELUDE
    + """
if call('GET', KEYS[1]) ~= false then
  return 0
end
local token = call('INCR', KEYS[2])
call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', tonumber(ARGV[2]))
return token
"""
)

# KEYS[1] partition lease; ARGV value ("<token>:<member>"), ttl_ms
# Extends the lease only if this very value (token included) still holds it.
RENEW_PARTITION = (
    _PRELUDE
    + """
if call('GET', KEYS[1]) == ARGV[1] then
  return call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 0
"""
)

# KEYS[1] the members of a logical stream's group (a sorted set); ARGV member,
# ttl_ms. Records that member is alive now (Redis' clock, so hosts' clocks do
# not matter), forgets members silent for ttl_ms, returns the live ones sorted.
MEMBERS = (
    _PRELUDE
    + """
local t = call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
call('ZADD', KEYS[1], now, ARGV[1])
call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
call('PEXPIRE', KEYS[1], ttl * 2)
return call('ZRANGE', KEYS[1], 0, -1)
"""
)

# KEYS: the keys the probes name. ARGV: probes, each as its argument count, then
# its arguments: "k<n>" stands for KEYS[n], "v<text>" for text.
# Meant for EVALSHA_RO: Redis checks a command against the caller's ACL before
# it refuses a write in a read-only script, so each probe tells whether the ACL
# allows it, and nothing is written. A probe refused for another reason (no
# such key, NOGROUP, a write) was allowed. Returns per probe "" when allowed,
# else the refusal (naming the command).
PERMISSIONS = (
    _PRELUDE
    + """
local out, i = {}, 1
while i <= #ARGV do
  local n, args = tonumber(ARGV[i]), {}
  for j = 1, n do
    local a = ARGV[i + j]
    if string.sub(a, 1, 1) == 'k' then
      args[j] = KEYS[tonumber(string.sub(a, 2))]
    else
      args[j] = string.sub(a, 2)
    end
  end
  local reply = try(unpack(args))
  local denied = type(reply) == 'table' and reply.err
    and (string.find(reply.err, 'NOPERM', 1, true)
      or string.find(reply.err, 'permissions', 1, true)
      or string.find(reply.err, 'ACL', 1, true))
  out[#out + 1] = denied and reply.err or ''
  i = i + n + 1
end
return out
"""
)

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
TRIM = (
    _PRELUDE
    + """
local key, max_len, chunk = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
if call('EXISTS', key) == 0 then return {0, 0, 0, {}} end
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
for _, g in ipairs(call('XINFO', 'GROUPS', key)) do
  local info = {}
  for j = 1, #g, 2 do info[g[j]] = g[j + 1] end
  local last = info['last-delivered-id']
  local ms = string.match(last, '^(%d+)-')
  local _, seq = parse(last)
  -- Everything up to last-delivered-id and not pending was acknowledged.
  local g_floor = ms .. '-' .. tostring(seq + 1)
  if seq >= 2^53 then g_floor = last end
  if tonumber(info['pending']) > 0 then
    local oldest = call('XPENDING', key, info['name'])[2]
    if less(oldest, g_floor) then g_floor = oldest end
  end
  groups[#groups + 1] = {info['name'], last}
  if floor == nil or less(g_floor, floor) then floor = g_floor end
end
local acknowledged = 0
if floor ~= nil then
  acknowledged = call('XTRIM', key, 'MINID', floor)
end
local length = call('XLEN', key)
if max_len <= 0 or length <= max_len then return {acknowledged, 0, 0, {}} end
local excess = math.min(length - max_len, chunk)
-- The first entry kept is the (excess + 1)-th: trim below it, exactly.
local rows = call('XRANGE', key, '-', '+', 'COUNT', excess + 1)
local dropped = {}
for _, g in ipairs(groups) do
  local name, last = g[1], g[2]
  local unread, pending = 0, 0
  for i = 1, excess do
    local id = rows[i][1]
    if less(last, id) then
      unread = unread + 1
    elseif #call('XPENDING', key, name, id, id, 1) > 0 then
      pending = pending + 1
    end
  end
  if unread + pending > 0 then
    dropped[#dropped + 1] = name
    dropped[#dropped + 1] = unread
    dropped[#dropped + 1] = pending
  end
end
local removed = call('XTRIM', key, 'MINID', rows[excess + 1][1])
return {acknowledged, removed, length - removed - max_len, dropped}
"""
)
