//! The forwarded shim: `X-Forwarded-For`, `-Proto` and `-Host` values (split from the input at
//! 0xFF bytes) either give no header or a `Forwarded` value; never a panic.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    let names = [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
    ];
    for (name, part) in names.iter().zip(data.split(|b| *b == 0xff)) {
        if let Ok(value) = HeaderValue::from_bytes(part) {
            headers.append(*name, value);
        }
    }
    if let Some(value) = knative_common::forwarded::synthesize(&headers) {
        assert!(!value.is_empty());
    }
});
