"""Helpers shared by the kvs benchmarks: building, starting and stopping a
release server, generating data files, and reporting medians."""

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
KVS = os.path.join(TARGET, "release", "kvs")


def build(features=""):
    """Builds the release binary (cargo does nothing if it is up to date),
    with the given cargo features (comma-separated) if any."""
    extra = ["--features", features] if features else []
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--manifest-path", os.path.join(REPO, "Cargo.toml"), *extra],
        check=True,
    )


def build_baseline(rev, dest):
    """Builds `rev` in a temporary worktree (sharing target/ so that only
    kvs itself recompiles) and copies its binary to `dest`."""
    tree = tempfile.mkdtemp(prefix="kvs-baseline-")
    subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", "-f", tree, rev],
                   check=True, capture_output=True)
    try:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path",
                        os.path.join(tree, "Cargo.toml"), "--target-dir", TARGET], check=True)
        shutil.copy(os.path.join(TARGET, "release", "kvs"), dest)
    finally:
        subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", tree], check=True)
    build()  # put the current binary back


def need(tool, package):
    """Installs a Debian package if its tool is missing (needs root)."""
    if shutil.which(tool):
        return
    print(f"installing {package} (for {tool}) from Debian's packages...", file=sys.stderr)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", package], check=True)


def write_lines(path, count, line):
    """Writes `line(i)` for i in 0..count to `path`, 10,000 lines a write."""
    with open(path, "w") as f:
        for start in range(0, count, 10000):
            f.write("".join(line(i) for i in range(start, min(start + 10000, count))))


def write_data_file(path, keys, value_bytes=100, prefix="key-"):
    """Writes a sorted data file of `keys` pairs with values of `value_bytes`."""
    value = "v" * value_bytes
    write_lines(path, keys, lambda i: f'{{"key":"{prefix}{i:08d}","value":"{value}"}}\n')


class Server:
    """A release `kvs serve` on a free port; stderr is kept for its log."""

    def __init__(self, workdir, *args, cpus=None, binary=KVS):
        self.log_file = tempfile.NamedTemporaryFile("w+", prefix="kvs-bench-", suffix=".log")
        self.log_path = self.log_file.name
        pin = ["taskset", "-c", cpus] if cpus else []
        # `kvs serve` also reads PEERS and ADDR from the environment, and
        # either left over from trying cluster mode in the same shell would
        # turn the benchmarked server into a cluster member: every benchmark
        # here measures a single node, so they are never passed on.
        env = {k: v for k, v in os.environ.items() if k not in ("PEERS", "ADDR")}
        self.proc = subprocess.Popen(
            pin + [binary, "serve", "--port=0", "--working-dir", workdir, *args],
            stdout=subprocess.DEVNULL,
            stderr=self.log_file,
            env=env,
        )
        deadline = time.time() + 120
        while True:
            m = re.search(r"listening on (\S+)", self.log())
            if m:
                self.addr = m.group(1)
                break
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("kvs serve did not start:\n" + self.log())
            time.sleep(0.01)

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def rss_kib(self, field="VmRSS"):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        """SIGTERM, then sample RSS until exit; returns the peak seen (KiB)."""
        peak = self.rss_kib()
        signalled = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        while self.proc.poll() is None:
            try:
                peak = max(peak, self.rss_kib())
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.002)
        self.proc.wait()
        # From SIGTERM to the process gone: drain, save, and exit.
        self.stop_seconds = time.monotonic() - signalled
        if self.proc.returncode != 0:
            raise RuntimeError(f"kvs serve exited {self.proc.returncode}:\n" + self.log())
        return peak


def logged_ms(log, pattern):
    """The milliseconds a log line matching `pattern` ... `in N ms` reports."""
    m = re.search(pattern + r".* in (\d+) ms", log)
    if not m:
        raise RuntimeError(f"no log line for {pattern!r} in:\n{log}")
    return int(m.group(1))


def median(values):
    return statistics.median(values)


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}"


# Fresh keys: a random prefix per thread and run, then a counter.
PUT_SCRIPT = r"""
local tail = " HTTP/1.1\r\nHost: kvs\r\nContent-Length: 100\r\n\r\n" .. string.rep("v", 100)
local prefix
local counter = 0
init = function()
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
  prefix = "PUT /kv/fresh-" .. math.random(1, 1e9) .. "-"
end
request = function()
  counter = counter + 1
  return prefix .. counter .. tail
end
"""


def wrk(url, seconds, connections, script=None, pin=True):
    """Runs wrk against `url`; returns requests/s and p50/p99 in ms. With
    `pin`, wrk runs one thread on CPU 1 (the server is on CPU 0)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as f:
        threads = "-t1" if pin or connections < 2 else "-t2"
        cmd = ["wrk", threads, f"-c{connections}", f"-d{seconds}s", "--latency", url]
        if script:
            f.write(script)
            f.flush()
            cmd[1:1] = ["-s", f.name]
        if pin:
            cmd = ["taskset", "-c", "1"] + cmd
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError("wrk saw errors:\n" + out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": percentile_ms(out, 50),
        "p99": percentile_ms(out, 99),
    }


def percentile_ms(wrk_output, pct):
    """A latency percentile from wrk --latency output, in milliseconds."""
    m = re.search(rf"\b{pct}%\s+([\d.]+)(us|ms|s)\b", wrk_output)
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
