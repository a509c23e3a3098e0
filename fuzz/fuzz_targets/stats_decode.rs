//! Protobuf decoding of the autoscaler stats messages (`WireStatMessages`, `Stat`): any bytes
//! decode or fail cleanly, and what decodes re-encodes to bytes that decode to the same value.
#![no_main]

use knative_common::stats::{Stat, WireStatMessages};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = WireStatMessages::decode(data) {
        let again = WireStatMessages::decode(batch.encode_to_vec().as_slice())
            .expect("re-encoded batch decodes");
        assert_eq!(batch, again);
    }
    let _ = Stat::decode(data);
});
