#!/usr/bin/env python3
"""Offline tools on a large store: `kvs dump --format jsonl` and
`kvs restore` of 1,000,000 keys with 100-byte values.

Three runs of each, reporting the median wall time and the median peak RSS
of the process (from wait4), beside the size of the data and the RSS of a
server holding the same data (the in-memory size the restore target is
measured against).

Usage: bench/offline.py [--runs 3] [--keys 1000000]
"""

import argparse
import os
import subprocess
import tempfile
import time

from common import KVS, Server, build, machine, median, write_data_file


def timed(cmd, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL):
    """Runs cmd; returns (seconds, peak RSS in KiB)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout, stdin=stdin, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()}")
    return took, usage.ru_maxrss


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keys", type=int, default=1_000_000)
    args = parser.parse_args()

    build()
    with tempfile.TemporaryDirectory(prefix="kvs-bench-") as tmp:
        source = os.path.join(tmp, "source")
        os.mkdir(source)
        write_data_file(os.path.join(source, "snapshot.jsonl"), args.keys)
        size = os.path.getsize(os.path.join(source, "snapshot.jsonl"))
        server = Server(source)
        server_rss = server.rss_kib()
        server.stop()

        dumps, restores = [], []
        backup = os.path.join(tmp, "backup.jsonl")
        target = os.path.join(tmp, "target")
        for run in range(args.runs):
            with open(backup, "w") as out:
                dumps.append(timed([KVS, "dump", "--format", "jsonl", "--working-dir", source], stdout=out))
            restores.append(timed([KVS, "restore", backup, "--force", "--working-dir", target]))
            print(f"run {run + 1}: dump {dumps[-1][0]:.2f} s ({dumps[-1][1] / 1024:.0f} MiB), "
                  f"restore {restores[-1][0]:.2f} s ({restores[-1][1] / 1024:.0f} MiB)")
        with open(backup, "rb") as a, open(os.path.join(source, "snapshot.jsonl"), "rb") as b:
            if a.read() != b.read():
                raise RuntimeError("the dump differs from the data file")

    print(f"\nmachine: {machine()}; {args.keys:,} keys, 100-byte values ({size / 1e6:.0f} MB), "
          f"median of {args.runs} runs; a server holding the same data: {server_rss / 1024:.0f} MiB RSS")
    print("| command | wall time | peak RSS |")
    print("|---|---:|---:|")
    for name, rows in (("kvs dump --format jsonl > file", dumps), ("kvs restore FILE --force", restores)):
        print(f"| `{name}` | {median(r[0] for r in rows):.2f} s | {median(r[1] for r in rows) / 1024:.0f} MiB |")


if __name__ == "__main__":
    main()
