//! Being written (see the crate documentation).
