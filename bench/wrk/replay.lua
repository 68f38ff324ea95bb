-- replay.lua: send pre-generated requests, each exactly once, never cycling.
--
-- Usage: wrk -t T -c C -d D -s bench/wrk/replay.lua URL -- POOL_PREFIX
-- Thread k reads POOL_PREFIX.k, a file of length-prefixed raw HTTP requests
-- ("<len>\n<bytes>") written by bench/gen.py, so no two threads (and no two
-- connections) ever send the same request. When a thread runs out it stops
-- and reports `exhausted`; bench/run.py then discards the run and retries
-- with a bigger pool. done() prints one machine-readable line: WRKJSON {...}

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

-- per-thread globals (read back in done() through thread:get)
sent = 0
exhausted = 0
local pool

function init(args)
  pool = assert(io.open(args[1] .. "." .. id, "rb"))
end

local SENTINEL = "GET /__bench_pool_exhausted__ HTTP/1.1\r\nHost: bench\r\n\r\n"

function request()
  local line = pool:read("*l")
  if line then
    local raw = pool:read(tonumber(line))
    if raw then
      sent = sent + 1
      return raw
    end
  end
  if exhausted == 0 then
    exhausted = 1
    wrk.thread:stop()
  end
  return SENTINEL
end

function done(summary, latency, requests)
  local total_sent, total_exhausted = 0, 0
  for _, t in ipairs(threads) do
    total_sent = total_sent + (t:get("sent") or 0)
    total_exhausted = total_exhausted + (t:get("exhausted") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"lat_mean_us":%.1f,"lat_max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,' ..
    '"sent":%d,"exhausted_threads":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), total_sent, total_exhausted))
end
