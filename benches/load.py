#!/usr/bin/env python3
"""Load benchmark driver (see load.sh). Every figure is measured in this one run, so ratios hold
even on a noisy shared machine: throughput of each hop relative to the app served directly, CPU
microseconds per request of the hop process (from /proc), latency percentiles from wrk, and RSS
(fresh, after a warm-up, and the highest sample under load).

The scenarios run in interleaved rounds (`--rounds`, default 3): each round measures every
scenario once, in the same order, with fresh processes. Each figure printed is the median over
the rounds (RSS: the highest), so a burst of load from another tenant of the machine skews one
sample of every scenario rather than one scenario."""

import argparse
import os
import re
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
TICKS = os.sysconf("SC_CLK_TCK")
# Request log (default template, to stdout) and Prometheus request metrics (port 9091 by default:
# METRICS_PROMETHEUS_PORT moves it), as an operator would enable them.
OBSERVABILITY_ON = '{"enableRequestLog":true,"requestMetrics":{"protocol":"prometheus"}}'


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.05):
                return True
        except OSError:
            time.sleep(0.0002)
    raise RuntimeError(f"nothing listening on {port}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_sample_app(bin_dir=None):
    """Starts the sample app on a free port and waits until it listens; returns (process, port)."""
    port = free_port()
    app = subprocess.Popen([os.path.join(bin_dir or BIN, "sample-app")], env={**os.environ, "PORT": str(port)},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port)
    return app, port


def qp_env(app_port, cc, port, observability=""):
    env = dict(os.environ)
    env.update({
        "SERVING_NAMESPACE": "default", "SERVING_SERVICE": "hello", "SERVING_CONFIGURATION": "hello",
        "SERVING_REVISION": "hello-00001", "SERVING_POD": "hello-00001-deployment-bench",
        "SERVING_POD_IP": "127.0.0.1", "QUEUE_SERVING_PORT": str(port), "QUEUE_SERVING_TLS_PORT": str(free_port()),
        "USER_PORT": str(app_port), "CONTAINER_CONCURRENCY": str(cc), "REVISION_TIMEOUT_SECONDS": "300",
        "SERVING_LOGGING_CONFIG": "", "SERVING_LOGGING_LEVEL": "warn", "QUEUE_ADMIN_PORT": str(free_port()),
        "QUEUE_STATS_PORT": str(free_port()), "SERVING_READINESS_PROBE": "",
        "OBSERVABILITY_CONFIG": observability, "METRICS_PROMETHEUS_PORT": str(free_port()),
    })
    return env


def parse_latency(text, label):
    m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


REVISION_HEADERS = ["-H", "Knative-Serving-Namespace: default", "-H", "Knative-Serving-Revision: hello-00001"]


def run_wrk(port, duration, connections, path="/", headers=()):
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", *headers, f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": total, "rps": rps, "p50": parse_latency(out, "50"), "p99": parse_latency(out, "99"),
        "non2xx": int(errors.group(1)) if errors else 0, "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def measure(name, port, pid, app_pid, args, headers=(), also=None):
    """`also`: another process of the chain whose CPU per request is reported too."""
    fresh = rss_kib(pid) if pid else 0  # before any request
    run_wrk(port, 1, args.connections, headers=headers)  # warm-up: connections, pools, caches
    idle = rss_kib(pid) if pid else 0
    peak = [idle]
    done = threading.Event()

    def sample():
        while not done.is_set():
            if pid:
                peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    cpu0 = cpu_seconds(pid) if pid else 0.0
    app0 = cpu_seconds(app_pid)
    also0 = cpu_seconds(also) if also else 0.0
    result = run_wrk(port, args.duration, args.connections, headers=headers)
    cpu1 = cpu_seconds(pid) if pid else 0.0
    app1 = cpu_seconds(app_pid)
    also1 = cpu_seconds(also) if also else 0.0
    done.set()
    sampler.join()
    result.update({
        "name": name,
        "hop_cpu_us": (cpu1 - cpu0) * 1e6 / max(result["requests"], 1) if pid else 0.0,
        "app_cpu_us": (app1 - app0) * 1e6 / max(result["requests"], 1),
        "also_cpu_us": (also1 - also0) * 1e6 / max(result["requests"], 1) if also else 0.0,
        "fresh_rss_mb": fresh / 1024, "idle_rss_mb": idle / 1024, "load_rss_mb": peak[0] / 1024,
    })
    return result


def startup_ms(app_port, samples=5):
    times = []
    for _ in range(samples):
        port = free_port()
        t0 = time.monotonic()
        proc = subprocess.Popen([os.path.join(BIN, "queue-proxy")], env=qp_env(app_port, 0, port),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(port)
        times.append((time.monotonic() - t0) * 1000)
        proc.terminate()
        proc.kill()
        proc.wait()
    times.sort()
    return times[len(times) // 2]


def start_queue_proxy(app_port, cc, observability="", threads=None):
    port = free_port()
    env = qp_env(app_port, cc, port, observability)
    if threads is not None:
        env["QUEUE_WORKER_THREADS"] = str(threads)
    qp = subprocess.Popen([os.path.join(BIN, "queue-proxy")], env=env, stdout=subprocess.DEVNULL)
    wait_listening(port)
    time.sleep(0.2)
    return port, qp


def start_activator_chain(app_port):
    """The activator in front of a queue-proxy (CC=10) in front of the app."""
    qp_port, qp = start_queue_proxy(app_port, 10)
    act_port = free_port()
    discovery = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"load-revisions-{os.getpid()}.json")
    with open(discovery, "w") as f:
        f.write('{"revisions":[{"namespace":"default","name":"hello-00001","containerConcurrency":10,'
                '"timeoutSeconds":300,"protocol":"http1","pods":{"ready":["127.0.0.1:%d"],"notReady":[]},'
                '"activators":["127.0.0.1"]}]}' % qp_port)
    act = subprocess.Popen([os.path.join(BIN, "activator")], env={
        **os.environ, "POD_NAME": "activator-bench", "POD_IP": "127.0.0.1", "SYSTEM_NAMESPACE": "knative-serving",
        "ACTIVATOR_HTTP1_PORT": str(act_port), "ACTIVATOR_H2C_PORT": str(free_port()),
        "ACTIVATOR_DISCOVERY_FILE": discovery, "ACTIVATOR_AUTOSCALER_URL": f"ws://127.0.0.1:{free_port()}/",
        "ACTIVATOR_LOG_LEVEL": "error"}, stdout=subprocess.DEVNULL)
    wait_listening(act_port)
    time.sleep(0.5)  # first probe round marks the pod healthy
    return act_port, act, qp, discovery


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def combine(samples):
    """One row from a scenario's per-round samples: medians, RSS maxima, errors summed."""
    row = {"name": samples[0]["name"], "rounds": len(samples)}
    for key in ("rps", "p50", "p99", "hop_cpu_us", "app_cpu_us", "also_cpu_us"):
        row[key] = median([s[key] for s in samples])
    for key in ("fresh_rss_mb", "idle_rss_mb", "load_rss_mb"):
        row[key] = max(s[key] for s in samples)
    row["non2xx"] = sum(s["non2xx"] for s in samples)
    row["socket_errors"] = "; ".join(s["socket_errors"] for s in samples if s["socket_errors"])
    # The ratio to the direct run of the same round, then the median of those.
    row["x_direct"] = median([s["rps"] / s["direct_rps"] for s in samples])
    row["x_bare"] = median([s["hop_cpu_us"] / s["bare_cpu_us"] for s in samples]) if samples[0]["bare_cpu_us"] else float("nan")
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--two-threads", action="store_true",
                        help="also measure the queue-proxy with two runtime threads (QUEUE_WORKER_THREADS=2)")
    args = parser.parse_args()

    procs = []
    samples = {}
    try:
        app, app_port = start_sample_app()
        procs.append(app)

        for _ in range(args.rounds):
            direct = measure("direct (app alone)", app_port, None, app.pid, args)
            round_results = [direct]

            hop_port = free_port()
            hop = subprocess.Popen([os.path.join(BIN, "bare-hop"), str(hop_port), str(app_port)])
            procs.append(hop)
            wait_listening(hop_port)
            bare = measure("bare hyper hop", hop_port, hop.pid, app.pid, args)
            round_results.append(bare)
            hop.kill()
            hop.wait()

            scenarios = [
                ("queue-proxy CC=0", 0, "", None),
                ("queue-proxy CC=10", 10, "", None),
                ("qp CC=10 + observability", 10, OBSERVABILITY_ON, None),
            ]
            if args.two_threads:
                scenarios += [("qp CC=0, 2 threads", 0, "", 2), ("qp CC=10, 2 threads", 10, "", 2)]
            for name, cc, observability, threads in scenarios:
                port, qp = start_queue_proxy(app_port, cc, observability, threads)
                procs.append(qp)
                round_results.append(measure(name, port, qp.pid, app.pid, args))
                qp.kill()
                qp.wait()

            act_port, act, qp, discovery = start_activator_chain(app_port)
            procs += [act, qp]
            round_results.append(measure("activator -> qp -> app", act_port, act.pid, app.pid, args,
                                         headers=REVISION_HEADERS, also=qp.pid))
            act.kill()
            qp.kill()
            act.wait()
            qp.wait()
            os.unlink(discovery)

            for r in round_results:
                r["direct_rps"] = direct["rps"]
                r["bare_cpu_us"] = bare["hop_cpu_us"] if r is not direct else 0.0
                samples.setdefault(r["name"], []).append(r)

        start = startup_ms(app_port)
    finally:
        for p in procs:
            p.kill()

    results = [combine(s) for s in samples.values()]
    direct = results[0]
    chain = results[-1]
    print(f"\nload: wrk -t2 -c{args.connections} -d{args.duration}s, GET / (tiny response), all on loopback, "
          f"{os.cpu_count()} CPUs; medians of {args.rounds} interleaved rounds\n")
    print(f"{'scenario':24} {'req/s':>9} {'x direct':>8} {'hop CPU us/req':>14} {'x bare hop':>10} {'p50 ms':>7} {'p99 ms':>7} {'RSS MB: fresh':>13} {'warm':>6} {'load':>6} {'errors':>6}")
    for r in results:
        print(f"{r['name']:24} {r['rps']:9.0f} {r['x_direct']:8.2f} {r['hop_cpu_us']:14.1f} {r['x_bare']:10.2f} {r['p50']:7.2f} {r['p99']:7.2f} "
              f"{r['fresh_rss_mb']:13.1f} {r['idle_rss_mb']:6.1f} {r['load_rss_mb']:6.1f} {r['non2xx']:6d}")
    print(f"\napp CPU per request (direct): {direct['app_cpu_us']:.1f} us")
    print(f"activator chain: activator {chain['hop_cpu_us']:.1f} us/req + queue-proxy {chain['also_cpu_us']:.1f} us/req "
          f"(the hop columns above show the activator)")
    print(f"queue-proxy start-up to listening (median of 5): {start:.1f} ms")
    bad = [r for r in results if r["non2xx"] or r["socket_errors"]]
    for r in bad:
        print(f"WARNING {r['name']}: non-2xx={r['non2xx']} socket errors: {r['socket_errors']}", file=sys.stderr)


if __name__ == "__main__":
    main()
