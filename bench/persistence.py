#!/usr/bin/env python3
"""Save and load of a large store by kvs serve.

Three runs, each: start a release server on a data file of 1,000,000 keys
with 100-byte values, read the load time it logs and its RSS once loaded,
send SIGTERM, and read the save time it logs while sampling its RSS until
it exits, timing SIGTERM to exit. Reports medians, and the file size.

Usage: bench/persistence.py [--runs 3] [--keys 1000000]
"""

import argparse
import os
import tempfile

from common import Server, build, logged_ms, machine, median, write_data_file


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keys", type=int, default=1_000_000)
    args = parser.parse_args()

    build()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kvs-bench-") as workdir:
        data = os.path.join(workdir, "snapshot.jsonl")
        write_data_file(data, args.keys)
        size = os.path.getsize(data)
        for run in range(args.runs):
            server = Server(workdir)
            load_ms = logged_ms(server.log(), f"loaded {args.keys} keys")
            rss_loaded = server.rss_kib()
            peak_saving = server.stop()
            save_ms = logged_ms(server.log(), f"saved {args.keys} keys")
            exit_ms = round(server.stop_seconds * 1000)
            rows.append((load_ms, save_ms, rss_loaded, peak_saving, exit_ms))
            print(f"run {run + 1}: load {load_ms} ms, save {save_ms} ms, SIGTERM to exit {exit_ms} ms, "
                  f"RSS loaded {rss_loaded / 1024:.0f} MiB, peak while saving {peak_saving / 1024:.0f} MiB")
            if os.path.getsize(data) != size:
                raise RuntimeError("the saved file differs in size from the loaded one")

    def med(i):
        return median(r[i] for r in rows)

    print(f"\nmachine: {machine()}; {args.keys:,} keys, 100-byte values, median of {args.runs} runs")
    print("| measure | median |")
    print("|---|---:|")
    print(f"| data file size | {size / 1e6:.0f} MB |")
    print(f"| load at start | {med(0):.0f} ms |")
    print(f"| save at shutdown (incl. fsync) | {med(1):.0f} ms |")
    print(f"| RSS after load | {med(2) / 1024:.0f} MiB |")
    print(f"| peak RSS during save | {med(3) / 1024:.0f} MiB |")
    print(f"| SIGTERM to exit (drain, save, exit) | {med(4):.0f} ms |")


if __name__ == "__main__":
    main()
