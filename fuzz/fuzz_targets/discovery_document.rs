//! The activator's discovery file (`ACTIVATOR_DISCOVERY_FILE`): any bytes either parse into a
//! snapshot or give a clean error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = activator::discovery::parse_document(data);
});
