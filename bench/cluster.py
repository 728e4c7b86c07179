#!/usr/bin/env python3
"""kvs cluster mode against etcd, side by side in the same run.

For 3 and 5 members, each run starts a fresh kvs cluster and a fresh etcd
cluster on 127.0.0.1 (one after the other, never both at once, alternating
which goes first from run to run) and measures on each:

  - PUT/s, p50, p99: wrk, 64 connections to the leader, fresh keys with
    100-byte values. kvs: `PUT /kv/{key}`. etcd: its HTTP/JSON gateway,
    `POST /v3/kv/put` with `{"key": base64, "value": base64}`.
  - linearizable GET/s, p99: wrk, 64 connections to the leader, random
    keys among 10,000 preloaded. kvs: `GET /kv/{key}` (read index).
    etcd: `POST /v3/kv/range` with `{"key": base64}` (linearizable by
    default, also by read index).
  - failover: SIGKILL the leader, then the time until the first PUT
    answered 200 through any surviving member (kvs: following the 307 to
    the leader). A new probe goes out every 25 ms, round robin over the
    survivors, each allowed 3 s, so that a probe stuck in one member (an
    etcd follower holds a write it forwarded to the dead leader until its
    own request timeout) never hides a member that has started to answer.
    The killed member is restarted and a stable leader awaited between
    trials. --failovers trials per run.
  - catch-up: SIGTERM one follower, write --catch-up-keys keys through the
    leader (Python asyncio client, 64 connections), read the leader's
    commit index, restart the follower, and time from its start until it
    has applied that index (kvs: `/cluster/info` "last-applied" against
    "commit-index"; etcd: `/v3/maintenance/status` "raftAppliedIndex"
    against "raftIndex"). The time includes the member's own start-up.

Targets of the project (figures are kvs / etcd with the same member count):
  PUT/s              >= 2x etcd
  linearizable GET/s >= 3x etcd
  failover median    <= 1.5 s

Usage: bench/cluster.py [--runs 3] [--seconds 5] [--failovers 10]
                        [--catch-up-keys 100000] [--sizes 3,5]
                        [--connections 64] [--threads 2]

A quick look (about 2 minutes): bench/cluster.py --runs 1 --seconds 2
  --failovers 2 --catch-up-keys 5000.
The full default run takes about 20-25 minutes on 2 cores, most of it in
the catch-up writes (etcd takes 100,000 writes at 2,000-4,000/s here) and
the failovers (each restart waits for a stable leader).

Nothing is pinned: each cluster is 3-5 processes on the machine's cores,
and wrk (--threads 2) floats among them too, exactly alike for both
systems. Both systems run with their default timing (kvs: election
timeout 500-1,000 ms, heartbeat 100 ms; etcd: election 1,000 ms,
heartbeat 100 ms), their default fsync behaviour (each fsyncs its log
before acknowledging) and their data directories in the system's
temporary directory (on this machine the same disk as the repository).
etcd runs with --quota-backend-bytes 8 GiB and is otherwise default, so it
snapshots every 100,000 entries and sends a follower that fell behind its
log a snapshot of its database instead of the entries (with the default
100,000 catch-up keys it does: the script says so when it sees it in the
follower's log). That is etcd's catch-up mechanism, as sending the log's
entries is kvs's here: kvs compacts only once a member's Raft log passes
--wal-max-bytes (64 MiB by default, which 100,000 small writes do not
reach), and only then sends a snapshot.

etcd is Debian's `etcd-server` package (3.4), installed with apt-get if
`etcd` is missing, like wrk (etcdctl is not needed: the leader and the
indexes come from the gateway's /v3/maintenance/status). The gateway
speaks HTTP/1.1 like kvs, so both are driven by the same wrk with the same
threads, connections and duration; wrk's Lua builds every request (etcd's
JSON bodies and base64 included), never a fixed body, so that the client's
work per request is alike. The gateway turns each request into a gRPC
call inside etcd, work that etcd's native gRPC clients (and its own
`benchmark` tool) do not cause: these are etcd's figures as an HTTP/JSON
server, the interface kvs offers, not etcd at its fastest. On a machine that starts services, installing
etcd-server also starts a system etcd on ports 2379/2380: stop it
(`systemctl stop etcd`) before measuring, or it takes CPU.

Reported: the machine, then for each member count a markdown table with
kvs and etcd side by side, medians over the runs, and kvs/etcd as the
median of the per-run ratios (both systems of one run saw nearly the same
machine); failover is the median (and maximum) over all trials of all
runs. Anything odd seen on the way (non-2xx answers, socket errors, a
leader change during a load, failed writes, a failover over 1.5 s) is
listed under the tables. Every member is stopped by PID when its cluster
is done, and on any error or Ctrl-C.
"""

import argparse
import asyncio
import atexit
import base64
import collections
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

from common import KVS, REPO, build, machine, median, need, percentile_ms

PRELOADED = 10_000
VALUE = "v" * 100
FAILOVER_TARGET = 1.5
PROBE_INTERVAL = 0.025
PROBE_TIMEOUT = 3.0
FAILOVER_GIVE_UP = 30.0

# Every process this script starts, so that none outlives it whatever
# happens (the clusters also stop their own in `finally`).
_PROCS = []


@atexit.register
def _kill_leftovers():
    for proc in _PROCS:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # runs every `finally` on the way out


def free_ports(n):
    """`n` distinct free TCP ports on 127.0.0.1 (held open together while
    they are picked, so that none is picked twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def b64(text):
    return base64.b64encode(text.encode()).decode()


# --- wrk scripts -------------------------------------------------------------

LUA_COMMON = r"""
local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local q = {math.floor(n / 262144), math.floor(n / 4096) % 64, math.floor(n / 64) % 64, n % 64}
    for j = 1, 4 do out[#out + 1] = b64chars:sub(q[j] + 1, q[j] + 1) end
    if not b then out[#out - 1] = "=" end
    if not c then out[#out] = "=" end
  end
  return table.concat(out)
end
local function seed()
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end
local value = string.rep("v", 100)
"""

# Fresh keys: a random 12-character prefix per wrk thread, then a
# 9-digit counter. The prefix is a multiple of 3 bytes long, so etcd's
# base64 key is the prefix's base64 (computed once) followed by the
# counter's (computed per request).
PUT_LUA = LUA_COMMON + r"""
local counter = 0
local prefix
init = function()
  seed()
  prefix = string.format("f%010d-", math.random(0, 2147483646))
  setup_system()
end
request = function()
  counter = counter + 1
  return make(string.format("%09d", counter))
end
"""

KVS_PUT_LUA = PUT_LUA + r"""
local tail = " HTTP/1.1\r\nHost: kvs\r\nContent-Length: 100\r\n\r\n" .. value
setup_system = function() end
make = function(digits)
  return "PUT /kv/" .. prefix .. digits .. tail
end
"""

ETCD_PUT_LUA = PUT_LUA + r"""
local head, b64prefix, mid
setup_system = function()
  b64prefix = b64(prefix)
  mid = "\",\"value\":\"" .. b64(value) .. "\"}"
  local length = #("{\"key\":\"" .. b64(prefix .. "000000000") .. mid)
  head = "POST /v3/kv/put HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\n"
      .. "Content-Length: " .. length .. "\r\n\r\n{\"key\":\"" .. b64prefix
end
make = function(digits)
  return head .. b64(digits) .. mid
end
"""

# Every request prepared in init (the keys in random order), so the
# per-request work is picking the next string, for both systems.
GET_LUA = LUA_COMMON + r"""
local requests = {}
local i = 0
init = function()
  seed()
  for n = 1, KEYS do requests[n] = make(string.format("key-%08d", n - 1)) end
  for n = #requests, 2, -1 do
    local m = math.random(1, n)
    requests[n], requests[m] = requests[m], requests[n]
  end
end
request = function()
  i = i % #requests + 1
  return requests[i]
end
""".replace("KEYS", str(PRELOADED))

KVS_GET_LUA = GET_LUA + r"""
make = function(key)
  return "GET /kv/" .. key .. " HTTP/1.1\r\nHost: kvs\r\n\r\n"
end
"""

ETCD_GET_LUA = GET_LUA + r"""
make = function(key)
  local body = "{\"key\":\"" .. b64(key) .. "\"}"
  return "POST /v3/kv/range HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\n"
      .. "Content-Length: " .. #body .. "\r\n\r\n" .. body
end
"""


def wrk(url, seconds, connections, threads, script):
    """One wrk run; returns requests/s, p50 and p99 (ms), and the counts of
    non-2xx answers and socket errors (reported, not raised: a benchmark
    that saw errors says so beside its figures)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as f:
        f.write(script)
        f.flush()
        cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", f.name, url]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": percentile_ms(out, 50),
        "p99": percentile_ms(out, 99),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
        "socket_detail": sock.group(0) if sock else "",
    }


# --- plain HTTP clients ------------------------------------------------------

def http_call(host, port, method, path, body=b"", headers=None, timeout=2.0):
    """One request on a new connection; returns (status, headers with
    lower-case names, body). (Plain sockets: for a script in bench/, the
    standard library's `http` package is shadowed by bench/http.py.)"""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    if method != "GET":
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        f = sock.makefile("rb")
        status = int(f.readline().split()[1])
        hdrs = {}
        while True:
            line = f.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            hdrs[name.strip().lower()] = value.strip()
        if "content-length" in hdrs:
            data = f.read(int(hdrs["content-length"]))
        elif "chunked" in hdrs.get("transfer-encoding", "").lower():
            data = b""
            while size := int(f.readline().split(b";")[0], 16):
                data += f.read(size + 2)[:-2]
        else:
            data = f.read()
    return status, hdrs, data


async def _read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length, chunked, close = None, False, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
        elif name == "connection" and "close" in value:
            close = True
    if chunked:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length is not None:
        body = await reader.readexactly(length)
    else:
        body, close = await reader.read(), True
    return status, body, close


async def _send_all(host, port, requests, connections, attempts):
    """Sends every prepared raw request, `connections` at a time on
    keep-alive connections, each up to `attempts` times until it gets a
    200; returns a Counter of what the failures were."""
    pending = iter(requests)
    failures = collections.Counter()

    async def worker():
        reader = writer = None
        for raw in pending:
            for attempt in range(attempts):
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, port)
                    writer.write(raw)
                    status, _, close = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                    status, close = type(e).__name__, True
                if close and writer is not None:
                    writer.close()
                    reader = writer = None
                if status == 200:
                    break
                failures[f"attempt answered {status}"] += 1
                await asyncio.sleep(0.05)
            else:
                failures["gave up"] += 1
        if writer is not None:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return failures


def send_all(host, port, requests, connections=64, attempts=5):
    return asyncio.run(_send_all(host, port, requests, connections, attempts))


# --- the two systems ----------------------------------------------------------

class Cluster:
    """A static cluster of `size` members on loopback, each a process
    started and stopped by PID; the members are numbered 0..size-1."""

    system = None

    def __init__(self, size, root):
        self.size = size
        self.root = root
        self.procs = [None] * size
        self.logs = [os.path.join(root, f"member{i}.log") for i in range(size)]

    # Each system provides: command(i), client(i) -> (host, port),
    # status(i) -> dict or None, put_call(key), raw_put(key), raw_get(key).

    def start(self):
        for i in range(self.size):
            self.start_member(i)
        for i in range(self.size):
            self.wait_up(i)

    def start_member(self, i):
        assert self.procs[i] is None or self.procs[i].poll() is not None
        with open(self.logs[i], "a") as log:
            log.write(f"--- started at {time.strftime('%H:%M:%S')}\n")
            log.flush()
            env = {k: v for k, v in os.environ.items()
                   if k not in ("PEERS", "ADDR", "DATA_DIR") and not k.startswith("ETCD_")}
            proc = subprocess.Popen(self.command(i), stdout=subprocess.DEVNULL, stderr=log,
                                    stdin=subprocess.DEVNULL, env=env)
        _PROCS.append(proc)
        self.procs[i] = proc

    def alive(self, i):
        return self.procs[i] is not None and self.procs[i].poll() is None

    def wait_up(self, i, timeout=60):
        deadline = time.monotonic() + timeout
        while self.status(i) is None:
            if not self.alive(i):
                raise RuntimeError(f"{self.system} member {i} exited {self.procs[i].returncode}:\n"
                                   + self.log_tail(i))
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.system} member {i} did not answer:\n" + self.log_tail(i))
            time.sleep(0.05)

    def log_tail(self, i, lines=30):
        try:
            with open(self.logs[i], errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)\n"

    def kill(self, i, sig):
        """Sends `sig` to member i's PID and waits for it to exit; returns
        the time the signal was sent."""
        proc = self.procs[i]
        proc.send_signal(sig)
        sent = time.monotonic()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{self.system} member {i} ignored signal {sig} for 60 s")
        return sent

    def stop(self):
        """SIGTERM to every live member, SIGKILL to any still there 30 s on."""
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in live:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def statuses(self):
        return [self.status(i) if self.alive(i) else None for i in range(self.size)]

    def wait_stable_leader(self, timeout=120, hold=0.5):
        """Waits until every live member names the same leader in the same
        term, the leader itself agrees, and every member has applied what
        the leader had committed, all held for `hold` seconds; returns the
        leader's number."""
        deadline = time.monotonic() + timeout
        since, seen, target = None, None, None
        while time.monotonic() < deadline:
            st = self.statuses()
            live = [s for i, s in enumerate(st) if self.alive(i)]
            leaders = {(s["leader"], s["term"]) if s else None for s in live}
            if len(leaders) == 1 and None not in leaders:
                leader, term = leaders.pop()
                if leader is not None and st[leader] and st[leader]["leader"] == leader:
                    if seen != (leader, term):
                        since, seen, target = time.monotonic(), (leader, term), st[leader]["commit"]
                    if (time.monotonic() - since >= hold
                            and all(s["applied"] >= target for s in live)):
                        return leader
                    time.sleep(0.05)
                    continue
            since = seen = None
            time.sleep(0.05)
        raise RuntimeError(f"{self.system}: no stable leader within {timeout} s: {self.statuses()}")

    def url(self, i):
        host, port = self.client(i)
        return f"http://{host}:{port}"


class KvsCluster(Cluster):
    system = "kvs"

    def __init__(self, size, root, binary):
        super().__init__(size, root)
        self.binary = binary
        self.ports = free_ports(size)
        self.ids = {f"127.0.0.1:{p}": i for i, p in enumerate(self.ports)}

    def command(self, i):
        peers = ",".join(f":{p}" for p in self.ports)
        return [self.binary, "serve", "--port", str(self.ports[i]),
                "--working-dir", os.path.join(self.root, f"member{i}"), f"--peers={peers}"]

    def client(self, i):
        return "127.0.0.1", self.ports[i]

    def status(self, i):
        try:
            status, _, body = http_call("127.0.0.1", self.ports[i], "GET", "/cluster/info", timeout=1.0)
            if status != 200:
                return None
            info = json.loads(body)
        except (OSError, ValueError, IndexError):
            return None
        return {"leader": self.ids.get(info["leader"]), "term": info["term"],
                "commit": info["commit-index"], "applied": info["last-applied"]}

    def put_call(self, key):
        return "PUT", f"/kv/{key}", VALUE.encode(), {}

    def raw_put(self, key):
        return (f"PUT /kv/{key} HTTP/1.1\r\nHost: kvs\r\nContent-Length: {len(VALUE)}\r\n\r\n{VALUE}").encode()

    def check_key(self, i, key):
        status, _, body = http_call(*self.client(i), "GET", f"/kv/{key}")
        return status == 200 and body.decode() == VALUE

    put_lua, get_lua = KVS_PUT_LUA, KVS_GET_LUA


class EtcdCluster(Cluster):
    system = "etcd"

    def __init__(self, size, root):
        super().__init__(size, root)
        ports = free_ports(2 * size)
        self.client_ports, self.peer_ports = ports[:size], ports[size:]
        self.token = f"kvs-bench-{os.getpid()}-{time.monotonic_ns()}"
        self.member_ids = {}  # etcd's member ID (a decimal string) -> number

    def command(self, i):
        cluster = ",".join(f"m{j}=http://127.0.0.1:{p}" for j, p in enumerate(self.peer_ports))
        client = f"http://127.0.0.1:{self.client_ports[i]}"
        peer = f"http://127.0.0.1:{self.peer_ports[i]}"
        return ["etcd", "--name", f"m{i}", "--data-dir", os.path.join(self.root, f"member{i}"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", self.token,
                "--quota-backend-bytes", str(8 * 1024 ** 3),
                "--logger", "zap", "--log-outputs", "stderr"]

    def client(self, i):
        return "127.0.0.1", self.client_ports[i]

    def status(self, i):
        try:
            status, _, body = http_call("127.0.0.1", self.client_ports[i], "POST", "/v3/maintenance/status",
                                        body=b"{}", timeout=1.0)
            if status != 200:
                return None
            info = json.loads(body)
        except (OSError, ValueError, IndexError):
            return None
        self.member_ids[info["header"]["member_id"]] = i
        # A leader this script has not yet asked is found on the next poll.
        leader = self.member_ids.get(info.get("leader", "0"))
        return {"leader": leader, "term": int(info.get("raftTerm", 0)),
                "commit": int(info.get("raftIndex", 0)), "applied": int(info.get("raftAppliedIndex", 0))}

    def put_call(self, key):
        body = json.dumps({"key": b64(key), "value": b64(VALUE)}).encode()
        return "POST", "/v3/kv/put", body, {"Content-Type": "application/json"}

    def raw_put(self, key):
        method, path, body, _ = self.put_call(key)
        return (f"{method} {path} HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    def check_key(self, i, key):
        status, _, body = http_call(*self.client(i), "POST", "/v3/kv/range",
                                    body=json.dumps({"key": b64(key)}).encode())
        kvs = json.loads(body).get("kvs", []) if status == 200 else []
        return len(kvs) == 1 and base64.b64decode(kvs[0]["value"]).decode() == VALUE

    put_lua, get_lua = ETCD_PUT_LUA, ETCD_GET_LUA


# --- the measurements -----------------------------------------------------------

def write_keys(cluster, member, keys, connections, notes, what):
    host, port = cluster.client(member)
    started = time.monotonic()
    failures = send_all(host, port, [cluster.raw_put(k) for k in keys], connections)
    elapsed = time.monotonic() - started
    if failures:
        notes.append(f"{what}: {dict(failures)}")
    return elapsed, failures


def load(cluster, script, args, notes, what):
    """One wrk run at the leader, noting errors and any change of leader."""
    leader = cluster.wait_stable_leader()
    before = cluster.status(leader)
    m = wrk(cluster.url(leader) + "/", args.seconds, args.connections, args.threads, script)
    after = cluster.status(leader)
    if m["non2xx"] or m["socket_errors"]:
        notes.append(f"{what}: wrk saw {m['non2xx']} non-2xx answers of {m['requests']} requests"
                     + (f"; {m['socket_detail']}" if m["socket_errors"] else ""))
    if after is None or after["leader"] != leader or after["term"] != before["term"]:
        notes.append(f"{what}: leader changed during the load ({before} -> {after})")
    return m


def probe(cluster, i, key, outcomes, lock, success):
    """One PUT through member i, following redirects (kvs); records the
    outcome and, for the first 200, the time it arrived."""
    method, path, body, headers = cluster.put_call(key)
    host, port = cluster.client(i)
    outcome = None
    try:
        for _ in range(4):
            status, hdrs, _ = http_call(host, port, method, path, body, headers, timeout=PROBE_TIMEOUT)
            if status == 307:
                loc = urllib.parse.urlsplit(hdrs["location"])
                host, port = loc.hostname, loc.port
                path = loc.path + (f"?{loc.query}" if loc.query else "")
                outcome = "307 then "
                continue
            break
        outcome = (outcome or "") + str(status)
        if status == 200:
            with lock:
                if success[0] is None:
                    success[0] = time.monotonic()
    except TimeoutError:
        outcome = (outcome or "") + "timeout"
    except ConnectionRefusedError:
        outcome = (outcome or "") + "refused"
    except (OSError, ValueError, IndexError) as e:
        outcome = (outcome or "") + type(e).__name__
    with lock:
        outcomes[outcome] += 1


def failover(cluster, trial):
    """Kills the leader, times the first 200 PUT through any survivor,
    restarts the killed member and waits for a stable leader. Returns the
    seconds (None if no write succeeded within FAILOVER_GIVE_UP) and a
    Counter of the probes' outcomes."""
    leader = cluster.wait_stable_leader()
    survivors = [i for i in range(cluster.size) if i != leader]
    outcomes, lock, success = collections.Counter(), threading.Lock(), [None]
    threads = []
    killed = cluster.kill(leader, signal.SIGKILL)
    n = 0
    try:
        while success[0] is None and time.monotonic() - killed < FAILOVER_GIVE_UP:
            t = threading.Thread(target=probe, daemon=True,
                                 args=(cluster, survivors[n % len(survivors)], f"failover-{trial}-{n}",
                                       outcomes, lock, success))
            t.start()
            threads.append(t)
            n += 1
            next_at = killed + n * PROBE_INTERVAL
            time.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        for t in threads:
            t.join(PROBE_TIMEOUT + 1)
    seconds = None if success[0] is None else success[0] - killed
    cluster.start_member(leader)
    cluster.wait_up(leader)
    cluster.wait_stable_leader()
    return seconds, outcomes


def catch_up(cluster, keys, connections, notes):
    """Stops a follower, writes `keys` keys through the leader, restarts
    the follower and times it until it has applied the leader's commit
    index as it stood before the restart."""
    leader = cluster.wait_stable_leader()
    follower = next(i for i in range(cluster.size) if i != leader)
    cluster.kill(follower, signal.SIGTERM)
    # etcd, like most Go programs, ends by re-raising the signal once it
    # has shut down cleanly; kvs exits 0.
    if cluster.procs[follower].returncode not in (0, -signal.SIGTERM):
        notes.append(f"catch-up: {cluster.system} follower exited {cluster.procs[follower].returncode} on SIGTERM")
    write_keys(cluster, leader, [f"catchup-{n:08d}" for n in range(keys)], connections, notes,
               f"catch-up writes of {keys:,} keys")
    commit = cluster.status(leader)["commit"]
    log_offset = os.path.getsize(cluster.logs[follower])
    started = time.monotonic()
    cluster.start_member(follower)
    while True:
        st = cluster.status(follower)
        if st and st["applied"] >= commit:
            seconds = time.monotonic() - started
            if cluster.system == "etcd":
                with open(cluster.logs[follower], errors="replace") as f:
                    f.seek(log_offset)
                    if "received and saved database snapshot" in f.read():
                        print(f"{cluster.system} {cluster.size}: the follower caught up from a snapshot "
                              "the leader sent (etcd snapshots every 100,000 entries by default)", flush=True)
            return seconds
        if not cluster.alive(follower):
            raise RuntimeError(f"{cluster.system} follower exited while catching up:\n"
                               + cluster.log_tail(follower))
        if time.monotonic() - started > 600:
            raise RuntimeError(f"{cluster.system} follower had not caught up after 600 s: {st} < {commit}")
        time.sleep(0.01)


def measure(cluster, args, run):
    """Everything on one fresh cluster; returns the figures and notes."""
    notes = []
    label = f"run {run + 1} {cluster.system} {cluster.size}"
    try:
        cluster.start()
        leader = cluster.wait_stable_leader()
        write_keys(cluster, leader, [f"key-{n:08d}" for n in range(PRELOADED)], args.connections, notes,
                   f"preload of {PRELOADED:,} keys")
        if not cluster.check_key(leader, f"key-{PRELOADED - 1:08d}"):
            raise RuntimeError(f"{cluster.system}: a preloaded key reads back wrong")
        put = load(cluster, cluster.put_lua, args, notes, "PUT load")
        get = load(cluster, cluster.get_lua, args, notes, "GET load")
        print(f"{label}: PUT {put['rps']:,.0f}/s p50 {put['p50']:.2f} ms p99 {put['p99']:.2f} ms; "
              f"GET {get['rps']:,.0f}/s p99 {get['p99']:.2f} ms", flush=True)
        catchup = catch_up(cluster, args.catch_up_keys, args.connections, notes)
        print(f"{label}: catch-up of {args.catch_up_keys:,} keys {catchup:.2f} s", flush=True)
        failovers = []
        for trial in range(args.failovers):
            seconds, outcomes = failover(cluster, trial)
            failovers.append(seconds if seconds is not None else float("inf"))
            shown = "no 200 within %d s" % FAILOVER_GIVE_UP if seconds is None else f"{seconds:.3f} s"
            print(f"{label}: failover {trial + 1}: {shown} "
                  f"(probes: {', '.join(f'{k} x{v}' for k, v in sorted(outcomes.items()))})", flush=True)
            if seconds is None or (cluster.system == "kvs" and seconds > FAILOVER_TARGET):
                notes.append(f"failover {trial + 1}: {shown}, over the {FAILOVER_TARGET} s target")
    except Exception:
        for i in range(cluster.size):
            print(f"--- {label}: the end of member {i}'s log:\n{cluster.log_tail(i)}", file=sys.stderr)
        raise
    finally:
        cluster.stop()
    for note in notes:
        print(f"{label}: NOTE {note}", flush=True)
    return {"put": put, "get": get, "catchup": catchup, "failovers": failovers, "notes": notes}


# --- the report ------------------------------------------------------------------

def fmt_rate(x):
    return f"{x:,.0f}"


def fmt_ms(x):
    return f"{x:.2f} ms"


def fmt_s(x):
    return "none" if x == float("inf") else f"{x:.2f} s"


def report(results, sizes, args):
    """results[(system, size)] is the list of per-run figures."""
    rows = [
        ("PUT/s", lambda r: r["put"]["rps"], fmt_rate, "≥ 2×"),
        ("PUT p50", lambda r: r["put"]["p50"], fmt_ms, ""),
        ("PUT p99", lambda r: r["put"]["p99"], fmt_ms, ""),
        ("linearizable GET/s", lambda r: r["get"]["rps"], fmt_rate, "≥ 3×"),
        ("GET p99", lambda r: r["get"]["p99"], fmt_ms, ""),
        (f"catch-up, {args.catch_up_keys:,} keys", lambda r: r["catchup"], fmt_s, ""),
    ]
    verdicts = []
    for size in sizes:
        k, e = results[("kvs", size)], results[("etcd", size)]
        print(f"\n### {size} members\n")
        print("| measure | kvs | etcd | kvs / etcd | target |")
        print("|---|---:|---:|---:|---|")
        for name, get, fmt, target in rows:
            ratio = median(get(a) / get(b) for a, b in zip(k, e))
            print(f"| {name} | {fmt(median(get(r) for r in k))} | {fmt(median(get(r) for r in e))} "
                  f"| {ratio:.2f}× | {target} |")
            if target:
                needed = float(target.strip("≥ ×"))
                verdicts.append(f"{size} members, {name}: kvs {ratio:.2f}× etcd "
                                f"({'met' if ratio >= needed else 'MISSED'}: target {target} etcd)")
        kf = [s for r in k for s in r["failovers"]]
        ef = [s for r in e for s in r["failovers"]]
        if kf and ef:
            km, em = median(kf), median(ef)
            print(f"| failover, median of {len(kf)} | {fmt_s(km)} | {fmt_s(em)} | {km / em:.2f}× "
                  f"| ≤ {FAILOVER_TARGET} s |")
            print(f"| failover, max | {fmt_s(max(kf))} | {fmt_s(max(ef))} | {max(kf) / max(ef):.2f}× | |")
            verdicts.append(f"{size} members, failover median: kvs {fmt_s(km)} "
                            f"({'met' if km <= FAILOVER_TARGET else 'MISSED'}: target ≤ {FAILOVER_TARGET} s)")
    print("\nkvs / etcd: above 1 is better for the rates, below 1 for latencies and times.\n")
    for v in verdicts:
        print(v)
    notes = [f"{system} {size} members, run {run + 1}: {note}"
             for (system, size), runs in results.items() for run, r in enumerate(runs) for note in r["notes"]]
    print("\nanything odd: " + ("none" if not notes else ""))
    for note in notes:
        print(f"- {note}")


def git(*args):
    return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True).stdout.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="duration of each wrk load")
    parser.add_argument("--failovers", type=int, default=10, help="leader kills per cluster and run")
    parser.add_argument("--catch-up-keys", type=int, default=100_000)
    parser.add_argument("--sizes", default="3,5", help="member counts, comma-separated")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    signal.signal(signal.SIGTERM, _on_sigterm)

    need("wrk", "wrk")
    need("etcd", "etcd-server")
    head = git("rev-parse", "--short", "HEAD")
    dirty = " with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    build()
    etcd_version = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split("\n")[0]

    results = collections.defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="kvs-bench-cluster-") as tmp:
        # A private copy: target/ may be rebuilt by someone else meanwhile.
        binary = os.path.join(tmp, "kvs")
        shutil.copy(KVS, binary)
        for run in range(args.runs):
            for size in sizes:
                order = ("kvs", "etcd") if run % 2 == 0 else ("etcd", "kvs")
                for system in order:
                    root = tempfile.mkdtemp(prefix=f"{system}-{size}-", dir=tmp)
                    cluster = KvsCluster(size, root, binary) if system == "kvs" else EtcdCluster(size, root)
                    results[(system, size)].append(measure(cluster, args, run))
                    shutil.rmtree(root, ignore_errors=True)

    print(f"\nmachine: {machine()}; nothing pinned; wrk {args.threads} threads, {args.connections} "
          f"connections to the leader, {args.seconds} s per load; median of {args.runs} run(s); "
          f"{args.failovers} failovers per cluster and run")
    print(f"kvs: {head}{dirty}; {etcd_version} (Debian etcd-server)")
    report(results, sizes, args)


if __name__ == "__main__":
    main()
