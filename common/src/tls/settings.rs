//! `<PREFIX>_MIN_VERSION`, `_MAX_VERSION`, `_CIPHER_SUITES` and `_CURVE_PREFERENCES`: the knobs of
//! a system-internal TLS listener, parsed the way `knative.dev/pkg/tls` parses them and mapped
//! onto what rustls (with the *ring* provider) can do.
//!
//! Mapping decisions (Go name → rustls):
//!
//! - Versions: `""` → TLS 1.3 for the minimum (queue-proxy §8) and TLS 1.3 for the maximum (Go's
//!   library default); `"1.2"`, `"1.3"` as named; anything else (no trimming, as in Go) is an
//!   error. A minimum above the maximum is an error here (Go would only fail every handshake).
//! - Cipher suites (Go's `tls.CipherSuites()` names only):
//!   - the six ECDHE AEAD suites map to the identically named *ring* suites;
//!   - the three TLS 1.3 names are accepted and ignored (neither Go nor rustls lets TLS 1.3
//!     suites be configured);
//!   - the four `TLS_ECDHE_*_WITH_AES_*_CBC_SHA` suites are secure in Go's eyes but rustls
//!     implements no CBC suite: accepted and skipped (a warning is logged);
//!   - a name from Go's `tls.InsecureCipherSuites()` is rejected as insecure, any other name as
//!     unknown (Go rejects both as "unknown", since Knative looks names up in the secure list).
//!   - If the list names no usable TLS 1.2 suite (only TLS 1.3 and/or CBC names), the TLS 1.2
//!     suite set stays at the default rather than leaving TLS 1.2 with nothing to negotiate.
//! - Curves: `CurveP256`/`P-256` → secp256r1, `CurveP384`/`P-384` → secp384r1, `X25519` → x25519,
//!   in the order given, duplicates dropped. `CurveP521`/`P-521` and `X25519MLKEM768` are valid
//!   Go names that the *ring* provider cannot offer: accepted and skipped with a warning (failing
//!   startup would turn a configuration Go accepts into a crash loop; the peer, a Go client,
//!   always also offers X25519 and P-256). If nothing usable remains, the provider's default
//!   groups are used. Any other name is an error.
//!
//! TLS 1.2 suites are kept in Go's server preference order (AES-128-GCM, AES-256-GCM,
//! ChaCha20-Poly1305; ECDSA before RSA) whatever order the variable lists them in, since Go
//! filters its preference list by the configuration and never reorders it.

use std::fmt;

use rustls::crypto::ring::{cipher_suite, kx_group};
use rustls::crypto::SupportedKxGroup;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

use crate::env::Env;

/// A TLS protocol version the listener can be limited to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

impl TlsVersion {
    /// Parses the variable's value: exactly `1.2` or `1.3` (callers handle the empty default).
    fn parse(value: &str) -> Option<Self> {
        match value {
            "1.2" => Some(TlsVersion::Tls12),
            "1.3" => Some(TlsVersion::Tls13),
            _ => None,
        }
    }

    fn rustls(self) -> &'static SupportedProtocolVersion {
        match self {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        })
    }
}

/// A `<PREFIX>_*` TLS variable that does not parse. Every message names the full variable and its
/// value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsSettingsError {
    /// `_MIN_VERSION` or `_MAX_VERSION` is neither empty, `1.2` nor `1.3`.
    #[error("invalid {name} {value:?}: unsupported TLS version, must be \"1.2\" or \"1.3\"")]
    InvalidVersion {
        /// The variable, e.g. `QUEUE_PROXY_TLS_MIN_VERSION`.
        name: String,
        /// Its value.
        value: String,
    },
    /// The minimum version is above the maximum.
    #[error("invalid {min_name} {min:?}: above {max_name} {max:?}")]
    VersionRange {
        /// The minimum's variable.
        min_name: String,
        /// The minimum.
        min: String,
        /// The maximum's variable.
        max_name: String,
        /// The maximum.
        max: String,
    },
    /// A cipher suite name that Go does not know at all.
    #[error("invalid {name} {value:?}: unknown cipher suite {suite:?}")]
    UnknownCipherSuite {
        /// The variable, e.g. `QUEUE_PROXY_TLS_CIPHER_SUITES`.
        name: String,
        /// The whole value.
        value: String,
        /// The offending item.
        suite: String,
    },
    /// A cipher suite from Go's `tls.InsecureCipherSuites()` list.
    #[error("invalid {name} {value:?}: cipher suite {suite:?} is insecure and not allowed")]
    InsecureCipherSuite {
        /// The variable.
        name: String,
        /// The whole value.
        value: String,
        /// The offending item.
        suite: String,
    },
    /// A curve name Go does not know.
    #[error("invalid {name} {value:?}: unknown curve {curve:?}")]
    UnknownCurve {
        /// The variable, e.g. `QUEUE_PROXY_TLS_CURVE_PREFERENCES`.
        name: String,
        /// The whole value.
        value: String,
        /// The offending item.
        curve: String,
    },
}

/// Parsed server-side TLS settings.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// Lowest version offered (default TLS 1.3).
    pub min_version: TlsVersion,
    /// Highest version offered (default TLS 1.3).
    pub max_version: TlsVersion,
    /// The TLS 1.2 suites allowed, in preference order; `None` = the default set.
    pub tls12_cipher_suites: Option<Vec<SupportedCipherSuite>>,
    /// Key-exchange groups in preference order; `None` = the provider's defaults.
    pub kx_groups: Option<Vec<&'static dyn SupportedKxGroup>>,
    /// Names that were accepted but have no effect here (CBC suites, P-521, X25519MLKEM768),
    /// for the caller's information; each was also logged as a warning.
    pub ignored: Vec<String>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            min_version: TlsVersion::Tls13,
            max_version: TlsVersion::Tls13,
            tls12_cipher_suites: None,
            kx_groups: None,
            ignored: Vec::new(),
        }
    }
}

/// Go's server preference order for the TLS 1.2 suites rustls implements.
const TLS12_PREFERENCE: [(&str, SupportedCipherSuite); 6] = [
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// TLS 1.3 suites in Go's preference order (with AES hardware). Always all enabled.
pub(crate) const TLS13_SUITES: [SupportedCipherSuite; 3] = [
    cipher_suite::TLS13_AES_128_GCM_SHA256,
    cipher_suite::TLS13_AES_256_GCM_SHA384,
    cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
];

/// The default TLS 1.2 suites, in Go's preference order.
pub(crate) fn default_tls12_suites() -> Vec<SupportedCipherSuite> {
    TLS12_PREFERENCE.iter().map(|(_, suite)| *suite).collect()
}

/// Go `tls.CipherSuites()` names that are TLS 1.3 only: accepted, no effect.
const GO_TLS13_NAMES: [&str; 3] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Go `tls.CipherSuites()` names rustls does not implement (CBC): accepted, skipped.
const GO_CBC_NAMES: [&str; 4] = [
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
];

/// Go `tls.InsecureCipherSuites()`: rejected.
const GO_INSECURE_NAMES: [&str; 12] = [
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// A Go curve name: a *ring* group, or `None` for a valid name *ring* cannot offer.
fn curve(name: &str) -> Option<Option<&'static dyn SupportedKxGroup>> {
    Some(match name {
        "CurveP256" | "P-256" => Some(kx_group::SECP256R1),
        "CurveP384" | "P-384" => Some(kx_group::SECP384R1),
        "X25519" => Some(kx_group::X25519),
        "CurveP521" | "P-521" | "X25519MLKEM768" => None,
        _ => return None,
    })
}

/// Comma-separated items, blanks trimmed, empty items skipped (Go `strings.Split` + `TrimSpace`).
fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

impl TlsSettings {
    /// Reads `<prefix>_MIN_VERSION`, `<prefix>_MAX_VERSION`, `<prefix>_CIPHER_SUITES` and
    /// `<prefix>_CURVE_PREFERENCES` (`prefix` is `QUEUE_PROXY_TLS` or `ACTIVATOR_TLS`). Absent
    /// and empty variables take the defaults. Names accepted without effect are logged as
    /// warnings and listed in [`TlsSettings::ignored`].
    pub fn from_env(env: &dyn Env, prefix: &'static str) -> Result<Self, TlsSettingsError> {
        let var = |suffix: &str| {
            let name = format!("{prefix}_{suffix}");
            let value = env.var(&name).unwrap_or_default();
            (name, value)
        };
        let mut settings = TlsSettings::default();

        let (min_name, min) = var("MIN_VERSION");
        let (max_name, max) = var("MAX_VERSION");
        let version = |name: &String, value: &String| {
            if value.is_empty() {
                return Ok(TlsVersion::Tls13);
            }
            TlsVersion::parse(value).ok_or_else(|| TlsSettingsError::InvalidVersion {
                name: name.clone(),
                value: value.clone(),
            })
        };
        settings.min_version = version(&min_name, &min)?;
        settings.max_version = version(&max_name, &max)?;
        if settings.min_version > settings.max_version {
            return Err(TlsSettingsError::VersionRange {
                min_name,
                min: settings.min_version.to_string(),
                max_name,
                max: settings.max_version.to_string(),
            });
        }

        let (name, value) = var("CIPHER_SUITES");
        let mut wanted = Vec::new();
        for suite in items(&value) {
            if TLS12_PREFERENCE.iter().any(|(known, _)| *known == suite) {
                wanted.push(suite);
            } else if GO_TLS13_NAMES.contains(&suite) {
                // TLS 1.3 suites are not configurable, in Go as in rustls.
            } else if GO_CBC_NAMES.contains(&suite) {
                tracing::warn!(
                    variable = %name,
                    suite,
                    "cipher suite is not implemented (no CBC suites), ignoring it"
                );
                settings.ignored.push(suite.to_owned());
            } else if GO_INSECURE_NAMES.contains(&suite) {
                return Err(TlsSettingsError::InsecureCipherSuite {
                    name,
                    suite: suite.to_owned(),
                    value: value.clone(),
                });
            } else {
                return Err(TlsSettingsError::UnknownCipherSuite {
                    name,
                    suite: suite.to_owned(),
                    value: value.clone(),
                });
            }
        }
        if !wanted.is_empty() {
            settings.tls12_cipher_suites = Some(
                TLS12_PREFERENCE
                    .iter()
                    .filter(|(known, _)| wanted.contains(known))
                    .map(|(_, suite)| *suite)
                    .collect(),
            );
        } else if !value.trim().is_empty() && settings.min_version == TlsVersion::Tls12 {
            tracing::warn!(
                variable = %name,
                value = %value,
                "no implemented TLS 1.2 cipher suite listed, keeping the default TLS 1.2 suites"
            );
        }

        let (name, value) = var("CURVE_PREFERENCES");
        let mut groups: Vec<&'static dyn SupportedKxGroup> = Vec::new();
        for item in items(&value) {
            match curve(item) {
                None => {
                    return Err(TlsSettingsError::UnknownCurve {
                        name,
                        curve: item.to_owned(),
                        value: value.clone(),
                    })
                }
                Some(None) => {
                    tracing::warn!(
                        variable = %name,
                        curve = item,
                        "key-exchange group is not available in this build, ignoring it"
                    );
                    settings.ignored.push(item.to_owned());
                }
                Some(Some(group)) => {
                    if !groups.iter().any(|g| g.name() == group.name()) {
                        groups.push(group);
                    }
                }
            }
        }
        if !groups.is_empty() {
            settings.kx_groups = Some(groups);
        } else if !value.trim().is_empty() {
            tracing::warn!(
                variable = %name,
                value = %value,
                "no available key-exchange group listed, keeping the default groups"
            );
        }
        Ok(settings)
    }

    /// The protocol versions to enable, highest first.
    pub fn protocol_versions(&self) -> Vec<&'static SupportedProtocolVersion> {
        [TlsVersion::Tls13, TlsVersion::Tls12]
            .into_iter()
            .filter(|v| (self.min_version..=self.max_version).contains(v))
            .map(TlsVersion::rustls)
            .collect()
    }

    /// Every cipher suite to offer: all TLS 1.3 suites, then the TLS 1.2 ones.
    pub fn cipher_suites(&self) -> Vec<SupportedCipherSuite> {
        let tls12 = self
            .tls12_cipher_suites
            .clone()
            .unwrap_or_else(default_tls12_suites);
        TLS13_SUITES.iter().copied().chain(tls12).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rustls::NamedGroup;

    use super::*;

    const P: &str = "QUEUE_PROXY_TLS";

    fn parse(vars: &[(&'static str, &'static str)]) -> Result<TlsSettings, TlsSettingsError> {
        let env: HashMap<&str, &str> = vars.iter().copied().collect();
        TlsSettings::from_env(&env, P)
    }

    fn message(vars: &[(&'static str, &'static str)]) -> String {
        parse(vars).expect_err("must fail").to_string()
    }

    #[test]
    fn defaults_are_tls13_only() {
        for vars in [
            &[][..],
            &[
                ("QUEUE_PROXY_TLS_MIN_VERSION", ""),
                ("QUEUE_PROXY_TLS_MAX_VERSION", ""),
                ("QUEUE_PROXY_TLS_CIPHER_SUITES", ""),
                ("QUEUE_PROXY_TLS_CURVE_PREFERENCES", ""),
            ][..],
        ] {
            let s = parse(vars).unwrap();
            assert_eq!(s.min_version, TlsVersion::Tls13);
            assert_eq!(s.max_version, TlsVersion::Tls13);
            assert!(s.tls12_cipher_suites.is_none());
            assert!(s.kx_groups.is_none());
            assert!(s.ignored.is_empty());
            assert_eq!(s.protocol_versions(), vec![&rustls::version::TLS13]);
        }
    }

    #[test]
    fn versions() {
        let s = parse(&[("QUEUE_PROXY_TLS_MIN_VERSION", "1.2")]).unwrap();
        assert_eq!(
            (s.min_version, s.max_version),
            (TlsVersion::Tls12, TlsVersion::Tls13)
        );
        assert_eq!(s.protocol_versions().len(), 2);
        let s = parse(&[
            ("QUEUE_PROXY_TLS_MIN_VERSION", "1.2"),
            ("QUEUE_PROXY_TLS_MAX_VERSION", "1.2"),
        ])
        .unwrap();
        assert_eq!(s.protocol_versions(), vec![&rustls::version::TLS12]);
        let s = parse(&[("QUEUE_PROXY_TLS_MAX_VERSION", "1.3")]).unwrap();
        assert_eq!(s.max_version, TlsVersion::Tls13);
    }

    #[test]
    fn bad_versions_name_the_variable() {
        for bad in ["1.1", "1.0", "TLS13", " 1.3", "13", "x"] {
            let m = message(&[("QUEUE_PROXY_TLS_MIN_VERSION", bad)]);
            assert!(m.contains("QUEUE_PROXY_TLS_MIN_VERSION"), "{m}");
            assert!(m.contains(&format!("{bad:?}")), "{m}");
            let m = message(&[("QUEUE_PROXY_TLS_MAX_VERSION", bad)]);
            assert!(m.contains("QUEUE_PROXY_TLS_MAX_VERSION"), "{m}");
        }
        let m = message(&[("QUEUE_PROXY_TLS_MAX_VERSION", "1.2")]);
        assert!(m.contains("QUEUE_PROXY_TLS_MIN_VERSION"), "{m}");
        assert!(m.contains("QUEUE_PROXY_TLS_MAX_VERSION"), "{m}");
        let env: HashMap<&str, &str> = [("ACTIVATOR_TLS_MIN_VERSION", "1.0")].into();
        let m = TlsSettings::from_env(&env, "ACTIVATOR_TLS")
            .unwrap_err()
            .to_string();
        assert!(m.contains("ACTIVATOR_TLS_MIN_VERSION"), "{m}");
    }

    #[test]
    fn cipher_suites() {
        let s = parse(&[(
            "QUEUE_PROXY_TLS_CIPHER_SUITES",
            " TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,, TLS_AES_128_GCM_SHA256 ,\
             TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,",
        )])
        .unwrap();
        // Go's preference order, not the listed one; the TLS 1.3 name has no effect.
        assert_eq!(
            s.tls12_cipher_suites,
            Some(vec![
                cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            ])
        );
        assert_eq!(s.cipher_suites().len(), 5);
        assert!(s.ignored.is_empty());

        // CBC suites are valid Go names: skipped; only TLS 1.3 names: no effect.
        let s = parse(&[(
            "QUEUE_PROXY_TLS_CIPHER_SUITES",
            "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,TLS_CHACHA20_POLY1305_SHA256",
        )])
        .unwrap();
        assert!(s.tls12_cipher_suites.is_none());
        assert_eq!(s.ignored, vec!["TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"]);
        assert_eq!(s.cipher_suites().len(), 9);
    }

    #[test]
    fn bad_cipher_suites_name_the_variable() {
        let m = message(&[(
            "QUEUE_PROXY_TLS_CIPHER_SUITES",
            "TLS_AES_128_GCM_SHA256,TLS_BOGUS",
        )]);
        assert!(m.contains("QUEUE_PROXY_TLS_CIPHER_SUITES"), "{m}");
        assert!(m.contains("unknown cipher suite \"TLS_BOGUS\""), "{m}");
        let m = message(&[("QUEUE_PROXY_TLS_CIPHER_SUITES", "TLS_RSA_WITH_RC4_128_SHA")]);
        assert!(m.contains("QUEUE_PROXY_TLS_CIPHER_SUITES"), "{m}");
        assert!(
            m.contains("\"TLS_RSA_WITH_RC4_128_SHA\" is insecure"),
            "{m}"
        );
        // Names are case-sensitive, as in Go.
        let m = message(&[(
            "QUEUE_PROXY_TLS_CIPHER_SUITES",
            "tls_ecdhe_rsa_with_aes_128_gcm_sha256",
        )]);
        assert!(m.contains("unknown cipher suite"), "{m}");
    }

    #[test]
    fn curves() {
        let s = parse(&[(
            "QUEUE_PROXY_TLS_CURVE_PREFERENCES",
            "CurveP384, X25519MLKEM768,P-256,CurveP256 ,,X25519,P-521",
        )])
        .unwrap();
        let names: Vec<NamedGroup> = s.kx_groups.unwrap().iter().map(|g| g.name()).collect();
        assert_eq!(
            names,
            vec![
                NamedGroup::secp384r1,
                NamedGroup::secp256r1,
                NamedGroup::X25519
            ]
        );
        assert_eq!(s.ignored, vec!["X25519MLKEM768", "P-521"]);

        let s = parse(&[("QUEUE_PROXY_TLS_CURVE_PREFERENCES", "CurveP521")]).unwrap();
        assert!(s.kx_groups.is_none());
        assert_eq!(s.ignored, vec!["CurveP521"]);
    }

    #[test]
    fn bad_curves_name_the_variable() {
        for bad in ["P256", "secp256r1", "x25519", "CurveP224"] {
            let env: HashMap<&str, &str> = [("ACTIVATOR_TLS_CURVE_PREFERENCES", bad)].into();
            let m = TlsSettings::from_env(&env, "ACTIVATOR_TLS")
                .unwrap_err()
                .to_string();
            assert!(m.contains("ACTIVATOR_TLS_CURVE_PREFERENCES"), "{m}");
            assert!(m.contains(&format!("unknown curve {bad:?}")), "{m}");
        }
    }
}
