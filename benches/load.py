#!/usr/bin/env python3
"""Load benchmark driver (see load.sh), HTTP/1.1. Every figure is measured in this one run, so
ratios hold even on a noisy shared machine. Scenarios: the app served directly, a bare hyper hop,
nginx and HAProxy (reference_proxies.py: one worker/thread, keep-alive pools, access logs off),
the queue-proxy (CC=0, CC=10, CC=10 with observability on), activator -> queue-proxy -> app
(cc 0 and 10) and nginx -> nginx -> app.

For each one: throughput of `--requests` requests over `--connections` keep-alive connections
(h2load, one client thread) relative to the app served directly; CPU microseconds per request of
each proxy process, user and system (from /proc); RSS after a warm-up and the highest sample under
load; p50/p99 latency at a constant rate of half the direct app's throughput (h2load --rps, from
its per-request log); 1 MiB downloads and 1 MiB uploads (echoed), as MB moved per CPU-second of
the proxy. Then the queue-proxy's start (fork/exec) to listening and to the first proxied 200,
and nginx's and HAProxy's measured the same way.

The scenarios run in interleaved rounds (`--rounds`, default 3): each round measures every
scenario once, in the same order, with fresh processes. Each figure printed is the median over
the rounds (RSS: the highest), so a burst of load from another tenant of the machine skews one
sample of every scenario rather than one scenario."""

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_proxies  # noqa: E402

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


REVISION_HEADERS = ["-H", "Knative-Serving-Namespace: default", "-H", "Knative-Serving-Revision: hello-00001"]


def cpu_times(pid):
    """(user, system) CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def percentile(sorted_values, fraction):
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def run_h2load(port, requests, connections, path="/", headers=(), rps=None, data=None, latency=False):
    """h2load over HTTP/1.1 (one client thread, keep-alive, no pipelining). `rps`: constant rate per
    connection. `latency`: p50/p99 from h2load's per-request log (ms)."""
    cmd = [reference_proxies.find("h2load"), "--h1", "-t1", f"-c{connections}", f"-n{requests}", *headers]
    if rps:
        cmd.append(f"--rps={rps}")
    if data:
        cmd += ["-d", data]
    log = None
    if latency:
        fd, log = tempfile.mkstemp(prefix="h2load-", suffix=".log")
        os.close(fd)
        cmd.append(f"--log-file={log}")
    cmd.append(f"http://127.0.0.1:{port}{path}")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600).stdout
        rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
        counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                           r"(\d+) errored, (\d+) timeout", out)
        ok = re.search(r"status codes: (\d+) 2xx", out)
        if not rate or not counts:
            raise RuntimeError(f"h2load output not understood:\n{out}")
        result = {"requests": int(counts.group(2)), "rps": float(rate.group(1)),
                  "errors": int(counts.group(4)) + int(counts.group(5)) + int(counts.group(6))
                  + int(counts.group(3)) - int(ok.group(1) if ok else 0)}
        if log:
            with open(log) as f:
                durations = sorted(int(line.split("\t")[2]) / 1000 for line in f if line.strip())
            result["p50"], result["p99"] = percentile(durations, 0.50), percentile(durations, 0.99)
        return result
    finally:
        if log:
            os.unlink(log)


class Target:
    """A started scenario: `port` to load; `pids`: the proxy processes, front first."""

    def __init__(self, port, pids=(), headers=(), stop=lambda: None):
        self.port, self.pids, self.headers, self.stop = port, list(pids), list(headers), stop


def cpu_delta(pids, before):
    return [tuple(b - a for a, b in zip(before[i], cpu_times(pid))) for i, pid in enumerate(pids)]


def measure(target, app_pid, args, direct_rps):
    """Throughput run, then a constant-rate run (`args.rate_fraction` of `direct_rps`, the direct
    app's req/s in this round; None: this is the direct run) and the streaming runs.
    CPU per request and RSS are per proxy process (front first)."""
    fresh = [rss_kib(pid) for pid in target.pids]
    run_h2load(target.port, max(args.requests // 20, 1000), args.connections, headers=target.headers)  # warm-up
    idle = [rss_kib(pid) for pid in target.pids]
    peak = list(idle)
    done = threading.Event()

    def sample():
        while not done.wait(0.1):
            for i, pid in enumerate(target.pids):
                peak[i] = max(peak[i], rss_kib(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    before = [cpu_times(pid) for pid in target.pids]
    app0 = sum(cpu_times(app_pid))
    result = run_h2load(target.port, args.requests, args.connections, headers=target.headers)
    cpu = cpu_delta(target.pids, before)
    app1 = sum(cpu_times(app_pid))
    done.set()
    sampler.join()
    n = max(result["requests"], 1)
    result.update({
        "cpu_us": [(u + s) * 1e6 / n for u, s in cpu], "user_us": [u * 1e6 / n for u, _ in cpu],
        "sys_us": [s * 1e6 / n for _, s in cpu], "app_cpu_us": (app1 - app0) * 1e6 / n,
        "fresh_rss_mb": [k / 1024 for k in fresh], "idle_rss_mb": [k / 1024 for k in idle],
        "load_rss_mb": [k / 1024 for k in peak],
    })
    rate = (direct_rps or result["rps"]) * args.rate_fraction
    if rate:
        per_conn = max(1, round(rate / args.connections))
        timed = run_h2load(target.port, per_conn * args.connections * args.rate_seconds, args.connections,
                           headers=target.headers, rps=per_conn, latency=True)
        result.update({"rate_rps": timed["rps"], "p50": timed["p50"], "p99": timed["p99"]})
        result["errors"] += timed["errors"]
    if args.stream_requests:
        mib = 1 << 20
        for key, path, data, per_request in (("down", f"/bytes?n={mib}", None, mib),
                                             ("up", "/echo", args.upload_file, 2 * mib)):
            before = [cpu_times(pid) for pid in target.pids]
            t0 = time.monotonic()
            streamed = run_h2load(target.port, args.stream_requests, 4, path=path, headers=target.headers, data=data)
            wall = time.monotonic() - t0
            cpu = sum(sum(c) for c in cpu_delta(target.pids, before))
            moved = streamed["requests"] * per_request / 1e6
            result[f"{key}_mb_per_cpu_s"] = moved / cpu if cpu else float("nan")
            result[f"{key}_mb_s"] = moved / wall
            result["errors"] += streamed["errors"]
    return result


def start_queue_proxy(app_port, cc, observability="", threads=None):
    port = free_port()
    env = qp_env(app_port, cc, port, observability)
    if threads is not None:
        env["QUEUE_WORKER_THREADS"] = str(threads)
    qp = subprocess.Popen([os.path.join(BIN, "queue-proxy")], env=env, stdout=subprocess.DEVNULL)
    wait_listening(port)
    time.sleep(0.2)
    return port, qp


def activator_env(act_port, discovery, threads=None):
    extra = {} if threads is None else {"ACTIVATOR_WORKER_THREADS": str(threads)}
    return {**os.environ, **extra, "POD_NAME": "activator-bench", "POD_IP": "127.0.0.1", "SYSTEM_NAMESPACE": "knative-serving",
            "ACTIVATOR_HTTP1_PORT": str(act_port), "ACTIVATOR_H2C_PORT": str(free_port()),
            "ACTIVATOR_DISCOVERY_FILE": discovery, "ACTIVATOR_AUTOSCALER_URL": f"ws://127.0.0.1:{free_port()}/",
            "ACTIVATOR_LOG_LEVEL": "error"}


def start_activator_chain(app_port, cc, threads=None):
    """The activator (revision containerConcurrency `cc`, `threads` runtime threads, None: its
    automatic choice) in front of a queue-proxy (CC=`cc`) in front of the app; returns once a
    request through both gets a 200."""
    qp_port, qp = start_queue_proxy(app_port, cc)
    act_port = free_port()
    discovery = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"load-revisions-{os.getpid()}-{act_port}.json")
    with open(discovery, "w") as f:
        f.write('{"revisions":[{"namespace":"default","name":"hello-00001","containerConcurrency":%d,'
                '"timeoutSeconds":300,"protocol":"http1","pods":{"ready":["127.0.0.1:%d"],"notReady":[]},'
                '"activators":["127.0.0.1"]}]}' % (cc, qp_port))
    act = subprocess.Popen([os.path.join(BIN, "activator")], env=activator_env(act_port, discovery, threads),
                           stdout=subprocess.DEVNULL)
    wait_listening(act_port)
    deadline = time.monotonic() + 10
    while first_status(act_port, REVISION_HEADERS) != 200:  # the first probe round marks the pod healthy
        if time.monotonic() > deadline:
            raise RuntimeError("the activator never proxied a 200")
        time.sleep(0.02)

    def stop():
        for p in (act, qp):
            p.kill()
            p.wait()
        os.unlink(discovery)

    return Target(act_port, [act.pid, qp.pid], REVISION_HEADERS, stop)


def first_status(port, headers=()):
    """Status of one GET / on a new connection (0: no connection or no answer)."""
    extra = "".join(f"{h}\r\n" for h in headers[1::2])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n".encode())
            head = s.recv(64)
    except OSError:
        return 0
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return int(m.group(1)) if m else 0


def startup_ms(app_port, workdir, samples=5, queue_proxy_bin=None):
    """Start (fork/exec) to listening, and to the first proxied 200, medians (ms): the queue-proxy,
    and nginx (one process, no master) and HAProxy started the same way with this benchmark's
    configurations, as the reference for what the method itself costs: Python's fork/exec and
    its polling are in every figure."""
    from reference_proxies import single_process_command  # noqa: PLC0415

    def queue_proxy(port):
        return [queue_proxy_bin or os.path.join(BIN, "queue-proxy")], qp_env(app_port, 0, port)

    def reference(name):
        def command(port):
            return single_process_command(name, "h1", port, app_port, os.path.join(workdir, "start")), None
        return command

    def timed(command, until_ok):
        port = free_port()
        argv, env = command(port)
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if until_ok:
                while first_status(port) != 200:
                    if time.monotonic() - t0 > 10:
                        raise RuntimeError(f"{argv[0]} never proxied a 200")
                    time.sleep(0.0002)
            else:
                wait_listening(port)
            return (time.monotonic() - t0) * 1000
        finally:
            proc.kill()
            proc.wait()

    figures = {}
    for name, command in (("queue-proxy", queue_proxy), ("nginx", reference("nginx")),
                          ("HAProxy", reference("haproxy"))):
        listening = [timed(command, False) for _ in range(samples)]
        first_ok = [timed(command, True) for _ in range(samples)]
        figures[name] = (median(listening), median(first_ok))
    return figures


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def combine(name, samples):
    """One row from a scenario's per-round samples: medians, RSS maxima, errors summed."""
    row = {"name": name, "rounds": len(samples), "procs": len(samples[0]["cpu_us"])}
    for key in ("rps", "app_cpu_us", "p50", "p99", "rate_rps", "down_mb_per_cpu_s", "up_mb_per_cpu_s",
                "down_mb_s", "up_mb_s"):
        values = [s[key] for s in samples if key in s]
        row[key] = median(values) if values else float("nan")
    for key in ("cpu_us", "user_us", "sys_us"):
        row[key] = [median([s[key][i] for s in samples]) for i in range(row["procs"])]
    for key in ("fresh_rss_mb", "idle_rss_mb", "load_rss_mb"):
        row[key] = [max(s[key][i] for s in samples) for i in range(row["procs"])]
    row["errors"] = sum(s["errors"] for s in samples)
    # The ratio to the direct run of the same round, then the median of those.
    row["x_direct"] = median([s["rps"] / s["direct_rps"] for s in samples])
    return row


def scenarios(args, app_port, workdir):
    """(name, start) for every scenario of a round; `start()` returns a Target."""
    from reference_proxies import start_haproxy, start_nginx  # noqa: PLC0415

    def proc_target(proc, port, extra_stop=()):
        def stop():
            proc.kill()
            proc.wait()
            for s in extra_stop:
                s()
        return Target(port, [proc.pid], stop=stop)

    def bare():
        port = free_port()
        hop = subprocess.Popen([os.path.join(BIN, "bare-hop"), str(port), str(app_port)])
        wait_listening(port)
        return proc_target(hop, port)

    def ref(start):
        def go():
            proxy = start("h1", app_port, workdir, free_port())
            return Target(proxy.port, [proxy.pid], stop=proxy.stop)
        return go

    def nginx_chain():
        back = start_nginx("h1", app_port, workdir, free_port(), name="nginx-back")
        front = start_nginx("h1", back.port, workdir, free_port(), name="nginx-front")

        def stop():
            front.stop()
            back.stop()
        return Target(front.port, [front.pid, back.pid], stop=stop)

    def qp(cc, observability="", threads=None):
        def go():
            port, proc = start_queue_proxy(app_port, cc, observability, threads)
            return proc_target(proc, port)
        return go

    out = [("direct (app alone)", lambda: Target(app_port)), ("bare hyper hop", bare),
           (f"nginx ({args.nginx_version})", ref(start_nginx)), (f"HAProxy ({args.haproxy_version})", ref(start_haproxy)),
           ("queue-proxy CC=0", qp(0)), ("queue-proxy CC=10", qp(10)),
           ("qp CC=10 + observability", qp(10, OBSERVABILITY_ON))]
    if args.two_threads:
        out += [("qp CC=0, 2 threads", qp(0, "", 2)), ("qp CC=10, 2 threads", qp(10, "", 2))]
    threads = args.activator_threads or None
    out += [("activator cc=0 -> qp -> app", lambda: start_activator_chain(app_port, 0, threads)),
            ("activator cc=10 -> qp -> app", lambda: start_activator_chain(app_port, 10, threads)),
            ("nginx -> nginx -> app", nginx_chain)]
    return out


def fmt(value, spec):
    return "–" if value != value else format(value, spec)  # NaN: not measured


def print_table(results, args, start):
    direct = results[0]
    nginx = next((r for r in results if r["name"].startswith("nginx (")), None)
    nginx_cpu = nginx["cpu_us"][0] if nginx else float("nan")
    print(f"\nload: h2load --h1 -t1 -c{args.connections} -n{args.requests}, GET / (tiny response), all on loopback, "
          f"{os.cpu_count()} CPUs; activator threads {args.activator_threads or 'automatic'}; medians of {args.rounds} interleaved rounds. Proxy CPU: the front proxy process "
          f"(chains: the second one below). Latency: constant {args.rate_fraction:g} x the direct app's req/s of "
          f"the round, {args.connections} connections, {args.rate_seconds} s. Streaming: {args.stream_requests} "
          f"requests of 1 MiB, 4 connections, MB moved per CPU-second of the proxy process(es) (up: 1 MiB POST to "
          f"/echo, counted both ways). RSS: fresh = before any request, warm = after the warm-up with its "
          f"{args.connections} connections open, load = highest under load.\n")
    print("| scenario | req/s | × direct | proxy CPU µs/req | user | sys | × nginx | RSS MB fresh | RSS MB warm | RSS MB load "
          "| p50 ms | p99 ms | down MB/CPU-s | up MB/CPU-s | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        has = r["procs"] > 0
        cpu = r["cpu_us"][0] if has else float("nan")
        print(f"| {r['name']} | {r['rps']:.0f} | {r['x_direct']:.3f} | {fmt(cpu, '.1f')} "
              f"| {fmt(r['user_us'][0] if has else float('nan'), '.1f')} | {fmt(r['sys_us'][0] if has else float('nan'), '.1f')} "
              f"| {fmt(cpu / nginx_cpu, '.2f')} | {fmt(r['fresh_rss_mb'][0] if has else float('nan'), '.1f')} "
              f"| {fmt(r['idle_rss_mb'][0] if has else float('nan'), '.1f')} "
              f"| {fmt(r['load_rss_mb'][0] if has else float('nan'), '.1f')} | {fmt(r['p50'], '.2f')} | {fmt(r['p99'], '.2f')} "
              f"| {fmt(r['down_mb_per_cpu_s'] if has else r['down_mb_s'], '.0f')} "
              f"| {fmt(r['up_mb_per_cpu_s'] if has else r['up_mb_s'], '.0f')} | {r['errors']} |")
    print(f"\nstreaming, direct row: MB/s of wall time (no proxy). App CPU per request (direct): "
          f"{direct['app_cpu_us']:.1f} µs.")
    for r in results:
        if r["procs"] > 1:
            print(f"{r['name']}: second hop {r['cpu_us'][1]:.1f} µs/req (user {r['user_us'][1]:.1f}, sys "
                  f"{r['sys_us'][1]:.1f}), RSS {r['idle_rss_mb'][1]:.1f} idle / {r['load_rss_mb'][1]:.1f} MB load; "
                  f"chain total {sum(r['cpu_us']):.1f} µs/req")
    for name, (listening, first_ok) in start.items():
        built = ""
        if name == "queue-proxy":
            built = f" [{args.startup_bin}]" if args.startup_bin else " [the binary measured above]"
        print(f"{name}{built} start (fork/exec) to listening: {listening:.1f} ms, to the first proxied 200: "
              f"{first_ok:.1f} ms (medians of 5)")
    for r in results:
        if r["errors"]:
            print(f"WARNING {r['name']}: {r['errors']} failed or non-2xx requests", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=100_000, help="requests per throughput run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate-fraction", type=float, default=0.5,
                        help="constant-rate latency runs at this fraction of the direct app's req/s (0: skip)")
    parser.add_argument("--rate-seconds", type=int, default=4)
    parser.add_argument("--stream-requests", type=int, default=1000, help="1 MiB requests per streaming run (0: skip)")
    parser.add_argument("--activator-threads", type=int, default=1,
                        help="ACTIVATOR_WORKER_THREADS (default 1, as the references' one worker and the activator's "
                             "automatic choice under upstream's one-CPU limit; 0: automatic)")
    parser.add_argument("--only", default="", help="comma list of scenario name prefixes to run (direct always runs)")
    parser.add_argument("--startup-bin", default="",
                        help="the queue-proxy binary whose start is measured (load.sh passes the static-pie "
                             "build, as scripts/release-build ships it; default: the one measured under load)")
    parser.add_argument("--two-threads", action="store_true",
                        help="also measure the queue-proxy with two runtime threads (QUEUE_WORKER_THREADS=2)")
    args = parser.parse_args()
    reference_proxies.ensure_installed("nginx", "haproxy", "h2load")
    args.nginx_version = reference_proxies.version("nginx").split("/")[-1].split()[0]
    args.haproxy_version = reference_proxies.version("haproxy").split()[2].split("-")[0]

    workdir = tempfile.mkdtemp(prefix="load-")
    args.upload_file = os.path.join(workdir, "upload-1MiB")
    with open(args.upload_file, "wb") as f:
        f.write(b"u" * (1 << 20))
    samples = {}
    app = None
    try:
        app, app_port = start_sample_app()
        plan = scenarios(args, app_port, workdir)
        only = [p.strip() for p in args.only.split(",") if p.strip()]
        plan = [s for i, s in enumerate(plan) if i == 0 or not only or any(s[0].startswith(p) for p in only)]
        for round_no in range(args.rounds):
            direct_rps = None
            for name, start in plan:
                target = start()
                try:
                    result = measure(target, app.pid, args, direct_rps)
                finally:
                    target.stop()
                if direct_rps is None:
                    direct_rps = result["rps"]
                result["direct_rps"] = direct_rps
                samples.setdefault(name, []).append(result)
                print(f"round {round_no + 1}: {name}: {result['rps']:.0f} req/s", file=sys.stderr, flush=True)
        start = startup_ms(app_port, workdir, queue_proxy_bin=args.startup_bin or None)
    finally:
        if app:
            app.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    print_table([combine(name, s) for name, s in samples.items()], args, start)


if __name__ == "__main__":
    main()
