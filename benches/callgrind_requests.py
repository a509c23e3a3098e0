#!/usr/bin/env python3
"""Instructions per request of the queue-proxy and the activator under callgrind (valgrind), a
CPU figure that other tenants of a shared machine cannot move. Each binary runs under callgrind;
after a warm-up its counters are zeroed (callgrind_control -z), N requests are sent, and the
counters are dumped; the figure is the dump's total Ir / N (all threads: runtime, jemalloc's
background thread included).

Scenarios: `h1` (N sequential keep-alive HTTP/1.1 requests on one connection), `h2c` (N
sequential streams on one h2c connection), `h2c-burst` (N streams on one h2c connection, opened
4 at a time in one write, each batch read to its end before the next: run it with `--cc 1` and 3
of every 4 requests wait for a slot in the breaker of the proxy under callgrind), `h1-idle` (requests 1.3 s apart on one connection:
with idle parking each one resumes a parked connection), `h1-proxied` (as `h1`, each request
carrying the headers the activator adds when it forwards to a queue-proxy, `PROXIED_HEADERS`: the
queue-proxy's cost as the chain's second hop, and what those headers cost every target), and the
concurrent scenarios `h1-load` (h2load, `LOAD_H1_CONNECTIONS` keep-alive connections) and
`h2c-load` (h2load, `LOAD_H2C_CONNECTIONS` connections of `LOAD_H2C_STREAMS` concurrent streams),
the client load.py and load_h2c.py use: with `--cc 10` most requests wait for a revision (or
container) slot, which the sequential scenarios never make them do. Their figures include
opening the client's connections (h2load opens them for each run: use some 20000 requests) and
depend a little on how requests batch under callgrind, so compare them run against run.

Targets: the queue-proxy and the activator (in front of a queue-proxy not under callgrind) at
each `--cc` (default 0,10), and the reference proxies (reference_proxies.py; `--no-reference`
skips them), each a single process under callgrind: nginx and HAProxy for `h1`, HAProxy h2c->h2c
for `h2c` and `h2c-burst`.

`--atomics` also counts the atomic read-modify-write instructions executed per request
(atomic_ops.py), which callgrind counts as one instruction each.

Usage: python3 benches/callgrind_requests.py [--bin-dir target/release] [--requests 2000] [--cc 0,10] [--atomics]
"""

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conn_memory import REVISION_HEADERS, Conn, frame, h2_request, hpack_literal  # noqa: E402
from load import free_port, qp_env, start_sample_app, wait_listening  # noqa: E402
import reference_proxies  # noqa: E402
from atomic_ops import atomics_executed  # noqa: E402

# Set by `--atomics`: dumps carry instruction addresses, and `measure` counts atomics too.
COUNT_ATOMICS = False


def h2_stream(conn, stream_id, headers):
    h2_streams(conn, [stream_id], headers)


def h2_streams(conn, stream_ids, headers):
    """Opens the streams `stream_ids` in one write and reads until each has ended."""
    block = b"\x82\x86\x84" + b"\x01" + bytes([len(b"127.0.0.1")]) + b"127.0.0.1"
    for k, v in headers:
        block += hpack_literal(k, v)
    conn.sock.sendall(b"".join(frame(1, 0x5, sid, block) for sid in stream_ids))
    open_streams = set(stream_ids)
    while True:
        while len(conn.buf) >= 9:
            length = int.from_bytes(conn.buf[:3], "big")
            if len(conn.buf) < 9 + length:
                break
            kind, flags = conn.buf[3], conn.buf[4]
            sid = int.from_bytes(conn.buf[5:9], "big") & 0x7FFFFFFF
            payload = conn.buf[9:9 + length]
            conn.buf = conn.buf[9 + length:]
            if kind == 4 and not flags & 1:
                conn.sock.sendall(frame(4, 1, 0))
            elif kind == 0 and length:
                # Give the flow-control window back so that long runs never stall.
                inc = length.to_bytes(4, "big")
                conn.sock.sendall(frame(8, 0, 0, inc) + frame(8, 0, sid, inc))
            if kind in (0, 1) and flags & 1:
                open_streams.discard(sid)
            if kind in (3, 7):
                raise RuntimeError(f"h2 frame type {kind} on stream {sid}: {payload!r}")
        if not open_streams:
            return
        data = conn.sock.recv(65536)
        if not data:
            raise RuntimeError("closed")
        conn.buf += data


# What the activator adds to a request it forwards to a queue-proxy (and what a gateway in front of
# any proxy adds in some form): the `h1-proxied` scenario sends them to every target.
PROXIED_HEADERS = [("X-Forwarded-For", "127.0.0.1"), ("K-Original-Host", "hello.default.example.com"),
                   ("K-Proxy-Request", "activator")]


def scenario_headers(scenario):
    return PROXIED_HEADERS if scenario == "h1-proxied" else []


# Streams opened at once in the `h2c-burst` scenario.
BURST = 4


# Concurrency of the `-load` scenarios (as load.py's and load_h2c.py's defaults).
LOAD_H1_CONNECTIONS = 50
LOAD_H2C_CONNECTIONS = 10
LOAD_H2C_STREAMS = 10


def run_load(port, scenario, n, headers):
    """`n` requests from h2load, concurrently (see the module docs)."""
    cmd = [reference_proxies.find("h2load"), "-t1", f"-n{n}"]
    if scenario.startswith("h1"):
        cmd += ["--h1", f"-c{min(LOAD_H1_CONNECTIONS, n)}"]
    else:
        cmd += [f"-c{min(LOAD_H2C_CONNECTIONS, n)}", f"-m{LOAD_H2C_STREAMS}"]
    for k, v in headers:
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
    if f"status codes: {n} 2xx" not in out:
        raise RuntimeError(f"h2load: not {n} 2xx:\n{out}")


def run_requests(port, scenario, n, headers):
    if scenario.endswith("-load"):
        run_load(port, scenario, n, headers)
    elif scenario.startswith("h1"):
        c = Conn(port, "h1", headers)
        for i in range(n):
            c.buf = b""
            c.roundtrip()
            if scenario == "h1-idle" and i + 1 < n:
                time.sleep(1.3)
        c.sock.close()
    else:
        c = Conn(port, "h2c", headers)
        c.roundtrip()  # preface, settings, stream 1
        c.buf = b""
        if scenario == "h2c-burst":
            for i in range(0, n, BURST):
                h2_streams(c, [3 + 2 * j for j in range(i, min(i + BURST, n))], headers)
        else:
            for i in range(n):
                h2_stream(c, 3 + 2 * i, headers)
        c.sock.close()


def callgrind_total(path):
    """The largest total of the dumps `path.*` and that dump's file."""
    total, largest = 0, None
    for f in glob.glob(path + ".*"):
        with open(f) as fh:
            for line in fh:
                if line.startswith("summary:") or line.startswith("totals:"):
                    if int(line.split()[1]) > total:
                        total, largest = int(line.split()[1]), f
    return total, largest


class PerRequest(float):
    """Instructions per request, with the atomic instructions per request when counted."""

    atomics = None

    def __format__(self, spec):
        text = format(float(self), spec)
        return text if self.atomics is None else f"{text}  (atomic: {self.atomics:.1f})"


def measure(cmd, env, port, scenario, n, headers, workdir, name):
    out = os.path.join(workdir, f"cg-{name}-{scenario}")
    for f in glob.glob(out + ".*"):
        os.unlink(f)
    extra = ["--dump-instr=yes"] if COUNT_ATOMICS else []
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", *extra, f"--callgrind-out-file={out}.%p", *cmd],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, timeout=120)
        warm = 3 if scenario == "h1-idle" else 500 if scenario.endswith("-load") else 50
        run_requests(port, scenario, warm, headers)
        for f in glob.glob(out + ".*"):
            os.unlink(f)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        run_requests(port, scenario, n, headers)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
        time.sleep(0.5)
        total, dump = callgrind_total(out)
        result = PerRequest(total / n)
        if COUNT_ATOMICS and dump:
            result.atomics = atomics_executed(dump)[0] / n
        return result
    finally:
        proc.kill()
        proc.wait()


def activator_cmd(bins, workdir, qp_port, cc):
    discovery = os.path.join(workdir, f"revisions-{qp_port}.json")
    with open(discovery, "w") as f:
        f.write('{"revisions":[{"namespace":"default","name":"hello-00001","containerConcurrency":%d,'
                '"timeoutSeconds":300,"protocol":"http1","pods":{"ready":["127.0.0.1:%d"],"notReady":[]},'
                '"activators":["127.0.0.1"]}]}' % (cc, qp_port))
    h1, h2 = free_port(), free_port()
    env = {**os.environ, "POD_NAME": "activator-bench", "POD_IP": "127.0.0.1",
           "SYSTEM_NAMESPACE": "knative-serving", "ACTIVATOR_HTTP1_PORT": str(h1),
           "ACTIVATOR_H2C_PORT": str(h2), "ACTIVATOR_DISCOVERY_FILE": discovery,
           "ACTIVATOR_AUTOSCALER_URL": f"ws://127.0.0.1:{free_port()}/", "ACTIVATOR_LOG_LEVEL": "error"}
    return [os.path.join(bins, "activator")], env, h1, h2


def reference_cmd(name, workdir, app_port, scenario="h1"):
    """nginx (HTTP/1.1) or HAProxy (`scenario`: HTTP/1.1 or h2c both sides), one process."""
    port = free_port()
    return reference_proxies.single_process_command(name, scenario, port, app_port, workdir), port


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "target", "release"))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--idle-requests", type=int, default=8)
    parser.add_argument("--scenarios", default="h1,h2c,h1-idle")
    parser.add_argument("--cc", default="0,10", help="container concurrencies to measure (queue-proxy and activator)")
    parser.add_argument("--only", default="qp,act", help="qp, act or both")
    parser.add_argument("--no-reference", action="store_true", help="skip nginx and HAProxy")
    parser.add_argument("--atomics", action="store_true",
                        help="also count atomic read-modify-write instructions per request")
    args = parser.parse_args()
    global COUNT_ATOMICS
    COUNT_ATOMICS = args.atomics
    bins = os.path.abspath(args.bin_dir)
    workdir = tempfile.mkdtemp(prefix="callgrind-")
    print(f"callgrind dumps (for callgrind_annotate): {workdir}", flush=True)
    ccs = [int(c) for c in args.cc.split(",") if c.strip()]
    only = args.only.split(",")
    procs = []
    try:
        app, app_port = start_sample_app(bins)
        procs.append(app)
        scenarios = args.scenarios.split(",")
        if not args.no_reference and ({"h1", "h1-proxied", "h2c", "h2c-burst", "h1-load", "h2c-load"} & set(scenarios)):
            reference_proxies.ensure_installed("nginx", "haproxy")
        for scenario in ("h1", "h1-proxied", "h1-load"):
            if not args.no_reference and scenario in scenarios:
                for name in ("nginx", "haproxy"):
                    cmd, port = reference_cmd(name, workdir, app_port)
                    ir = measure(cmd, dict(os.environ), port, scenario, args.requests,
                                 scenario_headers(scenario), workdir, name)
                    print(f"{scenario:10} instructions per request: {name:18} {ir:10.0f}", flush=True)
        for scenario in ("h2c", "h2c-burst", "h2c-load"):
            if not args.no_reference and scenario in scenarios:
                cmd, port = reference_cmd("haproxy", workdir, app_port, "h2c")
                ir = measure(cmd, dict(os.environ), port, scenario, args.requests, [], workdir, "haproxy-h2c")
                print(f"{scenario:10} instructions per request: {'HAProxy h2c->h2c':18} {ir:10.0f}", flush=True)
        for scenario in args.scenarios.split(","):
            n = args.idle_requests if scenario == "h1-idle" else args.requests
            for cc in ccs:
                if "qp" in only:
                    port = free_port()
                    qp_ir = measure([os.path.join(bins, "queue-proxy")], qp_env(app_port, cc, port), port,
                                    scenario, n, scenario_headers(scenario), workdir, f"qp{cc}")
                    print(f"{scenario:10} instructions per request: queue-proxy CC={cc:<3} {qp_ir:10.0f}", flush=True)
                if "act" in only:
                    # The activator in front of a queue-proxy (not under callgrind) in front of the app.
                    qp_port = free_port()
                    qp = subprocess.Popen([os.path.join(bins, "queue-proxy")], env=qp_env(app_port, cc, qp_port),
                                          stdout=subprocess.DEVNULL)
                    procs.append(qp)
                    wait_listening(qp_port)
                    cmd, env, h1, h2 = activator_cmd(bins, workdir, qp_port, cc)
                    act_ir = measure(cmd, env, h1 if scenario.startswith("h1") else h2, scenario, n,
                                     REVISION_HEADERS + scenario_headers(scenario), workdir, f"act{cc}")
                    qp.kill()
                    qp.wait()
                    print(f"{scenario:10} instructions per request: activator cc={cc:<3} {act_ir:10.0f}", flush=True)
    finally:
        for p in procs:
            p.kill()


if __name__ == "__main__":
    main()
