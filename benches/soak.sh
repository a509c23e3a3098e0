#!/usr/bin/env bash
# Soak benchmark (not run in CI): steady load plus periodic app faults through
# activator -> queue-proxy -> sample app; reports RSS over time, errors and throughput stability.
# Installs wrk if missing, builds release binaries, then runs soak.py.
# Usage: benches/soak.sh [--duration 600] [--window 10] [--connections 32] [--fault-every 3] [--short]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null 2>&1; then
  echo "installing wrk (Debian package)..." >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq wrk >/dev/null
fi
cargo build --release -q -p queue-proxy -p activator -p sample-app
exec python3 benches/soak.py "$@"
