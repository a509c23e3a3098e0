#!/usr/bin/env bash
# Load benchmark: the sample app directly, through a bare hyper hop, and through the queue-proxy
# (CC=0 and CC=10), measured in one run. Installs wrk if missing, builds release binaries, then
# runs load.py. Usage: benches/load.sh [--duration SECONDS] [--connections N]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null 2>&1; then
  echo "installing wrk (Debian package)..." >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq wrk >/dev/null
fi
cargo build --release -q -p queue-proxy -p activator -p sample-app -p benches --bins
exec python3 benches/load.py "$@"
