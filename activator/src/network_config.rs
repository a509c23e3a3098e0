//! `config-network` (spec §1.3): read once at startup. The activator acts on three keys —
//! `system-internal-tls` (TLS mode, spec §9), `enable-mesh-pod-addressability` (passthrough LB)
//! and `mesh-compatibility-mode` (spec §5.8) — and validates the others the way
//! `knative.dev/networking/pkg/config` does, so a value upstream rejects also stops this
//! activator at startup with an error naming the key and the value.
//!
//! Validation coverage (everything else upstream parses is a free-form string):
//! - Go `strconv.ParseBool` keys: `enable-mesh-pod-addressability`, `internal-encryption`,
//!   `autocreate-cluster-domain-claims` (+ legacy `autocreateClusterDomainClaims`);
//! - Go `strconv.ParseInt` keys: `rollout-duration` (+ legacy `rolloutDuration`), not negative;
//! - `http-protocol` (+ legacy `httpProtocol`): `enabled`/`disabled`/`redirected`, any case;
//! - `system-internal-tls`, `cluster-local-domain-tls`: `enabled`/`disabled`, any case, or empty;
//! - `domain-template` / `tag-template` (+ legacy `domainTemplate` / `tagTemplate`): unclosed
//!   actions and references to fields the template data does not have are errors; a domain
//!   template made only of text and field references is rendered with upstream's sample values
//!   and must give a bare host name (no path, no query). Templates using other Go template
//!   constructs are accepted without rendering (the activator never renders them).
//! - `namespace-wildcard-cert-selector` (a YAML label selector) is not validated here.

use std::collections::BTreeMap;

use knative_common::env::parse_go_bool;

use crate::backends::MeshMode;

/// Name of the ConfigMap.
pub const CONFIG_NETWORK: &str = "config-network";

/// The `config-network` settings the activator uses (spec §1.3). Decided once at startup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `system-internal-tls: enabled` (or the legacy `internal-encryption: "true"`).
    pub system_internal_tls: bool,
    /// `enable-mesh-pod-addressability`: passthrough-LB mode.
    pub mesh_pod_addressability: bool,
    /// `mesh-compatibility-mode`.
    pub mesh_mode: MeshMode,
}

/// A `config-network` value that upstream rejects (fatal at startup).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid config-network: key {key:?} with value {value:?}: {reason}")]
pub struct NetworkConfigError {
    /// The key.
    pub key: String,
    /// Its value.
    pub value: String,
    /// What is wrong.
    pub reason: String,
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> NetworkConfigError {
    NetworkConfigError {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

type Data = BTreeMap<String, String>;

/// The last of `keys` present in `data` (upstream parses the legacy key first, then the new one,
/// so the new key wins), with its name.
fn last_present<'a>(data: &'a Data, keys: &[&'a str]) -> Option<(&'a str, &'a str)> {
    keys.iter()
        .rev()
        .find_map(|k| data.get(*k).map(|v| (*k, v.as_str())))
}

/// Every present key of `keys` must be a Go bool; the value of the last present one.
fn go_bool(data: &Data, keys: &[&str]) -> Result<Option<bool>, NetworkConfigError> {
    let mut result = None;
    for key in keys {
        if let Some(value) = data.get(*key) {
            match parse_go_bool(value) {
                Some(b) => result = Some(b),
                None => {
                    return Err(invalid(
                        key,
                        value,
                        format!("strconv.ParseBool: parsing {value:?}: invalid syntax"),
                    ))
                }
            }
        }
    }
    Ok(result)
}

/// Go `strconv.ParseInt(s, 10, 64)`: optional sign, ASCII digits, no spaces.
fn go_int(key: &str, value: &str) -> Result<i64, NetworkConfigError> {
    let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            key,
            value,
            format!("strconv.ParseInt: parsing {value:?}: invalid syntax"),
        ));
    }
    value.parse::<i64>().map_err(|_| {
        invalid(
            key,
            value,
            format!("strconv.ParseInt: parsing {value:?}: value out of range"),
        )
    })
}

/// `enabled` / `disabled` / empty (case-insensitive), as upstream's encryption switches.
fn encryption(data: &Data, key: &str) -> Result<Option<bool>, NetworkConfigError> {
    let value = data.get(key).map(String::as_str).unwrap_or("");
    if value.is_empty() {
        Ok(None)
    } else if value.eq_ignore_ascii_case("enabled") {
        Ok(Some(true))
    } else if value.eq_ignore_ascii_case("disabled") {
        Ok(Some(false))
    } else {
        Err(invalid(
            key,
            value,
            "not supported (expected \"enabled\" or \"disabled\")",
        ))
    }
}

impl NetworkConfig {
    /// Parses and validates the ConfigMap's `data`; `None` (no ConfigMap, file source) gives the
    /// defaults.
    pub fn from_data(data: Option<&Data>) -> Result<NetworkConfig, NetworkConfigError> {
        let empty = Data::new();
        let data = data.unwrap_or(&empty);

        go_bool(
            data,
            &[
                "autocreateClusterDomainClaims",
                "autocreate-cluster-domain-claims",
            ],
        )?;
        let mesh_pod_addressability =
            go_bool(data, &["enable-mesh-pod-addressability"])?.unwrap_or(false);
        let internal_encryption = go_bool(data, &["internal-encryption"])?.unwrap_or(false);
        let mesh_mode = data
            .get("mesh-compatibility-mode")
            .map_or(MeshMode::Auto, |v| MeshMode::from_config(v));

        let mut rollout = None;
        for key in ["rolloutDuration", "rollout-duration"] {
            if let Some(value) = data.get(key) {
                rollout = Some((key, value.as_str(), go_int(key, value)?));
            }
        }
        if let Some((key, value, seconds)) = rollout {
            if seconds < 0 {
                return Err(invalid(key, value, "must be a non-negative integer"));
            }
        }

        // Strings are trimmed by upstream's parser before use.
        let domain = last_present(data, &["domainTemplate", "domain-template"]);
        if let Some((key, value)) = domain {
            check_template(key, value.trim(), DOMAIN_FIELDS, true)?;
        }
        let tag = last_present(data, &["tagTemplate", "tag-template"]);
        if let Some((key, value)) = tag {
            check_template(key, value.trim(), TAG_FIELDS, false)?;
        }

        if let Some((key, value)) = last_present(data, &["httpProtocol", "http-protocol"]) {
            let ok = value.is_empty()
                || ["enabled", "disabled", "redirected"]
                    .iter()
                    .any(|p| value.eq_ignore_ascii_case(p));
            if !ok {
                return Err(invalid(
                    key,
                    value,
                    "not supported (expected \"enabled\", \"disabled\" or \"redirected\")",
                ));
            }
        }

        // The new key wins when it says `enabled`; when it is empty or `disabled` the legacy
        // `internal-encryption: "true"` still turns TLS on (upstream's backward compatibility).
        let system_internal_tls = match encryption(data, "system-internal-tls")? {
            Some(true) => true,
            None | Some(false) => internal_encryption,
        };
        encryption(data, "cluster-local-domain-tls")?;

        Ok(NetworkConfig {
            system_internal_tls,
            mesh_pod_addressability,
            mesh_mode,
        })
    }
}

/// Fields of upstream's `DomainTemplateValues`, with the sample values its check renders.
const DOMAIN_FIELDS: &[(&str, &str)] = &[
    ("Name", "foo"),
    ("Namespace", "bar"),
    ("Domain", "baz.com"),
    ("Annotations", ""),
    ("Labels", ""),
];

/// Fields of upstream's `TagTemplateValues`.
const TAG_FIELDS: &[(&str, &str)] = &[("Name", "foo"), ("Tag", "v2")];

/// Checks a Go template against the fields its data has (see the module documentation).
fn check_template(
    key: &str,
    template: &str,
    fields: &[(&str, &str)],
    is_domain: bool,
) -> Result<(), NetworkConfigError> {
    let mut rendered = String::new();
    let mut renderable = true;
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let mut text = &rest[..start];
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(invalid(key, template, "template: unclosed action"));
        };
        let mut action = &after[..end];
        rest = &after[end + 2..];
        if let Some(trimmed) = action.strip_prefix("- ") {
            action = trimmed;
            text = text.trim_end();
        }
        if let Some(trimmed) = action.strip_suffix(" -") {
            action = trimmed;
            rest = rest.trim_start();
        }
        rendered.push_str(text);
        let action = action.trim();
        if action.starts_with("/*") {
            continue;
        }
        match simple_field(action) {
            Some(field) => match fields.iter().find(|(name, _)| *name == field) {
                Some((_, sample)) => rendered.push_str(sample),
                None => {
                    return Err(invalid(
                        key,
                        template,
                        format!("template: can't evaluate field {field}"),
                    ))
                }
            },
            None => renderable = false,
        }
    }
    rendered.push_str(rest);
    if is_domain && renderable {
        check_domain(key, template, &rendered)?;
    }
    Ok(())
}

/// `.Field` (a single field reference) → `Field`.
fn simple_field(action: &str) -> Option<&str> {
    let field = action.strip_prefix('.')?;
    (!field.is_empty() && field.chars().all(|c| c.is_alphanumeric() || c == '_')).then_some(field)
}

/// Upstream parses `https://<rendered>` as a URL: the host must not be empty and the request
/// URI must be `/`.
fn check_domain(key: &str, template: &str, rendered: &str) -> Result<(), NetworkConfigError> {
    let without_fragment = rendered.split('#').next().unwrap_or("");
    let authority_end = without_fragment
        .find(['/', '?'])
        .unwrap_or(without_fragment.len());
    let (authority, tail) = without_fragment.split_at(authority_end);
    if authority
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            key,
            template,
            format!("invalid character in host name {authority:?}"),
        ));
    }
    let host = authority.rsplit('@').next().unwrap_or("");
    let hostname = if let Some(bracketed) = host.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    if hostname.is_empty() {
        return Err(invalid(key, template, "empty hostname"));
    }
    if !tail.is_empty() && tail != "/" {
        return Err(invalid(
            key,
            template,
            format!("domain template has url path: {tail}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> Data {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<NetworkConfig, NetworkConfigError> {
        NetworkConfig::from_data(Some(&data(pairs)))
    }

    #[test]
    fn defaults_without_config_map_or_keys() {
        assert_eq!(NetworkConfig::from_data(None), Ok(NetworkConfig::default()));
        let c = parse(&[]).unwrap();
        assert!(!c.system_internal_tls && !c.mesh_pod_addressability);
        assert_eq!(c.mesh_mode, MeshMode::Auto);
    }

    #[test]
    fn system_internal_tls_values() {
        for (value, want) in [
            ("enabled", true),
            ("Enabled", true),
            ("ENABLED", true),
            ("disabled", false),
            ("DisAbled", false),
            ("", false),
        ] {
            let c = parse(&[("system-internal-tls", value)]).unwrap();
            assert_eq!(c.system_internal_tls, want, "{value:?}");
        }
        let e = parse(&[("system-internal-tls", "on")]).unwrap_err();
        assert_eq!(e.key, "system-internal-tls");
        assert!(e.to_string().contains("\"on\""), "{e}");
    }

    #[test]
    fn legacy_internal_encryption() {
        assert!(
            parse(&[("internal-encryption", "true")])
                .unwrap()
                .system_internal_tls
        );
        // An empty or disabled new key does not override the legacy switch.
        assert!(
            parse(&[
                ("internal-encryption", "true"),
                ("system-internal-tls", "disabled")
            ])
            .unwrap()
            .system_internal_tls
        );
        assert!(
            !parse(&[("internal-encryption", "false")])
                .unwrap()
                .system_internal_tls
        );
        let e = parse(&[("internal-encryption", "yes")]).unwrap_err();
        assert_eq!(e.key, "internal-encryption");
        assert!(e.reason.contains("ParseBool"), "{e}");
    }

    #[test]
    fn mesh_settings() {
        for (value, want) in [("1", true), ("t", true), ("TRUE", true), ("False", false)] {
            let c = parse(&[("enable-mesh-pod-addressability", value)]).unwrap();
            assert_eq!(c.mesh_pod_addressability, want, "{value:?}");
        }
        for bad in ["yes", " true", "tRUE"] {
            let e = parse(&[("enable-mesh-pod-addressability", bad)]).unwrap_err();
            assert_eq!(e.key, "enable-mesh-pod-addressability");
            assert_eq!(e.value, bad);
        }
        for (value, want) in [
            ("enabled", MeshMode::Enabled),
            ("DISABLED", MeshMode::Disabled),
            ("auto", MeshMode::Auto),
            ("whatever", MeshMode::Auto),
        ] {
            assert_eq!(
                parse(&[("mesh-compatibility-mode", value)])
                    .unwrap()
                    .mesh_mode,
                want
            );
        }
    }

    #[test]
    fn other_keys_are_validated() {
        for (key, value) in [
            ("rollout-duration", "ten"),
            ("rollout-duration", "-1"),
            ("rollout-duration", " 5"),
            ("rolloutDuration", "1.5"),
            ("autocreate-cluster-domain-claims", "maybe"),
            ("http-protocol", "sometimes"),
            ("httpProtocol", "bogus"),
            ("cluster-local-domain-tls", "yes"),
            ("domain-template", "{{.Name}}.{{.Namespace"),
            ("domain-template", "{{.Name}}.{{.Unknown}}"),
            ("domain-template", "{{.Name}}.{{.Domain}}/path"),
            ("domain-template", "{{.Name}}?x"),
            ("domain-template", ":80"),
            ("tag-template", "{{.Tag}}-{{.Namespace}}"),
        ] {
            let e = parse(&[(key, value)]).unwrap_err();
            assert_eq!((e.key.as_str(), e.value.as_str()), (key, value), "{e}");
            let text = e.to_string();
            assert!(
                text.contains(key) && text.contains("config-network"),
                "{text}"
            );
        }
        for (key, value) in [
            ("rollout-duration", "0"),
            ("rollout-duration", "+300"),
            ("http-protocol", "Redirected"),
            ("http-protocol", ""),
            ("cluster-local-domain-tls", "Enabled"),
            ("domain-template", "{{.Name}}.{{.Namespace}}.{{.Domain}}"),
            ("domain-template", " {{.Name}}-{{.Namespace}}.{{.Domain}} "),
            ("domain-template", "{{- .Name -}}.{{.Domain}}"),
            (
                "domain-template",
                "{{.Name}}.{{index .Annotations \"x\"}}.{{.Domain}}",
            ),
            ("tag-template", "{{.Tag}}-{{.Name}}"),
            ("ingress-class", "kourier.ingress.networking.knative.dev"),
        ] {
            assert!(parse(&[(key, value)]).is_ok(), "{key}: {value:?}");
        }
    }

    #[test]
    fn the_new_key_wins_over_the_legacy_one() {
        assert!(parse(&[("httpProtocol", "bogus"), ("http-protocol", "enabled")]).is_ok());
        // Both are still parsed: an invalid legacy boolean is an error as upstream.
        assert!(parse(&[
            ("autocreateClusterDomainClaims", "x"),
            ("autocreate-cluster-domain-claims", "true")
        ])
        .is_err());
    }
}
