//! The startup check of the API server's version (spec §1.4 step 1): `/version` is polled every
//! second until its `gitVersion` is at least `KUBERNETES_MIN_VERSION` (default `v1.34.0`), for up
//! to a window (60 s upstream; `ACTIVATOR_KUBE_VERSION_WAIT_SECONDS` shortens it for tests).
//!
//! Comparison as in Knative's `version.CheckMinimumVersion`: semantic versions with an optional
//! leading `v`; when the minimum has no pre-release part it is treated as `-0`, so every
//! pre-release or vendor build of the same `major.minor.patch` (`v1.34.0-gke.1`,
//! `v1.34.0+k3s1`) passes. Build metadata is ignored.

use std::cmp::Ordering;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// `KUBERNETES_MIN_VERSION` when unset.
pub const DEFAULT_MIN_VERSION: &str = "v1.34.0";

/// Upstream's version-check window.
pub const DEFAULT_VERSION_WAIT: Duration = Duration::from_secs(60);

/// Period between two `/version` requests.
pub const VERSION_POLL: Duration = Duration::from_secs(1);

/// Longest a single `/version` request may take (a black-holed API server must not hold the
/// check past its window).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// A semantic version (`major.minor.patch[-pre][+build]`, optional leading `v`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeVersion {
    /// Major, minor, patch.
    pub core: (u64, u64, u64),
    /// Pre-release identifiers (empty for a release).
    pub pre: Vec<String>,
}

/// A version string that is not `vMAJOR.MINOR.PATCH[-pre][+build]`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a semantic version such as v1.34.0")]
pub struct VersionError(pub String);

impl KubeVersion {
    /// Parses `v1.34.0`, `1.34.0-rc.1`, `v1.34.2+k3s1`.
    pub fn parse(text: &str) -> Result<KubeVersion, VersionError> {
        let bad = || VersionError(text.to_owned());
        let trimmed = text.strip_prefix('v').unwrap_or(text);
        let without_build = match trimmed.split_once('+') {
            Some((head, build)) if !build.is_empty() => head,
            Some(_) => return Err(bad()),
            None => trimmed,
        };
        let (core, pre) = match without_build.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (without_build, None),
        };
        let numbers: Vec<u64> = core
            .split('.')
            .map(|part| {
                let leading_zero = part.len() > 1 && part.starts_with('0');
                if part.is_empty() || leading_zero || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                part.parse().map_err(|_| bad())
            })
            .collect::<Result<_, _>>()?;
        let [major, minor, patch] = numbers[..] else {
            return Err(bad());
        };
        let pre = match pre {
            None => Vec::new(),
            Some(pre) => {
                let parts: Vec<String> = pre.split('.').map(str::to_owned).collect();
                let valid = |p: &String| {
                    !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                };
                if !parts.iter().all(valid) {
                    return Err(bad());
                }
                parts
            }
        };
        Ok(KubeVersion {
            core: (major, minor, patch),
            pre,
        })
    }

    /// Whether this (server) version satisfies the `minimum`, with Knative's pre-release rule.
    pub fn satisfies(&self, minimum: &KubeVersion) -> bool {
        let mut minimum = minimum.clone();
        if minimum.pre.is_empty() {
            minimum.pre.push("0".to_owned());
        }
        self.cmp_semver(&minimum) != Ordering::Less
    }

    /// Semantic-version precedence (a release ranks above its pre-releases).
    fn cmp_semver(&self, other: &KubeVersion) -> Ordering {
        self.core
            .cmp(&other.core)
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => {
                    for (a, b) in self.pre.iter().zip(&other.pre) {
                        let order = match (a.parse::<u64>(), b.parse::<u64>()) {
                            (Ok(x), Ok(y)) => x.cmp(&y),
                            (Ok(_), Err(_)) => Ordering::Less,
                            (Err(_), Ok(_)) => Ordering::Greater,
                            (Err(_), Err(_)) => a.cmp(b),
                        };
                        if order != Ordering::Equal {
                            return order;
                        }
                    }
                    self.pre.len().cmp(&other.pre.len())
                }
            })
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (major, minor, patch) = self.core;
        write!(f, "v{major}.{minor}.{patch}")?;
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre.join("."))?;
        }
        Ok(())
    }
}

/// Why the version check failed.
#[derive(Debug, thiserror::Error)]
#[error(
    "Kubernetes API server version check failed after {waited:?} (KUBERNETES_MIN_VERSION \
     {minimum}): {last}"
)]
pub struct VersionCheckError {
    /// How long the check ran.
    pub waited: Duration,
    /// The minimum required.
    pub minimum: KubeVersion,
    /// The last failure: unreachable server, unparsable answer or too old a version.
    pub last: String,
}

/// Polls `fetch` (the server's `gitVersion`) every [`VERSION_POLL`] until it satisfies `minimum`
/// or `window` has passed. The first attempt is immediate, the last one at the end of the window;
/// each attempt is bounded.
pub async fn wait_for_version<F, Fut, E>(
    minimum: &KubeVersion,
    window: Duration,
    mut fetch: F,
) -> Result<KubeVersion, VersionCheckError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<String, E>>,
    E: fmt::Display,
{
    let start = Instant::now();
    let deadline = start + window;
    loop {
        let attempt_limit = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(100), ATTEMPT_TIMEOUT);
        let last = match tokio::time::timeout(attempt_limit, fetch()).await {
            Err(_) => format!("no answer from the API server within {attempt_limit:?}"),
            Ok(Err(error)) => format!("cannot reach the API server: {error}"),
            Ok(Ok(git_version)) => match KubeVersion::parse(&git_version) {
                Err(error) => format!("the API server reports an invalid version: {error}"),
                Ok(version) if version.satisfies(minimum) => return Ok(version),
                Ok(version) => format!(
                    "kubernetes version {version} is not compatible, need at least {minimum} \
                     (this can be overridden with the env var KUBERNETES_MIN_VERSION)"
                ),
            },
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(VersionCheckError {
                waited: now - start,
                minimum: minimum.clone(),
                last,
            });
        }
        tracing::warn!(reason = %last, "Kubernetes version check failed; retrying");
        // The last attempt happens at the end of the window.
        tokio::time::sleep(VERSION_POLL.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> KubeVersion {
        KubeVersion::parse(text).unwrap()
    }

    #[test]
    fn parses_kubernetes_versions() {
        assert_eq!(v("v1.34.0").core, (1, 34, 0));
        assert_eq!(v("1.35.2").core, (1, 35, 2));
        assert_eq!(v("v1.34.1-gke.1200").pre, ["gke", "1200"]);
        assert_eq!(v("v1.34.1+k3s1").pre, Vec::<String>::new());
        assert_eq!(v("v1.34.1-rc.0+abc").to_string(), "v1.34.1-rc.0");
        for bad in [
            "",
            "v",
            "1.34",
            "v1.34.0.1",
            "v1.x.0",
            "v01.34.0",
            "v1.34.0-",
            "v1.34.0+",
            "latest",
        ] {
            assert!(KubeVersion::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn minimum_rule_accepts_pre_releases_of_the_same_patch() {
        let min = v("v1.34.0");
        for ok in [
            "v1.34.0",
            "v1.34.0-gke.1",
            "v1.34.0-rc.1",
            "v1.34.0+k3s1",
            "v1.34.5",
            "v1.35.0-alpha.0",
            "v2.0.0",
        ] {
            assert!(v(ok).satisfies(&min), "{ok} should pass");
        }
        for old in ["v1.33.9", "v1.33.99-eks.1", "v0.99.0"] {
            assert!(!v(old).satisfies(&min), "{old} should fail");
        }
        // A minimum with its own pre-release uses plain precedence.
        let min = v("v1.34.0-rc.2");
        assert!(v("v1.34.0-rc.10").satisfies(&min));
        assert!(!v("v1.34.0-rc.1").satisfies(&min));
        assert!(!v("v1.34.0-alpha").satisfies(&min));
        assert!(v("v1.34.0").satisfies(&min));
    }

    #[tokio::test(start_paused = true)]
    async fn polls_every_second_until_the_window_ends() {
        let min = v("v1.34.0");
        let mut calls = 0;
        let error = wait_for_version(&min, Duration::from_secs(3), || {
            calls += 1;
            std::future::ready(Err::<String, _>("connection refused"))
        })
        .await
        .unwrap_err();
        assert_eq!(calls, 4, "attempts at 0 s, 1 s, 2 s and 3 s");
        let message = error.to_string();
        assert!(message.contains("connection refused"), "{message}");
        assert!(message.contains("v1.34.0"), "{message}");

        let mut answers = vec!["v1.33.0", "garbage", "v1.34.2"].into_iter();
        let found = wait_for_version(&min, Duration::from_secs(60), || {
            std::future::ready(Ok::<_, String>(answers.next().unwrap().to_owned()))
        })
        .await
        .unwrap();
        assert_eq!(found, v("v1.34.2"));

        let error = wait_for_version(&min, Duration::from_secs(2), || {
            std::future::ready(Ok::<_, String>("v1.30.1".to_owned()))
        })
        .await
        .unwrap_err();
        assert!(
            error.to_string().contains("v1.30.1 is not compatible"),
            "{error}"
        );
    }
}
