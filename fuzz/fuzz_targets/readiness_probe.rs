//! `SERVING_READINESS_PROBE` parsing, single-object and multi-container forms, with and without
//! HTTP/2 auto-detection: any input either parses or is a clean error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use queue_proxy::readiness::Readiness;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for multi in [false, true] {
            let _ = Readiness::from_env(text, multi, multi);
        }
    }
});
