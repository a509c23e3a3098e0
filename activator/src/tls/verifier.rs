//! The upstream side of system-internal TLS (spec §9): the trust pool built from the system
//! namespace's objects, and the certificate verifier that adds the `kn-user-<namespace>` SAN
//! check to the usual chain and `data-plane.knative.dev` hostname verification.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};

use crate::discovery::system::ROUTING_SERVING_CERTS;
use crate::discovery::SystemObjects;

/// The name every queue-proxy certificate carries and the activator verifies (upstream's
/// `certificates.LegacyFakeDnsName`).
pub const DATA_PLANE_NAME: &str = "data-plane.knative.dev";

/// Key of the CA certificate in the `routing-serving-certs` Secret.
pub const CA_CERT_KEY: &str = "ca.crt";

/// The SAN a queue-proxy of `namespace` must present (upstream's `DataPlaneUserSAN`).
pub fn data_plane_user_san(namespace: &str) -> String {
    format!("kn-user-{}", namespace.to_lowercase())
}

/// The trust pool of spec §9: the first PEM certificate of the Secret's `ca.crt` plus every PEM
/// certificate of every data value of the trust-bundle ConfigMaps. System roots are not used.
/// Problems are returned as warnings (the caller logs them); bad items are skipped.
pub fn trust_pool(system: &SystemObjects) -> (RootCertStore, Vec<String>) {
    let mut roots = RootCertStore::empty();
    let mut warnings = Vec::new();
    if let Some(ca) = system
        .secret(ROUTING_SERVING_CERTS)
        .and_then(|s| s.data.get(CA_CERT_KEY))
        .filter(|ca| !ca.is_empty())
    {
        match CertificateDer::pem_slice_iter(ca).next() {
            Some(Ok(cert)) => {
                if let Err(e) = roots.add(cert) {
                    warnings.push(format!(
                        "CA from Secret {ROUTING_SERVING_CERTS}[{CA_CERT_KEY}] is invalid and will be ignored: {e}"
                    ));
                }
            }
            Some(Err(e)) => warnings.push(format!(
                "CA from Secret {ROUTING_SERVING_CERTS}[{CA_CERT_KEY}] is invalid and will be ignored: {e}"
            )),
            None => warnings.push(format!(
                "CA from Secret {ROUTING_SERVING_CERTS}[{CA_CERT_KEY}] holds no PEM certificate and will be ignored"
            )),
        }
    }
    for (name, config_map) in system.trust_bundles() {
        for (key, bundle) in &config_map.data {
            let certs: Vec<_> = CertificateDer::pem_slice_iter(bundle.as_bytes())
                .filter_map(Result::ok)
                .collect();
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                warnings.push(format!(
                    "Failed to add CA bundle from ConfigMap {name}[{key}] as it contains no valid certificate"
                ));
            }
        }
    }
    (roots, warnings)
}

/// Chain and hostname verification against the trust pool (`None` when the pool is empty:
/// every certificate is then refused as signed by an unknown authority).
pub fn base_verifier(roots: RootCertStore) -> Option<Arc<WebPkiServerVerifier>> {
    if roots.is_empty() {
        return None;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .ok()
}

/// Why the SAN check failed (upstream's wording).
#[derive(Debug)]
struct SanMismatch {
    san: String,
    names: Vec<String>,
}

impl fmt::Display for SanMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "san {:?} does not have a matching name in [{}]",
            self.san,
            self.names.join(" ")
        )
    }
}

impl std::error::Error for SanMismatch {}

/// Verifies a queue-proxy's certificate for requests of one revision namespace: the chain
/// against the trust pool, the hostname `data-plane.knative.dev`, then the leaf's DNS SANs must
/// contain `kn-user-<namespace>` exactly (as upstream's `verifySAN`).
#[derive(Debug)]
pub struct NamespaceVerifier {
    base: Option<Arc<WebPkiServerVerifier>>,
    san: String,
    schemes: Vec<SignatureScheme>,
}

impl NamespaceVerifier {
    /// A verifier for `namespace` over `base` (see [`base_verifier`]).
    pub fn new(base: Option<Arc<WebPkiServerVerifier>>, namespace: &str) -> Self {
        let schemes = rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes();
        NamespaceVerifier {
            base,
            san: data_plane_user_san(namespace),
            schemes,
        }
    }

    /// The SAN required.
    pub fn san(&self) -> &str {
        &self.san
    }

    /// The SAN check alone.
    pub fn check_san(&self, leaf: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(leaf)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let names: Vec<String> = cert.valid_dns_names().map(str::to_owned).collect();
        if names.contains(&self.san) {
            return Ok(());
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(SanMismatch {
                san: self.san.clone(),
                names,
            })),
        )))
    }
}

impl ServerCertVerifier for NamespaceVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(base) = &self.base else {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ));
        };
        base.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        self.check_san(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match &self.base {
            Some(base) => base.verify_tls12_signature(message, cert, dss),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match &self.base {
            Some(base) => base.verify_tls13_signature(message, cert, dss),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}
