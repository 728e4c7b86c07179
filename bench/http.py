#!/usr/bin/env python3
"""HTTP throughput of kvs serve, measured with wrk.

On one running release server, three runs each of:
  - GET /health               (the server's own HTTP ceiling)
  - GET /kv/{key}             (random keys among 100,000 preloaded)
  - PUT /kv/{key}             (fresh keys, 100-byte values)
at 64 connections, reporting the median requests/s and p99 latency of each
and the ratio of GET and PUT to /health.

Usage: bench/http.py [--runs 5] [--seconds 10] [--connections 64] [--no-pin]
                     [--baseline-rev REV] [--features FEATURES]

By default the server is pinned to CPU 0 and wrk (one thread) to CPU 1, so
that the load generator never competes with the server for a core and every
route is measured with the same server capacity; --no-pin lets both float
(wrk then runs two threads).

The machine's other load moves every figure by 10-30% from one run to the
next, so the three routes are measured back to back within each run, and
the ratios reported are the medians of the per-run ratios.
wrk is installed from Debian's packages if it is missing.

With --baseline-rev REV, REV's binary is built too (in a temporary git
worktree, see common.build_baseline), and each run measures the three
routes against both binaries back to back, each on a fresh server with
the same 100,000 keys, alternating which binary goes first so that drift
within a run favours neither. Reported per route: the median requests/s
and p99 of each, and the median of the per-run ratios current/baseline,
e.g. "GET /kv/{key}: 101.3% of baseline".
This is how the "single-node speed unchanged" figure for cluster mode is
measured: the working tree against 41af051, the build before cluster mode,
which single-node requests/s must stay within 5% of:
  bench/http.py --baseline-rev 41af051
"""

import argparse
import os
import shutil
import subprocess
import tempfile

from common import (KVS, PUT_SCRIPT, REPO, Server, build, build_baseline, machine, median, need, wrk,
                    write_data_file)

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

ROUTES = (("health", HEALTH_SCRIPT), ("get", GET_SCRIPT), ("put", PUT_SCRIPT))
LABELS = {"health": "GET /health", "get": f"GET /kv/{{key}} ({PRELOADED:,} keys)",
          "put": "PUT /kv/{key} (fresh keys, 100 B)"}
SHORT_LABELS = {"health": "GET /health", "get": "GET /kv/{key}", "put": "PUT /kv/{key}"}


def measure_routes(server, args):
    """One wrk run of each route, back to back so that all three see the
    same machine state; returns {route: (requests/s, p99 ms)}."""
    base = f"http://{server.addr}"
    measured = {}
    for name, script in ROUTES:
        m = wrk(base + "/", args.seconds, args.connections, script, args.pin)
        measured[name] = (m["rps"], m["p99"])
    return measured


def describe(measured):
    return ", ".join(f"{name} {rps:,.0f} req/s p99 {p99:.2f} ms" for name, (rps, p99) in measured.items())


def run_current(args, workdir):
    """The plain benchmark: one server for all runs, as it always was."""
    server = Server(workdir, cpus="0" if args.pin else None)
    results = {name: [] for name, _ in ROUTES}
    try:
        for run in range(args.runs):
            measured = measure_routes(server, args)
            for name, m in measured.items():
                results[name].append(m)
            print(f"run {run + 1}: " + describe(measured), flush=True)
    finally:
        server.stop()
    return results


def measure_fresh(binary, data_file, args):
    """measure_routes on a new server of `binary`, in a fresh copy of the
    preloaded data: both binaries start every run from the same state, and
    only one server is ever alive, so neither shares CPU 0 with the other
    (nor its leftover keys and log from earlier runs)."""
    with tempfile.TemporaryDirectory(prefix="kvs-bench-") as workdir:
        shutil.copy(data_file, os.path.join(workdir, "snapshot.jsonl"))
        server = Server(workdir, cpus="0" if args.pin else None, binary=binary)
        try:
            return measure_routes(server, args)
        finally:
            server.stop()


def run_against_baseline(args, binaries, data_file):
    """Each run measures both binaries back to back, alternating which goes
    first; returns {binary name: {route: [(requests/s, p99 ms) per run]}}."""
    results = {who: {name: [] for name, _ in ROUTES} for who in binaries}
    for run in range(args.runs):
        # Whatever the machine's load does over a run, the binary measured
        # second gets it as often as the one measured first.
        order = list(binaries) if run % 2 == 0 else list(reversed(binaries))
        for who in order:
            measured = measure_fresh(binaries[who], data_file, args)
            for name, m in measured.items():
                results[who][name].append(m)
            print(f"run {run + 1} {who}: " + describe(measured), flush=True)
    return results


def print_table(results):
    health = [r for r, _ in results["health"]]
    print(f"| request | requests/s | p99 latency | vs /health |")
    print(f"|---|---:|---:|---:|")
    for name, runs in results.items():
        rps = median(r for r, _ in runs)
        p99 = median(p for _, p in runs)
        ratio = median(r / h for (r, _), h in zip(runs, health))
        print(f"| {LABELS[name]} | {rps:,.0f} | {p99:.2f} ms | {ratio:.0%} |")


def print_comparison(results, baseline_rev):
    """Medians of each binary, and the median of the per-run ratios: the
    two binaries of one run saw nearly the same machine, so their ratio
    varies far less from run to run than either figure does."""
    current, baseline = results["current"], results["baseline"]
    print(f"| request | current requests/s | current p99 | {baseline_rev} requests/s "
          f"| {baseline_rev} p99 | current / baseline |")
    print("|---|---:|---:|---:|---:|---:|")
    ratios = {}
    for name in current:
        ratios[name] = median(c / b for (c, _), (b, _) in zip(current[name], baseline[name]))
        print(f"| {LABELS[name]} | {median(r for r, _ in current[name]):,.0f} "
              f"| {median(p for _, p in current[name]):.2f} ms "
              f"| {median(r for r, _ in baseline[name]):,.0f} "
              f"| {median(p for _, p in baseline[name]):.2f} ms | {ratios[name]:.1%} |")
    print()
    for name, ratio in ratios.items():
        print(f"{SHORT_LABELS[name]}: {ratio:.1%} of baseline")


def git(*args):
    return subprocess.run(["git", "-C", REPO, *args], check=True, capture_output=True, text=True).stdout.strip()


def revisions(baseline_rev):
    """What was compared, for the record: the current tree's commit (and
    whether it had uncommitted changes) and the baseline's."""
    head = git("rev-parse", "--short", "HEAD")
    dirty = " with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"current: {head}{dirty}; baseline: {git('rev-parse', '--short', baseline_rev + '^{commit}')}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="let the server and wrk share both cores freely")
    parser.add_argument("--baseline-rev", metavar="REV",
                        help="also measure REV's binary, and report current / baseline")
    parser.add_argument("--features", default="",
                        help="cargo features for the current build (e.g. allocator-mimalloc)")
    args = parser.parse_args()
    if args.features and args.baseline_rev:
        parser.error("--features applies to the plain benchmark, not to --baseline-rev")
    if args.pin and (os.cpu_count() or 1) < 2:
        args.pin = False

    need("wrk", "wrk")
    with tempfile.TemporaryDirectory(prefix="kvs-bench-") as workdir:
        data_file = os.path.join(workdir, "snapshot.jsonl")
        write_data_file(data_file, PRELOADED)
        if args.baseline_rev:
            binaries = {"current": os.path.join(workdir, "kvs-current"),
                        "baseline": os.path.join(workdir, "kvs-baseline")}
            # Taken before building, so that it names the tree actually built.
            compared = revisions(args.baseline_rev)
            build_baseline(args.baseline_rev, binaries["baseline"])  # rebuilds the current one after
            # A private copy: every run starts new servers, and target/ is
            # shared with anyone whose cargo build may replace it meanwhile.
            shutil.copy(KVS, binaries["current"])
            results = run_against_baseline(args, binaries, data_file)
        else:
            build(args.features)
            results = run_current(args, workdir)

    placement = ("server pinned to CPU 0, wrk (1 thread) to CPU 1" if args.pin
                 else "server and wrk (2 threads) unpinned")
    print(f"\nmachine: {machine()}; {placement}; {args.connections} connections, "
          f"{args.seconds} s per run, median of {args.runs} runs")
    if args.baseline_rev:
        print(compared)
        print_comparison(results, args.baseline_rev)
    else:
        print_table(results)


if __name__ == "__main__":
    main()
