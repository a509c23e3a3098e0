//! Where the autoscaler lives (spec §1.1 `CLUSTER_DOMAIN`, §6.4).

/// The autoscaler Service's websocket port.
pub const AUTOSCALER_PORT: u16 = 8080;

/// Cluster domain when nothing better is known.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// The resolver configuration consulted by [`discover_cluster_domain`].
pub const RESOLV_CONF_PATH: &str = "/etc/resolv.conf";

/// The environment variable that overrides the cluster domain.
pub const CLUSTER_DOMAIN_ENV: &str = "CLUSTER_DOMAIN";

/// `ws://autoscaler.<system_namespace>.svc.<cluster_domain>:8080` (request path `/`).
///
/// Always the `autoscaler` ClusterIP Service, never a bucket Service (§6.6).
pub fn autoscaler_url(system_namespace: &str, cluster_domain: &str) -> String {
    format!("ws://autoscaler.{system_namespace}.svc.{cluster_domain}:{AUTOSCALER_PORT}")
}

/// The cluster domain, exactly as knative.dev/pkg computes it (including its quirk).
///
/// `resolv_conf` is the content of `/etc/resolv.conf`, or `None` if it could not be opened;
/// `env_override` is the value of `CLUSTER_DOMAIN`, if set.
///
/// - file unreadable → `cluster.local`, **whatever `CLUSTER_DOMAIN` says** (Go quirk);
/// - a non-empty `CLUSTER_DOMAIN` → it;
/// - otherwise the first `search` entry starting with `svc.` (lines split on single spaces, like
///   Go's `strings.Split(line, " ")`), with `svc.` and one trailing dot removed;
/// - otherwise `cluster.local`.
pub fn cluster_domain_from(resolv_conf: Option<&str>, env_override: Option<&str>) -> String {
    let Some(conf) = resolv_conf else {
        return DEFAULT_CLUSTER_DOMAIN.to_owned();
    };
    if let Some(domain) = env_override.filter(|d| !d.is_empty()) {
        return domain.to_owned();
    }
    for line in conf.lines() {
        let mut elements = line.split(' ');
        if elements.next() != Some("search") {
            continue;
        }
        if let Some(e) = elements.find(|e| e.starts_with("svc.")) {
            let domain = &e["svc.".len()..];
            return domain.strip_suffix('.').unwrap_or(domain).to_owned();
        }
    }
    DEFAULT_CLUSTER_DOMAIN.to_owned()
}

/// [`cluster_domain_from`] applied to `/etc/resolv.conf` and `$CLUSTER_DOMAIN`.
pub fn discover_cluster_domain() -> String {
    let conf = std::fs::read(RESOLV_CONF_PATH)
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    let env = std::env::var(CLUSTER_DOMAIN_ENV).ok();
    cluster_domain_from(conf.as_deref(), env.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    const K8S_RESOLV: &str = "nameserver 10.96.0.10\n\
        search knative-serving.svc.example.com svc.example.com example.com\n\
        options ndots:5\n";

    #[test]
    fn url_uses_the_system_namespace_and_domain() {
        assert_eq!(
            autoscaler_url("knative-serving", "cluster.local"),
            "ws://autoscaler.knative-serving.svc.cluster.local:8080"
        );
    }

    #[test]
    fn domain_from_the_first_svc_search_entry() {
        assert_eq!(cluster_domain_from(Some(K8S_RESOLV), None), "example.com");
        assert_eq!(
            cluster_domain_from(Some("search a.b svc.my.domain. svc.other\n"), None),
            "my.domain"
        );
        // CRLF line endings are fine; later `search` lines are consulted too.
        assert_eq!(
            cluster_domain_from(Some("search foo\r\nsearch svc.x.y\r\n"), Some("")),
            "x.y"
        );
    }

    #[test]
    fn domain_defaults() {
        assert_eq!(cluster_domain_from(Some(""), None), "cluster.local");
        assert_eq!(
            cluster_domain_from(Some("search default.svc.cluster.local\n"), None),
            "cluster.local"
        );
        // Tabs are not separators in Go's parser.
        assert_eq!(
            cluster_domain_from(Some("search\tsvc.tabbed\n"), None),
            "cluster.local"
        );
        assert_eq!(
            cluster_domain_from(Some("nameserver 1.1.1.1"), None),
            "cluster.local"
        );
    }

    #[test]
    fn env_override_only_when_resolv_conf_is_readable() {
        assert_eq!(
            cluster_domain_from(Some(K8S_RESOLV), Some("override.dev")),
            "override.dev"
        );
        assert_eq!(
            cluster_domain_from(None, Some("override.dev")),
            "cluster.local"
        );
        assert_eq!(cluster_domain_from(None, None), "cluster.local");
    }
}
