#!/usr/bin/env python3
"""Activator at cluster scale, file discovery source (issue 12's figures). The discovery file lists
--revisions revisions spread over --namespaces namespaces; every other revision has one ready pod
(a real queue-proxy in front of the sample app, shared by all of them: the activator probes it
once per revision), the rest are scaled to zero. It prints:

- start (exec) -> listening, and idle RSS once the startup probing has settled;
- the activator CPU spent applying a replaced file that changes one revision's pods (CPU over a
  window after the rename, minus the idle rate), median over --changes replacements;
- for a revision scaled to zero with a request held, the time from the file's rename (giving it
  the pod) to the held request's response, median over the same replacements;
- the memory of an idle revision: idle RSS minus that of an activator listing one revision,
  per revision;
- lazy per-revision state: RSS after one request to each of --touch revisions with a pod, and
  again once they were idle for longer than the idle timeout (--idle-seconds, passed as
  ACTIVATOR_REVISION_IDLE_TIMEOUT; 2 s here so the run stays short) and were evicted.

Needs release builds (benches/load.sh builds them, or `cargo build --release -p activator
-p queue-proxy -p sample-app`). Usage: benches/scale.py [--revisions 10000] [--changes 7] [--touch 2000] [--idle-seconds 2]."""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from load import BIN, free_port, qp_env, rss_kib, start_sample_app, wait_listening  # noqa: E402


def cpu_seconds(pid):
    """CPU time of every thread of `pid`, from schedstat (nanoseconds; /proc/PID/stat counts
    10 ms ticks, too coarse for one change)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass  # the thread ended meanwhile
    return total / 1e9


def revision(i, namespaces, pod):
    rev = {"namespace": f"ns-{i % namespaces}", "name": f"rev-{i}", "containerConcurrency": 10,
           "pods": {"ready": [pod] if pod else [], "notReady": []}, "activators": ["127.0.0.1"]}
    return rev


def document(count, namespaces, pod, overrides):
    revs = []
    for i in range(count):
        revs.append(revision(i, namespaces, overrides.get(i, pod if i % 2 == 0 else None)))
    return json.dumps({"revisions": revs})


def write_atomically(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def settle(pid, window=1.0, idle_share=0.02, limit=60.0):
    """Waits until the process used less than `idle_share` of a core over `window`; returns the
    idle CPU rate (seconds per second)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        c0 = cpu_seconds(pid)
        time.sleep(window)
        rate = (cpu_seconds(pid) - c0) / window
        if rate < idle_share:
            return rate
    raise RuntimeError("activator never went idle")


def held_request(port, namespace, name, out):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", "/", headers={"Knative-Serving-Namespace": namespace, "Knative-Serving-Revision": name})
    resp = c.getresponse()
    resp.read()
    out.append((time.monotonic(), resp.status))


def start_activator(path, port, idle_timeout):
    return subprocess.Popen([os.path.join(BIN, "activator")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(
        os.environ, POD_NAME="activator-bench", POD_IP="127.0.0.1", SYSTEM_NAMESPACE="knative-serving",
        ACTIVATOR_HTTP1_PORT=str(port), ACTIVATOR_H2C_PORT=str(free_port()),
        ACTIVATOR_DISCOVERY_FILE=path, ACTIVATOR_AUTOSCALER_URL=f"ws://127.0.0.1:{free_port()}/",
        ACTIVATOR_REVISION_IDLE_TIMEOUT=idle_timeout,
        ACTIVATOR_LOG_LEVEL="error", METRICS_PROMETHEUS_PORT=str(free_port())))


def baseline_rss(workdir, pod, idle_timeout):
    """Idle RSS of an activator whose file lists a single revision."""
    path = os.path.join(workdir, "one.json")
    write_atomically(path, document(1, 1, pod, {}))
    port = free_port()
    act = start_activator(path, port, idle_timeout)
    try:
        wait_listening(port, timeout=60)
        settle(act.pid)
        return rss_kib(act.pid)
    finally:
        act.kill()
        act.wait()


def touch(port, revisions, namespaces):
    """One request to each revision with a pod (even index) among the first `revisions`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for i in range(0, revisions, 2):
        conn.request("GET", "/", headers={"Knative-Serving-Namespace": f"ns-{i % namespaces}",
                                          "Knative-Serving-Revision": f"rev-{i}"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"rev-{i}: {resp.status}")
    conn.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--revisions", type=int, default=10000)
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--changes", type=int, default=7)
    parser.add_argument("--touch", type=int, default=2000)
    parser.add_argument("--idle-seconds", type=float, default=2.0)
    args = parser.parse_args()
    args.idle_timeout = f"{args.idle_seconds}s"

    qp_port, act_port = free_port(), free_port()
    app, app_port = start_sample_app()
    qp = subprocess.Popen([os.path.join(BIN, "queue-proxy")], env=qp_env(app_port, 0, qp_port),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(qp_port)
    pod = f"127.0.0.1:{qp_port}"
    workdir = tempfile.mkdtemp(prefix="scale-bench-")
    path = os.path.join(workdir, "revisions.json")
    overrides = {}
    write_atomically(path, document(args.revisions, args.namespaces, pod, overrides))
    base_rss = baseline_rss(workdir, pod, args.idle_timeout)
    t0 = time.monotonic()
    act = start_activator(path, act_port, args.idle_timeout)
    try:
        wait_listening(act_port, timeout=60)
        listening_ms = (time.monotonic() - t0) * 1000
        idle_rate = settle(act.pid)
        idle_rss = rss_kib(act.pid)

        cpu_ms, release_ms = [], []
        for k in range(args.changes):
            # A scaled-to-zero revision (odd index) gets a request held, then the file gives it the
            # pod: one revision's pods change, everything else stays.
            target = 2 * k + 1
            ns, name = f"ns-{target % args.namespaces}", f"rev-{target}"
            done = []
            client = threading.Thread(target=held_request, args=(act_port, ns, name, done))
            client.start()
            time.sleep(0.5)  # the request is held (the activator has no pod for it)
            if done:
                raise RuntimeError(f"request for {ns}/{name} was not held: {done}")
            overrides[target] = pod
            text = document(args.revisions, args.namespaces, pod, overrides)
            window = 2.0
            c0 = cpu_seconds(act.pid)
            renamed = time.monotonic()
            write_atomically(path, text)
            client.join(timeout=30)
            if not done or done[0][1] != 200:
                raise RuntimeError(f"held request for {ns}/{name} not served: {done}")
            release_ms.append((done[0][0] - renamed) * 1000)
            time.sleep(max(0.0, renamed + window - time.monotonic()))
            cpu_ms.append(max(0.0, (cpu_seconds(act.pid) - c0 - idle_rate * window)) * 1000)
            settle(act.pid)

        # Lazy per-revision state: touched revisions get a throttler and a watcher, then lose
        # both once idle.
        touch(act_port, args.touch, args.namespaces)
        touched_rss = rss_kib(act.pid)
        time.sleep(args.idle_seconds * 1.5 + 1.0)
        settle(act.pid)
        time.sleep(2.0)  # the allocator returns freed pages within about a second
        evicted_rss = rss_kib(act.pid)

        print(f"activator, file discovery: {args.revisions} revisions in {args.namespaces} namespaces, "
              f"half with a ready pod")
        print(f"  exec -> listening                      {listening_ms:8.0f} ms")
        print(f"  idle RSS after startup probing         {idle_rss / 1024:8.1f} MB "
              f"({idle_rss * 1024 / args.revisions / 1024:.2f} KiB per revision)")
        print(f"  CPU to apply a one-revision change     {statistics.median(cpu_ms):8.2f} ms "
              f"(median of {len(cpu_ms)}; min {min(cpu_ms):.1f}, max {max(cpu_ms):.1f})")
        print(f"  rename -> held request answered        {statistics.median(release_ms):8.1f} ms "
              f"(median of {len(release_ms)}; min {min(release_ms):.1f}, max {max(release_ms):.1f}; "
              f"includes up to 100 ms of file polling)")
        print(f"  idle RSS with one revision listed      {base_rss / 1024:8.1f} MB "
              f"-> {(idle_rss - base_rss) * 1024 / args.revisions:.0f} bytes per idle revision")
        print(f"  after one request to {args.touch // 2} revisions      {touched_rss / 1024:8.1f} MB")
        print(f"  once they were evicted ({args.idle_timeout} idle)      {evicted_rss / 1024:8.1f} MB")
        print(f"  RSS at the end                         {rss_kib(act.pid) / 1024:8.1f} MB")
    finally:
        for p in (act, qp, app):
            p.kill()
            p.wait()
        for f in os.listdir(workdir):
            os.unlink(os.path.join(workdir, f))
        os.rmdir(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
