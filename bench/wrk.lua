-- wrk script of the Twitcher benchmark (bench/run.py).
-- Arguments after "--": METHOD [BODY_FILE]. Headers come from wrk's own -H option.
-- At the end it prints one line "BENCH_JSON {...}" that bench/run.py parses.

local request_bytes

function init(args)
  local method = args[1] or "GET"
  local body = nil
  if args[2] then
    local file = assert(io.open(args[2], "rb"))
    body = file:read("*a")
    file:close()
  end
  -- Built once per thread: wrk then only replays the same bytes.
  request_bytes = wrk.format(method, nil, nil, body)
end

function request()
  return request_bytes
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "p50": %.1f, "p90": %.1f, "p99": %.1f, "max": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
