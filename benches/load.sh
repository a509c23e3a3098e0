#!/usr/bin/env bash
# Load benchmark, HTTP/1.1: the sample app directly, through a bare hyper hop, nginx, HAProxy, the
# queue-proxy (CC=0 and CC=10), activator -> queue-proxy -> app and nginx -> nginx -> app,
# measured in one run. load.py installs nginx, HAProxy and h2load (Debian packages) if missing;
# this script builds the release binaries first.
# Usage: benches/load.sh [--requests 100000] [--connections 50] [--rounds 3] [--only NAME,...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
cargo build --release -q -p queue-proxy -p activator -p sample-app -p benches --bins
exec python3 benches/load.py "$@"
