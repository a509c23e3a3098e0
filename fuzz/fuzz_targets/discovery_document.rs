//! The activator's discovery file (`ACTIVATOR_DISCOVERY_FILE`): any bytes either parse into a
//! snapshot or give a clean error, never a panic; and the cached parse the file source uses
//! (`parse_document_cached`) gives exactly the same result, with an empty cache and with a cache
//! filled by a previous document (the input's first half, when it parses).
#![no_main]

use activator::discovery::{parse_document, parse_document_cached, DocumentCache};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let expected = parse_document(data);
    let mut cache = DocumentCache::default();
    assert_eq!(parse_document_cached(data, &mut cache), expected);
    let mut warm = DocumentCache::default();
    let _ = parse_document_cached(&data[..data.len() / 2], &mut warm);
    assert_eq!(parse_document_cached(data, &mut warm), expected);
});
