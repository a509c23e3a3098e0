//! The queue-proxy's environment: the input is `NAME=value` lines laid over a valid base
//! environment; `Config::from_env` gives a configuration or an error naming a variable, never a
//! panic.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut env: HashMap<String, String> = [
        ("SERVING_NAMESPACE", "default"),
        ("SERVING_CONFIGURATION", "cfg"),
        ("SERVING_REVISION", "rev-00001"),
        ("SERVING_POD", "pod"),
        ("SERVING_POD_IP", "10.0.0.1"),
        ("QUEUE_SERVING_PORT", "8012"),
        ("USER_PORT", "8080"),
        ("CONTAINER_CONCURRENCY", "0"),
        ("REVISION_TIMEOUT_SECONDS", "300"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for line in text.lines() {
        if let Some((name, value)) = line.split_once('=') {
            env.insert(name.to_owned(), value.to_owned());
        }
    }
    let _ = queue_proxy::config::Config::from_env(&env);
});
