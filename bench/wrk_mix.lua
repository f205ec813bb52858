-- wrk script for bench/http_load.py: every thread walks one shared list of request paths.
--
--   wrk -s bench/wrk_mix.lua URL -- PATHS_FILE START THREADS [THINK_MS]
--
-- Thread t asks paths START*THREADS + t, then + THREADS, ... (wrapping around), so the
-- threads together follow the file in order from START on; a second run given the first
-- run's requests as START goes on where it stopped (wrk checks the script with one call of
-- thread 0's request(): that path is skipped). done() prints one JSON line.
--
-- THINK_MS > 0 makes each connection a user who waits that long after an answer before
-- asking again (wrk's delay()): the offered load is then bounded by the users, not by how
-- fast the app answers.

local made = 0

function setup(thread)
  thread:set("tid", made)
  made = made + 1
end

function init(args)
  paths = {}
  for line in io.lines(args[1]) do
    paths[#paths + 1] = line
  end
  step = tonumber(args[2])
  threads = tonumber(args[3])
  local think = tonumber(args[4] or "0")
  if think > 0 then
    -- wrk looks for delay() after init(), so a closed loop without think time keeps none.
    delay = function() return think end
  end
end

function request()
  local index = (step * threads + tid) % #paths + 1
  step = step + 1
  return wrk.format("GET", paths[index])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'KUYA_WRK {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
