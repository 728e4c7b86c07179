#!/usr/bin/env python3
"""Write throughput and latency with the write-ahead log, and recovery time.

PUT /kv/{key} (fresh keys, 100-byte values) with wrk at 1, 16 and 64
connections, for --fsync always and --fsync periodic, beside the same
load on a baseline build without the log (by default the last commit
before it, built from a temporary git worktree): requests/s, p50, p99.
Then the start-up time of a server that must replay a 64 MiB log.

The server is pinned to CPU 0 and wrk to CPU 1 (see bench/http.py).

Usage: bench/wal.py [--runs 3] [--seconds 5] [--baseline-rev REV]
"""

import argparse
import os
import shutil
import tempfile

from common import KVS, PUT_SCRIPT, Server, build_baseline, logged_ms, machine, median, need, wrk

# The last commit whose server kept writes in memory only.
BASELINE_REV = "82eee4c"
CONNECTIONS = (1, 16, 64)


def put_run(binary, args, connections, seconds):
    """One wrk run of fresh-key PUTs against a new server."""
    with tempfile.TemporaryDirectory(prefix="kvs-bench-") as workdir:
        server = Server(workdir, *args, cpus="0", binary=binary)
        try:
            m = wrk(f"http://{server.addr}/", seconds, connections, PUT_SCRIPT)
        finally:
            server.stop()
    return m["rps"], m["p50"], m["p99"]


def write_log(path, megabytes):
    value = "v" * 100
    target = megabytes * 1024 * 1024
    written = 0
    i = 0
    with open(path, "w") as f:
        while written < target:
            lines = "".join(
                f'{{"op":"set","key":"key-{(i + n) % 200000:08d}","value":"{value}"}}\n'
                for n in range(10000)
            )
            f.write(lines)
            written += len(lines)
            i += 10000
    return i


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    args = parser.parse_args()

    need("wrk", "wrk")
    with tempfile.TemporaryDirectory(prefix="kvs-bench-") as tmp:
        baseline = os.path.join(tmp, "kvs-baseline")
        build_baseline(args.baseline_rev, baseline)
        setups = [
            (f"in memory only ({args.baseline_rev})", baseline, []),
            ("--fsync always", KVS, ["--fsync", "always"]),
            ("--fsync periodic", KVS, ["--fsync", "periodic"]),
        ]
        results = {(name, c): [] for name, _, _ in setups for c in CONNECTIONS}
        for run in range(args.runs):
            for c in CONNECTIONS:
                for name, binary, extra in setups:
                    results[(name, c)].append(put_run(binary, extra, c, args.seconds))
            print(f"run {run + 1} done", flush=True)

        recoveries = []
        log_dir = os.path.join(tmp, "log")
        os.mkdir(log_dir)
        records = write_log(os.path.join(log_dir, "wal.jsonl"), 64)
        size = os.path.getsize(os.path.join(log_dir, "wal.jsonl"))
        for run in range(args.runs):
            workdir = os.path.join(tmp, f"recover-{run}")
            shutil.copytree(log_dir, workdir)
            server = Server(workdir)
            recoveries.append(logged_ms(server.log(), "log records"))
            server.stop()

    print(f"\nmachine: {machine()}; server pinned to CPU 0, wrk (1 thread) to CPU 1; "
          f"{args.seconds} s per run, median of {args.runs} runs")
    print("| PUT, fresh keys, 100 B | connections | requests/s | p50 | p99 |")
    print("|---|---:|---:|---:|---:|")
    for c in CONNECTIONS:
        for name, _, _ in setups:
            runs = results[(name, c)]
            rps = median(r[0] for r in runs)
            p50 = median(r[1] for r in runs)
            p99 = median(r[2] for r in runs)
            print(f"| {name} | {c} | {rps:,.0f} | {p50:.2f} ms | {p99:.2f} ms |")
    print(f"\nrecovery of a {size / 2**20:.0f} MiB log ({records:,} records over 200,000 keys): "
          f"median {median(recoveries):.0f} ms (runs: {', '.join(f'{r} ms' for r in recoveries)})")


if __name__ == "__main__":
    main()
