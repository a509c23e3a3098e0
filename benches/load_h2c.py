#!/usr/bin/env python3
"""h2c load benchmark (see load.sh --h2c): the per-hop cost of HTTP/2 without TLS (prior
knowledge), the path gRPC and `h2c` revisions take. Every figure is measured in this one run:

- the sample app served directly over h2c;
- HAProxy 2.6 (Debian, `nbthread 1`), h2c in and h2c out (`proto h2` on both sides);
- HAProxy, h2c in, HTTP/1.1 out (keep-alive to the app);
- nginx 1.22 (Debian, 1 worker, access log off), h2c in (`listen ... http2`), HTTP/1.1 out with
  upstream keep-alive. nginx closes an HTTP/2 connection after `keepalive_requests` (default
  1000) requests, so the configuration raises it;
- HAProxy h2c->h2c with `maxconn 10` on its server: at most 10 requests at the app, the rest
  queued in HAProxy, as containerConcurrency 10 queues them in our proxies (the reference for
  the CC=10 rows: a concurrency limit means fewer requests per wake-up and per system call
  whatever the proxy, so limited rows are compared with limited HAProxy);
- the queue-proxy at CC=0 and at CC=10 (h2c in, h2c to the app);
- the activator in front of a queue-proxy in front of the app, all h2c, the revision at
  containerConcurrency 10 (activator and queue-proxy both limit) and at 0 (unlimited; the
  throttler, the load-balancing policy and stats reporting are in the path either way); the
  activator's CPU is the hop figure, the queue-proxy's is printed too;
- HAProxy in front of HAProxy in front of the app, unlimited and with `maxconn 10` on both
  servers (the first HAProxy's CPU): the activator's position, first hop of two, where a hop
  waits on the next one's latency (the reference for the activator rows, printed at the end);
- with `--two-threads`, the limited HAProxy chain again with `nbthread 2` on the first HAProxy:
  what a second thread costs HAProxy per request in that position (threads hand requests and
  connections to each other as the activator's two workers do), the like-for-like reference for
  the activator's default two workers on these 2-core machines.

The client is h2load with prior knowledge, `--clients` connections (10) with `--streams`
concurrent streams each (10), GET / (tiny response). The scenarios run in interleaved rounds
(`--rounds`, default 3) with fresh processes; each figure is the median over the rounds, and the
ratios (throughput relative to the app served directly, CPU relative to HAProxy h2c->h2c,
unlimited and with `maxconn 10`) are taken within each round before the median. CPU per request is the proxy process's user and
system time from /proc over the measured requests."""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402
from reference_proxies import nginx_temp_paths, nginx_worker  # noqa: E402
from load import TICKS, free_port, median, rss_kib, start_queue_proxy, start_sample_app, wait_listening  # noqa: E402

REVISION_HEADERS = ["-H", "knative-serving-namespace: default", "-H", "knative-serving-revision: hello-00001"]
HAPROXY_H2 = "HAProxy h2c->h2c"
HAPROXY_H2_LIMITED = "HAProxy h2c->h2c maxconn 10"
HAPROXY_CHAIN = "HAProxy -> HAProxy -> app"
HAPROXY_CHAIN_LIMITED = "HAProxy chain, maxconn 10"
HAPROXY_CHAIN_LIMITED_2T = "HAProxy chain mc10 2 thr."
LIMIT = 10


def cpu_user_sys(pid):
    """(user, system) CPU seconds of a process, all threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def run_h2load(port, requests, args, headers=()):
    out = subprocess.run(
        ["h2load", "-n", str(requests), "-c", str(args.clients), "-m", str(args.streams), "-t", str(args.threads),
         *headers, f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True).stdout
    done = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                     r"(\d+) errored, (\d+) timeout", out)
    rps = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\s", out)
    if not (done and rps and status):
        raise RuntimeError(f"cannot parse h2load output:\n{out}")
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "requests": int(done.group(3)), "rps": float(rps.group(1)),
        "failed": int(done.group(5)) + int(done.group(6)) + int(done.group(7)),
        "non2xx": int(status.group(2)) + int(status.group(3)) + int(status.group(4)),
        "mean_ms": float(mean.group(1)) * unit[mean.group(2)] if mean else float("nan"),
    }


def measure(name, port, pid, args, headers=(), also=None):
    """One sample: warm-up, then `--requests` requests with the CPU of `pid` (and `also`, another
    process of the chain) taken around them."""
    run_h2load(port, args.warmup, args, headers)
    user0, sys0 = cpu_user_sys(pid) if pid else (0.0, 0.0)
    also0 = sum(cpu_user_sys(also)) if also else 0.0
    result = run_h2load(port, args.requests, args, headers)
    user1, sys1 = cpu_user_sys(pid) if pid else (0.0, 0.0)
    also1 = sum(cpu_user_sys(also)) if also else 0.0
    n = max(result["requests"], 1)
    result.update({
        "name": name,
        "cpu_us": ((user1 - user0) + (sys1 - sys0)) * 1e6 / n,
        "user_us": (user1 - user0) * 1e6 / n,
        "sys_us": (sys1 - sys0) * 1e6 / n,
        "also_us": (also1 - also0) * 1e6 / n,
        "rss_mb": (rss_kib(pid) if pid else 0) / 1024,
    })
    return result


def stop(proc):
    proc.kill()
    proc.wait()


def start_haproxy(app_port, workdir, h2_out, maxconn=None, threads=1):
    """HAProxy, h2c in; h2c (`h2_out`) or HTTP/1.1 out; `maxconn`: at most that many requests at
    the app, the others queued in HAProxy; `threads`: its `nbthread`."""
    port = free_port()
    os.makedirs(workdir, exist_ok=True)
    conf = os.path.join(workdir, "haproxy.cfg")
    server_proto = " proto h2" if h2_out else ""
    if maxconn:
        server_proto += f" maxconn {maxconn}"
    with open(conf, "w") as f:
        f.write(f"""global
  nbthread {threads}
  maxconn 5000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:{port} proto h2
  default_backend app
backend app
  server app 127.0.0.1:{app_port}{server_proto}
""")
    # -db: foreground, one process (the one measured).
    proc = subprocess.Popen(["haproxy", "-db", "-f", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port)
    return port, proc, proc.pid


def start_nginx(app_port, workdir):
    port = free_port()
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 20000; }}
http {{
  access_log off;
{nginx_temp_paths(workdir)}
  keepalive_timeout 300s;
  # HTTP/2 connections close after this many requests (default 1000).
  keepalive_requests 100000000;
  upstream app {{ server 127.0.0.1:{app_port}; keepalive 100; keepalive_requests 100000000; }}
  server {{
    listen 127.0.0.1:{port} http2;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", conf, "-p", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port)
    worker = nginx_worker(proc)
    return port, proc, worker


def start_activator_h2c_chain(app_port, workdir, extra_env=None, activator_bin=None, cc=LIMIT):
    """The activator's h2c port in front of a queue-proxy in front of the app, the revision
    declared `h2c` with containerConcurrency `cc` (the queue-proxy's CC too)."""
    qp_port, qp = start_queue_proxy(app_port, cc)
    h1_port, h2_port = free_port(), free_port()
    discovery = os.path.join(workdir, "revisions.json")
    with open(discovery, "w") as f:
        f.write('{"revisions":[{"namespace":"default","name":"hello-00001","containerConcurrency":%d,'
                '"timeoutSeconds":300,"protocol":"h2c","pods":{"ready":["127.0.0.1:%d"],"notReady":[]},'
                '"activators":["127.0.0.1"]}]}' % (cc, qp_port))
    env = {**os.environ, "POD_NAME": "activator-bench", "POD_IP": "127.0.0.1", "SYSTEM_NAMESPACE": "knative-serving",
           "ACTIVATOR_HTTP1_PORT": str(h1_port), "ACTIVATOR_H2C_PORT": str(h2_port),
           "ACTIVATOR_DISCOVERY_FILE": discovery, "ACTIVATOR_AUTOSCALER_URL": f"ws://127.0.0.1:{free_port()}/",
           "ACTIVATOR_LOG_LEVEL": "error", **(extra_env or {})}
    act = subprocess.Popen([activator_bin or os.path.join(load.BIN, "activator")], env=env, stdout=subprocess.DEVNULL)
    wait_listening(h2_port)
    # The pod must be probed healthy before the throttler hands out leases.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        probe = subprocess.run(["h2load", "-n", "1", "-c", "1", *REVISION_HEADERS, f"http://127.0.0.1:{h2_port}/"],
                               capture_output=True, text=True)
        if re.search(r"status codes: 1 2xx", probe.stdout):
            break
        time.sleep(0.05)
    return h2_port, act, qp


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=5_000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="h2load threads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bin-dir", default=load.BIN, help="where the release binaries are")
    parser.add_argument("--only", default="", help="comma list of scenario keys: haproxy-h2,haproxy-h1,nginx,qp,"
                                                   "activator (the app alone and HAProxy h2c->h2c, unlimited and maxconn 10, "
                                                   "always run)")
    parser.add_argument("--baseline-activator", default="",
                        help="also measure the chain with this activator binary (a build to compare with)")
    parser.add_argument("--one-worker", action="store_true",
                        help="also measure the activator chain with one activator worker (ACTIVATOR_WORKER_THREADS=1)")
    parser.add_argument("--two-threads", action="store_true",
                        help="also measure the HAProxy chain with maxconn 10 and `nbthread 2` on the first HAProxy "
                             "(what a second thread costs HAProxy in the activator's position, the reference "
                             "for the activator's two workers)")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    if only:
        only |= {"direct", "haproxy-h2", "haproxy-h2-limited"}  # the ratios need them

    def wanted(key):
        return not only or key in only

    load.BIN = os.path.abspath(args.bin_dir)
    workdir = tempfile.mkdtemp(prefix="load-h2c-")
    procs = []
    samples = {}
    try:
        app, app_port = start_sample_app()
        procs.append(app)
        for _ in range(args.rounds):
            results = []
            results.append(measure("direct (app alone)", app_port, None, args))
            for key, name, h2_out, maxconn in (("haproxy-h2", HAPROXY_H2, True, None),
                                               ("haproxy-h2-limited", HAPROXY_H2_LIMITED, True, LIMIT),
                                               ("haproxy-h1", "HAProxy h2c->HTTP/1.1", False, None)):
                if wanted(key):
                    port, proc, pid = start_haproxy(app_port, workdir, h2_out, maxconn)
                    procs.append(proc)
                    results.append(measure(name, port, pid, args))
                    stop(proc)
            if wanted("nginx"):
                port, proc, worker = start_nginx(app_port, workdir)
                procs.append(proc)
                results.append(measure("nginx h2c->HTTP/1.1", port, worker, args))
                proc.terminate()
                proc.wait()
            if wanted("qp"):
                for cc in (0, LIMIT):
                    port, qp = start_queue_proxy(app_port, cc)
                    procs.append(qp)
                    results.append(measure(f"queue-proxy CC={cc}", port, qp.pid, args))
                    stop(qp)
            one = {"ACTIVATOR_WORKER_THREADS": "1"}
            if wanted("activator"):
                haproxy_chains = [(HAPROXY_CHAIN, None, 1), (HAPROXY_CHAIN_LIMITED, LIMIT, 1)]
                if args.two_threads:
                    haproxy_chains.append((HAPROXY_CHAIN_LIMITED_2T, LIMIT, 2))
                for name, maxconn, threads in haproxy_chains:
                    second_port, second, _ = start_haproxy(app_port, os.path.join(workdir, "second"), True, maxconn)
                    port, first, pid = start_haproxy(second_port, workdir, True, maxconn, threads)
                    procs += [first, second]
                    results.append(measure(name, port, pid, args, also=second.pid))
                    stop(first)
                    stop(second)
            chains = [("activator", f"activator cc={LIMIT} chain", None, None, LIMIT),
                      ("activator", "activator cc=0 chain", None, None, 0)]
            if args.one_worker:
                chains += [("activator", f"  1 worker, cc={LIMIT}", one, None, LIMIT),
                           ("activator", "  1 worker, cc=0", one, None, 0)]
            if args.baseline_activator:
                chains.append(("activator", "baseline activator", None, os.path.abspath(args.baseline_activator), LIMIT))
            for key, name, extra, binary, cc in chains:
                if wanted(key):
                    port, act, qp = start_activator_h2c_chain(app_port, workdir, extra, binary, cc)
                    procs += [act, qp]
                    results.append(measure(name, port, act.pid, args, headers=REVISION_HEADERS, also=qp.pid))
                    stop(act)
                    stop(qp)
            direct = results[0]
            haproxy = next(r for r in results if r["name"] == HAPROXY_H2)
            limited = next(r for r in results if r["name"] == HAPROXY_H2_LIMITED)
            for r in results:
                r["x_direct"] = r["rps"] / direct["rps"]
                r["x_haproxy"] = r["cpu_us"] / haproxy["cpu_us"] if r is not direct else float("nan")
                r["x_limited"] = r["cpu_us"] / limited["cpu_us"] if r is not direct else float("nan")
                samples.setdefault(r["name"], []).append(r)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nload h2c: h2load -n{args.requests} -c{args.clients} -m{args.streams} -t{args.threads} (prior knowledge), "
          f"GET / (tiny response), loopback, {os.cpu_count()} CPUs; medians of {args.rounds} interleaved rounds\n")
    print(f"{'scenario':26} {'req/s':>9} {'x direct':>8} {'CPU us/req':>10} {'user':>6} {'sys':>6} "
          f"{'x HAProxy':>9} {'x lim.':>6} {'mean ms':>8} {'RSS MB':>7} {'errors':>6}")
    bad = []
    for rows in samples.values():
        r = {key: median([s[key] for s in rows]) for key in
             ("rps", "x_direct", "cpu_us", "user_us", "sys_us", "x_haproxy", "x_limited", "mean_ms", "also_us")}
        r["rss_mb"] = max(s["rss_mb"] for s in rows)
        errors = sum(s["failed"] + s["non2xx"] for s in rows)
        name = rows[0]["name"]
        print(f"{name:26} {r['rps']:9.0f} {r['x_direct']:8.3f} {r['cpu_us']:10.1f} {r['user_us']:6.1f} {r['sys_us']:6.1f} "
              f"{r['x_haproxy']:9.2f} {r['x_limited']:6.2f} {r['mean_ms']:8.2f} {r['rss_mb']:7.1f} {errors:6d}")
        if r["also_us"]:
            print(f"{'  its next hop':26} {'':9} {'':8} {r['also_us']:10.1f}")
        if errors:
            bad.append((name, errors))
    print("\nCPU us/req: the proxy process (nginx: its worker), user + system, per request; x HAProxy: that "
          "figure over HAProxy h2c->h2c's in the same round; x lim.: over HAProxy h2c->h2c with maxconn "
          f"{LIMIT}'s (the reference for the CC={LIMIT} rows).")
    chain = {rows[0]["name"]: median([s["cpu_us"] for s in rows]) for rows in samples.values()}
    for activator, reference in ((f"activator cc={LIMIT} chain", HAPROXY_CHAIN_LIMITED),
                                 (f"activator cc={LIMIT} chain", HAPROXY_CHAIN_LIMITED_2T),
                                 (f"  1 worker, cc={LIMIT}", HAPROXY_CHAIN_LIMITED),
                                 ("activator cc=0 chain", HAPROXY_CHAIN)):
        if activator in chain and reference in chain:
            print(f"{activator} / {reference} (first hop of two, median CPU): "
                  f"{chain[activator] / chain[reference]:.2f}")
    for name, errors in bad:
        print(f"WARNING {name}: {errors} failed or non-2xx requests", file=sys.stderr)


if __name__ == "__main__":
    main()
