//! System-internal TLS (spec §9), on when `config-network` says `system-internal-tls: enabled`
//! (decided once at startup):
//!
//! - server side: the 8112 listener serves the `routing-serving-certs` Secret's
//!   `tls.crt`/`tls.key` ([`SecretCertResolver`]), swapped live when the Secret changes (a bad
//!   pair is logged and the previous one kept), with the `ACTIVATOR_TLS_*` settings;
//! - upstream side: connections to queue-proxies (`pod:8112`, `clusterIP:443`) verify the
//!   certificate against the trust pool (`ca.crt` + trust-bundle ConfigMaps), the hostname
//!   `data-plane.knative.dev` and the SAN `kn-user-<revision namespace>` ([`UpstreamTrust`]).
//!   The pool is rebuilt on every relevant change and used by the next connection.
//!
//! [`SystemTls::start`] sets both up from the first discovery snapshot and follows the later
//! ones.

pub mod verifier;

use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::{ArcSwap, ArcSwapOption};
use dashmap::DashMap;
use knative_common::env::Env;
use knative_common::proxy::pool::UpstreamTls;
use knative_common::tls::{
    build_server_config, parse_certified_key, TlsSettings, TlsSettingsError,
};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::ServerName;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ClientConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::discovery::system::ROUTING_SERVING_CERTS;
use crate::discovery::{SecretObject, Snapshot, SystemObjects};
use verifier::{base_verifier, trust_pool, NamespaceVerifier, DATA_PLANE_NAME};

/// Prefix of the server-side settings (`ACTIVATOR_TLS_MIN_VERSION`, …).
pub const SETTINGS_PREFIX: &str = "ACTIVATOR_TLS";

/// Key of the certificate chain in the Secret.
pub const TLS_CERT_KEY: &str = "tls.crt";
/// Key of the private key in the Secret.
pub const TLS_KEY_KEY: &str = "tls.key";

/// The 8112 listener's certificate: the Secret's pair, for any SNI. `None` until a valid pair
/// was seen (handshakes then fail, as upstream's `GetCertificate` without a certificate).
pub struct SecretCertResolver {
    current: ArcSwapOption<CertifiedKey>,
    /// The last pair offered (valid or not), so an unchanged Secret is not re-parsed or
    /// re-reported.
    last: Mutex<Option<(Vec<u8>, Vec<u8>)>>,
}

impl std::fmt::Debug for SecretCertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCertResolver")
            .field("loaded", &self.current.load().is_some())
            .finish()
    }
}

impl Default for SecretCertResolver {
    fn default() -> Self {
        SecretCertResolver {
            current: ArcSwapOption::empty(),
            last: Mutex::new(None),
        }
    }
}

impl SecretCertResolver {
    /// Offers the Secret's pair: `Ok(true)` when it changed and is now served, `Ok(false)` when
    /// it is the pair seen last time, `Err` (previous pair kept) when it does not load.
    pub fn update(&self, secret: &SecretObject) -> Result<bool, String> {
        let empty = Vec::new();
        let cert = secret.data.get(TLS_CERT_KEY).unwrap_or(&empty);
        let key = secret.data.get(TLS_KEY_KEY).unwrap_or(&empty);
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.as_ref().is_some_and(|(c, k)| c == cert && k == key) {
            return Ok(false);
        }
        *last = Some((cert.clone(), key.clone()));
        let label = |k: &str| format!("secret {ROUTING_SERVING_CERTS}[{k}]");
        let pair = parse_certified_key(
            cert,
            key,
            label(TLS_CERT_KEY).as_ref(),
            label(TLS_KEY_KEY).as_ref(),
        )
        .map_err(|e| e.to_string())?;
        self.current.store(Some(Arc::new(pair)));
        Ok(true)
    }

    /// Whether a pair is being served.
    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }
}

impl ResolvesServerCert for SecretCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

struct TrustState {
    generation: u64,
    base: Option<Arc<WebPkiServerVerifier>>,
}

/// The upstream trust pool and the per-namespace client configurations built on it.
///
/// Each revision namespace gets its own [`ClientConfig`] (its verifier requires that
/// namespace's SAN, and its session cache is its own, so a session verified for one namespace
/// is never resumed for another). Configurations are cached until the pool changes.
pub struct UpstreamTrust {
    state: ArcSwap<TrustState>,
    configs: DashMap<Box<str>, (u64, Arc<ClientConfig>)>,
}

impl std::fmt::Debug for UpstreamTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.load();
        f.debug_struct("UpstreamTrust")
            .field("generation", &state.generation)
            .field("empty", &state.base.is_none())
            .finish()
    }
}

impl UpstreamTrust {
    /// The trust built from `system` (warnings logged).
    pub fn new(system: &SystemObjects) -> Self {
        let trust = UpstreamTrust {
            state: ArcSwap::from_pointee(TrustState {
                generation: 0,
                base: None,
            }),
            configs: DashMap::new(),
        };
        trust.rebuild(system);
        trust
    }

    /// Rebuilds the pool from `system`; new connections use it, established ones are kept.
    pub fn rebuild(&self, system: &SystemObjects) {
        let (roots, warnings) = trust_pool(system);
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        let anchors = roots.len();
        let generation = self.state.load().generation + 1;
        self.state.store(Arc::new(TrustState {
            generation,
            base: base_verifier(roots),
        }));
        self.configs.clear();
        tracing::info!(anchors, "Upstream TLS trust pool updated");
    }

    /// The client configuration for requests of revisions in `namespace`.
    pub fn client_config(&self, namespace: &str) -> Arc<ClientConfig> {
        let state = self.state.load();
        if let Some(entry) = self.configs.get(namespace) {
            if entry.0 == state.generation {
                return entry.1.clone();
            }
        }
        let verifier = NamespaceVerifier::new(state.base.clone(), namespace);
        let config = Arc::new(client_config(verifier));
        self.configs
            .insert(namespace.into(), (state.generation, config.clone()));
        config
    }

    /// The [`UpstreamTls`] of a connection pool for `namespace`.
    pub fn for_namespace(self: &Arc<Self>, namespace: &str) -> Arc<dyn UpstreamTls> {
        Arc::new(NamespaceTls {
            trust: self.clone(),
            namespace: namespace.into(),
        })
    }
}

/// rustls client configuration: *ring*, TLS 1.3 only (upstream's `MinVersion`, and Go's client
/// maximum), no client certificate, no ALPN (Go's transport with a custom TLS dialer offers
/// none; the queue-proxy tells HTTP/1.1 from the h2 preface).
fn client_config(verifier: NamespaceVerifier) -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth()
}

#[derive(Debug)]
struct NamespaceTls {
    trust: Arc<UpstreamTrust>,
    namespace: Box<str>,
}

impl UpstreamTls for NamespaceTls {
    fn client_config(&self) -> Arc<ClientConfig> {
        self.trust.client_config(&self.namespace)
    }

    fn server_name(&self) -> ServerName<'static> {
        ServerName::try_from(DATA_PLANE_NAME).expect("a valid DNS name")
    }
}

/// Why TLS mode cannot start (fatal, exit 1).
#[derive(Debug, thiserror::Error)]
pub enum TlsStartError {
    /// The Secret does not exist.
    #[error(
        "failed to get activator certificate, secret {namespace}/{ROUTING_SERVING_CERTS} was not \
         found. Enabling system-internal-tls requires the secret to be present and populated \
         with a valid certificate"
    )]
    MissingSecret {
        /// `SYSTEM_NAMESPACE`.
        namespace: String,
    },
    /// An `ACTIVATOR_TLS_*` variable is invalid.
    #[error("failed to read TLS configuration from environment: {0}")]
    Settings(#[from] TlsSettingsError),
    /// rustls refused the server configuration.
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// TLS mode, running.
pub struct SystemTls {
    /// The 8112 certificate.
    pub server_cert: Arc<SecretCertResolver>,
    /// The upstream trust.
    pub trust: Arc<UpstreamTrust>,
    /// Hand to `serve_tls` for the 8112 listener.
    pub acceptor: TlsAcceptor,
    /// The parsed `ACTIVATOR_TLS_*` settings.
    pub settings: TlsSettings,
    /// Follows the snapshots until `shutdown` turns true.
    pub follower: JoinHandle<()>,
}

impl std::fmt::Debug for SystemTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemTls")
            .field("server_cert", &self.server_cert)
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

/// What the trust pool is built from, to skip rebuilds when nothing relevant changed.
fn trust_inputs(system: &SystemObjects) -> (Option<&Vec<u8>>, Vec<(&str, &SystemConfigData)>) {
    (
        system
            .secret(ROUTING_SERVING_CERTS)
            .and_then(|s| s.data.get(verifier::CA_CERT_KEY)),
        system
            .trust_bundles()
            .map(|(name, cm)| (name, &cm.data))
            .collect(),
    )
}

type SystemConfigData = std::collections::BTreeMap<String, String>;

impl SystemTls {
    /// Sets TLS mode up from the current snapshot of `snapshots` (the Secret must exist) and
    /// `env`'s `ACTIVATOR_TLS_*`, then follows the snapshots until `shutdown` turns true. Must
    /// be called inside a Tokio runtime.
    pub fn start(
        env: &dyn Env,
        system_namespace: &str,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<SystemTls, TlsStartError> {
        let first = snapshots.borrow_and_update().clone();
        let system = first.system().clone();
        let Some(secret) = system.secret(ROUTING_SERVING_CERTS) else {
            return Err(TlsStartError::MissingSecret {
                namespace: system_namespace.to_owned(),
            });
        };
        let server_cert = Arc::new(SecretCertResolver::default());
        report_cert_update(server_cert.update(secret));
        let trust = Arc::new(UpstreamTrust::new(&system));
        let settings = TlsSettings::from_env(env, SETTINGS_PREFIX)?;
        let config = build_server_config(&settings, server_cert.clone())?;
        let follower = tokio::spawn(follow(
            snapshots,
            system,
            server_cert.clone(),
            trust.clone(),
            shutdown,
        ));
        Ok(SystemTls {
            server_cert,
            trust,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            settings,
            follower,
        })
    }
}

fn report_cert_update(result: Result<bool, String>) {
    match result {
        Ok(true) => tracing::info!("Loaded the certificate of secret {ROUTING_SERVING_CERTS}"),
        Ok(false) => {}
        Err(error) => tracing::warn!(
            %error,
            "failed to parse certificate in secret {ROUTING_SERVING_CERTS}, keeping the previous one"
        ),
    }
}

async fn follow(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut system: Arc<SystemObjects>,
    server_cert: Arc<SecretCertResolver>,
    trust: Arc<UpstreamTrust>,
    shutdown: watch::Receiver<bool>,
) {
    let stop = knative_common::server::stopped(shutdown);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            _ = &mut stop => break,
        }
        let next = snapshots.borrow_and_update().system().clone();
        if Arc::ptr_eq(&next, &system) || next == system {
            continue;
        }
        // A deleted Secret leaves the served certificate as it is (upstream handles only adds
        // and updates).
        if let Some(secret) = next.secret(ROUTING_SERVING_CERTS) {
            report_cert_update(server_cert.update(secret));
        }
        if trust_inputs(&next) != trust_inputs(&system) {
            trust.rebuild(&next);
        }
        system = next;
    }
}

#[cfg(test)]
mod tests;
