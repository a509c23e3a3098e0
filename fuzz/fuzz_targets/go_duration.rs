//! Go `time.ParseDuration` syntax (activator `PROBE_TIMEOUT`, `PROBE_FREQUENCY`): any text
//! parses or fails cleanly; never a panic or an overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = activator::backends::parse_go_duration(text);
    }
});
