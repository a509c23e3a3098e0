//! TLS client settings for `HTTPS` readiness probes.
//!
//! Upstream's prober verifies the user container's certificate against the system roots (spec
//! §4.3, a deliberate difference from the kubelet, which skips verification). We trust the
//! operating system's store when one can be read plus the Mozilla roots compiled in, so an app
//! with a self-signed certificate is never ready over `HTTPS`.

use std::sync::{Arc, OnceLock};

use rustls::ClientConfig;

/// Builds the client configuration used by every `HTTPS` probe attempt.
pub(crate) fn default_client_config() -> Result<Arc<ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // Unreadable or malformed system certificates are skipped, as Go does.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    client_config_with_roots(roots)
}

/// Client configuration trusting exactly `roots` (tests use a private CA).
pub(crate) fn client_config_with_roots(
    roots: rustls::RootCertStore,
) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The probe speaks HTTP/1.1 over TLS (upstream's prober does not attempt HTTP/2 there).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client configuration, built on first use (only `HTTPS` probes need it).
#[derive(Default)]
pub(crate) struct TlsClient {
    config: OnceLock<Result<Arc<ClientConfig>, String>>,
}

impl TlsClient {
    /// The configuration, or why it could not be built.
    pub(crate) fn config(&self) -> Result<Arc<ClientConfig>, String> {
        self.config.get_or_init(default_client_config).clone()
    }

    /// A client that uses `config` instead of the default roots.
    #[cfg(test)]
    pub(crate) fn with_config(config: Arc<ClientConfig>) -> TlsClient {
        TlsClient {
            config: OnceLock::from(Ok(config)),
        }
    }
}
