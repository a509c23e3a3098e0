//! Reading configuration from environment variables with Go `envconfig` semantics (queue-proxy
//! §1.1), behind a small trait so tests can inject a fake environment.

use std::collections::HashMap;
use std::str::FromStr;

/// The container's CPU limit in whole CPUs (cgroup v2 `cpu.max`, rounded up and capped by the
/// CPUs the process may run on), or `None` when it has none: the runtime sizing both binaries
/// share (Go's automaxprocs in upstream's binaries).
pub fn cgroup_cpu_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/sys/fs/cgroup/cpu.max").ok()?;
    cpu_limit_from(&text, available_cpus())
}

/// The CPUs the process may run on (at least 1).
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cpu_limit_from(cpu_max: &str, cpus: usize) -> Option<usize> {
    let mut parts = cpu_max.split_whitespace();
    let quota: f64 = parts.next()?.parse().ok()?;
    let period: f64 = parts.next()?.parse().ok()?;
    (period > 0.0).then(|| ((quota / period).ceil() as usize).clamp(1, cpus))
}

/// A source of environment variables.
pub trait Env {
    /// The variable's value if present (possibly empty).
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Env for HashMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| (*v).to_owned())
    }
}

/// A variable that is missing or does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    /// A required variable is not set.
    #[error("required environment variable {name} is not set")]
    Missing {
        /// The variable.
        name: &'static str,
    },
    /// A variable's value is not of the expected form.
    #[error("environment variable {name} has invalid value {value:?}: expected {expected}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What it held.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
}

/// A required variable; empty is accepted.
pub fn required_string(env: &dyn Env, name: &'static str) -> Result<String, EnvError> {
    env.var(name).ok_or(EnvError::Missing { name })
}

/// An optional variable; absent reads as empty.
pub fn optional_string(env: &dyn Env, name: &'static str) -> String {
    env.var(name).unwrap_or_default()
}

fn parse<T: FromStr>(
    name: &'static str,
    value: String,
    expected: &'static str,
) -> Result<T, EnvError> {
    value.trim().parse().map_err(|_| EnvError::Invalid {
        name,
        value,
        expected,
    })
}

/// A required integer (present but empty is an error, as in Go).
pub fn required_int<T: FromStr>(
    env: &dyn Env,
    name: &'static str,
    expected: &'static str,
) -> Result<T, EnvError> {
    parse(name, required_string(env, name)?, expected)
}

/// An optional integer: absent gives `default`; present must parse.
pub fn optional_int<T: FromStr>(
    env: &dyn Env,
    name: &'static str,
    default: T,
    expected: &'static str,
) -> Result<T, EnvError> {
    match env.var(name) {
        None => Ok(default),
        Some(value) => parse(name, value, expected),
    }
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// An optional boolean in Go syntax: absent gives `default`; present must parse (empty fails).
pub fn optional_bool(env: &dyn Env, name: &'static str, default: bool) -> Result<bool, EnvError> {
    match env.var(name) {
        None => Ok(default),
        Some(value) => parse_go_bool(&value).ok_or(EnvError::Invalid {
            name,
            value,
            expected: "a boolean (true/false)",
        }),
    }
}

/// An optional port override (1–65535).
pub fn optional_port(env: &dyn Env, name: &'static str, default: u16) -> Result<u16, EnvError> {
    let port: u16 = optional_int(env, name, default, "a port number (1-65535)")?;
    if port == 0 {
        return Err(EnvError::Invalid {
            name,
            value: "0".into(),
            expected: "a port number (1-65535)",
        });
    }
    Ok(port)
}

#[cfg(test)]
mod tests {

    #[test]
    fn cpu_limit_rounds_up_and_caps() {
        assert_eq!(cpu_limit_from("max 100000\n", 4), None);
        assert_eq!(cpu_limit_from("100000 100000\n", 4), Some(1));
        assert_eq!(cpu_limit_from("150000 100000\n", 4), Some(2));
        assert_eq!(cpu_limit_from("2500 100000\n", 4), Some(1));
        assert_eq!(cpu_limit_from("800000 100000\n", 4), Some(4));
        assert_eq!(cpu_limit_from("", 4), None);
    }

    use super::*;

    #[test]
    fn go_bools() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(t), Some(true));
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(f), Some(false));
        }
        for bad in ["", "yes", "tRuE"] {
            assert_eq!(parse_go_bool(bad), None);
        }
    }

    #[test]
    fn ints() {
        let env: HashMap<&str, &str> = [("A", "12"), ("B", ""), ("C", "x")].into_iter().collect();
        assert_eq!(required_int::<u32>(&env, "A", "n"), Ok(12));
        assert!(matches!(
            required_int::<u32>(&env, "B", "n"),
            Err(EnvError::Invalid { .. })
        ));
        assert!(matches!(
            required_int::<u32>(&env, "C", "n"),
            Err(EnvError::Invalid { .. })
        ));
        assert_eq!(
            required_int::<u32>(&env, "D", "n"),
            Err(EnvError::Missing { name: "D" })
        );
        assert_eq!(optional_int::<u32>(&env, "D", 7, "n"), Ok(7));
    }
}
