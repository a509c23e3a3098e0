//! Real TLS handshakes against [`crate::server::serve_tls`] on 127.0.0.1 with generated
//! certificates in temporary directories (queue-proxy §8, checklist C1/C2).
//!
//! `testdata/` holds throw-away, test-only key pairs in the formats rcgen cannot write: a PKCS#1
//! `RSA PRIVATE KEY` and a SEC1 `EC PRIVATE KEY` (made with `openssl genrsa -traditional` and
//! `openssl ecparam -genkey -noout`, each with a self-signed certificate for `rsa.example` /
//! `ec.example`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, DigitallySignedStruct, NamedGroup, ProtocolVersion, SignatureScheme,
    SupportedProtocolVersion,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::body::{LocalBody, ProxyBody};
use crate::server::{bind_addr, serve_tls, ServerLimits};

const RSA_PKCS1_KEY: &str = include_str!("testdata/rsa-pkcs1.key");
const RSA_CERT: &str = include_str!("testdata/rsa.crt");
const EC_SEC1_KEY: &str = include_str!("testdata/ec-sec1.key");
const EC_CERT: &str = include_str!("testdata/ec.crt");

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "knative-common-tls-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed ECDSA P-256 certificate for `san`: (cert PEM, PKCS#8 key PEM, cert DER).
fn generate(san: &str) -> (String, String, CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![san.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().clone())
}

/// Replaces `path` atomically (as a secret volume update does).
fn write_atomically(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(contents))
        .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn write_pair(dir: &Path, cert: &str, key: &str) {
    let (cert_path, key_path) = cert_paths(dir);
    write_atomically(&cert_path, cert.as_bytes());
    write_atomically(&key_path, key.as_bytes());
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Answers every request with its HTTP version (`HTTP/1.1`, `HTTP/2.0`).
#[derive(Clone)]
struct Version;

impl tower_service::Service<Request<crate::h2::IncomingBody>> for Version {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<ProxyBody>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<crate::h2::IncomingBody>) -> Self::Future {
        let version = format!("{:?}", request.version());
        ready(Ok(Response::new(ProxyBody::full(Bytes::from(version)))))
    }
}

struct Server {
    addr: SocketAddr,
    resolver: Arc<ReloadingCertResolver>,
    shutdown: watch::Sender<bool>,
    serving: JoinHandle<()>,
    reloader: JoinHandle<()>,
}

impl Server {
    async fn stop(self) {
        self.shutdown.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), self.serving)
            .await
            .expect("serve_tls returns after shutdown")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.reloader)
            .await
            .expect("the reloader stops after shutdown")
            .unwrap();
    }
}

/// Serves [`Version`] over TLS with the pair in `dir`, reloading every `period`.
fn start(dir: &Path, settings: &TlsSettings, period: Duration, limits: ServerLimits) -> Server {
    let (shutdown, rx) = watch::channel(false);
    let (cert, key) = cert_paths(dir);
    let resolver = Arc::new(ReloadingCertResolver::new(cert, key).unwrap());
    let reloader = resolver.spawn_reloader(period, rx.clone());
    let config = build_server_config(settings, resolver.clone()).unwrap();
    let listener = bind_addr(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(serve_tls(
        listener,
        TlsAcceptor::from(Arc::new(config)),
        limits,
        |_| Version,
        rx,
    ));
    Server {
        addr,
        resolver,
        shutdown,
        serving,
        reloader,
    }
}

fn settings(vars: &[(&'static str, &'static str)]) -> TlsSettings {
    let env: HashMap<&str, &str> = vars.iter().copied().collect();
    TlsSettings::from_env(&env, "QUEUE_PROXY_TLS").unwrap()
}

/// Accepts any certificate, but still checks the handshake signatures against it (so the served
/// key must match the served certificate).
#[derive(Debug)]
struct AnyCertificate(CryptoProvider);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Client options.
struct Client {
    versions: Vec<&'static SupportedProtocolVersion>,
    alpn: Vec<&'static [u8]>,
    provider: CryptoProvider,
}

impl Default for Client {
    fn default() -> Self {
        Client {
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            alpn: Vec::new(),
            provider: ring::default_provider(),
        }
    }
}

impl Client {
    fn tls12_only() -> Self {
        Client {
            versions: vec![&rustls::version::TLS12],
            ..Client::default()
        }
    }

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
        let mut config = ClientConfig::builder_with_provider(Arc::new(self.provider.clone()))
            .with_protocol_versions(&self.versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(ring::default_provider())))
            .with_no_client_auth();
        config.alpn_protocols = self.alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("data-plane.knative.dev").unwrap();
        tokio::time::timeout(
            Duration::from_secs(10),
            TlsConnector::from(Arc::new(config)).connect(name, tcp),
        )
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
    }
}

/// The leaf certificate a new connection gets.
async fn served_leaf(addr: SocketAddr) -> CertificateDer<'static> {
    let tls = Client::default().connect(addr).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

async fn get_http1(tls: TlsStream<TcpStream>) -> String {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::builder()
        .uri("/")
        .header(http::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

async fn get_http2(tls: TlsStream<TcpStream>) -> String {
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = Request::builder()
        .uri("https://localhost/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// Log lines written while the guard lives (on this thread, so use a current-thread runtime).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        test_support::logs::keep_call_sites_enabled();
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || logs.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Polls `check` every 50 ms for at most 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn tls13_by_default_and_tls12_client_refused() {
    let dir = TempDir::new();
    let (cert, key, _) = generate("a.example");
    write_pair(dir.path(), &cert, &key);
    let server = start(
        dir.path(),
        &settings(&[]),
        DEFAULT_RELOAD_PERIOD,
        ServerLimits::default(),
    );

    let tls = Client::default().connect(server.addr).await.unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    assert_eq!(get_http1(tls).await, "HTTP/1.1");

    assert!(Client::tls12_only().connect(server.addr).await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn tls12_client_accepted_with_min_version_12() {
    let dir = TempDir::new();
    let (cert, key, _) = generate("a.example");
    write_pair(dir.path(), &cert, &key);
    let server = start(
        dir.path(),
        &settings(&[("QUEUE_PROXY_TLS_MIN_VERSION", "1.2")]),
        DEFAULT_RELOAD_PERIOD,
        ServerLimits::default(),
    );

    let tls = Client::tls12_only().connect(server.addr).await.unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    assert_eq!(get_http1(tls).await, "HTTP/1.1");
    let tls = Client::default().connect(server.addr).await.unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    server.stop().await;
}

#[tokio::test]
async fn configured_suites_and_curves_are_enforced() {
    let dir = TempDir::new();
    let (cert, key, _) = generate("a.example");
    write_pair(dir.path(), &cert, &key);
    let server = start(
        dir.path(),
        &settings(&[
            ("QUEUE_PROXY_TLS_MIN_VERSION", "1.2"),
            ("QUEUE_PROXY_TLS_MAX_VERSION", "1.2"),
            (
                "QUEUE_PROXY_TLS_CIPHER_SUITES",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            ),
            ("QUEUE_PROXY_TLS_CURVE_PREFERENCES", "CurveP384"),
        ]),
        DEFAULT_RELOAD_PERIOD,
        ServerLimits::default(),
    );

    let tls = Client::default().connect(server.addr).await.unwrap();
    let conn = tls.get_ref().1;
    assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    assert_eq!(
        conn.negotiated_cipher_suite(),
        Some(ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256)
    );
    assert_eq!(
        conn.negotiated_key_exchange_group().map(|g| g.name()),
        Some(NamedGroup::secp384r1)
    );

    // A client without the suite, or without the group, gets nowhere.
    let mut provider = ring::default_provider();
    provider.cipher_suites.retain(|s| {
        s.suite() != rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
    });
    let client = Client {
        provider,
        ..Client::default()
    };
    assert!(client.connect(server.addr).await.is_err());
    let mut provider = ring::default_provider();
    provider.kx_groups = vec![ring::kx_group::X25519, ring::kx_group::SECP256R1];
    let client = Client {
        provider,
        ..Client::default()
    };
    assert!(client.connect(server.addr).await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn alpn_selects_http2_or_http1() {
    let dir = TempDir::new();
    let (cert, key, _) = generate("a.example");
    write_pair(dir.path(), &cert, &key);
    let server = start(
        dir.path(),
        &settings(&[]),
        DEFAULT_RELOAD_PERIOD,
        ServerLimits::default(),
    );

    let h2 = Client {
        alpn: vec![b"h2", b"http/1.1"],
        ..Client::default()
    };
    let tls = h2.connect(server.addr).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(get_http2(tls).await, "HTTP/2.0");

    let h1 = Client {
        alpn: vec![b"http/1.1"],
        ..Client::default()
    };
    let tls = h1.connect(server.addr).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(get_http1(tls).await, "HTTP/1.1");

    // No ALPN at all (Go's activator transport): the HTTP/2 preface is detected.
    let tls = Client::default().connect(server.addr).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    assert_eq!(get_http2(tls).await, "HTTP/2.0");
    server.stop().await;
}

/// C1: the initial pair on disk is served.
#[tokio::test]
async fn c1_initial_certificate_served() {
    let dir = TempDir::new();
    let (cert, key, der) = generate("initial.example");
    write_pair(dir.path(), &cert, &key);
    let server = start(
        dir.path(),
        &settings(&[]),
        DEFAULT_RELOAD_PERIOD,
        ServerLimits::default(),
    );
    let leaf = served_leaf(server.addr).await;
    assert_eq!(leaf, der);
    assert!(contains(&leaf, "initial.example"));
    server.stop().await;
}

/// C2: a rewritten pair is served to new connections within a reload period; connections made
/// before keep their certificate.
#[tokio::test]
async fn c2_rotated_certificate_served() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let dir = TempDir::new();
    let (cert, key, old) = generate("old.example");
    write_pair(dir.path(), &cert, &key);
    let server = start(
        dir.path(),
        &settings(&[]),
        Duration::from_millis(200),
        ServerLimits::default(),
    );
    let before = Client::default().connect(server.addr).await.unwrap();
    assert_eq!(served_leaf(server.addr).await, old);

    let (cert, key, new) = generate("new.example");
    write_pair(dir.path(), &cert, &key);
    let addr = server.addr;
    eventually("the new certificate", || {
        let new = new.clone();
        async move { served_leaf(addr).await == new }
    })
    .await;
    assert!(contains(&served_leaf(addr).await, "new.example"));
    assert_eq!(server.resolver.current().cert[0], new);
    assert_eq!(before.get_ref().1.peer_certificates().unwrap()[0], old);
    assert_eq!(get_http1(before).await, "HTTP/1.1");
    assert!(logs.text().contains(RELOADED_MESSAGE), "{}", logs.text());
    server.stop().await;
}

/// A broken new pair is logged and the old certificate stays; fixing it is picked up.
#[tokio::test]
async fn broken_new_key_keeps_old_certificate() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let dir = TempDir::new();
    let (cert, key, old) = generate("old.example");
    write_pair(dir.path(), &cert, &key);
    let server = start(
        dir.path(),
        &settings(&[]),
        Duration::from_millis(200),
        ServerLimits::default(),
    );

    let (new_cert, new_key, new) = generate("new.example");
    write_pair(
        dir.path(),
        &new_cert,
        "-----BEGIN PRIVATE KEY-----\nnot base64!\n",
    );
    eventually("the reload error to be logged", || {
        let text = logs.text();
        async move { text.contains("Failed to reload the certificate and key") }
    })
    .await;
    assert!(logs.text().contains("ERROR"), "{}", logs.text());
    assert!(!logs.text().contains(RELOADED_MESSAGE), "{}", logs.text());
    assert_eq!(served_leaf(server.addr).await, old);

    // A key that parses but belongs to another certificate is refused too.
    write_pair(dir.path(), &new_cert, &key);
    eventually("the mismatch to be logged", || {
        let text = logs.text();
        async move { text.contains("does not match key") }
    })
    .await;
    assert_eq!(served_leaf(server.addr).await, old);

    write_pair(dir.path(), &new_cert, &new_key);
    let addr = server.addr;
    eventually("the fixed certificate", || {
        let new = new.clone();
        async move { served_leaf(addr).await == new }
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn rsa_pkcs1_and_ec_sec1_keys_load_and_serve() {
    for (cert, key, san) in [
        (RSA_CERT, RSA_PKCS1_KEY, "rsa.example"),
        (EC_CERT, EC_SEC1_KEY, "ec.example"),
    ] {
        let dir = TempDir::new();
        write_pair(dir.path(), cert, key);
        let (cert_path, key_path) = cert_paths(dir.path());
        load_certified_key(&cert_path, &key_path).unwrap();
        let server = start(
            dir.path(),
            &settings(&[("QUEUE_PROXY_TLS_MIN_VERSION", "1.2")]),
            DEFAULT_RELOAD_PERIOD,
            ServerLimits::default(),
        );
        assert!(contains(&served_leaf(server.addr).await, san));
        let tls = Client::tls12_only().connect(server.addr).await.unwrap();
        assert!(contains(
            &tls.get_ref().1.peer_certificates().unwrap()[0],
            san
        ));
        server.stop().await;
    }
}

#[test]
fn bad_files_are_errors_not_panics() {
    let dir = TempDir::new();
    let (cert_path, key_path) = cert_paths(dir.path());
    let (cert, key, _) = generate("a.example");
    let (_, other_key, _) = generate("b.example");

    let err = ReloadingCertResolver::new(&cert_path, &key_path).unwrap_err();
    assert!(matches!(err, CertError::Read { .. }), "{err}");
    assert!(err.to_string().contains("tls.crt"), "{err}");

    let parse =
        |c: &str, k: &str| parse_certified_key(c.as_bytes(), k.as_bytes(), &cert_path, &key_path);
    assert!(matches!(
        parse("", &key),
        Err(CertError::NoCertificate { .. })
    ));
    assert!(matches!(
        parse(&key, &key),
        Err(CertError::NoCertificate { .. })
    ));
    assert!(matches!(parse(&cert, ""), Err(CertError::NoKey { .. })));
    assert!(matches!(parse(&cert, &cert), Err(CertError::NoKey { .. })));
    assert!(matches!(
        parse(
            "-----BEGIN CERTIFICATE-----\n@@@\n-----END CERTIFICATE-----\n",
            &key
        ),
        Err(CertError::Pem { .. })
    ));
    assert!(matches!(
        parse(
            &cert,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        ),
        Err(CertError::Key { .. })
    ));
    let err = parse(&cert, &other_key).unwrap_err();
    assert!(matches!(err, CertError::Mismatch { .. }), "{err}");
    assert!(matches!(
        parse(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            &key
        ),
        Err(CertError::Mismatch { .. })
    ));
    // A chain (leaf first, then intermediates) is kept whole.
    let chain = format!("{cert}{RSA_CERT}");
    assert_eq!(parse(&chain, &key).unwrap().cert.len(), 2);
    // The first key block counts, whatever precedes it.
    assert!(parse(&cert, &format!("{cert}{key}")).is_ok());
}

#[test]
fn tls_enabled_needs_both_files() {
    let dir = TempDir::new();
    let (cert_path, key_path) = cert_paths(dir.path());
    assert!(!tls_enabled(dir.path()).unwrap());
    std::fs::write(&key_path, "k").unwrap();
    assert!(!tls_enabled(dir.path()).unwrap());
    std::fs::write(&cert_path, "c").unwrap();
    assert!(tls_enabled(dir.path()).unwrap());
    std::fs::remove_file(&key_path).unwrap();
    assert!(!tls_enabled(dir.path()).unwrap());
    assert!(!tls_enabled(&dir.path().join("missing")).unwrap());
    // A stat error other than "not found" (a path component is a file) is an error.
    let err = tls_enabled(&cert_path).unwrap_err();
    assert_ne!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("tls.crt"), "{err}");
    assert_eq!(Path::new(CERT_DIR), Path::new("/var/lib/knative/certs"));
}

#[tokio::test]
async fn server_tls_from_env_end_to_end() {
    let dir = TempDir::new();
    let (tx, rx) = watch::channel(false);
    let env: HashMap<&str, &str> = [("QUEUE_PROXY_TLS_MIN_VERSION", "bogus")].into();

    // No certificates: off, and the (invalid) variables are not even parsed.
    let none = server_tls_from_env(
        &env,
        "QUEUE_PROXY_TLS",
        dir.path(),
        DEFAULT_RELOAD_PERIOD,
        rx.clone(),
    );
    assert!(none.unwrap().is_none());

    let (cert, key, der) = generate("env.example");
    write_pair(dir.path(), &cert, &key);
    let err = server_tls_from_env(
        &env,
        "QUEUE_PROXY_TLS",
        dir.path(),
        DEFAULT_RELOAD_PERIOD,
        rx.clone(),
    )
    .unwrap_err();
    assert!(matches!(err, TlsSetupError::Settings(_)), "{err}");
    assert!(
        err.to_string().contains("QUEUE_PROXY_TLS_MIN_VERSION"),
        "{err}"
    );

    write_pair(dir.path(), &cert, "garbage");
    let err = server_tls_from_env(
        &HashMap::<&str, &str>::new(),
        "QUEUE_PROXY_TLS",
        dir.path(),
        DEFAULT_RELOAD_PERIOD,
        rx.clone(),
    )
    .unwrap_err();
    assert!(matches!(err, TlsSetupError::Cert(_)), "{err}");

    write_pair(dir.path(), &cert, &key);
    let env: HashMap<&str, &str> = [("ACTIVATOR_TLS_MIN_VERSION", "1.2")].into();
    let tls = server_tls_from_env(
        &env,
        "ACTIVATOR_TLS",
        dir.path(),
        DEFAULT_RELOAD_PERIOD,
        rx.clone(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(tls.settings.min_version, TlsVersion::Tls12);
    let listener = bind_addr(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(serve_tls(
        listener,
        tls.acceptor,
        ServerLimits::default(),
        |_| Version,
        rx,
    ));
    assert_eq!(served_leaf(addr).await, der);
    tx.send_replace(true);
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), tls.reloader)
        .await
        .unwrap()
        .unwrap();
}

/// A client that never finishes its handshake is dropped after `header_read_timeout`; shutdown
/// does not wait for a pending handshake and closes established idle connections.
#[tokio::test]
async fn handshake_timeout_and_graceful_shutdown() {
    let dir = TempDir::new();
    let (cert, key, _) = generate("a.example");
    write_pair(dir.path(), &cert, &key);
    let limits = ServerLimits {
        header_read_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    };
    let server = start(dir.path(), &settings(&[]), DEFAULT_RELOAD_PERIOD, limits);

    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("the server closes a silent connection");
    assert!(matches!(read, Ok(0) | Err(_)));
    assert!(started.elapsed() >= Duration::from_millis(250));

    // Pending handshake + established idle HTTP/1.1 and HTTP/2 connections at shutdown.
    let _pending = TcpStream::connect(server.addr).await.unwrap();
    let h1 = Client::default().connect(server.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(h1))
        .await
        .unwrap();
    let h1_conn = tokio::spawn(conn);
    let request = Request::builder()
        .uri("/")
        .header(http::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert!(sender
        .send_request(request)
        .await
        .unwrap()
        .status()
        .is_success());
    let h2 = Client::default().connect(server.addr).await.unwrap();
    assert_eq!(get_http2(h2).await, "HTTP/2.0");

    server.stop().await;
    tokio::time::timeout(Duration::from_secs(10), h1_conn)
        .await
        .expect("the idle HTTP/1.1 connection is closed")
        .unwrap()
        .unwrap();
}

#[test]
fn in_memory_pair_updates() {
    let (cert, key, der) = generate("one.example");
    let resolver = ReloadingCertResolver::from_pem(
        "secret/tls.crt",
        "secret/tls.key",
        cert.as_bytes(),
        key.as_bytes(),
    )
    .unwrap();
    assert_eq!(resolver.current().cert[0], der);
    assert!(!resolver
        .update_from_pem(cert.as_bytes(), key.as_bytes())
        .unwrap());
    let (cert2, key2, der2) = generate("two.example");
    let err = resolver
        .update_from_pem(cert2.as_bytes(), key.as_bytes())
        .unwrap_err();
    assert!(err.to_string().contains("secret/tls.crt"), "{err}");
    assert_eq!(resolver.current().cert[0], der);
    assert!(resolver
        .update_from_pem(cert2.as_bytes(), key2.as_bytes())
        .unwrap());
    assert_eq!(resolver.current().cert[0], der2);
    assert!(ReloadingCertResolver::from_pem("c", "k", b"", key.as_bytes()).is_err());
}
