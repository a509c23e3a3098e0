#!/usr/bin/env bash
# Connection memory benchmark: RSS per idle keep-alive connection and RSS after a burst, for the
# queue-proxy, the activator and nginx (1 worker, access log off), HTTP/1.1 and h2c, measured in
# one run with one connection script (conn_memory.py). Installs nginx (Debian package) if missing
# and builds release binaries.
# Usage: benches/conn_memory.sh [--connections 5000] [--burst 3000] [--after 30] [--only queue-proxy,activator,nginx]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "installing nginx (Debian package)..." >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  # policy-rc.d in containers keeps the package from starting its own service; the benchmark
  # starts its own nginx with its own configuration.
  $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq nginx >/dev/null
fi
export PATH="$PATH:/usr/sbin"
cargo build --release -q -p queue-proxy -p activator -p sample-app
# 5,000 client sockets plus the proxies' upstream sockets.
ulimit -n "$(ulimit -Hn)"
exec python3 benches/conn_memory.py "$@"
