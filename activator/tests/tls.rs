//! System-internal TLS end to end (spec §9, §1.3, §1.5, §2.13): the activator started with
//! `config-network` `system-internal-tls: enabled` and the `routing-serving-certs` Secret in its
//! discovery document, in front of real queue-proxies serving TLS from `QUEUE_CERT_DIR`.
//! Certificates are generated per test with rcgen.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{Request, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use support::*;

/// The name every queue-proxy certificate carries.
const DATA_PLANE: &str = "data-plane.knative.dev";

struct Ca {
    pem: String,
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf with these DNS SANs: (certificate PEM, key PEM).
    fn leaf(&self, sans: &[&str]) -> (String, String) {
        let params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A fresh directory holding `tls.crt` and `tls.key` (a queue-proxy's `QUEUE_CERT_DIR`).
fn cert_dir((cert, key): &(String, String)) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "tls-certs-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    std::fs::write(dir.join("tls.key"), key).unwrap();
    dir
}

/// The discovery document: `revs`, config-network with TLS on, the Secret (when `secret` is
/// given: tls.crt, tls.key and optionally ca.crt) and trust-bundle ConfigMaps.
fn tls_document(
    revs: &[Rev],
    secret: Option<(&(String, String), Option<&str>)>,
    bundles: &[(&str, &str)],
) -> String {
    let mut doc: Value = serde_json::from_str(&document(revs)).unwrap();
    let mut config_maps = json!({
        "config-network": {"data": {"system-internal-tls": "Enabled"}}
    });
    for (name, pem) in bundles {
        config_maps[*name] = json!({
            "labels": {"networking.knative.dev/trust-bundle": "true"},
            "data": {"ca-bundle.pem": pem},
        });
    }
    doc["configMaps"] = config_maps;
    if let Some(((cert, key), ca)) = secret {
        let mut data = json!({"tls.crt": cert, "tls.key": key});
        if let Some(ca) = ca {
            data["ca.crt"] = json!(ca);
        }
        doc["secrets"] = json!({"routing-serving-certs": {"data": data}});
    }
    serde_json::to_string_pretty(&doc).unwrap()
}

/// A pod whose queue-proxy serves TLS with `pair`; returns once its TLS port listens.
async fn tls_pod(revision: &str, pair: &(String, String)) -> Pod {
    let dir = cert_dir(pair);
    let pod = Pod::start_with_env(
        App::ok().await,
        revision,
        0,
        vec![("QUEUE_CERT_DIR", dir.display().to_string())],
    )
    .await;
    let tls = SocketAddr::from(([127, 0, 0, 1], pod.qp.tls_port));
    eventually(DEADLINE, "the queue-proxy's TLS port", || async move {
        tokio::net::TcpStream::connect(tls).await.ok().map(|_| ())
    })
    .await;
    pod
}

/// A revision in namespace `ns` with `pod` ready.
fn rev_in(ns: &str, name: &str, pod: SocketAddr) -> Rev {
    Rev {
        namespace: ns.to_owned(),
        ..Rev::new(name, 0).ready([pod])
    }
}

/// An activator in TLS mode whose pods' TLS port is `queue_tls_port`.
fn tls_activator(stats: &StatsReceiver, queue_tls_port: u16, document: &str) -> Activator {
    ActivatorConfig::new(&stats.url())
        .env("ACTIVATOR_QUEUE_TLS_PORT", queue_tls_port)
        .discovery_text(document)
        .start()
}

/// Spec §9: a queue-proxy whose certificate carries `data-plane.knative.dev` and
/// `kn-user-<ns>` is accepted (HTTP/1.1 and HTTP/2 over TLS, to the pod's TLS port, Host =
/// that address); the same pod for a revision of another namespace is refused with a 502 naming
/// the missing SAN, and the refusal does not poison the first namespace's connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_san_decides_between_200_and_502() {
    let ca = Ca::new("knative-ca");
    let activator_pair = ca.leaf(&["activator.knative-serving.svc"]);
    let qp_pair = ca.leaf(&[DATA_PLANE, "kn-user-default"]);
    let pod = tls_pod("tls-ok-00001", &qp_pair).await;
    let stats = StatsReceiver::start().await;
    let doc = tls_document(
        &[
            rev_in(NS, "tls-ok-00001", pod.addr()),
            rev_in("other", "tls-other-00001", pod.addr()),
        ],
        Some((&activator_pair, Some(&ca.pem))),
        &[],
    );
    let activator = tls_activator(&stats, pod.qp.tls_port, &doc);
    activator.wait_healthy().await;
    activator
        .wait_log("Knative system-internal-tls is enabled", 1)
        .await;

    for round in 0..2 {
        let resp = send(activator.addr(), rev_get("/", NS, "tls-ok-00001")).await;
        assert_eq!(
            resp.status,
            StatusCode::OK,
            "round {round}: {}",
            resp.text()
        );
        let seen = pod.app.seen().pop().unwrap();
        assert_eq!(seen.header_all("k-proxy-request"), ["activator"]);

        let resp = send(activator.addr(), rev_get("/", "other", "tls-other-00001")).await;
        assert_eq!(resp.status, StatusCode::BAD_GATEWAY, "round {round}");
        assert_eq!(
            resp.text(),
            "san \"kn-user-other\" does not have a matching name in \
             [data-plane.knative.dev kn-user-default]\n"
        );
    }
    assert_eq!(
        pod.app.seen_count(),
        2,
        "refused requests never reached the app"
    );

    // HTTP/2 in, HTTP/2 over TLS out.
    let mut h2 = h2_connect(activator.h2c_addr()).await;
    let resp = send_h2(
        &mut h2,
        Request::get("http://tls-ok-00001.default.svc.cluster.local/h2")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let seen = pod.app.seen().pop().unwrap();
    assert_eq!(seen.path_and_query(), "/h2");
    let mut activator = activator;
    activator.assert_healthy();
}

/// Spec §9: the trust pool comes from `ca.crt` and the trust-bundle ConfigMaps, and a bundle
/// added later applies to the next connection without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_bundle_takes_effect_without_restart() {
    let activator_ca = Ca::new("activator-ca");
    let qp_ca = Ca::new("queue-proxy-ca");
    let activator_pair = activator_ca.leaf(&["activator.knative-serving.svc"]);
    let qp_pair = qp_ca.leaf(&[DATA_PLANE, "kn-user-default"]);
    let pod = tls_pod("bundle-00001", &qp_pair).await;
    let stats = StatsReceiver::start().await;
    let revs = [rev_in(NS, "bundle-00001", pod.addr())];
    // ca.crt is the activator's CA, which did not sign the queue-proxy's certificate.
    let secret = Some((&activator_pair, Some(activator_ca.pem.as_str())));
    let activator = tls_activator(&stats, pod.qp.tls_port, &tls_document(&revs, secret, &[]));
    activator.wait_healthy().await;

    let resp = send(activator.addr(), rev_get("/", NS, "bundle-00001")).await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
    assert!(resp.text().starts_with("tls: "), "{}", resp.text());

    activator.set_discovery_text(&tls_document(
        &revs,
        secret,
        &[("queue-proxy-ca", qp_ca.pem.as_str())],
    ));
    let addr = activator.addr();
    eventually(
        DEADLINE,
        "a 200 once the bundle is trusted",
        || async move {
            let resp = send(addr, rev_get("/", NS, "bundle-00001")).await;
            (resp.status == StatusCode::OK).then_some(())
        },
    )
    .await;
    activator
        .wait_log("Upstream TLS trust pool updated", 2)
        .await;
}

/// A TLS client trusting `ca`, offering `alpn`.
async fn tls_connect(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            ServerName::try_from("activator.knative-serving.svc").unwrap(),
            tcp,
        )
        .await
        .expect("TLS handshake with the activator")
}

/// The activator probe over an established TLS stream, as HTTP/2 or HTTP/1.1.
async fn probe_over(
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    h2: bool,
) -> (StatusCode, Version, String) {
    let request = Request::get("https://activator/")
        .header("k-network-probe", "activator")
        .body(empty())
        .unwrap();
    let response = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut request = request;
        *request.uri_mut() = "/".parse().unwrap();
        request
            .headers_mut()
            .insert("host", "activator".parse().unwrap());
        sender.send_request(request).await.unwrap()
    };
    let status = response.status();
    let version = response.version();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, version, String::from_utf8_lossy(&body).into_owned())
}

/// Spec §1.5: the TLS listener answers with the Secret's certificate, ALPN `h2` and
/// `http/1.1`, prior-knowledge h2 without ALPN, and the same chain as 8012. A new pair in the
/// Secret is served to new handshakes; a broken one is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listener_speaks_h2_and_http1_and_follows_the_secret() {
    let ca = Ca::new("knative-ca");
    let pair = ca.leaf(&["activator.knative-serving.svc"]);
    let stats = StatsReceiver::start().await;
    let doc = tls_document(&[], Some((&pair, None)), &[]);
    let activator = tls_activator(&stats, free_port(), &doc);
    let https = SocketAddr::from(([127, 0, 0, 1], activator.https_port));
    eventually(DEADLINE, "the TLS listener", || async move {
        tokio::net::TcpStream::connect(https).await.ok().map(|_| ())
    })
    .await;

    let stream = tls_connect(https, &ca.der, &[b"h2", b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, version, body) = probe_over(stream, true).await;
    assert_eq!(
        (status, version, body.as_str()),
        (StatusCode::OK, Version::HTTP_2, "activator")
    );

    let stream = tls_connect(https, &ca.der, &[b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, version, body) = probe_over(stream, false).await;
    assert_eq!(
        (status, version, body.as_str()),
        (StatusCode::OK, Version::HTTP_11, "activator")
    );

    // No ALPN: HTTP/2 prior knowledge still works (Go's client sends it so).
    let stream = tls_connect(https, &ca.der, &[]).await;
    let (status, version, _) = probe_over(stream, true).await;
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));

    // Rotation: a broken pair is ignored, then a new pair signed by another CA is served.
    let broken = (pair.0.clone(), ca.leaf(&["x"]).1);
    activator.set_discovery_text(&tls_document(&[], Some((&broken, None)), &[]));
    activator
        .wait_log(
            "failed to parse certificate in secret routing-serving-certs",
            1,
        )
        .await;
    tls_connect(https, &ca.der, &[]).await;
    let new_ca = Ca::new("rotated-ca");
    let rotated = new_ca.leaf(&["activator.knative-serving.svc"]);
    activator.set_discovery_text(&tls_document(&[], Some((&rotated, None)), &[]));
    activator
        .wait_log("Loaded the certificate of secret routing-serving-certs", 2)
        .await;
    let stream = tls_connect(https, &new_ca.der, &[]).await;
    let (status, _, _) = probe_over(stream, true).await;
    assert_eq!(status, StatusCode::OK);
}

/// Spec §1.4 step 5: TLS mode without the Secret is fatal.
#[test]
fn tls_mode_without_the_secret_exits_1() {
    let exited = ActivatorConfig::new("ws://127.0.0.1:9/")
        .discovery_text(&tls_document(&[], None, &[]))
        .run_to_exit();
    exited.assert_failed();
    assert!(
        exited
            .stderr
            .contains("knative-serving/routing-serving-certs was not found"),
        "{}",
        exited.stderr
    );
}

/// Spec §1.1: an invalid `ACTIVATOR_TLS_*` value is fatal and named; so is an invalid
/// config-network value (spec §1.3).
#[test]
fn invalid_settings_exit_1_naming_them() {
    let ca = Ca::new("knative-ca");
    let pair = ca.leaf(&["activator"]);
    let exited = ActivatorConfig::new("ws://127.0.0.1:9/")
        .env("ACTIVATOR_TLS_MIN_VERSION", "1.1")
        .discovery_text(&tls_document(&[], Some((&pair, None)), &[]))
        .run_to_exit();
    exited.assert_failed();
    assert!(
        exited.stderr.contains("ACTIVATOR_TLS_MIN_VERSION") && exited.stderr.contains("1.1"),
        "{}",
        exited.stderr
    );

    let doc = json!({
        "revisions": [],
        "configMaps": {"config-network": {"data": {"enable-mesh-pod-addressability": "yes"}}}
    });
    let exited = ActivatorConfig::new("ws://127.0.0.1:9/")
        .discovery_text(&doc.to_string())
        .run_to_exit();
    exited.assert_failed();
    assert!(
        exited.stderr.contains("enable-mesh-pod-addressability") && exited.stderr.contains("yes"),
        "{}",
        exited.stderr
    );
}
