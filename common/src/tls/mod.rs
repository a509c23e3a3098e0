//! System-internal TLS, server side (queue-proxy §8, activator §9): the `<PREFIX>_*` settings,
//! the certificate pair on disk and its periodic reload, and the rustls server configuration
//! (ALPN `h2` and `http/1.1`, no client certificates). [`crate::server::serve_tls`] serves a
//! listener with the resulting acceptor.
//!
//! A binary either calls [`server_tls_from_env`] (one call: enabled check, settings, initial
//! load, reload task, acceptor) or puts the pieces together itself.

mod certs;
mod reload;
mod settings;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::ResolvesServerCert;
use rustls::ServerConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub use certs::{
    cert_paths, load_certified_key, parse_certified_key, tls_enabled, CertError, CERT_DIR,
    CERT_FILE, KEY_FILE,
};
pub use reload::{ReloadingCertResolver, DEFAULT_RELOAD_PERIOD, RELOADED_MESSAGE};
pub use settings::{TlsSettings, TlsSettingsError, TlsVersion};

/// ALPN protocols offered, in preference order.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The rustls server configuration for `settings`, taking certificates from `resolver`: the
/// *ring* provider restricted to the configured suites and groups, the configured versions, no
/// client authentication, ALPN `h2` then `http/1.1`.
pub fn build_server_config(
    settings: &TlsSettings,
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<ServerConfig, rustls::Error> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = settings.cipher_suites();
    if let Some(groups) = &settings.kx_groups {
        provider.kx_groups = groups.clone();
    }
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&settings.protocol_versions())?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Why the TLS listener could not be set up (all fatal at startup, exit 1).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// Checking for the certificate files failed with something other than "not found".
    #[error("{0}")]
    Stat(#[source] io::Error),
    /// A `<PREFIX>_*` variable is invalid.
    #[error(transparent)]
    Settings(#[from] TlsSettingsError),
    /// The initial certificate/key pair does not load.
    #[error("failed to load the TLS certificate: {0}")]
    Cert(#[from] CertError),
    /// rustls refused the configuration.
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A ready TLS listener configuration.
pub struct ServerTls {
    /// Hand to [`crate::server::serve_tls`].
    pub acceptor: TlsAcceptor,
    /// The certificate source (also usable for inspection in tests).
    pub resolver: Arc<ReloadingCertResolver>,
    /// The parsed settings.
    pub settings: TlsSettings,
    /// The reload task; it ends by itself when `shutdown` turns true.
    pub reloader: JoinHandle<()>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("resolver", &self.resolver)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The whole server-side TLS setup: `Ok(None)` when `cert_dir` lacks `tls.crt` or `tls.key`
/// (TLS off; the `<PREFIX>_*` variables are then not even parsed, as in Go); otherwise parses
/// the settings from `env` with `prefix` (`QUEUE_PROXY_TLS` / `ACTIVATOR_TLS`), loads the pair
/// (failure is an error), starts its reload every `reload_period` until `shutdown` turns true,
/// and builds the acceptor. Must be called inside a Tokio runtime.
pub fn server_tls_from_env(
    env: &dyn crate::env::Env,
    prefix: &'static str,
    cert_dir: &Path,
    reload_period: Duration,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<ServerTls>, TlsSetupError> {
    if !tls_enabled(cert_dir).map_err(TlsSetupError::Stat)? {
        return Ok(None);
    }
    let settings = TlsSettings::from_env(env, prefix)?;
    let (cert, key) = cert_paths(cert_dir);
    let resolver = Arc::new(ReloadingCertResolver::new(cert, key)?);
    let config = build_server_config(&settings, resolver.clone())?;
    let reloader = resolver.spawn_reloader(reload_period, shutdown);
    Ok(Some(ServerTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        resolver,
        settings,
        reloader,
    }))
}

#[cfg(test)]
mod tests;
