#!/usr/bin/env python3
"""Connection memory benchmark (see conn_memory.sh): RSS per idle keep-alive client connection and
RSS after a burst, for the queue-proxy, the activator and nginx, measured in one run with the same
connection script.

Idle connections: N connections (default 5,000) are opened one after another; each sends one
request (HTTP/1.1 keep-alive, or h2c with prior knowledge: preface, SETTINGS, one stream), reads
the whole response and then stays open, idle. The figure is (RSS with the N connections open - RSS
before) / N, read from /proc/<pid>/status (VmRSS) once the connections have settled.

Burst: B connections (default 3,000) are opened, each sends one request, all requests are in
flight together, all responses are read, then every connection is closed. Printed: RSS idle
before the burst (after a warm-up), the highest RSS during it, and RSS `--after` seconds (default
30) after the burst ended.

The processes: the queue-proxy (CC=0) in front of the sample app; the activator (CC=0 revision)
in front of its own queue-proxy (CC=0) in front of the same app (the activator's RSS is
reported); nginx 1.22 (Debian, 1 worker, access log off) proxying to the same app with 100
keep-alive upstream connections."""

import argparse
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import time

from reference_proxies import nginx_temp_paths, nginx_worker  # noqa: E402
import load  # noqa: E402
from load import BIN, free_port, qp_env, rss_kib, start_sample_app, wait_listening

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REVISION_HEADERS = [("knative-serving-namespace", "default"), ("knative-serving-revision", "hello-00001")]


def h1_request(headers):
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
    return f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


def hpack_literal(name, value):
    """Literal header field without indexing, new name, no Huffman (RFC 7541 §6.2.2)."""
    name, value = name.encode(), value.encode()
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def h2_request(headers):
    # :method GET, :scheme http, :path / from the static table; :authority literal (index 1).
    block = b"\x82\x86\x84" + b"\x01" + bytes([len(b"127.0.0.1")]) + b"127.0.0.1"
    for k, v in headers:
        block += hpack_literal(k, v)
    return PREFACE + frame(4, 0, 0) + frame(1, 0x5, 1, block)  # SETTINGS, HEADERS END_STREAM|END_HEADERS


class Conn:
    """One client connection with one request in flight; `feed` consumes response bytes and
    returns True once the response is complete."""

    def __init__(self, port, protocol, headers):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.protocol = protocol
        self.buf = b""
        self.request = h1_request(headers) if protocol == "h1" else h2_request(headers)

    def send(self):
        self.sock.sendall(self.request)

    def feed(self, data):
        if not data:
            raise RuntimeError("connection closed before the response ended")
        self.buf += data
        return self._h1_done() if self.protocol == "h1" else self._h2_done()

    def _h1_done(self):
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return False
        head = self.buf[:head_end].decode("latin-1").lower()
        if not head.startswith("http/1.1 200"):
            raise RuntimeError(f"unexpected response: {head.splitlines()[0]}")
        body = self.buf[head_end + 4:]
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip() == "content-length":
                return len(body) >= int(value)
        if "transfer-encoding: chunked" in head:
            return body.endswith(b"0\r\n\r\n")
        raise RuntimeError("response without a length")

    def _h2_done(self):
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + length:
                return False
            kind, flags, stream = self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            self.buf = self.buf[9 + length:]
            if kind == 4 and not flags & 1:
                self.sock.sendall(frame(4, 1, 0))  # SETTINGS ACK
            elif kind == 7:
                raise RuntimeError("GOAWAY")
            elif kind == 3 and stream == 1:
                raise RuntimeError("RST_STREAM")
            elif kind in (0, 1) and stream == 1 and flags & 1:
                return True
        return False

    def roundtrip(self):
        self.send()
        while not self.feed(self.sock.recv(65536)):
            pass


def open_idle(port, protocol, n, headers):
    conns = []
    for _ in range(n):
        c = Conn(port, protocol, headers)
        c.roundtrip()
        conns.append(c)
    return conns


def burst(port, protocol, n, headers):
    """n connections, n requests in flight together, all answered; returns the open connections."""
    conns = [Conn(port, protocol, headers) for _ in range(n)]
    sel = selectors.DefaultSelector()
    for c in conns:
        c.send()
        c.sock.setblocking(False)
        sel.register(c.sock, selectors.EVENT_READ, c)
    pending = n
    deadline = time.monotonic() + 120
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"burst: {pending} responses missing")
        for key, _ in sel.select(timeout=1):
            c = key.data
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                continue
            c.sock.setblocking(True)
            done = c.feed(data)
            c.sock.setblocking(False)
            if done:
                sel.unregister(c.sock)
                pending -= 1
    sel.close()
    return conns


def close_all(conns):
    for c in conns:
        c.sock.close()


def settled_rss(pid, wait=1.0):
    """RSS after `wait` seconds, the highest of a few samples (lazy frees, pending timers)."""
    time.sleep(wait)
    return max(rss_kib(pid) for _ in range(3))


class Target:
    def __init__(self, name, ports, pid, headers=()):
        self.name, self.ports, self.pid, self.headers = name, ports, pid, list(headers)


def measure_idle(target, protocol, n):
    port = target.ports[protocol]
    close_all(open_idle(port, protocol, 20, target.headers))  # warm-up: pools, caches, first upstream conn
    before = settled_rss(target.pid)
    t0 = time.monotonic()
    conns = open_idle(port, protocol, n, target.headers)
    opened = time.monotonic() - t0
    # Our HTTP/1 connections are parked after 1 s idle (common/src/park.rs).
    after = settled_rss(target.pid, wait=2.5)
    close_all(conns)
    return {"before": before, "after": after, "per_conn": (after - before) / n, "open_s": opened}


def measure_burst(target, protocol, n, after_s):
    port = target.ports[protocol]
    close_all(open_idle(port, protocol, 20, target.headers))
    idle = settled_rss(target.pid)
    conns = burst(port, protocol, n, target.headers)
    peak = rss_kib(target.pid)
    close_all(conns)
    ended = time.monotonic()
    samples = []
    while time.monotonic() - ended < after_s:
        time.sleep(1)
        samples.append(rss_kib(target.pid))
    return {"idle": idle, "peak": peak, "after": samples[-1], "samples": samples}


def start_nginx(app_port, workdir):
    h1, h2 = free_port(), free_port()
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1;
worker_rlimit_nofile 30000;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 20000; }}
http {{
  access_log off;
{nginx_temp_paths(workdir)}
  keepalive_timeout 300s;
  keepalive_requests 100000;
  upstream app {{ server 127.0.0.1:{app_port}; keepalive 100; }}
  server {{
    listen 127.0.0.1:{h1};
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
  server {{
    listen 127.0.0.1:{h2} http2;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", conf, "-p", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(h1)
    wait_listening(h2)
    worker = nginx_worker(proc)
    return proc, worker, {"h1": h1, "h2c": h2}


def start_queue_proxy(app_port, extra_env):
    port = free_port()
    env = qp_env(app_port, 0, port)
    env.update(extra_env)
    proc = subprocess.Popen([os.path.join(BIN, "queue-proxy")], env=env, stdout=subprocess.DEVNULL)
    wait_listening(port)
    return proc, {"h1": port, "h2c": port}


def start_activator(qp_port, workdir, extra_env):
    h1, h2 = free_port(), free_port()
    discovery = os.path.join(workdir, "revisions.json")
    with open(discovery, "w") as f:
        f.write('{"revisions":[{"namespace":"default","name":"hello-00001","containerConcurrency":0,'
                '"timeoutSeconds":300,"protocol":"http1","pods":{"ready":["127.0.0.1:%d"],"notReady":[]},'
                '"activators":["127.0.0.1"]}]}' % qp_port)
    env = {**os.environ, "POD_NAME": "activator-bench", "POD_IP": "127.0.0.1", "SYSTEM_NAMESPACE": "knative-serving",
           "ACTIVATOR_HTTP1_PORT": str(h1), "ACTIVATOR_H2C_PORT": str(h2),
           "ACTIVATOR_DISCOVERY_FILE": discovery, "ACTIVATOR_AUTOSCALER_URL": f"ws://127.0.0.1:{free_port()}/",
           "ACTIVATOR_LOG_LEVEL": "error"}
    env.update(extra_env)
    proc = subprocess.Popen([os.path.join(BIN, "activator")], env=env, stdout=subprocess.DEVNULL)
    wait_listening(h1)
    wait_listening(h2)
    # The first probe round marks the pod healthy: wait for a 200.
    deadline = time.monotonic() + 10
    while True:
        try:
            Conn(h1, "h1", REVISION_HEADERS).roundtrip()
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    return proc, {"h1": h1, "h2c": h2}


class Started:
    """A fresh `name` process (with what it needs in front of the app) for one measurement."""

    def __init__(self, name, app_port, workdir, extra):
        self.name, self.app_port, self.workdir, self.extra = name, app_port, workdir, extra
        self.procs = []

    def __enter__(self):
        try:
            if self.name == "queue-proxy":
                proc, ports = start_queue_proxy(self.app_port, self.extra)
                self.procs.append(proc)
                return Target(self.name, ports, proc.pid)
            if self.name == "activator":
                qp, qp_ports = start_queue_proxy(self.app_port, self.extra)
                self.procs.append(qp)
                proc, ports = start_activator(qp_ports["h1"], self.workdir, self.extra)
                self.procs.append(proc)
                return Target(self.name, ports, proc.pid, REVISION_HEADERS)
            proc, worker, ports = start_nginx(self.app_port, self.workdir)
            self.procs.append(proc)
            return Target("nginx 1 worker", ports, worker)
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(self, *_):
        for p in reversed(self.procs):
            # Our binaries would drain for tens of seconds after SIGTERM; nginx's master stops
            # its worker on SIGTERM.
            if self.name == "nginx":
                p.terminate()
            else:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return False


def set_bin_dir(path):
    """Runs the binaries of `path` (the sample app's too) instead of target/release."""
    global BIN
    BIN = path
    load.BIN = path


def env_pairs(values):
    out = {}
    for v in values:
        k, _, val = v.partition("=")
        out[k] = val
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=5000, help="idle keep-alive connections")
    parser.add_argument("--burst", type=int, default=3000, help="connections in the burst (0: skip)")
    parser.add_argument("--after", type=float, default=30, help="seconds after the burst to read RSS")
    parser.add_argument("--only", default="", help="comma list of targets: queue-proxy,activator,nginx")
    parser.add_argument("--protocols", default="h1,h2c")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for both of our binaries")
    parser.add_argument("--bin-dir", default=BIN, help="where queue-proxy, activator and sample-app are")
    args = parser.parse_args()
    set_bin_dir(args.bin_dir)

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(args.connections, args.burst) + 1000
    if hard < need:
        sys.exit(f"the file-descriptor limit ({hard}) is below {need}; raise `ulimit -Hn`")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    only = set(filter(None, args.only.split(",")))
    protocols = args.protocols.split(",")
    extra = env_pairs(args.env)
    procs = []
    workdir = tempfile.mkdtemp(prefix="conn-memory-")
    results = []
    try:
        app, app_port = start_sample_app()
        procs.append(app)
        # One process at a time, and a fresh one for every measurement, so that memory one
        # measurement freed cannot serve the next from the allocator's free lists.
        for name in ("queue-proxy", "activator", "nginx"):
            if only and name not in only:
                continue
            for protocol in protocols:
                row = {"name": name, "protocol": protocol}
                with Started(name, app_port, workdir, extra) as target:
                    idle = measure_idle(target, protocol, args.connections)
                row.update(idle)
                print(f"  {target.name} {protocol}: {args.connections} idle connections: "
                      f"{idle['before'] / 1024:.1f} -> {idle['after'] / 1024:.1f} MiB, {row['per_conn']:.2f} KiB each "
                      f"(opened in {idle['open_s']:.1f} s)", flush=True)
                if args.burst:
                    with Started(name, app_port, workdir, extra) as target:
                        b = measure_burst(target, protocol, args.burst, args.after)
                    row.update({"b_idle": b["idle"], "b_peak": b["peak"], "b_after": b["after"]})
                    print(f"  {target.name} {protocol}: burst of {args.burst}: idle {b['idle'] / 1024:.1f} MiB, "
                          f"peak {b['peak'] / 1024:.1f}, {args.after:.0f} s after {b['after'] / 1024:.1f} "
                          f"(every 5 s, MiB: {' '.join(f'{s / 1024:.0f}' for s in b['samples'][4::5])})",
                          flush=True)
                row["name"] = target.name
                results.append(row)
    finally:
        for p in procs:
            p.kill()
            p.wait()

    print(f"\nconnection memory: {args.connections} idle keep-alive connections (one request each, then idle); "
          f"burst of {args.burst} concurrent connections, RSS {args.after:.0f} s after it ended\n")
    print(f"{'process':16} {'proto':5} {'KiB/idle conn':>13} {'RSS MiB: before':>15} {'with conns':>10} "
          f"{'| burst: idle':>12} {'peak':>6} {f'+{args.after:.0f}s':>6} {'growth':>7}")
    for r in results:
        burst_cols = ""
        if "b_idle" in r:
            burst_cols = (f"{r['b_idle'] / 1024:12.1f} {r['b_peak'] / 1024:6.1f} {r['b_after'] / 1024:6.1f} "
                          f"{(r['b_after'] - r['b_idle']) / 1024:+7.1f}")
        print(f"{r['name']:16} {r['protocol']:5} {r['per_conn']:13.2f} {r['before'] / 1024:15.1f} "
              f"{r['after'] / 1024:10.1f}   {burst_cols}")


if __name__ == "__main__":
    main()
