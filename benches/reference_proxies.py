#!/usr/bin/env python3
"""Reference proxies the benchmarks compare ours with: nginx and HAProxy from Debian's packages,
each on one worker/thread, with a keep-alive pool to its upstream and access logs off.

Every start function takes the scenario (`"h1"`: HTTP/1.1 in, HTTP/1.1 keep-alive to the
upstream; `"h2c"`, HAProxy only: h2c with prior knowledge in, h2c to the upstream, as
`load_h2c.py`'s HAProxy h2c->h2c) and returns a `RefProxy` whose `pid` is
the process doing the proxying (nginx's worker, HAProxy's only process) and whose `port` takes
the load.

Both add `X-Forwarded-For`, as our proxies always do, so that the header work compared is the
same. nginx: `worker_processes 1`, `upstream { keepalive 100; }`, `proxy_http_version 1.1` with
an empty `Connection`. HAProxy: `nbthread 1`, `http-reuse always`, `option forwardfor`, no `log`.
"""

import os
import shutil
import socket
import subprocess
import sys
import time

SCENARIOS = ("h1", "h2c")


def ensure_installed(*programs):
    """Installs the Debian packages of `programs` (`nginx`, `haproxy`, `h2load`) that are missing."""
    packages = {"nginx": "nginx", "haproxy": "haproxy", "h2load": "nghttp2-client"}
    missing = [packages[p] for p in programs if not find(p)]
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"installing {' '.join(missing)} (Debian packages)...", file=sys.stderr)
    # policy-rc.d in containers keeps the packages from starting their own services; the
    # benchmarks start their own instances with their own configurations.
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *missing], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def find(program):
    """The program's path (also looked up in /usr/sbin, which a non-root PATH may lack)."""
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")


def version(program):
    flag = "-v"
    out = subprocess.run([find(program), flag], capture_output=True, text=True)
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else program


def wait_listening(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.05):
                return
        except OSError:
            time.sleep(0.001)
    raise RuntimeError(f"nothing listening on {port}")


class RefProxy:
    """A started reference proxy: `port` to load, `pid` of the proxying process."""

    def __init__(self, name, proc, pid, port):
        self.name, self.proc, self.pid, self.port = name, proc, pid, port

    def stop(self):
        # nginx's master stops its worker on SIGTERM; HAProxy exits on it.
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _check(scenario):
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)})")


def nginx_temp_paths(workdir):
    """The `*_temp_path` lines of an `http` block, all inside `workdir` (the defaults need root)."""
    kinds = (("client_body", "body"), ("proxy", "proxy"), ("fastcgi", "fastcgi"), ("uwsgi", "uwsgi"),
             ("scgi", "scgi"))
    return "\n".join(f"  {kind}_temp_path {workdir}/{name};" for kind, name in kinds)


def nginx_worker(proc, timeout=5.0):
    """The pid of the one worker of the nginx master `proc` (the process to measure); kills the
    master if none appears within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            children = f.read().split()
        if children:
            return int(children[0])
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("nginx started no worker")
        time.sleep(0.02)


def nginx_config(scenario, listen_port, upstream_port, workdir, master=True):
    """nginx.conf text: one worker, access log off, keep-alive pool of 100 to the upstream.
    `master=False`: one process and no master (to run it under valgrind). HTTP/1.1 only: nginx
    does not proxy to an HTTP/2 upstream."""
    _check(scenario)
    if scenario != "h1":
        raise ValueError("nginx proxies HTTP/1.1 only here")
    single = "" if master else "master_process off;\n"
    return f"""{single}worker_processes 1;
worker_rlimit_nofile 30000;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 20000; }}
http {{
  access_log off;
{nginx_temp_paths(workdir)}
  keepalive_timeout 300s;
  keepalive_requests 1000000;
  client_max_body_size 0;
  upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 100; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{listen_port};
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_buffering off;
      proxy_request_buffering off;
    }}
  }}
}}
"""


def haproxy_config(scenario, listen_port, upstream_port, workdir):
    """haproxy.cfg text: one thread, no logs, server connections kept and shared (`http-reuse always`)."""
    _check(scenario)
    proto = " proto h2" if scenario == "h2c" else ""
    return f"""global
  nbthread 1
  maxconn 8000
  pidfile {workdir}/haproxy.pid
defaults
  mode http
  option http-keep-alive
  option forwardfor
  http-reuse always
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
frontend fe
  bind 127.0.0.1:{listen_port}{proto}
  default_backend app
backend app
  server app 127.0.0.1:{upstream_port}{proto}
"""


def single_process_command(name, scenario, port, upstream_port, base_dir):
    """The command line of nginx (no master process, HTTP/1.1) or HAProxy (`scenario`: HTTP/1.1
    or h2c both sides), one process proxying `port` to `upstream_port`, its configuration
    written under `base_dir` (for callgrind, and for timing a start)."""
    workdir = _workdir(base_dir, f"{name}-{port}")
    if name == "nginx":
        conf = os.path.join(workdir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_config(scenario, port, upstream_port, workdir, master=False))
        return [find("nginx"), "-c", conf, "-p", workdir]
    conf = os.path.join(workdir, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(haproxy_config(scenario, port, upstream_port, workdir))
    return [find("haproxy"), "-db", "-f", conf]


def _workdir(base, name):
    path = os.path.join(base, name)
    os.makedirs(path, exist_ok=True)
    return path


def start_nginx(scenario, upstream_port, base_dir, port, name="nginx"):
    """nginx proxying `port` to `upstream_port`; waits until it listens and its worker runs."""
    workdir = _workdir(base_dir, f"{name}-{port}")
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(nginx_config(scenario, port, upstream_port, workdir))
    proc = subprocess.Popen([find("nginx"), "-c", conf, "-p", workdir], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_listening(port)
    return RefProxy(name, proc, nginx_worker(proc), port)


def start_haproxy(scenario, upstream_port, base_dir, port, name="haproxy"):
    """HAProxy (foreground, one process, one thread) proxying `port` to `upstream_port`."""
    workdir = _workdir(base_dir, f"{name}-{port}")
    conf = os.path.join(workdir, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(haproxy_config(scenario, port, upstream_port, workdir))
    proc = subprocess.Popen([find("haproxy"), "-db", "-f", conf], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_listening(port)
    return RefProxy(name, proc, proc.pid, port)
