#!/usr/bin/env python3
"""Readiness latency benchmark (issue: probes). The queue-proxy starts before the app; a client
keeps one kubelet-style health check outstanding at all times; this script then opens the app's
listening socket itself (so the moment is known exactly) and measures the time until the first
`200 queue`. Run for a TCP and an HTTP readiness probe in aggressive mode (periodSeconds 0, the
Knative default). Usage: benches/readiness.py [--trials N] (needs target/release/queue-proxy)."""

import argparse
import http.client
import os
import random
import socket
import statistics
import subprocess
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QP = os.path.join(ROOT, "target", "release", "queue-proxy")


from load import free_port  # noqa: E402  (shared helper)


def serve_http(listener, stop):
    listener.settimeout(0.05)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except (socket.timeout, OSError):
            continue
        try:
            conn.settimeout(1)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        except OSError:
            pass
        finally:
            conn.close()


def trial(kind):
    app_port, qp_port = free_port(), free_port()
    probe = {
        "tcp": f'{{"tcpSocket":{{"port":{app_port},"host":"127.0.0.1"}},"successThreshold":1}}',
        "http": f'{{"httpGet":{{"path":"/healthz","port":{app_port},"host":"127.0.0.1","scheme":"HTTP"}},"successThreshold":1}}',
    }[kind]
    env = dict(os.environ, SERVING_NAMESPACE="default", SERVING_CONFIGURATION="c", SERVING_REVISION="r",
               SERVING_POD="p", SERVING_POD_IP="127.0.0.1", QUEUE_SERVING_PORT=str(qp_port),
               QUEUE_SERVING_TLS_PORT=str(free_port()), USER_PORT=str(app_port), CONTAINER_CONCURRENCY="0",
               REVISION_TIMEOUT_SECONDS="300", SERVING_LOGGING_CONFIG="", SERVING_LOGGING_LEVEL="error",
               QUEUE_ADMIN_PORT=str(free_port()), QUEUE_STATS_PORT=str(free_port()),
               SERVING_READINESS_PROBE=probe)
    qp = subprocess.Popen([QP], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = threading.Event()
    first_ok = []
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", qp_port), timeout=0.1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.001)

        def prober():
            while not stop.is_set() and not first_ok:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", qp_port, timeout=15)
                    c.request("GET", "/", headers={"User-Agent": "kube-probe/1.29", "K-Network-Probe": "queue"})
                    r = c.getresponse()
                    body = r.read()
                    if r.status == 200 and body == b"queue":
                        first_ok.append(time.monotonic())
                    c.close()
                except OSError:
                    time.sleep(0.001)

        t = threading.Thread(target=prober)
        t.start()
        # The queue-proxy is now probing a closed port every 50 ms; open the app at a random phase
        # of that cadence so the figure is not an artefact of alignment.
        time.sleep(0.5 + random.uniform(0, 0.05))
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", app_port))
        listener.listen(128)
        opened = time.monotonic()
        server = threading.Thread(target=serve_http, args=(listener, stop))
        server.start()
        t.join(timeout=15)
        stop.set()
        server.join()
        listener.close()
        if not first_ok:
            raise RuntimeError("no 200 queue within 15 s")
        return (first_ok[0] - opened) * 1000
    finally:
        stop.set()
        qp.kill()
        qp.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=15)
    args = parser.parse_args()
    print("time from the app's listening socket opening to the first 200 `queue` (aggressive probing)")
    for kind in ("tcp", "http"):
        samples = sorted(trial(kind) for _ in range(args.trials))
        print(f"  {kind:4} probe: median {statistics.median(samples):5.1f} ms   "
              f"p90 {samples[int(len(samples) * 0.9) - 1]:5.1f} ms   max {samples[-1]:5.1f} ms   ({args.trials} trials)")


if __name__ == "__main__":
    main()
