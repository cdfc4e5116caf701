#!/usr/bin/env python3
"""Request/response throughput through amqp-bridge (forward -> broker ->
serve) against direct TCP, in the same run: redis-benchmark (50 clients,
one request at a time each) against the local Redis, then where the CPU
time went (the broker, serve, forward, redis-benchmark) during the
bridged run.

Usage: cargo build --release --features bridge --bin amqp-bridge &&
       python3 scripts/bench-bridge-rr.py [--requests 20000] [--redis 127.0.0.1:6379] [--runs 2]
Needs redis-benchmark (scripts/ensure-test-tools.sh installs it) and a
Redis server; prints figures, asserts nothing.
"""
import argparse
import os
import re
import subprocess
import threading
import time

BRIDGE = os.path.join(os.path.dirname(__file__), "..", "target", "release", "amqp-bridge")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU seconds a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_busy():
    """(busy, total) CPU ticks of the whole machine so far."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]
    return sum(ticks) - idle, sum(ticks)


def broker_pid():
    """The RabbitMQ node's Erlang VM (beam.smp), if one runs here."""
    out = subprocess.run(["pgrep", "-f", "beam.smp.*rabbit"], capture_output=True, text=True).stdout
    pids = [int(p) for p in out.split()]
    return pids[0] if pids else None


def start_bridge(args, ready):
    """Starts the bridge and waits for the log line that says it is ready."""
    env = dict(os.environ, RUST_LOG="warn,amqp_bridge=info")
    proc = subprocess.Popen([BRIDGE] + args, env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if ready in line:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, line
    raise SystemExit(f"amqp-bridge {args[0]} ended before {ready!r}")


def redis_benchmark(host, port, requests, tests="ping_mbulk,set,get"):
    """Requests per second of each test, and the benchmark's own PID/CPU."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["redis-benchmark", "-h", host, "-p", str(port), "-q", "-n", str(requests), "-c", "50",
         "-t", tests],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate()
    elapsed = time.perf_counter() - start
    rates = {}
    for name, rate in re.findall(r"([A-Z_]+): ([0-9.]+) requests per second", out.replace("\r", "\n")):
        rates[name] = float(rate)
    if not rates:
        raise SystemExit(f"redis-benchmark said:\n{out}")
    return rates, elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--redis", default="127.0.0.1:6379")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    rhost, rport = args.redis.rsplit(":", 1)

    queue = f"bench-rr-{os.getpid()}"
    serve, _ = start_bridge(["serve", "--queue", queue, "--to", args.redis], "serving queue")
    forward, line = start_bridge(["forward", "--listen", "127.0.0.1:0", "--queue", queue],
                                 "forwarding")
    fhost, fport = line.split("forwarding ")[1].split()[0].rsplit(":", 1)
    broker = broker_pid()
    try:
        for run in range(1, args.runs + 1):
            direct, _ = redis_benchmark(rhost, rport, args.requests)
            watched = {"broker": broker, "serve": serve.pid, "forward": forward.pid}
            before = {k: cpu_seconds(p) for k, p in watched.items() if p}
            busy_before = machine_busy()
            bridged, elapsed = redis_benchmark(fhost, fport, args.requests)
            used = {k: cpu_seconds(watched[k]) - v for k, v in before.items()}
            busy_after = machine_busy()
            busy = (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1])
            for name in direct:
                d, b = direct[name], bridged.get(name, 0.0)
                print(f"run {run} {name:>10}: direct {d:9.0f} req/s, forward+serve {b:7.0f} req/s, "
                      f"ratio {b / d:.3f}x")
            shares = ", ".join(f"{k} {100 * v / elapsed:.0f}%" for k, v in used.items())
            requests = args.requests * len(bridged)
            per_request = ", ".join(f"{k} {1e6 * v / requests:.0f}" for k, v in used.items())
            print(f"run {run} CPU during the bridged run ({elapsed:.1f} s, one core = 100%): {shares}; "
                  f"whole machine {100 * busy:.0f}% busy ({os.cpu_count()} cores)")
            print(f"run {run} CPU per request (us): {per_request}")
    finally:
        for proc in (serve, forward):
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
