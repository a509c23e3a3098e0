//! The resource exported with every span (queue-proxy §7.1): what the process is.

use knative_common::env::Env;

/// `telemetry.sdk.*` values of this implementation.
const SDK_NAME: &str = "knative-common";
const SDK_LANGUAGE: &str = "rust";
const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Resource attributes (string-valued), in export order. Later [`Resource::set`] calls replace
/// earlier values of the same key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resource {
    attributes: Vec<(String, String)>,
}

impl Resource {
    /// An empty resource.
    pub fn empty() -> Self {
        Resource::default()
    }

    /// The base every process resource starts from, as the Go SDK's `resource.Default()`: the
    /// `OTEL_RESOURCE_ATTRIBUTES` entries (percent-decoded; malformed entries skipped),
    /// `service.name` from `OTEL_SERVICE_NAME` when set, and the `telemetry.sdk.*` attributes.
    pub fn sdk_default(env: &dyn Env) -> Self {
        let mut resource = Resource::empty();
        for (key, value) in
            parse_resource_attributes(&env.var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default())
        {
            resource.set(key, value);
        }
        if let Some(name) = env.var("OTEL_SERVICE_NAME").filter(|n| !n.is_empty()) {
            resource.set("service.name", name);
        }
        resource.set("telemetry.sdk.language", SDK_LANGUAGE);
        resource.set("telemetry.sdk.name", SDK_NAME);
        resource.set("telemetry.sdk.version", SDK_VERSION);
        resource
    }

    /// Sets `key` to `value`, replacing an existing value.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        let value = value.into();
        match self.attributes.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.attributes.push((key, value)),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All attributes.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value` pairs separated by commas, values percent-encoded.
/// Malformed entries are skipped.
pub fn parse_resource_attributes(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let key = key.trim();
            if key.is_empty() {
                return None;
            }
            Some((key.to_owned(), percent_decode(value.trim())?))
        })
        .collect()
}

/// Decodes `%XX` escapes; `None` for a malformed escape or invalid UTF-8.
pub(crate) fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn sdk_default_and_overrides() {
        let env: HashMap<&str, &str> = [
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "team=a%20b, service.name=x,bad,=v,k=%zz",
            ),
            ("OTEL_SERVICE_NAME", "named"),
        ]
        .into_iter()
        .collect();
        let mut r = Resource::sdk_default(&env);
        assert_eq!(r.get("team"), Some("a b"));
        assert_eq!(r.get("service.name"), Some("named"));
        assert_eq!(r.get("k"), None);
        assert_eq!(r.get("telemetry.sdk.language"), Some("rust"));
        r.set("service.name", "explicit");
        assert_eq!(r.get("service.name"), Some("explicit"));
        assert_eq!(r.iter().filter(|(k, _)| *k == "service.name").count(), 1);
    }
}
