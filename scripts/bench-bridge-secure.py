#!/usr/bin/env python3
"""What end-to-end keys cost through amqp-bridge: forward -> broker -> serve
with key pairs (`--key`, `--peer-key`, `--authorized-keys`) against the same
without keys, measured in the same run, turns interleaved: bulk (128 MiB
one way in 64 KiB sends into a sink that answers with the byte count) and
1-byte ping-pong round trips against an echo service (median and p99).
Prints figures and ratios; asserts nothing but the byte counts.

Usage: cargo build --release --features bridge --bin amqp-bridge && python3 scripts/bench-bridge-secure.py [ROUNDS]
"""
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

TOTAL = 128 << 20
PINGS = 1000
BRIDGE = os.path.join(os.path.dirname(__file__), "..", "target", "release", "amqp-bridge")


def service(handle):
    """A TCP service on a free port, each connection handled on a thread."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)

    def accept():
        while True:
            conn, _ = server.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()


def count_then_answer(conn):
    total = 0
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        total += len(data)
    conn.sendall(str(total).encode())
    conn.close()


def echo(conn):
    while True:
        data = conn.recv(1 << 16)
        if not data:
            break
        conn.sendall(data)
    conn.close()


def bulk(addr):
    """MiB/s for TOTAL bytes to addr, until the sink has counted them."""
    conn = socket.create_connection(addr)
    chunk = b"\0" * (64 << 10)
    start = time.perf_counter()
    for _ in range(TOTAL // len(chunk)):
        conn.sendall(chunk)
    conn.shutdown(socket.SHUT_WR)
    counted = int(conn.recv(100))
    elapsed = time.perf_counter() - start
    assert counted == TOTAL, counted
    conn.close()
    return TOTAL / elapsed / (1 << 20)


def ping_pong(addr):
    """Microseconds of each of PINGS 1-byte round trips."""
    conn = socket.create_connection(addr)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    samples = []
    for _ in range(PINGS):
        start = time.perf_counter()
        conn.sendall(b"x")
        assert conn.recv(1) == b"x"
        samples.append((time.perf_counter() - start) * 1e6)
    conn.close()
    return samples


def start_bridge(args, ready):
    """Starts the bridge and waits for the log line that says it is ready."""
    env = dict(os.environ, RUST_LOG="info")
    proc = subprocess.Popen([BRIDGE] + args, env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if ready in line:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, line
    raise SystemExit(f"amqp-bridge {args[0]} ended before {ready!r}")


def tunnel(target, server_keys, client_keys, procs):
    """serve in front of target and forward to it: forward's address."""
    queue = f"bench-secure-{os.getpid()}-{len(procs)}"
    serve, _ = start_bridge(
        ["serve", "--queue", queue, "--to", "%s:%d" % target] + server_keys, "serving queue")
    forward, line = start_bridge(
        ["forward", "--listen", "127.0.0.1:0", "--queue", queue] + client_keys, "forwarding")
    procs += [serve, forward]
    host, port = line.split("forwarding ")[1].split()[0].rsplit(":", 1)
    return host, int(port)


def p99(samples):
    return sorted(samples)[int(len(samples) * 0.99)]


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    keys = tempfile.mkdtemp(prefix="bench-keys-")
    for name in ("server.key", "client.key"):
        subprocess.run([BRIDGE, "keygen", name], cwd=keys, check=True, capture_output=True)
    with open(os.path.join(keys, "clients"), "w") as clients:
        clients.write(open(os.path.join(keys, "client.key.pub")).read())
    server_keys = ["--key", os.path.join(keys, "server.key"),
                   "--authorized-keys", os.path.join(keys, "clients")]
    client_keys = ["--key", os.path.join(keys, "client.key"),
                   "--peer-key", os.path.join(keys, "server.key.pub")]
    sink, echoer = service(count_then_answer), service(echo)
    procs = []
    try:
        plain = (tunnel(sink, [], [], procs), tunnel(echoer, [], [], procs))
        keyed = (tunnel(sink, server_keys, client_keys, procs),
                 tunnel(echoer, server_keys, client_keys, procs))
        results = {"plain": ([], []), "keys": ([], [])}
        for run in range(rounds):
            order = [("plain", plain), ("keys", keyed)]
            if run % 2:
                order.reverse()
            for name, (to_sink, to_echo) in order:
                results[name][0].append(bulk(to_sink))
                results[name][1].extend(ping_pong(to_echo))
        (plain_bulk, plain_rtt), (keyed_bulk, keyed_rtt) = results["plain"], results["keys"]
        pb, kb = statistics.median(plain_bulk), statistics.median(keyed_bulk)
        pm, km = statistics.median(plain_rtt), statistics.median(keyed_rtt)
        print(f"bulk {TOTAL >> 20} MiB x {rounds} (median MiB/s): without keys {pb:.0f}, "
              f"with keys {kb:.0f}: {kb / pb:.2f}x")
        print(f"ping-pong 1 byte, {PINGS} x {rounds} (us): median without keys {pm:.0f}, "
              f"with keys {km:.0f} ({(km / pm - 1) * 100:+.1f}%); p99 {p99(plain_rtt):.0f} "
              f"and {p99(keyed_rtt):.0f}")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
