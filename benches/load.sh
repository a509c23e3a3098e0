#!/usr/bin/env bash
# Load benchmark, HTTP/1.1: the sample app directly, through a bare hyper hop, nginx, HAProxy, the
# queue-proxy (CC=0 and CC=10), activator -> queue-proxy -> app and nginx -> nginx -> app,
# measured in one run. load.py installs nginx, HAProxy and h2load (Debian packages) if missing;
# this script builds the release binaries first (and the queue-proxy static-pie, as shipped, for
# its start-up figure).
# Usage: benches/load.sh [--requests 100000] [--connections 50] [--rounds 3] [--only NAME,...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
if [ "${1:-}" = "--h2c" ]; then
  # benches/load.sh --h2c [load_h2c.py options]: the h2c benchmark (h2load against HAProxy, nginx,
  # the queue-proxy and the activator). Installs h2load (nghttp2-client), HAProxy and nginx
  # (Debian packages; policy-rc.d in containers keeps them from starting their own services).
  shift
  missing=()
  command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
  command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
  command -v nginx >/dev/null 2>&1 || missing+=(nginx)
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]} (Debian packages)..." >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  cargo build --release -q -p queue-proxy -p activator -p sample-app
  exec python3 benches/load_h2c.py "$@"
fi
cargo build --release -q -p queue-proxy -p activator -p sample-app -p benches --bins
# The start-up figure is taken on the queue-proxy as release images ship it: static-pie
# (-Ctarget-feature=+crt-static, scripts/lib/release-env.sh), built for the host triple so that
# the flag reaches the target only, not build scripts or proc macros.
host=$(rustc -vV | sed -n 's/^host: //p')
flags_var="CARGO_TARGET_$(echo "$host" | tr 'a-z-' 'A-Z_')_RUSTFLAGS"
env "$flags_var=-Ctarget-feature=+crt-static" cargo build --release -q --target "$host" -p queue-proxy
exec python3 benches/load.py --startup-bin "target/$host/release/queue-proxy" "$@"
