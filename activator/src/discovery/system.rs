//! The objects of the system namespace the activator reads besides revisions (spec §1.3, §9):
//! ConfigMaps (`config-network`, `config-logging`, `config-observability`, trust bundles) and
//! Secrets (`routing-serving-certs`). Sources publish them inside the [`Snapshot`](super::Snapshot)
//! (the Kubernetes source from its system-namespace watches, the file source from the document's
//! `configMaps` / `secrets` sections); consumers compare [`Arc`] pointers or values to see changes.

use std::collections::BTreeMap;

/// Label marking a ConfigMap as a trust bundle (any value; spec §9).
pub const TRUST_BUNDLE_LABEL: &str = "networking.knative.dev/trust-bundle";

/// Name of the Secret holding the system-internal TLS certificates (spec §9).
pub const ROUTING_SERVING_CERTS: &str = "routing-serving-certs";

/// One ConfigMap: its labels and `data` (`binaryData` is not used by Knative's ConfigMaps).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigMapObject {
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `data`.
    pub data: BTreeMap<String, String>,
}

impl ConfigMapObject {
    /// Whether the ConfigMap carries the trust-bundle label.
    pub fn is_trust_bundle(&self) -> bool {
        self.labels.contains_key(TRUST_BUNDLE_LABEL)
    }
}

/// One Secret: its decoded `data`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretObject {
    /// `data`, base64-decoded.
    pub data: BTreeMap<String, Vec<u8>>,
}

/// ConfigMaps and Secrets of the system namespace, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SystemObjects {
    /// ConfigMaps by name.
    pub config_maps: BTreeMap<String, ConfigMapObject>,
    /// Secrets by name.
    pub secrets: BTreeMap<String, SecretObject>,
}

impl SystemObjects {
    /// The ConfigMap's data, if the ConfigMap exists.
    pub fn config_map(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.config_maps.get(name).map(|c| &c.data)
    }

    /// The Secret, if it exists.
    pub fn secret(&self, name: &str) -> Option<&SecretObject> {
        self.secrets.get(name)
    }

    /// The ConfigMaps labelled as trust bundles, by name.
    pub fn trust_bundles(&self) -> impl Iterator<Item = (&str, &ConfigMapObject)> {
        self.config_maps
            .iter()
            .filter(|(_, c)| c.is_trust_bundle())
            .map(|(n, c)| (n.as_str(), c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_bundles_are_the_labelled_config_maps() {
        let mut objects = SystemObjects::default();
        objects
            .config_maps
            .insert("config-network".into(), ConfigMapObject::default());
        let mut bundle = ConfigMapObject::default();
        bundle
            .labels
            .insert(TRUST_BUNDLE_LABEL.into(), "anything".into());
        objects.config_maps.insert("my-ca".into(), bundle);
        let names: Vec<_> = objects.trust_bundles().map(|(n, _)| n).collect();
        assert_eq!(names, ["my-ca"]);
        assert!(objects.config_map("config-network").is_some());
        assert!(objects.secret(ROUTING_SERVING_CERTS).is_none());
    }
}
