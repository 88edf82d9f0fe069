"""Several replicas on one Redis: the Store protocol as Lua scripts over a few sorted sets.

Every key is under `{prefix}:` (P below):

    P:version             layout version, so data written by a newer router is refused (and
                          data of an older one upgraded at open: see _upgrade)
    P:seq                 INCR counter: executions' queue order (`seq`), jobs' submission order
    P:job:{owner}/{job}   hash: `job` (JSON), `ref` (its index entries, for the purge) and the
                          count of its executions per state (`queued`, `running`, ...). A job
                          id holds no '/', so "{owner}/{job}" (the job's key below) names one
                          job, and two owners' jobs of one id are two jobs.
    P:jobx:{owner}/{job}  zset of the job's execution ids scored by seq: seq is kept only here
    P:owners:{job}        set of the owners having a job of this id (an admin's look-up)
    P:exec:{execution}    the execution as one JSON object, without seq or default fields
                          (but always with `owner` and `job_id`, which name its job's keys)
    P:queued              zset of queued execution ids, score seq: `queued()` in seq order
    P:queued:{region}     zset of the region's queued ids in policy order, score
                          -priority * 2**40 + seq (higher priority first, then queue order):
                          exact in a double while seq < 2**40 and |priority| < 2**12, so a
                          position is one ZRANK
    P:running             zset of running execution ids, score seq
    P:containers          hash: container id -> JSON
    P:counts              hash: "{state}|{region}" -> number of executions in that state
    P:jobs                zset of jobs scored by created_at; member "{seq:015d}|{key}", so
                          jobs created at the same instant list the last submitted first
    P:jobs:owner:{owner}  the same, for one owner's jobs
    P:expiring            zset of finished jobs' `ref`s, score: when their keys expire (ms)
    P:regions             hash: region -> mode (paused, draining, open) set by an admin
    P:leader              the leader lease: its holder's node id, with a TTL
    P:leader:token        INCR counter: the fencing token of the latest lease

Every write that admits, finishes, requeues or cancels is one Lua script, so the
compare-and-set on the stored state, the indexes and the counters change together. The
leader's writes also carry its fencing token: a script whose token is not the latest writes
nothing, so a leader that was paused past its lease cannot change anything after its
successor took over. Lua's cjson keeps only 14 significant digits of a number, so scripts
never encode a float: Python encodes every value, scripts store strings as given, and
cancellation rewrites the leading `state` and `finished_at` of the stored JSON as text.

When a job's last execution ends, its keys get an expiry `retention_s` ahead; queued jobs
never expire. The job indexes are purged of expired jobs lazily (`purge_expired`, run by
`list_jobs`). A queued execution takes about 890 bytes of Redis memory with prompts of 130
characters (benchmarks/redis_memory.py); the prompt, stored with each execution, is what
varies most.

Scripts build key names from the prefix, which Redis allows outside Redis Cluster only: one
Redis (with replicas or Sentinel if wanted, see store.redis_connect for the urls), not a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import socket
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from hybrid_router import _json
from hybrid_router.core.model import (
    Container,
    Execution,
    ExecutionState,
    Job,
    JobKey,
    RegionMode,
    evolve,
)
from hybrid_router.errors import (
    ConfigError,
    DuplicateExecution,
    NotStorable,
    RegionDraining,
    StoreFenced,
    StoreUnavailable,
)
from hybrid_router.store._codec import (
    ERROR_FIELDS,
    EXECUTION_DEFAULTS,
    EXECUTION_FIELDS,
    container_from_record,
    container_record,
    execution_from_record,
    job_from_record,
    job_record,
)
from hybrid_router.store._group_commit import GroupCommit, Submission
from hybrid_router.store.base import Recorded, Submitted
from hybrid_router.store.redis_connect import redis_client

LAYOUT_VERSION = 2
# Connections to Redis one process keeps at most.
MAX_CONNECTIONS = 64
# The region score -priority * 2**40 + seq stays an exact double (< 2**53) below this.
PRIORITY_LIMIT = 2**12
# Reads of many executions go out as MGETs of this many keys, pipelined.
_READ_CHUNK = 1000
# queued() and running() read this many executions per script: a few ms of Redis's time.
_PAGE = 1000
# Expired jobs are purged this many per script, so one purge never blocks Redis for long.
_PURGE_CHUNK = 500
_FENCED = -1

# Every script starts with these: its arguments begin with the prefix, the retention and the
# fencing token ('' = none), and it keeps the indexes and counters in step with the states.
_PREAMBLE = """
local P = ARGV[1]
local RETENTION_MS = tonumber(ARGV[2])
local TOKEN = ARGV[3]

local function fenced()
  return TOKEN ~= '' and redis.call('GET', P .. ':leader:token') ~= TOKEN
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function stored(id)
  local raw = redis.call('GET', P .. ':exec:' .. id)
  return raw and cjson.decode(raw)
end

-- The key of an execution's job, as its job hash and execution set are named.
local function job_of(e)
  return e.owner .. '/' .. e.job_id
end

local function count(e, state, delta)
  redis.call('HINCRBY', P .. ':counts', state .. '|' .. e.region, delta)
  redis.call('HINCRBY', P .. ':job:' .. job_of(e), state, delta)
end

local function enter(e, id, seq, state)
  if state == 'queued' then
    redis.call('ZADD', P .. ':queued', seq, id)
    local score = -(e.priority or 0) * 1099511627776 + seq
    redis.call('ZADD', P .. ':queued:' .. e.region, score, id)
  elseif state == 'running' then
    redis.call('ZADD', P .. ':running', seq, id)
  end
  count(e, state, 1)
end

local function leave(e, id, state)
  if state == 'queued' then
    redis.call('ZREM', P .. ':queued', id)
    redis.call('ZREM', P .. ':queued:' .. e.region, id)
  elseif state == 'running' then
    redis.call('ZREM', P .. ':running', id)
  end
  count(e, state, -1)
end

-- Once none of a job's executions is queued or running, none can move again: its keys get
-- their expiry, and its index entries a date with the purge. True if the job is finished.
local function retire(key)
  local job = P .. ':job:' .. key
  local live = redis.call('HMGET', job, 'queued', 'running')
  if (tonumber(live[1]) or 0) > 0 or (tonumber(live[2]) or 0) > 0 then return false end
  local at = now_ms() + RETENTION_MS
  local ids = P .. ':jobx:' .. key
  for _, id in ipairs(redis.call('ZRANGE', ids, 0, -1)) do
    redis.call('PEXPIREAT', P .. ':exec:' .. id, at)
  end
  redis.call('PEXPIREAT', ids, at)
  redis.call('PEXPIREAT', job, at)
  redis.call('ZADD', P .. ':expiring', at, redis.call('HGET', job, 'ref'))
  return true
end

-- Store `raw` for execution `id`, stored until now as `e`, and move it to `state`'s index.
-- True if that finished its job.
local function move(id, e, raw, state)
  redis.call('SET', P .. ':exec:' .. id, raw)
  if state == e.state then return false end
  leave(e, id, e.state)
  enter(e, id, redis.call('ZSCORE', P .. ':jobx:' .. job_of(e), id), state)
  return state ~= 'queued' and state ~= 'running' and retire(job_of(e))
end

-- What a batched write returns: the ids written and the keys of the jobs it finished, as
-- two arrays.
local function recorded(written, finished)
  local jobs = {}
  for key in pairs(finished) do jobs[#jobs + 1] = key end
  return {written, jobs}
end
"""

_SCRIPTS = {
    # ARGV: job id, job JSON, owner, created_at, then (execution id, execution JSON) pairs.
    # Returns the stored job's JSON if the owner has a job of that id (writing nothing), an
    # error if one of its regions is draining, else the seq before the first execution's
    # (theirs follow it one by one).
    "submit": """
local job_id, job_raw, owner, created_at = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local key = owner .. '/' .. job_id
local job = P .. ':job:' .. key
local existing = redis.call('HGET', job, 'job')
if existing then return existing end
for _, region in ipairs(cjson.decode(job_raw).regions) do
  if redis.call('HGET', P .. ':regions', region) == 'draining' then
    return redis.error_reply('region draining: ' .. region)
  end
end
local seen = {}
for i = 8, #ARGV, 2 do
  if seen[ARGV[i]] or redis.call('EXISTS', P .. ':exec:' .. ARGV[i]) == 1 then
    return redis.error_reply('execution id already stored: ' .. ARGV[i])
  end
  seen[ARGV[i]] = true
end
local before = redis.call('INCR', P .. ':seq')
local member = string.format('%015d|%s', before, key)
redis.call('HSET', job, 'job', job_raw, 'ref', cjson.encode({key, member, owner, job_id}))
redis.call('ZADD', P .. ':jobs', created_at, member)
redis.call('ZADD', P .. ':jobs:owner:' .. owner, created_at, member)
redis.call('SADD', P .. ':owners:' .. job_id, owner)
for i = 8, #ARGV, 2 do
  local seq = redis.call('INCR', P .. ':seq')
  redis.call('SET', P .. ':exec:' .. ARGV[i], ARGV[i + 1])
  redis.call('ZADD', P .. ':jobx:' .. key, seq, ARGV[i])
  local e = cjson.decode(ARGV[i + 1])
  enter(e, ARGV[i], seq, e.state)
end
retire(key)
return before
""",
    # ARGV: the number of executions, then (execution id, JSON, state) triples, then per
    # container: its id, its JSON up to the end of the in_flight array's calls admitted
    # before this round (the array comes last, so the script writes the rest without
    # re-encoding a number), the number of the calls that follow, and (execution id, that
    # id as JSON) pairs of those. Calls of refused executions are left out.
    "admit": """
if fenced() then return -1 end
local n = tonumber(ARGV[4])
local written, refused = {}, {}
local i = 5
for _ = 1, n do
  local id = ARGV[i]
  local e = stored(id)
  if e and e.state == 'queued' then
    move(id, e, ARGV[i + 1], ARGV[i + 2])
    written[#written + 1] = id
  else
    refused[id] = true
  end
  i = i + 3
end
while i <= #ARGV do
  local calls, kept = tonumber(ARGV[i + 2]), {}
  for j = i + 3, i + 1 + 2 * calls, 2 do
    if not refused[ARGV[j]] then kept[#kept + 1] = ARGV[j + 1] end
  end
  local raw = ARGV[i + 1]
  if #kept > 0 then
    raw = raw .. (string.sub(raw, -1) == '[' and '' or ',') .. table.concat(kept, ',')
  end
  raw = raw .. ']}'
  redis.call('HSET', P .. ':containers', ARGV[i], raw)
  i = i + 3 + 2 * calls
end
return recorded(written, {})
""",
    # ARGV: the number of results, then (execution id, JSON, state, the container it was
    # admitted to) quadruples, the container id travelling as '' (None) or '=' .. id; then
    # the number of removed ids, the removed ids, then (container id, JSON) pairs.
    "finish": """
if fenced() then return -1 end
local n = tonumber(ARGV[4])
local written, finished = {}, {}
local i = 5
for _ = 1, n do
  local id, admitted = ARGV[i], ARGV[i + 3]
  local e = stored(id)
  local on = e and (e.container_id and '=' .. e.container_id or '')
  if e and e.state == 'running' and on == admitted then
    if move(id, e, ARGV[i + 1], ARGV[i + 2]) then finished[job_of(e)] = true end
    written[#written + 1] = id
  end
  i = i + 4
end
local removed = tonumber(ARGV[i])
for j = i + 1, i + removed do redis.call('HDEL', P .. ':containers', ARGV[j]) end
for j = i + 1 + removed, #ARGV, 2 do
  redis.call('HSET', P .. ':containers', ARGV[j], ARGV[j + 1])
end
return recorded(written, finished)
""",
    # ARGV: (execution id, its JSON, its state) triples; only running ones are moved.
    "requeue": """
if fenced() then return -1 end
for i = 4, #ARGV, 3 do
  local e = stored(ARGV[i])
  if e and e.state == 'running' then move(ARGV[i], e, ARGV[i + 1], ARGV[i + 2]) end
end
return 1
""",
    # ARGV: (execution id, its JSON) pairs; only queued ones become expired.
    "expire": """
if fenced() then return -1 end
local written, finished = {}, {}
for i = 4, #ARGV, 2 do
  local e = stored(ARGV[i])
  if e and e.state == 'queued' then
    if move(ARGV[i], e, ARGV[i + 1], 'expired') then finished[job_of(e)] = true end
    written[#written + 1] = ARGV[i]
  end
end
return recorded(written, finished)
""",
    # ARGV: the job's key, finished_at as JSON. Returns (seq, cancelled JSON) pairs, flattened.
    "cancel": """
local head = '{"state":"queued",'
local ids = redis.call('ZRANGE', P .. ':jobx:' .. ARGV[4], 0, -1, 'WITHSCORES')
local out = {}
for i = 1, #ids, 2 do
  local raw = redis.call('GET', P .. ':exec:' .. ids[i])
  if raw and string.sub(raw, 1, #head) == head then
    local rest = (string.gsub(string.sub(raw, #head + 1), '^"finished_at":[^,]*,', '', 1))
    local cancelled = '{"state":"cancelled","finished_at":' .. ARGV[5] .. ',' .. rest
    move(ids[i], cjson.decode(raw), cancelled, 'cancelled')
    out[#out + 1] = ids[i + 1]
    out[#out + 1] = cancelled
  end
end
return out
""",
    # ARGV: number of removed ids, the removed ids, then (container id, JSON) pairs.
    "save_containers": """
if fenced() then return -1 end
local removed = tonumber(ARGV[4])
for i = 5, 4 + removed do redis.call('HDEL', P .. ':containers', ARGV[i]) end
for i = 5 + removed, #ARGV, 2 do redis.call('HSET', P .. ':containers', ARGV[i], ARGV[i + 1]) end
return 1
""",
    # ARGV: now in ms ('' = Redis's clock, the one the keys expire by), at most how many.
    # The job's keys are deleted only if they are still that job's: the id may be in use again.
    "purge": """
local now = tonumber(ARGV[4]) or now_ms()
local refs = redis.call('ZRANGEBYSCORE', P .. ':expiring', '-inf', now, 'LIMIT', 0, ARGV[5])
for _, ref in ipairs(refs) do
  local key, member, owner, job_id = unpack(cjson.decode(ref))
  job_id = job_id or key  -- a ref written by layout 1, where a job's key was its id
  local job, ids = P .. ':job:' .. key, P .. ':jobx:' .. key
  redis.call('ZREM', P .. ':jobs', member)
  redis.call('ZREM', P .. ':jobs:owner:' .. owner, member)
  local current = redis.call('HGET', job, 'ref')
  if current == ref then
    for _, id in ipairs(redis.call('ZRANGE', ids, 0, -1)) do
      redis.call('DEL', P .. ':exec:' .. id)
    end
    redis.call('DEL', ids, job)
  end
  if not current or current == ref then
    redis.call('SREM', P .. ':owners:' .. job_id, owner)
  end
  redis.call('ZREM', P .. ':expiring', ref)
end
return #refs
""",
    # ARGV: an index (queued, running), the seq to read after, at most how many. Returns how
    # many it read, the last one's seq, their seqs joined by commas and their JSONs joined by
    # commas: two texts to parse rather than three replies per execution. A queued or running
    # execution's key never expires, so each one is there.
    "page": """
local entries = redis.call('ZRANGEBYSCORE', P .. ':' .. ARGV[4], '(' .. ARGV[5], '+inf',
  'WITHSCORES', 'LIMIT', 0, ARGV[6])
if #entries == 0 then return {0, '', '', ''} end
local keys, seqs = {}, {}
for i = 1, #entries, 2 do
  keys[#keys + 1] = P .. ':exec:' .. entries[i]
  seqs[#seqs + 1] = entries[i + 1]
end
local raws = redis.call('MGET', unpack(keys))
return {#keys, entries[#entries], table.concat(seqs, ','), table.concat(raws, ',')}
""",
    # ARGV: node id, lease TTL in ms. Returns the fencing token, 0 if another node holds it.
    # Asking again while holding it renews the lease and keeps the token.
    "acquire": """
local lease, token = P .. ':leader', P .. ':leader:token'
if redis.call('SET', lease, ARGV[4], 'NX', 'PX', ARGV[5]) then
  return redis.call('INCR', token)
end
if redis.call('GET', lease) ~= ARGV[4] then return 0 end
redis.call('PEXPIRE', lease, ARGV[5])
return tonumber(redis.call('GET', token)) or redis.call('INCR', token)
""",
    # ARGV: node id, lease TTL in ms.
    "renew": """
if redis.call('GET', P .. ':leader') ~= ARGV[4] then return 0 end
redis.call('PEXPIRE', P .. ':leader', ARGV[5])
return 1
""",
    # Layout 1 to 2: jobs were keyed by their id alone. ARGV: the first rank of P:jobs to
    # look at, how many. Each job there still named by its id alone gets its owner's key
    # (renamed keys keep their expiry), index members, ref and owners entry, and each of its
    # executions the `owner` field, appended to the JSON as text (the leading `state` and
    # `finished_at` stay first). Returns how many ranks it looked at.
    "upgrade_2": """
local ranks = redis.call('ZRANGE', P .. ':jobs', ARGV[4], ARGV[4] + ARGV[5] - 1, 'WITHSCORES')
for i = 1, #ranks, 2 do
  local member, score = ranks[i], ranks[i + 1]
  local cut = string.find(member, '|', 1, true)
  local head, job_id = string.sub(member, 1, cut), string.sub(member, cut + 1)
  local job = P .. ':job:' .. job_id
  -- Nil for a job upgraded already (its key holds a '/'), or gone (left for the purge).
  local raw = not string.find(job_id, '/', 1, true) and redis.call('HGET', job, 'job')
  if raw then
    local owner = cjson.decode(raw).owner
    local key = owner .. '/' .. job_id
    local renamed = head .. key
    local old_ref = redis.call('HGET', job, 'ref')
    local ref = cjson.encode({key, renamed, owner, job_id})
    local ids = P .. ':jobx:' .. job_id
    local tail = ',"owner":' .. cjson.encode(owner) .. '}'
    for _, id in ipairs(redis.call('ZRANGE', ids, 0, -1)) do
      local e = redis.call('GET', P .. ':exec:' .. id)
      if e then
        redis.call('SET', P .. ':exec:' .. id, string.sub(e, 1, -2) .. tail, 'KEEPTTL')
      end
    end
    if redis.call('EXISTS', ids) == 1 then redis.call('RENAME', ids, P .. ':jobx:' .. key) end
    redis.call('HSET', job, 'ref', ref)
    redis.call('RENAME', job, P .. ':job:' .. key)
    for _, index in ipairs({P .. ':jobs', P .. ':jobs:owner:' .. owner}) do
      redis.call('ZREM', index, member)
      redis.call('ZADD', index, score, renamed)
    end
    local at = old_ref and redis.call('ZSCORE', P .. ':expiring', old_ref)
    if at then
      redis.call('ZREM', P .. ':expiring', old_ref)
      redis.call('ZADD', P .. ':expiring', at, ref)
    end
    redis.call('SADD', P .. ':owners:' .. job_id, owner)
  end
end
return #ranks / 2
""",
    # ARGV: node id.
    "release": """
if redis.call('GET', P .. ':leader') == ARGV[4] then redis.call('DEL', P .. ':leader') end
return 1
""",
}

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _unavailable_on_connection_error(
    method: Callable[_P, Coroutine[Any, Any, _T]],
) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """Redis unreachable or too slow becomes StoreUnavailable, which the API answers with 503."""

    @functools.wraps(method)
    async def translated(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await method(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as e:
            raise StoreUnavailable(f"store unavailable: {e}", code="STORE_UNAVAILABLE") from e

    return translated


class RedisStore:
    """The Store protocol on one Redis, shared by every replica (see store.base)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "hr",
        retention_s: float = 7 * 86400,
        lease_ttl_s: float = 5.0,
        node_id: str | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.retention_s = retention_s
        self.lease_ttl_s: float | None = lease_ttl_s
        self.node_id = node_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._retention_ms = round(retention_s * 1000)
        self._lease_ms = max(1, round(lease_ttl_s * 1000))
        self._token: int | None = None
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._submissions = GroupCommit(self._write_submissions)

    @property
    def client(self) -> aioredis.Redis:
        """The Redis client, for pub/sub between replicas on the same connection settings."""
        if self._client is None:
            raise RuntimeError(f"Redis store {self.prefix!r} is not open")
        return self._client

    @property
    def fencing_token(self) -> int | None:
        """The token this store's fenced writes carry; None: they are not fenced."""
        return self._token

    def set_fencing_token(self, token: int | None) -> None:
        """Carry `token` in every admit, finish, requeue and save_containers from now on."""
        self._token = token

    @_unavailable_on_connection_error
    async def open(self) -> None:
        """Connect, check Redis answers, and refuse data laid out by a newer router."""
        if self._client is None:
            # Short timeouts, so the API answers 503 at once instead of hanging. No retries:
            # a script that timed out may have run, and run again its compare-and-set would
            # find its own write and answer False. The client is kept when Redis does not
            # answer, so calls work again once it is back.
            # A blocking pool: under a burst, a call waits for a free connection (within the
            # same timeout) instead of failing with "Too many connections" and a 503.
            self._client = redis_client(
                self.url,
                max_connections=MAX_CONNECTIONS,
                pool_timeout=2.0,
                decode_responses=True,
                socket_connect_timeout=2.0,
                socket_timeout=2.0,
                retry=Retry(NoBackoff(), 0),
            )
            self._scripts = {
                name: self._client.register_script(_PREAMBLE + body)
                for name, body in _SCRIPTS.items()
            }
        key = self._key("version")
        await self.client.set(key, LAYOUT_VERSION, nx=True)
        version = int(cast(str, await self.client.get(key)))
        if version > LAYOUT_VERSION:
            raise ConfigError(
                f"Redis store {self.prefix!r} has layout version {version}, newer than this "
                f"hybrid-router's {LAYOUT_VERSION}: upgrade, or use another prefix"
            )
        if version < LAYOUT_VERSION:
            await self._upgrade()
            await self.client.set(key, LAYOUT_VERSION)

    async def _upgrade(self) -> None:
        """Lay out data of version 1 as version 2 (jobs keyed by owner and id), a chunk of
        jobs per script so Redis is never held for long.

        Every replica must run this version from then on (stop them all, upgrade, start):
        one still on version 1 would go on writing jobs under their id alone. A process that
        dies part way leaves the version at 1, and the next open carries on: every step
        skips what is done.
        """
        start = 0
        while True:
            looked = int(await self._run("upgrade_2", start, _PURGE_CHUNK))
            if looked < _PURGE_CHUNK:
                return
            start += looked

    async def close(self) -> None:
        """Give the lease up if held, and close the connections."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if self._token is not None:
                await self._run("release", self.node_id)
        except (RedisConnectionError, RedisTimeoutError):
            pass  # Redis is away: the lease lapses by itself after its TTL.
        finally:
            self._scripts = {}
            await client.aclose()

    @_unavailable_on_connection_error
    async def acquire_scheduler_lock(self) -> bool:
        """Take the leader lease if free (or renew it if ours); a new lease gets a new token."""
        token = int(await self._run("acquire", self.node_id, self._lease_ms))
        if token:
            self._token = token
        return bool(token)

    @_unavailable_on_connection_error
    async def renew_scheduler_lock(self) -> bool:
        """Extend the lease; False if this node no longer holds it."""
        return bool(await self._run("renew", self.node_id, self._lease_ms))

    @_unavailable_on_connection_error
    async def release_scheduler_lock(self) -> None:
        """Give the lease up if this node holds it.

        The fencing token is kept: whatever this node still writes is refused as soon as
        another node leads.
        """
        await self._run("release", self.node_id)

    @_unavailable_on_connection_error
    async def submit_job(self, job: Job, executions: Sequence[Execution]) -> Submitted:
        """Store a job and its executions atomically; (existing job, False) if the id exists.

        Group-committed: submissions that arrive while a pipeline of them is in flight go
        together in the next one (see store._group_commit).
        """
        for e in executions:
            if abs(e.priority) >= PRIORITY_LIMIT:
                raise NotStorable(
                    f"priority {e.priority} is out of range: the Redis store orders queues "
                    f"by priorities between {1 - PRIORITY_LIMIT} and {PRIORITY_LIMIT - 1}",
                    code="INVALID_PRIORITY",
                )
        self._script("submit")  # not open: fail now rather than in the batch
        return await self._submissions.submit(job, executions)

    async def _write_submissions(self, batch: Sequence[Submission]) -> list[Submitted | Exception]:
        """One pipeline of submit scripts: one round trip, replies in order."""
        script = self._script("submit")
        replies = await self._submit_pipeline(script.sha, batch)
        # Redis lost its scripts (a restart, a failover, SCRIPT FLUSH): none from there on ran,
        # so the ones refused are a tail of the batch, and are sent again in order.
        refused = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if refused:
            script.sha = await self.client.script_load(script.script)
            again = await self._submit_pipeline(script.sha, [batch[i] for i in refused])
            for i, reply in zip(refused, again, strict=True):
                replies[i] = reply
        return [_submitted(s, reply) for s, reply in zip(batch, replies, strict=True)]

    async def _submit_pipeline(self, sha: str, batch: Sequence[Submission]) -> list[Any]:
        # EVALSHA itself, not the script object on the pipeline: that made every pipeline ask
        # SCRIPT EXISTS first, a round trip of its own in every group commit.
        async with self.client.pipeline(transaction=False) as pipe:
            for s in batch:
                args: list[str | int | bytes] = [self.prefix, self._retention_ms, ""]
                args += [s.job.id, _dumps(job_record(s.job)), s.job.owner]
                args.append(_dumps(s.job.created_at))
                for e in s.executions:
                    args += [e.id, _encode_execution(e)]
                pipe.evalsha(sha, 0, *args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    @_unavailable_on_connection_error
    async def get_job(self, key: JobKey) -> Job | None:
        """The job, or None."""
        raw = await self.client.hget(self._key("job", _job_key(key)), "job")
        return job_from_record(_json.loads(raw)) if raw is not None else None

    @_unavailable_on_connection_error
    async def job_owners(self, job_id: str) -> list[str]:
        """The owners that have a job of this id, sorted."""
        owners = cast(set[str], await self.client.smembers(self._key("owners", job_id)))
        async with self.client.pipeline(transaction=False) as pipe:
            for owner in sorted(owners):
                pipe.exists(self._key("job", _job_key(JobKey(owner, job_id))))
            found: list[int] = await pipe.execute()
        # Not yet purged from the set: a job whose retention passed.
        return [owner for owner, n in zip(sorted(owners), found, strict=True) if n]

    @_unavailable_on_connection_error
    async def list_jobs(
        self, *, owner: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[tuple[Job, dict[ExecutionState, int]]]:
        """Jobs newest first, each with the count of its executions per state (zeros included)."""
        await self.purge_expired()
        index = self._key("jobs") if owner is None else self._key("jobs", "owner", owner)
        if limit == 0:
            return []
        # A negative limit means no limit, as in SQL.
        last = -1 if limit < 0 else offset + limit - 1
        members = cast(list[str], await self.client.zrevrange(index, offset, last))
        async with self.client.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.hgetall(self._key("job", member.split("|", 1)[1]))
            hashes: list[dict[str, str]] = await pipe.execute()
        # An empty hash: the job expired since the purge above.
        return [_with_counts(fields) for fields in hashes if fields]

    @_unavailable_on_connection_error
    async def queued_of(self, owner: str) -> int:
        """How many of `owner`'s executions are queued: the `queued` count of each of their
        jobs (finished ones leave the index with their retention)."""
        members = cast(
            list[str], await self.client.zrange(self._key("jobs", "owner", owner), 0, -1)
        )
        async with self.client.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.hget(self._key("job", member.split("|", 1)[1]), "queued")
            counts: list[str | None] = await pipe.execute()
        return sum(int(n) for n in counts if n)

    @_unavailable_on_connection_error
    async def job_with_counts(self, key: JobKey) -> tuple[Job, dict[ExecutionState, int]] | None:
        """The job and its executions' count per state (zeros included), or None."""
        fields = await self._hash(self._key("job", _job_key(key)))
        return _with_counts(fields) if fields else None

    @_unavailable_on_connection_error
    async def executions_of(
        self, key: JobKey, *, offset: int = 0, limit: int | None = None
    ) -> list[Execution]:
        """A job's executions in `seq` order: `limit` of them (None: all) from `offset`."""
        if limit == 0:
            return []
        last = -1 if limit is None else offset + limit - 1
        index = self._key("jobx", _job_key(key))
        return await self._executions(await self._scored(index, offset, last))

    @_unavailable_on_connection_error
    async def queued(self) -> list[Execution]:
        """Every queued execution, in `seq` order."""
        return await self._in_index("queued")

    @_unavailable_on_connection_error
    async def running(self) -> list[Execution]:
        """Every running execution, in `seq` order."""
        return await self._in_index("running")

    @_unavailable_on_connection_error
    async def containers(self) -> list[Container]:
        """Every container in the ledger, by id."""
        rows = await self._hash(self._key("containers"))
        return [container_from_record(_json.loads(rows[cid])) for cid in sorted(rows)]

    @_unavailable_on_connection_error
    async def admit(
        self, executions: Sequence[Execution], containers: Sequence[Container]
    ) -> Recorded:
        """Record one round's admissions where still queued, and the ledger without the others."""
        args: list[str | int | bytes] = [len(executions)]
        for e in executions:
            args += [e.id, _encode_execution(e), e.state.value]
        this_round = {e.id for e in executions}
        for c in containers:
            record = container_record(c)
            in_flight = record.pop("in_flight")
            # Only this round's calls may be refused: the calls before the first of them go
            # in the JSON, which a container of a few thousand calls in flight would
            # otherwise send as two arguments each, every round.
            first = next((k for k, call in enumerate(in_flight) if call in this_round), None)
            settled = in_flight if first is None else in_flight[:first]
            # The record's JSON without the closing of in_flight and of the object, for the
            # script to complete with the kept calls.
            head = _dumps({**record, "in_flight": settled})[: -len("]}")]
            fresh = () if first is None else in_flight[first:]
            args += [c.id, head, len(fresh)]
            for call in fresh:
                args += [call, _dumps(call)]
        return _recorded(await self._fenced("admit", *args))

    @_unavailable_on_connection_error
    async def finish(
        self,
        results: Sequence[tuple[Execution, str | None]],
        containers: Sequence[Container],
        removed: Sequence[str] = (),
    ) -> Recorded:
        """Record calls' outcomes where still running on their container; then the ledger."""
        # Fenced on the container the run was admitted to, as in SQLiteStore.finish.
        args: list[str | int | bytes] = [len(results)]
        for e, container_id in results:
            args += [e.id, _encode_execution(e), e.state.value, _optional(container_id)]
        args += [len(removed), *removed]
        for c in containers:
            args += [c.id, _dumps(container_record(c))]
        return _recorded(await self._fenced("finish", *args))

    @_unavailable_on_connection_error
    async def cancel_queued(self, key: JobKey, now: float) -> list[Execution]:
        """Cancel a job's queued executions atomically; returns them as cancelled."""
        flat = await self._run("cancel", _job_key(key), _dumps(now))
        return [
            execution_from_record(_json.loads(raw), int(seq))
            for seq, raw in zip(flat[::2], flat[1::2], strict=True)
        ]

    @_unavailable_on_connection_error
    async def save_containers(
        self, containers: Sequence[Container], removed: Sequence[str] = ()
    ) -> None:
        """Upsert ledger rows and delete the `removed` ids, atomically."""
        args: list[str | int | bytes] = [len(removed), *removed]
        for c in containers:
            args += [c.id, _dumps(container_record(c))]
        await self._fenced("save_containers", *args)

    @_unavailable_on_connection_error
    async def expire(self, executions: Sequence[Execution]) -> Recorded:
        """Record these executions (now `expired`) where still queued, in one write."""
        args: list[str | bytes] = []
        for e in executions:
            args += [e.id, _encode_execution(e)]
        return _recorded(await self._fenced("expire", *args))

    @_unavailable_on_connection_error
    async def region_modes(self) -> dict[str, RegionMode]:
        """Regions whose mode an admin changed; any other region is open."""
        modes = await self._hash(self._key("regions"))
        return {region: RegionMode(mode) for region, mode in modes.items()}

    @_unavailable_on_connection_error
    async def set_region_mode(self, region: str, mode: RegionMode) -> None:
        """Pause, drain or reopen a region, for every replica."""
        await self.client.hset(self._key("regions"), region, mode.value)

    @_unavailable_on_connection_error
    async def requeue(self, executions: Sequence[Execution]) -> None:
        """Put running executions back in the queue as given (crash recovery)."""
        args: list[str | bytes] = []
        for e in executions:
            args += [e.id, _encode_execution(e), e.state.value]
        await self._fenced("requeue", *args)

    @_unavailable_on_connection_error
    async def region_counts(self) -> dict[str, dict[ExecutionState, int]]:
        """Per region, the count of executions per state (zeros included).

        Counts include executions of jobs whose retention has passed: like SQLite, which
        never deletes, they are totals since the store was created.
        """
        counts: dict[str, dict[ExecutionState, int]] = {}
        for field, n in (await self._hash(self._key("counts"))).items():
            state, region = field.split("|", 1)
            counts.setdefault(region, _zero_counts())[ExecutionState(state)] = int(n)
        return counts

    @_unavailable_on_connection_error
    async def queue_sizes(self) -> dict[str, int]:
        """Per region with queued executions, how many are queued."""
        # The counters change in the same scripts as the region sets: equal to their ZCARDs,
        # in one round trip whatever the number of regions.
        prefix = f"{ExecutionState.QUEUED.value}|"
        return {
            field.removeprefix(prefix): int(n)
            for field, n in (await self._hash(self._key("counts"))).items()
            if field.startswith(prefix) and int(n) > 0
        }

    @_unavailable_on_connection_error
    async def positions(self, executions: Sequence[Execution]) -> dict[str, int]:
        """1-based place of each still-queued execution in its region's order."""
        async with self.client.pipeline(transaction=False) as pipe:
            for e in executions:
                pipe.zrank(self._key("queued", e.region), e.id)
            ranks: list[int | None] = await pipe.execute()
        return {
            e.id: rank + 1 for e, rank in zip(executions, ranks, strict=True) if rank is not None
        }

    @_unavailable_on_connection_error
    async def purge_expired(self, now: float | None = None) -> int:
        """Forget the jobs whose retention has passed by `now` (default: Redis's clock).

        Their keys expire by themselves; this removes what points at them (the job indexes),
        and deletes the keys at once if `now` is ahead of Redis. Returns how many jobs.
        """
        at = "" if now is None else str(round(now * 1000))
        purged = 0
        while True:
            n = int(await self._run("purge", at, _PURGE_CHUNK))
            purged += n
            if n < _PURGE_CHUNK:
                return purged

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # The client's types cannot know it decodes every reply to str (decode_responses).

    async def _hash(self, key: str) -> dict[str, str]:
        return cast(dict[str, str], await self.client.hgetall(key))

    async def _scored(self, key: str, start: int = 0, end: int = -1) -> list[tuple[str, float]]:
        """A sorted set's members with their scores, in order, from rank `start` to `end`."""
        members = await self.client.zrange(key, start, end, withscores=True)
        return cast(list[tuple[str, float]], members)

    def _script(self, name: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            raise RuntimeError(f"Redis store {self.prefix!r} is not open")
        return script

    async def _run(self, name: str, *args: str | int | bytes, token: int | None = None) -> Any:
        fence: str | int = "" if token is None else token
        return await self._script(name)(args=[self.prefix, self._retention_ms, fence, *args])

    async def _fenced(self, name: str, *args: str | int | bytes) -> Any:
        """Run a leader's write; StoreFenced if a newer lease's token has replaced ours."""
        token = self._token
        result = await self._run(name, *args, token=token)
        if result == _FENCED:
            raise StoreFenced(
                f"write refused: fencing token {token} is stale, another replica leads now"
            )
        return result

    async def _in_index(self, index: str) -> list[Execution]:
        """The executions in the `index` sorted set, in `seq` order, a page per script.

        Each page is a snapshot of its own. Pages follow seq rather than rank, so an execution
        that leaves the index meanwhile moves none of the others past the next page's start.
        One that comes back meanwhile behind the pages read (a retry keeps its early seq) is
        missed: only the leader writes those, and it reads the queue before it writes.

        The next page is asked for before this one is decoded: Redis runs its script while
        Python decodes (a new leader reads 100,000 queued executions this way, and the two
        took about as long as each other one after the other).
        """
        result: list[Execution] = []
        page = await self._run("page", index, "0", _PAGE)
        while True:
            n, last, seqs, raws = page
            following = None
            if n >= _PAGE:
                following = asyncio.ensure_future(self._run("page", index, last, _PAGE))
            try:
                if n:
                    records = _json.loads(f"[{raws}]")
                    result += map(execution_from_record, records, map(int, seqs.split(",")))
            except BaseException:
                if following is not None:
                    following.cancel()
                    with contextlib.suppress(BaseException):
                        await following
                raise
            if following is None:
                return result
            page = await following

    async def _executions(self, ids: Sequence[tuple[str, float]]) -> list[Execution]:
        """The executions of (id, seq) pairs that still exist, in order."""
        async with self.client.pipeline(transaction=False) as pipe:
            for i in range(0, len(ids), _READ_CHUNK):
                pipe.mget([self._key("exec", eid) for eid, _ in ids[i : i + _READ_CHUNK]])
            chunks: list[list[str | None]] = await pipe.execute()
        raws = [raw for chunk in chunks for raw in chunk]
        # None: its job's retention passed in between.
        return [
            execution_from_record(_json.loads(raw), int(seq))
            for (_, seq), raw in zip(ids, raws, strict=True)
            if raw is not None
        ]


def _zero_counts() -> dict[ExecutionState, int]:
    return dict.fromkeys(ExecutionState, 0)


def _with_counts(fields: dict[str, str]) -> tuple[Job, dict[ExecutionState, int]]:
    """A job hash's job and its count per state (zeros included)."""
    counts = {state: int(fields.get(state.value, 0)) for state in ExecutionState}
    return job_from_record(_json.loads(fields["job"])), counts


def _recorded(reply: list[list[str]]) -> Recorded:
    """A batched write script's reply: the ids written, the jobs finished."""
    written, finished = reply
    return Recorded(frozenset(written), frozenset(map(_from_job_key, finished)))


def _job_key(key: JobKey) -> str:
    """How the keys of a job name it: "{owner}/{id}", one job since an id holds no '/'."""
    return f"{key.owner}/{key.id}"


def _from_job_key(text: str) -> JobKey:
    owner, _, job_id = text.rpartition("/")
    return JobKey(owner, job_id)


def _dumps(value: object) -> bytes:
    return _json.dumps(value)


def _submitted(submission: Submission, reply: object) -> Submitted | Exception:
    """What the submit script's reply says it did."""
    if isinstance(reply, ResponseError):
        if "execution id already stored" in str(reply):
            return DuplicateExecution(str(reply))
        if str(reply).startswith("region draining: "):
            return RegionDraining(str(reply).removeprefix("region draining: "))
        return reply
    if isinstance(reply, Exception):
        return reply
    if isinstance(reply, str):
        return Submitted(job_from_record(_json.loads(reply)), False)
    first = int(cast(int, reply)) + 1
    executions = submission.executions
    return Submitted(
        submission.job, True, tuple(evolve(e, seq=first + i) for i, e in enumerate(executions))
    )


def _optional(value: str | None) -> str:
    """An id that may be None, as the scripts take it: '' or '=' + id."""
    return "" if value is None else "=" + value


def _encode_execution(execution: Execution) -> bytes:
    """The execution's JSON: `state` first, then `finished_at`, then the other fields.

    Fields at their default are left out: a queued execution is a third smaller, which is
    most of Redis's memory per execution; but never `owner`, which the scripts read to find
    the job's keys. The cancel script relies on the order to rewrite `state` and
    `finished_at` without decoding the rest. Read from the fields in one pass, not through
    execution_record: an execution is encoded at submission, admission and outcome.
    """
    values = execution.__dict__
    record: dict[str, Any] = {"state": execution.state.value}
    if execution.finished_at is not None:
        record["finished_at"] = execution.finished_at
    for name, default in _ENCODED_FIELDS:
        value = values[name]
        if default is _ALWAYS or value != default:
            record[name] = value
    error = execution.error
    if error is not None:
        record["error_code"] = error.code
        record["error_message"] = error.message
        record["error_kind"] = error.kind.value
    return _dumps(record)


# Never equal to a field's value: the fields without a default, and `owner`, are always kept.
_ALWAYS = object()
# After `state` and `finished_at`, every field a record holds but the error's, in record
# order, with the default that leaves it out.
_ENCODED_FIELDS = tuple(
    (name, _ALWAYS if name not in EXECUTION_DEFAULTS or name == "owner" else default)
    for name in EXECUTION_FIELDS
    if name not in ("state", "finished_at", *ERROR_FIELDS)
    for default in (EXECUTION_DEFAULTS.get(name),)
)
