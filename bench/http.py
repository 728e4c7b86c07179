#!/usr/bin/env python3
"""HTTP throughput of kvs serve, measured with wrk.

On one running release server, three runs each of:
  - GET /health               (the server's own HTTP ceiling)
  - GET /kv/{key}             (random keys among 100,000 preloaded)
  - PUT /kv/{key}             (fresh keys, 100-byte values)
at 64 connections, reporting the median requests/s and p99 latency of each
and the ratio of GET and PUT to /health.

Usage: bench/http.py [--runs 5] [--seconds 10] [--connections 64]

By default the server is pinned to CPU 0 and wrk (one thread) to CPU 1, so
that the load generator never competes with the server for a core and every
route is measured with the same server capacity; --no-pin lets both float
(wrk then runs two threads).

The machine's other load moves every figure by 10-30% from one run to the
next, so the three routes are measured back to back within each run, and
the ratios reported are the medians of the per-run ratios.
wrk is installed from Debian's packages if it is missing.
"""

import argparse
import os
import tempfile

from common import PUT_SCRIPT, Server, build, machine, median, need, wrk, write_data_file

PRELOADED = 100_000

# wrk shares the machine's two cores with the server, so its own work per
# request must be the same on every route for the ratios to measure the
# server: the /health and GET scripts run the same code (pick the next of
# 100,000 prepared paths, concatenate the request), and PUT does the same
# amount (one counter, one concatenation).
PATHS_SCRIPT = r"""
local paths = {}
local i = 0
init = function()
  math.randomseed(os.time() + tonumber(tostring(paths):sub(8), 16))
  for n = 1, 100000 do paths[n] = make_path() end
end
request = function()
  i = i % #paths + 1
  return "GET " .. paths[i] .. " HTTP/1.1\r\nHost: kvs\r\n\r\n"
end
"""

HEALTH_SCRIPT = PATHS_SCRIPT + r"""
make_path = function() return "/health" end
"""

GET_SCRIPT = PATHS_SCRIPT + r"""
make_path = function() return string.format("/kv/key-%08d", math.random(0, LAST)) end
""".replace("LAST", str(PRELOADED - 1))



def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="let the server and wrk share both cores freely")
    args = parser.parse_args()
    if args.pin and (os.cpu_count() or 1) < 2:
        args.pin = False

    need("wrk", "wrk")
    build()
    with tempfile.TemporaryDirectory(prefix="kvs-bench-") as workdir:
        write_data_file(os.path.join(workdir, "snapshot.jsonl"), PRELOADED)
        server = Server(workdir, cpus="0" if args.pin else None)
        base = f"http://{server.addr}"
        results = {"health": [], "get": [], "put": []}
        try:
            for run in range(args.runs):
                # Interleaved, so that all three see the same machine state.
                for name, script in (("health", HEALTH_SCRIPT), ("get", GET_SCRIPT), ("put", PUT_SCRIPT)):
                    m = wrk(base + "/", args.seconds, args.connections, script, args.pin)
                    results[name].append((m["rps"], m["p99"]))
                print(f"run {run + 1}: " + ", ".join(
                    f"{name} {r[-1][0]:,.0f} req/s p99 {r[-1][1]:.2f} ms" for name, r in results.items()))
        finally:
            server.stop()

    placement = ("server pinned to CPU 0, wrk (1 thread) to CPU 1" if args.pin
                 else "server and wrk (2 threads) unpinned")
    print(f"\nmachine: {machine()}; {placement}; {args.connections} connections, "
          f"{args.seconds} s per run, median of {args.runs} runs")
    health = [r for r, _ in results["health"]]
    print(f"| request | requests/s | p99 latency | vs /health |")
    print(f"|---|---:|---:|---:|")
    labels = {"health": "GET /health", "get": f"GET /kv/{{key}} ({PRELOADED:,} keys)",
              "put": "PUT /kv/{key} (fresh keys, 100 B)"}
    for name, runs in results.items():
        rps = median(r for r, _ in runs)
        p99 = median(p for _, p in runs)
        ratio = median(r / h for (r, _), h in zip(runs, health))
        print(f"| {labels[name]} | {rps:,.0f} | {p99:.2f} ms | {ratio:.0%} |")


if __name__ == "__main__":
    main()
