#!/usr/bin/env python3
"""Cold-start release benchmark (activator). A request waits in the activator for a revision whose
only pod is a queue-proxy that is running and listed in discovery (not yet ready, as Kubernetes
would list it) while its app has not started. This script then opens the app's listening socket
itself, at a random moment, and measures the time until the held request reaches the app.
PROBE_FREQUENCY stays at its 200 ms default. Usage: benches/cold_start.py [--trials N]
(needs release builds of queue-proxy and activator: benches/load.sh builds them)."""

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import tempfile
import threading
import time

from load import BIN, free_port, wait_listening  # noqa: E402  (shared helpers)


def trial():
    app_port, qp_port, act_port = free_port(), free_port(), free_port()
    qp = subprocess.Popen([os.path.join(BIN, "queue-proxy")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(
        os.environ, SERVING_NAMESPACE="default", SERVING_CONFIGURATION="hello", SERVING_REVISION="hello-00001",
        SERVING_POD="hello-pod", SERVING_POD_IP="127.0.0.1", QUEUE_SERVING_PORT=str(qp_port),
        QUEUE_SERVING_TLS_PORT=str(free_port()), USER_PORT=str(app_port), CONTAINER_CONCURRENCY="0",
        REVISION_TIMEOUT_SECONDS="300", SERVING_LOGGING_CONFIG="", SERVING_LOGGING_LEVEL="error",
        QUEUE_ADMIN_PORT=str(free_port()), QUEUE_STATS_PORT=str(free_port()),
        SERVING_READINESS_PROBE=json.dumps({"tcpSocket": {"port": app_port, "host": "127.0.0.1"}, "successThreshold": 1})))
    discovery = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump({"revisions": [{"namespace": "default", "name": "hello-00001", "containerConcurrency": 0,
                              "timeoutSeconds": 300, "protocol": "http1",
                              "pods": {"ready": [], "notReady": [f"127.0.0.1:{qp_port}"]},
                              "activators": ["127.0.0.1"]}]}, discovery)
    discovery.close()
    act = subprocess.Popen([os.path.join(BIN, "activator")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(
        os.environ, POD_NAME="activator-bench", POD_IP="127.0.0.1", SYSTEM_NAMESPACE="knative-serving",
        ACTIVATOR_HTTP1_PORT=str(act_port), ACTIVATOR_H2C_PORT=str(free_port()),
        ACTIVATOR_DISCOVERY_FILE=discovery.name, ACTIVATOR_AUTOSCALER_URL=f"ws://127.0.0.1:{free_port()}/",
        ACTIVATOR_LOG_LEVEL="error"))
    reached = []
    try:
        wait_listening(qp_port)
        wait_listening(act_port)

        def held_request():
            c = http.client.HTTPConnection("127.0.0.1", act_port, timeout=30)
            c.request("GET", "/", headers={"Knative-Serving-Namespace": "default", "Knative-Serving-Revision": "hello-00001"})
            c.getresponse().read()

        client = threading.Thread(target=held_request)
        client.start()
        time.sleep(0.5 + random.uniform(0, 0.2))  # the request is held; probes are failing
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", app_port))
        listener.listen(128)
        opened = time.monotonic()
        listener.settimeout(10)
        while not reached:
            conn, _ = listener.accept()
            conn.settimeout(2)
            try:
                data = conn.recv(65536)  # the queue-proxy's TCP probes send nothing
            except OSError:
                data = b""
            if data.startswith(b"GET "):
                reached.append(time.monotonic())
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            conn.close()
        client.join(timeout=10)
        listener.close()
        return (reached[0] - opened) * 1000
    finally:
        act.kill()
        qp.kill()
        act.wait()
        qp.wait()
        os.unlink(discovery.name)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=11)
    args = parser.parse_args()
    samples = sorted(trial() for _ in range(args.trials))
    print("cold-start release: app listening -> first held request reaches the app "
          "(activator -> queue-proxy -> app, PROBE_FREQUENCY 200ms)")
    print(f"  median {statistics.median(samples):.1f} ms   min {samples[0]:.1f} ms   max {samples[-1]:.1f} ms   ({args.trials} trials)")


if __name__ == "__main__":
    main()
