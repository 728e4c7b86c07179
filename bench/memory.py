#!/usr/bin/env python3
"""Memory of kvs serve while 1,000,000 keys are loaded over HTTP, beside Redis.

Each run starts a release server on an empty directory (default flags, so
checkpoints happen at the default --wal-max-bytes while it loads), reads
its RSS, PUTs 1,000,000 keys with 100-byte values with wrk (64
connections, each key once), waits for any checkpoint still running,
and reads the RSS again. The peak is the kernel's high-water mark
(VmHWM), so a short spike between two samples is not missed. Then
SIGTERM, sampling the RSS while the server saves and exits.

In the same run, Redis (from Debian's packages, installed if missing) is
started with persistence off on a Unix socket, loaded with the same keys
and values by `redis-cli --pipe`, and measured the same way: that is
Redis's data structures alone, the baseline for bytes per key.

Reports for each: RSS empty, RSS live after the load, bytes per key above
empty, peak RSS (VmHWM) and peak / live; medians of --runs runs.

Usage: bench/memory.py [--runs 3] [--keys 1000000] [--features FEATURES] [--no-redis]

--features is passed to cargo build (e.g. allocator-mimalloc), to measure
another build of the same source.
"""

import argparse
import os
import signal
import subprocess
import tempfile
import threading
import time

from common import Server, build, machine, median, need, write_lines

VALUE_BYTES = 100
CONNECTIONS = 64

# Exactly `KEYS` PUTs of key-00000000, key-00000001, ...: one wrk thread
# counts them out; once all are sent, connections send GET /health (which
# changes nothing) until every PUT (the responses with an empty body) has
# been answered, and the thread creates the file DONE_FILE, on which the
# benchmark stops wrk (wrk itself runs for its full duration). wrk calls the first thread's
# request() once to check what it returns and never sends that one, so
# the first call returns GET /health too.
LOAD_SCRIPT = r"""
local tail = " HTTP/1.1\r\nHost: kvs\r\nContent-Length: VALUE_BYTES\r\n\r\n" .. string.rep("v", VALUE_BYTES)
local health = "GET /health HTTP/1.1\r\nHost: kvs\r\n\r\n"
local checked = false
local sent = 0
local answered = 0
request = function()
  if not checked then
    checked = true
    return health
  end
  if sent < KEYS then
    local r = string.format("PUT /kv/key-%08d", sent) .. tail
    sent = sent + 1
    return r
  end
  return health
end
response = function(status, headers, body)
  if body == "" then
    answered = answered + 1
    if answered == KEYS then
      io.open("DONE_FILE", "w"):close()
      wrk.thread:stop()
    end
  end
end
"""


def put_keys(url, keys):
    """PUTs `keys` keys with wrk (one thread, on CPU 1 when there are two),
    stopping it once every PUT has been answered 200."""
    need("wrk", "wrk")
    with tempfile.TemporaryDirectory(prefix="kvs-bench-wrk-") as scratch:
        done = os.path.join(scratch, "done")
        script = os.path.join(scratch, "load.lua")
        with open(script, "w") as f:
            f.write(LOAD_SCRIPT.replace("VALUE_BYTES", str(VALUE_BYTES)).replace("KEYS", str(keys))
                    .replace("DONE_FILE", done))
        cmd = ["wrk", "-s", script, "-t1", f"-c{CONNECTIONS}", "-d3600s", url]
        if (os.cpu_count() or 1) >= 2:
            cmd = ["taskset", "-c", "1"] + cmd
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while not os.path.exists(done) and proc.poll() is None:
            time.sleep(0.05)
        finished = os.path.exists(done)
        # SIGINT makes wrk stop waiting for its duration and print its summary.
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out = proc.communicate()[0]
    if not finished:
        raise RuntimeError("wrk failed:\n" + out)
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError("wrk saw errors:\n" + out)


def status_kib(pid, field):
    """A field of /proc/PID/status in KiB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


class Sampler:
    """Reads a process's VmRSS every 20 ms in the background: the curve
    between the empty and the loaded figures, for the record (the peak
    itself is VmHWM)."""

    def __init__(self, pid):
        self.pid = pid
        self.samples = []
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            try:
                self.samples.append(status_kib(self.pid, "VmRSS"))
            except (OSError, RuntimeError):
                return
            time.sleep(0.02)

    def stop(self):
        self.running = False
        self.thread.join()
        return max(self.samples, default=0)


def measure(pid, load):
    """Empty RSS, then `load()`, then live RSS, VmHWM and the highest sample."""
    time.sleep(0.5)
    empty = status_kib(pid, "VmRSS")
    sampler = Sampler(pid)
    seconds = load()
    sampled_peak = sampler.stop()
    time.sleep(1)
    return {"empty": empty, "live": status_kib(pid, "VmRSS"), "peak": status_kib(pid, "VmHWM"),
            "sampled_peak": sampled_peak, "seconds": seconds}


def checkpoints_settled(server, workdir):
    """Waits until every checkpoint begun has finished."""
    deadline = time.time() + 120
    while time.time() < deadline:
        log = server.log()
        begun = log.count("checkpoint begun")
        done = log.count("checkpoint done")
        if begun == done and not os.path.exists(os.path.join(workdir, "wal.prev.jsonl")):
            return begun
        if "checkpoint failed" in log:
            raise RuntimeError("a checkpoint failed:\n" + log)
        time.sleep(0.1)
    raise RuntimeError("checkpoints did not finish:\n" + server.log())


def run_kvs(keys):
    with tempfile.TemporaryDirectory(prefix="kvs-bench-") as workdir:
        server = Server(workdir)
        checkpoints = 0
        try:
            def load():
                nonlocal checkpoints
                started = time.monotonic()
                put_keys(f"http://{server.addr}/", keys)
                took = time.monotonic() - started
                checkpoints = checkpoints_settled(server, workdir)
                return took

            m = measure(server.proc.pid, load)
            # Every key is there: the last one, and a count from a dump of
            # the data file the shutdown save writes below.
            last = f"http://{server.addr}/kv/key-{keys - 1:08d}"
            subprocess.run(["curl", "-sf", "-o", "/dev/null", last], check=True)
        finally:
            m_save = server.stop()
        with open(os.path.join(workdir, "snapshot.jsonl")) as f:
            saved = sum(1 for _ in f)
        if saved != keys:
            raise RuntimeError(f"the server saved {saved} keys, not {keys}")
        m["save_peak"] = m_save
        m["checkpoints"] = checkpoints
        return m


def resp_file(path, keys):
    """The Redis protocol for SET key-%08d vvv... of every key, as
    `redis-cli --pipe` reads it."""
    value = "v" * VALUE_BYTES
    write_lines(path, keys,
                lambda i: f"*3\r\n$3\r\nSET\r\n$12\r\nkey-{i:08d}\r\n${VALUE_BYTES}\r\n{value}\r\n")


def run_redis(keys, commands):
    with tempfile.TemporaryDirectory(prefix="kvs-bench-redis-") as workdir:
        sock = os.path.join(workdir, "redis.sock")
        proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", sock, "--dir", workdir,
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 30
            while subprocess.run(["redis-cli", "-s", sock, "ping"], capture_output=True).returncode != 0:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)

            def load():
                started = time.monotonic()
                with open(commands) as f:
                    subprocess.run(["redis-cli", "-s", sock, "--pipe"], stdin=f, check=True,
                                   stdout=subprocess.DEVNULL)
                return time.monotonic() - started

            m = measure(proc.pid, load)
            count = subprocess.run(["redis-cli", "-s", sock, "dbsize"], capture_output=True, text=True,
                                   check=True).stdout.strip()
            if count != str(keys):
                raise RuntimeError(f"Redis holds {count} keys, not {keys}")
        finally:
            proc.terminate()
            proc.wait()
        return m


def report(name, runs, keys):
    def med(field):
        return median(r[field] for r in runs)

    per_key = median((r["live"] - r["empty"]) * 1024 / keys for r in runs)
    ratio = median(r["peak"] / r["live"] for r in runs)
    mib = 1024
    row = (f"| {name} | {med('empty') / mib:.1f} MiB | {med('live') / mib:.0f} MiB | {per_key:.0f} B "
           f"| {med('peak') / mib:.0f} MiB | {ratio:.2f} | {keys / med('seconds'):,.0f} keys/s |")
    if "save_peak" in runs[0]:
        row += f" {med('save_peak') / mib:.0f} MiB |"
    else:
        row += " |"
    return row, per_key


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--features", default="", help="cargo features for the kvs build")
    parser.add_argument("--no-redis", dest="redis", action="store_false", help="measure kvs alone")
    args = parser.parse_args()
    if args.keys > 100_000_000:
        parser.error("--keys: at most 100,000,000 (keys are key-%08d)")

    need("wrk", "wrk")
    need("curl", "curl")
    if args.redis:
        need("redis-server", "redis-server")
    build(args.features)
    kvs_runs, redis_runs = [], []
    with tempfile.TemporaryDirectory(prefix="kvs-bench-") as scratch:
        commands = os.path.join(scratch, "load.resp")
        if args.redis:
            resp_file(commands, args.keys)
        for run in range(args.runs):
            m = run_kvs(args.keys)
            kvs_runs.append(m)
            print(f"run {run + 1} kvs: empty {m['empty'] / 1024:.1f} MiB, live {m['live'] / 1024:.0f} MiB, "
                  f"peak {m['peak'] / 1024:.0f} MiB (sampled {m['sampled_peak'] / 1024:.0f} MiB), "
                  f"{m['checkpoints']} checkpoints, load {m['seconds']:.0f} s, "
                  f"peak while saving at shutdown {m['save_peak'] / 1024:.0f} MiB", flush=True)
            if args.redis:
                m = run_redis(args.keys, commands)
                redis_runs.append(m)
                print(f"run {run + 1} Redis: empty {m['empty'] / 1024:.1f} MiB, live {m['live'] / 1024:.0f} MiB, "
                      f"peak {m['peak'] / 1024:.0f} MiB, load {m['seconds']:.0f} s", flush=True)

    built = f", built with --features {args.features}" if args.features else ""
    print(f"\nmachine: {machine()}; {args.keys:,} keys of 12 bytes, {VALUE_BYTES}-byte values, "
          f"loaded over HTTP by wrk ({CONNECTIONS} connections){built}; median of {args.runs} runs")
    print("| server | RSS empty | RSS live after load | bytes/key above empty | peak RSS (VmHWM) "
          "| peak / live | load rate | peak while saving at shutdown |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    kvs_row, kvs_per_key = report("kvs", kvs_runs, args.keys)
    print(kvs_row)
    if args.redis:
        redis_row, redis_per_key = report("Redis (persistence off)", redis_runs, args.keys)
        print(redis_row)
        print(f"\nkvs {kvs_per_key:.0f} B/key vs Redis {redis_per_key:.0f} B/key "
              f"({kvs_per_key / redis_per_key:.2f}x)")


if __name__ == "__main__":
    main()
