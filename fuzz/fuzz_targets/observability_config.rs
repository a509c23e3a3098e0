//! `OBSERVABILITY_CONFIG` parsing: any input either parses or is a clean error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use queue_proxy::observability::ObservabilityConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ObservabilityConfig::parse(text);
    }
});
