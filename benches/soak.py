#!/usr/bin/env python3
"""Soak benchmark: steady wrk load through activator -> queue-proxy -> sample app, in windows, with
a fault injected in every Nth window (alternately: the app killed with SIGKILL and restarted a
second later, and the app restarted at once, which drops every keep-alive connection to it). After
each window it records throughput, errors and the RSS of both proxies, and at the end it reports:
RSS growth after warm-up, errors outside the fault windows (should be 0), and throughput
stability across the clean windows.

Usage: benches/soak.py [--duration 600] [--window 10] [--connections 32] [--fault-every 3]
       [--short] (needs release builds: benches/soak.sh makes them)."""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import tempfile
import threading
import time

HEADERS = ["-H", "Knative-Serving-Namespace: default", "-H", "Knative-Serving-Revision: hello-00001"]


from load import BIN, free_port, rss_kib, wait_listening  # noqa: E402  (shared helpers)


class App:
    """The sample app, restartable on the same port."""

    def __init__(self, port):
        self.port = port
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([os.path.join(BIN, "sample-app")], env={**os.environ, "PORT": str(self.port)},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def run_wrk(port, seconds, connections):
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", *HEADERS, f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = sum(map(int, m.groups())) if (m := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)) else 0
    return total, non2xx, sock


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=600, help="total seconds (default 600)")
    parser.add_argument("--window", type=int, default=10, help="seconds per window (default 10)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--fault-every", type=int, default=3, help="a fault in every Nth window")
    parser.add_argument("--short", action="store_true", help="a 150 s run")
    args = parser.parse_args()
    if args.short:
        args.duration = 150

    app = App(free_port())
    app.start()
    qp_port, act_port = free_port(), free_port()
    qp = subprocess.Popen([os.path.join(BIN, "queue-proxy")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(
        os.environ, SERVING_NAMESPACE="default", SERVING_CONFIGURATION="hello", SERVING_REVISION="hello-00001",
        SERVING_POD="hello-pod", SERVING_POD_IP="127.0.0.1", QUEUE_SERVING_PORT=str(qp_port),
        QUEUE_SERVING_TLS_PORT=str(free_port()), USER_PORT=str(app.port), CONTAINER_CONCURRENCY="10",
        REVISION_TIMEOUT_SECONDS="300", SERVING_LOGGING_CONFIG="", SERVING_LOGGING_LEVEL="error",
        QUEUE_ADMIN_PORT=str(free_port()), QUEUE_STATS_PORT=str(free_port()), SERVING_READINESS_PROBE=""))
    discovery = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump({"revisions": [{"namespace": "default", "name": "hello-00001", "containerConcurrency": 10,
                              "timeoutSeconds": 300, "protocol": "http1",
                              "pods": {"ready": [f"127.0.0.1:{qp_port}"], "notReady": []},
                              "activators": ["127.0.0.1"]}]}, discovery)
    discovery.close()
    act = subprocess.Popen([os.path.join(BIN, "activator")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(
        os.environ, POD_NAME="activator-soak", POD_IP="127.0.0.1", SYSTEM_NAMESPACE="knative-serving",
        ACTIVATOR_HTTP1_PORT=str(act_port), ACTIVATOR_H2C_PORT=str(free_port()),
        ACTIVATOR_DISCOVERY_FILE=discovery.name, ACTIVATOR_AUTOSCALER_URL=f"ws://127.0.0.1:{free_port()}/",
        ACTIVATOR_LOG_LEVEL="error"))
    rows = []
    try:
        wait_listening(qp_port)
        wait_listening(act_port)
        run_wrk(act_port, 2, args.connections)  # warm-up
        windows = max(1, args.duration // args.window)
        print(f"soak: {windows} windows of {args.window}s, wrk -t2 -c{args.connections}, GET / through "
              f"activator -> queue-proxy (CC 10) -> sample-app, fault every {args.fault_every} windows, "
              f"{os.cpu_count()} CPUs\n")
        print(f"{'win':>3} {'t(s)':>5} {'fault':<12} {'req/s':>8} {'non-2xx':>8} {'sock err':>8} "
              f"{'act RSS KiB':>11} {'qp RSS KiB':>10}")
        started = time.monotonic()
        for w in range(windows):
            fault = ""
            if args.fault_every > 0 and w % args.fault_every == args.fault_every - 1:
                fault = "app kill 1s" if (w // args.fault_every) % 2 == 0 else "app restart"

                def inject(kind=fault):
                    time.sleep(args.window / 3)
                    app.kill()
                    if kind == "app kill 1s":
                        time.sleep(1)
                    app.start()

                injector = threading.Thread(target=inject)
                injector.start()
            total, non2xx, sock = run_wrk(act_port, args.window, args.connections)
            if fault:
                injector.join()
            row = dict(window=w, t=round(time.monotonic() - started), fault=fault, rps=total / args.window,
                       non2xx=non2xx, sock=sock, act_rss=rss_kib(act.pid), qp_rss=rss_kib(qp.pid))
            rows.append(row)
            print(f"{w:>3} {row['t']:>5} {fault:<12} {row['rps']:>8.0f} {non2xx:>8} {sock:>8} "
                  f"{row['act_rss']:>11} {row['qp_rss']:>10}", flush=True)
    finally:
        for p in (act, qp):
            p.kill()
            p.wait()
        app.kill()
        os.unlink(discovery.name)

    clean = [r for r in rows if not r["fault"]]
    faulty = [r for r in rows if r["fault"]]
    warm = rows[len(rows) // 5:] or rows  # the first fifth is warm-up
    rps = [r["rps"] for r in clean]
    print("\nsummary")
    for name in ("act_rss", "qp_rss"):
        after = [r[name] for r in warm]
        print(f"  {name}: after warm-up first {after[0]} KiB, last {after[-1]} KiB, max {max(after)} KiB, "
              f"growth {after[-1] - after[0]:+d} KiB")
    print(f"  errors outside fault windows: {sum(r['non2xx'] + r['sock'] for r in clean)} "
          f"(non-2xx {sum(r['non2xx'] for r in clean)}, socket {sum(r['sock'] for r in clean)})")
    print(f"  errors inside fault windows: {sum(r['non2xx'] + r['sock'] for r in faulty)} over {len(faulty)} faults")
    if rps:
        cv = statistics.pstdev(rps) / statistics.mean(rps) * 100 if len(rps) > 1 else 0.0
        print(f"  throughput (clean windows): mean {statistics.mean(rps):.0f} req/s, min {min(rps):.0f}, "
              f"max {max(rps):.0f}, coefficient of variation {cv:.1f}%")


if __name__ == "__main__":
    main()
