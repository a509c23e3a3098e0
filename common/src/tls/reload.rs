//! A server certificate resolver that follows the pair on disk (queue-proxy §8, Go's
//! `pkg/queue/certificate.CertWatcher`): every period both files are re-read; when the SHA-256 of
//! either changed, the pair is re-parsed and, on success, swapped in for new handshakes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::certs::{parse_certified_key, read, CertError};

/// How often the files are re-read in production.
pub const DEFAULT_RELOAD_PERIOD: Duration = Duration::from_secs(60);

/// The message logged after a successful reload (Go's, verbatim).
pub const RELOADED_MESSAGE: &str = "Certificate and/or key have changed on disk and were reloaded.";

type Checksum = [u8; 32];

/// A [`ResolvesServerCert`] serving the pair currently on disk to every client (any SNI).
///
/// Handshakes take an uncontended read lock to clone the current `Arc<CertifiedKey>`; the
/// reloader takes the write lock only to swap the pointer. Established connections keep the
/// certificate they were handshaken with.
pub struct ReloadingCertResolver {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// Checksums of the pair in `current` (updated only on a successful reload, so a broken
    /// pair is retried and reported every period until it is fixed, as in Go).
    checksums: Mutex<(Checksum, Checksum)>,
}

impl fmt::Debug for ReloadingCertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCertResolver")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

fn checksum(bytes: &[u8]) -> Checksum {
    Sha256::digest(bytes).into()
}

impl ReloadingCertResolver {
    /// Loads the pair at `cert_path` and `key_path`; any failure is returned (fatal at startup).
    pub fn new(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Result<Self, CertError> {
        let cert_path = cert_path.into();
        let key_path = key_path.into();
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        Self::from_pem(cert_path, key_path, &cert_pem, &key_pem)
    }

    /// A resolver for a pair held in memory (e.g. the activator's `routing-serving-certs`
    /// secret), updated with [`Self::update_from_pem`]; the paths only label errors (and are
    /// what [`Self::reload`] would read, so do not start the file reloader on such a resolver).
    pub fn from_pem(
        cert_label: impl Into<PathBuf>,
        key_label: impl Into<PathBuf>,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Self, CertError> {
        let cert_path = cert_label.into();
        let key_path = key_label.into();
        let pair = parse_certified_key(cert_pem, key_pem, &cert_path, &key_path)?;
        Ok(ReloadingCertResolver {
            current: RwLock::new(Arc::new(pair)),
            checksums: Mutex::new((checksum(cert_pem), checksum(key_pem))),
            cert_path,
            key_path,
        })
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The key file.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// The pair new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads both files once: `Ok(true)` if their content changed and the new pair is now
    /// served, `Ok(false)` if nothing changed, `Err` (old pair kept) if a file cannot be read or
    /// the changed pair does not parse. Logs nothing; [`Self::spawn_reloader`] does.
    pub fn reload(&self) -> Result<bool, CertError> {
        let cert_pem = read(&self.cert_path)?;
        let key_pem = read(&self.key_path)?;
        self.update_from_pem(&cert_pem, &key_pem)
    }

    /// Offers a new pair: `Ok(true)` if it differs from the served one (by SHA-256 of either
    /// PEM) and now is served, `Ok(false)` if it is the same, `Err` (old pair kept) if it does
    /// not parse. Logs nothing.
    pub fn update_from_pem(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<bool, CertError> {
        let sums = (checksum(cert_pem), checksum(key_pem));
        let mut checksums = self
            .checksums
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *checksums == sums {
            return Ok(false);
        }
        let pair = parse_certified_key(cert_pem, key_pem, &self.cert_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(pair);
        *checksums = sums;
        Ok(true)
    }

    /// Starts the reload loop: every `period` (first check one period from now) call
    /// [`Self::reload`], logging `Certificate and/or key have changed on disk and were reloaded.`
    /// on a swap and the error (keeping the old pair) on failure. The task ends when `shutdown`
    /// turns true or its sender is dropped.
    ///
    /// The files are small and read synchronously on the runtime (at most every `period`).
    pub fn spawn_reloader(
        self: &Arc<Self>,
        period: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let resolver = Arc::clone(self);
        tracing::info!(
            cert = %resolver.cert_path.display(),
            key = %resolver.key_path.display(),
            "Starting to watch the certificate and key for changes"
        );
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let stop = crate::server::stopped(shutdown);
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = ticks.tick() => match resolver.reload() {
                        Ok(true) => tracing::info!("{RELOADED_MESSAGE}"),
                        Ok(false) => {}
                        Err(error) => tracing::error!(
                            %error,
                            "Failed to reload the certificate and key, keeping the previous pair"
                        ),
                    },
                    _ = &mut stop => break,
                }
            }
        })
    }
}

impl ResolvesServerCert for ReloadingCertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}
