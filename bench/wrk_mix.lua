-- wrk script for bench/http_load.py: every thread walks one shared list of request paths.
--
--   wrk -s bench/wrk_mix.lua URL -- PATHS_FILE START THREADS
--
-- Thread t asks paths START*THREADS + t, then + THREADS, ... (wrapping around), so the
-- threads together follow the file in order from START on; a second run given the first
-- run's requests as START goes on where it stopped (wrk checks the script with one call of
-- thread 0's request(): that path is skipped). done() prints one JSON line.

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
