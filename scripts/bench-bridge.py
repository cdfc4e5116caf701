#!/usr/bin/env python3
"""Throughput through amqp-bridge (forward -> broker -> serve) against
direct TCP loopback, measured in the same run: 256 MiB one-way in 64 KiB
sends into a sink that answers with the byte count.

Usage: cargo build --release --features bridge --bin amqp-bridge && python3 scripts/bench-bridge.py
"""
import os
import socket
import subprocess
import threading
import time

TOTAL = 256 << 20
BRIDGE = os.path.join(os.path.dirname(__file__), "..", "target", "release", "amqp-bridge")


def sink():
    """A TCP service that reads everything, then answers the byte count."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)

    def handle(conn):
        total = 0
        while True:
            data = conn.recv(1 << 20)
            if not data:
                break
            total += len(data)
        conn.sendall(str(total).encode())
        conn.close()

    def accept():
        while True:
            conn, _ = server.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()


def send(addr):
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
    return TOTAL / elapsed / (1 << 20)


def start_bridge(args, ready):
    """Starts the bridge and waits for the log line that says it is ready."""
    env = dict(os.environ, RUST_LOG="info")
    proc = subprocess.Popen([BRIDGE] + args, env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if ready in line:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, line
    raise SystemExit(f"amqp-bridge {args[0]} ended before {ready!r}")


def main():
    target = sink()
    queue = f"bench-bridge-{os.getpid()}"
    serve, _ = start_bridge(["serve", "--queue", queue, "--to", "%s:%d" % target], "serving queue")
    forward, line = start_bridge(["forward", "--listen", "127.0.0.1:0", "--queue", queue], "forwarding")
    host, port = line.split("forwarding ")[1].split()[0].rsplit(":", 1)
    try:
        for run in (1, 2):
            direct = send(target)
            bridged = send((host, int(port)))
            print(f"run {run}: direct TCP {direct:.0f} MiB/s, forward+serve {bridged:.0f} MiB/s, "
                  f"ratio {bridged / direct:.2f}x")
    finally:
        for proc in (serve, forward):
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
