//! The Kubernetes client configuration (spec §1.1, §1.2), in Knative's order: the `--kubeconfig`
//! flag, then `KUBECONFIG` (a `:`-separated list is merged), then the in-cluster service account
//! (`KUBERNETES_SERVICE_HOST`/`_PORT`); `--server` overrides the API server URL. TLS is rustls
//! with the ring provider.
//!
//! `KUBE_API_QPS`/`KUBE_API_BURST` (and their flags) are validated but not enforced: kube-rs has
//! no client-side rate limiter, and the activator issues one list and one long-lived watch per
//! resource, far below client-go's defaults.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

/// The client-related command-line flags. Every other argument (klog's `-v=2`,
/// `--logtostderr`...) is accepted and ignored, as are `--cluster`, `--kube-api-qps` and
/// `--kube-api-burst`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeFlags {
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--server` (the API server URL).
    pub server: Option<String>,
}

impl KubeFlags {
    /// Reads the flags from the arguments (without the program name). Go's flag syntax:
    /// `-name=value`, `--name=value`, `-name value`, `--name value`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> KubeFlags {
        let mut flags = KubeFlags::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let Some(flag) = arg
                .strip_prefix("--")
                .or_else(|| arg.strip_prefix('-'))
                .filter(|f| !f.is_empty())
            else {
                continue;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (flag, None),
            };
            let slot = match name {
                "kubeconfig" => Slot::Kubeconfig,
                "server" => Slot::Server,
                _ => continue,
            };
            let Some(value) = inline.or_else(|| args.next()) else {
                continue;
            };
            match slot {
                Slot::Kubeconfig => flags.kubeconfig = Some(PathBuf::from(value)),
                Slot::Server => flags.server = Some(value),
            }
        }
        flags
    }
}

enum Slot {
    Kubeconfig,
    Server,
}

/// Where the client configuration comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientSource {
    /// One or more kubeconfig files (merged in order).
    Kubeconfig(Vec<PathBuf>),
    /// The pod's service account.
    InCluster,
}

impl ClientSource {
    /// `--kubeconfig`, else `KUBECONFIG`, else in-cluster when `KUBERNETES_SERVICE_HOST` is set;
    /// `None` when there is no way to reach a cluster.
    pub fn choose(
        flags: &KubeFlags,
        kubeconfig_env: Option<&str>,
        in_cluster: bool,
    ) -> Option<ClientSource> {
        if let Some(path) = &flags.kubeconfig {
            return Some(ClientSource::Kubeconfig(vec![path.clone()]));
        }
        let paths: Vec<PathBuf> = kubeconfig_env
            .unwrap_or_default()
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        if !paths.is_empty() {
            return Some(ClientSource::Kubeconfig(paths));
        }
        in_cluster.then_some(ClientSource::InCluster)
    }
}

/// A client configuration problem (fatal at startup).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A kubeconfig file could not be read or used.
    #[error("cannot use kubeconfig {}: {message}", path.display())]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The in-cluster configuration is incomplete.
    #[error("cannot load the in-cluster Kubernetes configuration: {0}")]
    InCluster(String),
    /// `--server` is not a URL.
    #[error("invalid --server {0:?}: {1}")]
    Server(String, String),
    /// The client could not be built.
    #[error("cannot create the Kubernetes client: {0}")]
    Client(String),
}

fn read_kubeconfig(path: &Path) -> Result<Kubeconfig, ClientError> {
    Kubeconfig::read_from(path).map_err(|e| ClientError::Kubeconfig {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Builds the client.
pub async fn build_client(
    source: &ClientSource,
    server: Option<&str>,
) -> Result<Client, ClientError> {
    let mut config = match source {
        ClientSource::Kubeconfig(paths) => {
            let mut merged: Option<Kubeconfig> = None;
            for path in paths {
                let next = read_kubeconfig(path)?;
                merged = Some(match merged {
                    None => next,
                    Some(current) => current.merge(next).map_err(|e| ClientError::Kubeconfig {
                        path: path.clone(),
                        message: e.to_string(),
                    })?,
                });
            }
            let first = paths.first().cloned().unwrap_or_default();
            let kubeconfig = merged.ok_or_else(|| ClientError::Kubeconfig {
                path: first.clone(),
                message: "no file given".into(),
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| ClientError::Kubeconfig {
                    path: first,
                    message: e.to_string(),
                })?
        }
        ClientSource::InCluster => {
            kube::Config::incluster().map_err(|e| ClientError::InCluster(e.to_string()))?
        }
    };
    if let Some(server) = server {
        config.cluster_url = server.parse().map_err(|e: http::uri::InvalidUri| {
            ClientError::Server(server.into(), e.to_string())
        })?;
    }
    Client::try_from(config).map_err(|e| ClientError::Client(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_in_go_syntax_and_unknown_flags_ignored() {
        let flags = KubeFlags::parse(args(&[
            "-v=2",
            "--logtostderr",
            "--kubeconfig=/etc/kube.yaml",
            "-server",
            "https://10.0.0.1:6443",
            "--kube-api-qps=50",
            "stray",
        ]));
        assert_eq!(flags.kubeconfig, Some(PathBuf::from("/etc/kube.yaml")));
        assert_eq!(flags.server.as_deref(), Some("https://10.0.0.1:6443"));
        let flags = KubeFlags::parse(args(&["-kubeconfig", "/a", "--server"]));
        assert_eq!(flags.kubeconfig, Some(PathBuf::from("/a")));
        assert_eq!(flags.server, None);
        assert_eq!(
            KubeFlags::parse(args(&["-", "--", "-v"])),
            KubeFlags::default()
        );
    }

    #[test]
    fn source_order_flag_then_env_then_in_cluster() {
        let flag = KubeFlags {
            kubeconfig: Some("/flag".into()),
            server: None,
        };
        assert_eq!(
            ClientSource::choose(&flag, Some("/env"), true),
            Some(ClientSource::Kubeconfig(vec!["/flag".into()]))
        );
        let none = KubeFlags::default();
        assert_eq!(
            ClientSource::choose(&none, Some("/a:/b:"), true),
            Some(ClientSource::Kubeconfig(vec!["/a".into(), "/b".into()]))
        );
        assert_eq!(
            ClientSource::choose(&none, Some(""), true),
            Some(ClientSource::InCluster)
        );
        assert_eq!(ClientSource::choose(&none, None, false), None);
    }
}
