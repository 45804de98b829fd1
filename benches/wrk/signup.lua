-- wrk script for the intake benchmark: every request is a distinct, correctly signed signup, read from
-- a file of pre-signed requests (one per line: webhook-id TAB timestamp TAB signature TAB body), paced
-- so that all connections together send RATE requests per second.
--   wrk -t2 -c50 -d30s -s benches/wrk/signup.lua URL -- FILE RATE THREADS CONNECTIONS
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  local file, rate = args[1], tonumber(args[2])
  local threads_n, connections = tonumber(args[3]), tonumber(args[4])
  requests, idx = {}, 0
  local n = 0
  for line in io.lines(file) do
    if n % threads_n == id then
      local wid, ts, sig, body = line:match("([^\t]+)\t([^\t]+)\t([^\t]+)\t(.*)")
      table.insert(requests, wrk.format("POST", "/v1/signup", {
        ["content-type"] = "application/json",
        ["webhook-id"] = wid,
        ["webhook-timestamp"] = ts,
        ["webhook-signature"] = sig,
      }, body))
    end
    n = n + 1
  end
  -- Each connection waits CONNECTIONS/RATE seconds between its requests.
  pause_ms = connections * 1000 / rate
end

function request()
  idx = idx + 1
  return requests[(idx - 1) % #requests + 1]
end

function delay()
  return pause_ms
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_s": %.3f, "p50_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, "non_2xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, e.status, e.connect + e.read + e.write + e.timeout))
end
