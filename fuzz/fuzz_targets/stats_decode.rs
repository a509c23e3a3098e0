//! Protobuf decoding of the autoscaler stats messages (`WireStatMessages`, `Stat`): any bytes
//! decode or fail cleanly, and what decodes re-encodes to bytes that decode and re-encode to the
//! same bytes (compared as bytes: a NaN stat is not equal to itself).
#![no_main]

use knative_common::stats::{Stat, WireStatMessages};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = WireStatMessages::decode(data) {
        let bytes = batch.encode_to_vec();
        let again = WireStatMessages::decode(bytes.as_slice()).expect("re-encoded batch decodes");
        assert_eq!(bytes, again.encode_to_vec());
    }
    let _ = Stat::decode(data);
});
