use std::collections::BTreeMap;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::verifier::*;
use super::*;
use crate::discovery::system::TRUST_BUNDLE_LABEL;
use crate::discovery::ConfigMapObject;

struct Ca {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        cert,
        issuer: rcgen::Issuer::new(params, key),
    }
}

/// A leaf signed by `ca` with these DNS SANs: (cert DER, cert PEM, key PEM).
fn leaf(ca: &Ca, sans: &[&str]) -> (CertificateDer<'static>, String, String) {
    let params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.der().clone(), cert.pem(), key.serialize_pem())
}

fn system(ca_crt: Option<&str>, bundles: &[(&str, &str)]) -> SystemObjects {
    let mut system = SystemObjects::default();
    let mut secret = SecretObject::default();
    if let Some(ca) = ca_crt {
        secret.data.insert("ca.crt".into(), ca.as_bytes().to_vec());
    }
    system.secrets.insert(ROUTING_SERVING_CERTS.into(), secret);
    for (name, pem) in bundles {
        let mut labels = BTreeMap::new();
        labels.insert(TRUST_BUNDLE_LABEL.to_owned(), "true".to_owned());
        let mut data = BTreeMap::new();
        data.insert("bundle.pem".to_owned(), pem.to_string());
        system
            .config_maps
            .insert(name.to_string(), ConfigMapObject { labels, data });
    }
    system
}

fn verify(
    system: &SystemObjects,
    namespace: &str,
    leaf: &CertificateDer<'_>,
) -> Result<(), rustls::Error> {
    let (roots, _) = trust_pool(system);
    let verifier = NamespaceVerifier::new(base_verifier(roots), namespace);
    verifier
        .verify_server_cert(
            leaf,
            &[],
            &ServerName::try_from(DATA_PLANE_NAME).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
}

#[test]
fn san_check_accepts_the_user_san_in_any_position() {
    let ca = ca("knative");
    let pem = ca.cert.pem();
    let sys = system(Some(&pem), &[]);
    for sans in [
        &["data-plane.knative.dev", "kn-user-default"][..],
        &["kn-user-default", "data-plane.knative.dev"][..],
    ] {
        let (der, _, _) = leaf(&ca, sans);
        verify(&sys, "default", &der).unwrap();
    }
    // The namespace is compared in lower case.
    let (der, _, _) = leaf(&ca, &["data-plane.knative.dev", "kn-user-myns"]);
    verify(&sys, "MyNs", &der).unwrap();
}

#[test]
fn san_check_refuses_other_namespaces_with_upstreams_message() {
    let ca = ca("knative");
    let sys = system(Some(&ca.cert.pem()), &[]);
    let (der, _, _) = leaf(&ca, &["data-plane.knative.dev", "kn-user-other"]);
    let error = verify(&sys, "default", &der).unwrap_err();
    let proxy_error = knative_common::proxy::ProxyError::tls(
        "127.0.0.1:8112".parse().unwrap(),
        &std::io::Error::new(std::io::ErrorKind::InvalidData, error),
    );
    assert_eq!(
        proxy_error.to_string(),
        "san \"kn-user-default\" does not have a matching name in [data-plane.knative.dev kn-user-other]"
    );
}

#[test]
fn hostname_and_chain_are_checked_before_the_san() {
    let ca1 = ca("one");
    let other = ca("two");
    let sys = system(Some(&ca1.cert.pem()), &[]);
    // Missing data-plane.knative.dev.
    let (der, _, _) = leaf(&ca1, &["kn-user-default"]);
    assert!(matches!(
        verify(&sys, "default", &der),
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. }
        ))
    ));
    // Signed by a CA that is not trusted.
    let (der, _, _) = leaf(&other, &["data-plane.knative.dev", "kn-user-default"]);
    assert!(matches!(
        verify(&sys, "default", &der),
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer
        ))
    ));
    // An empty pool refuses everything.
    let empty = system(None, &[]);
    let (der, _, _) = leaf(&ca1, &["data-plane.knative.dev", "kn-user-default"]);
    assert!(verify(&empty, "default", &der).is_err());
}

#[test]
fn trust_pool_sources() {
    let a = ca("a");
    let b = ca("b");
    let c = ca("c");
    // Only the first certificate of ca.crt counts.
    let two = format!("{}{}", a.cert.pem(), b.cert.pem());
    // A bundle may hold several certificates; all count.
    let bundle = format!("{}{}", b.cert.pem(), c.cert.pem());
    let sys = system(Some(&two), &[("my-bundle", &bundle), ("broken", "not pem")]);
    let (roots, warnings) = trust_pool(&sys);
    assert_eq!(roots.len(), 3, "a from ca.crt, b and c from the bundle");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("broken"), "{warnings:?}");

    let only_first = system(Some(&two), &[]);
    let (der, _, _) = leaf(&b, &["data-plane.knative.dev", "kn-user-default"]);
    assert!(verify(&only_first, "default", &der).is_err());
    // An unlabelled ConfigMap is not a bundle.
    let mut unlabelled = system(None, &[("x", &b.cert.pem())]);
    unlabelled.config_maps.get_mut("x").unwrap().labels.clear();
    assert!(trust_pool(&unlabelled).0.is_empty());
    // Garbage in ca.crt is a warning, not a failure.
    let (roots, warnings) = trust_pool(&system(Some("garbage"), &[]));
    assert!(roots.is_empty() && warnings.len() == 1, "{warnings:?}");
}

#[test]
fn client_configs_follow_the_pool() {
    let a = ca("a");
    let trust = Arc::new(UpstreamTrust::new(&system(None, &[])));
    let first = trust.client_config("default");
    assert!(Arc::ptr_eq(&first, &trust.client_config("default")));
    assert!(!Arc::ptr_eq(&first, &trust.client_config("other")));
    trust.rebuild(&system(None, &[("bundle", &a.cert.pem())]));
    assert!(!Arc::ptr_eq(&first, &trust.client_config("default")));
    let tls = trust.for_namespace("default");
    assert_eq!(
        tls.server_name(),
        ServerName::try_from(DATA_PLANE_NAME).unwrap()
    );
}

#[test]
fn server_certificate_updates_keep_the_last_good_pair() {
    let ca = ca("a");
    let resolver = SecretCertResolver::default();
    assert!(!resolver.is_loaded());
    let secret = |cert: &str, key: &str| {
        let mut s = SecretObject::default();
        s.data.insert("tls.crt".into(), cert.as_bytes().to_vec());
        s.data.insert("tls.key".into(), key.as_bytes().to_vec());
        s
    };
    let (_, cert1, key1) = leaf(&ca, &["activator"]);
    assert_eq!(resolver.update(&secret(&cert1, &key1)), Ok(true));
    assert_eq!(resolver.update(&secret(&cert1, &key1)), Ok(false));
    let before = resolver.current.load_full().unwrap();
    let (_, cert2, _) = leaf(&ca, &["activator"]);
    let error = resolver.update(&secret(&cert2, &key1)).unwrap_err();
    assert!(error.contains("routing-serving-certs"), "{error}");
    assert!(Arc::ptr_eq(&before, &resolver.current.load_full().unwrap()));
    let (_, cert3, key3) = leaf(&ca, &["activator"]);
    assert_eq!(resolver.update(&secret(&cert3, &key3)), Ok(true));
    assert!(!Arc::ptr_eq(
        &before,
        &resolver.current.load_full().unwrap()
    ));
}
