//! The certificate directory and loading a PEM certificate chain plus private key.

use std::io;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Where the controller mounts the `serving-certs` secret when system-internal TLS is on.
pub const CERT_DIR: &str = "/var/lib/knative/certs";

/// The certificate chain's file name in [`CERT_DIR`].
pub const CERT_FILE: &str = "tls.crt";

/// The private key's file name in [`CERT_DIR`].
pub const KEY_FILE: &str = "tls.key";

/// The certificate and key paths in `dir`.
pub fn cert_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(CERT_FILE), dir.join(KEY_FILE))
}

/// Whether TLS is on: both `dir/tls.crt` and `dir/tls.key` exist. A stat error other than
/// "not found" is returned (fatal at startup, as in Go). Like Go, the key is only looked at when
/// the certificate exists.
pub fn tls_enabled(dir: &Path) -> Result<bool, io::Error> {
    let (cert, key) = cert_paths(dir);
    Ok(exists(&cert)? && exists(&key)?)
}

fn exists(path: &Path) -> Result<bool, io::Error> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("failed to stat {}: {e}", path.display()),
        )),
    }
}

/// Why a certificate/key pair could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("failed to read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The certificate file holds no PEM `CERTIFICATE` block.
    #[error("no PEM CERTIFICATE block found in {}", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no PEM private key (`PRIVATE KEY`, `RSA PRIVATE KEY`, `EC PRIVATE KEY`).
    #[error("no PEM private key found in {}", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A file's PEM is malformed.
    #[error("malformed PEM in {}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key is not usable (unsupported algorithm or curve, corrupt DER).
    #[error("unusable private key in {}: {reason}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The certificate is not parseable, or the key does not belong to it.
    #[error(
        "certificate {} is invalid or does not match key {}: {reason}",
        cert.display(),
        key.display()
    )]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Reads a file (a [`CertError::Read`] on failure).
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads and parses the pair at `cert_path` and `key_path`.
pub fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, CertError> {
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    parse_certified_key(&cert_pem, &key_pem, cert_path, key_path)
}

/// Parses a PEM certificate chain (leaf first) and a PEM private key (PKCS#1 `RSA PRIVATE KEY`,
/// PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY`; the first key block counts), checking that the
/// key belongs to the leaf. The paths only label errors.
pub fn parse_certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, CertError> {
    let pem_error = |path: &Path, e: pem::Error| CertError::Pem {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert_path, e))?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => {
            return Err(CertError::NoKey {
                path: key_path.to_owned(),
            })
        }
        Err(e) => return Err(pem_error(key_path, e)),
    };
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::Key {
            path: key_path.to_owned(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(e) => Err(CertError::Mismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            reason: e.to_string(),
        }),
    }
}
