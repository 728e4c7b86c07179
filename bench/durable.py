#!/usr/bin/env python3
"""Durable writes and reads at 64 connections, beside nginx and Redis.

Each run measures, back to back and unpinned (wrk with 2 threads and 64
connections, every server free to use both cores, as an operator runs them):
  - nginx `return 200` (a server that does nothing: this machine's HTTP
    ceiling, the baseline the ratios are taken against)
  - kvs GET /kv/{key}, random among 100,000 keys
  - kvs PUT /kv/{key}, fresh keys, 100-byte values, --fsync always (each
    write fsynced, group-committed, before its 200)
  - Redis SET, 100-byte values, appendfsync always (for scale: Redis's own
    durable mode), with redis-benchmark, 64 clients
and reports requests/s, p50 and p99 of each, per run and as medians, with
the ratios of kvs GET and PUT to nginx.

Usage: bench/durable.py [--runs 3] [--seconds 10]

nginx, Redis and wrk are installed from Debian's packages if missing.
"""

import argparse
import csv
import io
import os
import shutil
import socket
import subprocess
import tempfile
import time

from common import KVS, PUT_SCRIPT, Server, build, machine, median, need, wrk, write_data_file

PRELOADED = 100_000

GET_SCRIPT = r"""
local n = 0
init = function()
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end
request = function()
  return "GET /kv/key-" .. string.format("%08d", math.random(0, 99999)) .. " HTTP/1.1\r\nHost: kvs\r\n\r\n"
end
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


class Nginx:
    def __init__(self, tmp):
        self.port = free_port()
        os.makedirs(os.path.join(tmp, "logs"), exist_ok=True)
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""
worker_processes auto;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    location / {{ return 200 "ok\\n"; }}
  }}
}}
""")
        self.proc = subprocess.Popen(["nginx", "-p", tmp, "-c", conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, "nginx")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Redis:
    def __init__(self, tmp):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", tmp,
             "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, "redis-server")

    def set_durable(self, requests):
        out = subprocess.run(
            ["redis-benchmark", "-p", str(self.port), "-t", "set", "-c", "64", "-n", str(requests),
             "-d", "100", "-r", "100000000", "--csv"],
            check=True, capture_output=True, text=True).stdout
        row = next(csv.DictReader(io.StringIO(out)))
        return {"rps": float(row["rps"]), "p50": float(row["p50_latency_ms"]),
                "p99": float(row["p99_latency_ms"])}

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    need("wrk", "wrk")
    need("nginx", "nginx")
    need("redis-server", "redis-server")
    build()

    rows = {name: [] for name in ("nginx", "GET", "PUT", "redis")}
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="kvs-bench-") as tmp:
            nginx = Nginx(os.path.join(tmp, "nginx"))
            try:
                rows["nginx"].append(wrk(f"http://127.0.0.1:{nginx.port}/", args.seconds, 64, pin=False))
            finally:
                nginx.stop()

            data = os.path.join(tmp, "kvs")
            os.makedirs(data)
            write_data_file(os.path.join(data, "snapshot.jsonl"), PRELOADED)
            server = Server(data, "--fsync", "always")
            try:
                url = f"http://{server.addr}/"
                rows["GET"].append(wrk(url, args.seconds, 64, GET_SCRIPT, pin=False))
                rows["PUT"].append(wrk(url, args.seconds, 64, PUT_SCRIPT, pin=False))
            finally:
                server.stop()

            redis_dir = os.path.join(tmp, "redis")
            os.makedirs(redis_dir)
            redis = Redis(redis_dir)
            try:
                rate = rows["PUT"][-1]["rps"]
                rows["redis"].append(redis.set_durable(max(10_000, int(rate * args.seconds))))
            finally:
                redis.stop()
        r = {k: v[-1] for k, v in rows.items()}
        print(f"run {run + 1}: nginx {r['nginx']['rps']:,.0f}/s; "
              f"GET {r['GET']['rps']:,.0f}/s p50 {r['GET']['p50']:.2f} p99 {r['GET']['p99']:.2f} ms "
              f"({r['GET']['rps'] / r['nginx']['rps']:.0%}); "
              f"PUT {r['PUT']['rps']:,.0f}/s p50 {r['PUT']['p50']:.2f} p99 {r['PUT']['p99']:.2f} ms "
              f"({r['PUT']['rps'] / r['nginx']['rps']:.0%}); "
              f"Redis SET always {r['redis']['rps']:,.0f}/s p50 {r['redis']['p50']:.2f} p99 {r['redis']['p99']:.2f} ms",
              flush=True)

    print(f"\n{machine()}; {args.runs} runs of {args.seconds} s, 64 connections, unpinned\n")
    print("| measure | requests/s | p50 | p99 | vs nginx |")
    print("|---|---:|---:|---:|---:|")
    base = [r["rps"] for r in rows["nginx"]]
    labels = {"nginx": "nginx `return 200`", "GET": "kvs GET /kv/{key}",
              "PUT": "kvs PUT, --fsync always", "redis": "Redis SET, appendfsync always"}
    for name, label in labels.items():
        runs = rows[name]
        ratio = median([r["rps"] / b for r, b in zip(runs, base)])
        print(f"| {label} | {median([r['rps'] for r in runs]):,.0f} | "
              f"{median([r['p50'] for r in runs]):.2f} ms | {median([r['p99'] for r in runs]):.2f} ms | "
              f"{ratio:.0%} |")
    print("\nworst p99 of kvs PUT over the runs: "
          f"{max(r['p99'] for r in rows['PUT']):.2f} ms")


if __name__ == "__main__":
    main()
