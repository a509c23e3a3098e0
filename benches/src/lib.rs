//! Benchmark support: the bare-hop reference proxy lives in `src/bin/bare_hop.rs`, the criterion
//! benches in `benches/`, and the load benchmark driver in `load.py` (run through `load.sh`).
