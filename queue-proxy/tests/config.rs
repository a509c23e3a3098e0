//! Start-up configuration errors (spec §1.1, §1.2, §1.4, §2 notes, §9.2): the real binary exits
//! with code 1 and says what is wrong, without panicking.

mod support;

use support::*;

/// A user port nothing listens on: configuration errors happen before any proxying.
fn base() -> QpConfig {
    QpConfig::new(free_port())
}

/// Starts the queue-proxy with `name` set to `value`, and checks that it exits failing with a
/// message on stderr containing each of `named`.
fn refused(name: &'static str, value: &str, named: &[&str]) {
    let exited = base().env(name, value).run_to_exit();
    exited.assert_failed();
    assert!(
        named.iter().all(|n| exited.stderr.contains(n)),
        "{exited:#?}"
    );
}

#[test]
fn missing_required_variable_names_it() {
    let exited = base().without("SERVING_POD").run_to_exit();
    exited.assert_failed();
    assert!(exited.stderr.contains("SERVING_POD"), "{exited:#?}");
}

#[test]
fn every_required_variable_is_required() {
    // §1.2 "Req? yes" rows.
    for name in [
        "SERVING_NAMESPACE",
        "SERVING_CONFIGURATION",
        "SERVING_REVISION",
        "SERVING_POD_IP",
        "USER_PORT",
        "CONTAINER_CONCURRENCY",
        "REVISION_TIMEOUT_SECONDS",
        "SERVING_LOGGING_CONFIG",
        "SERVING_LOGGING_LEVEL",
        "QUEUE_SERVING_PORT",
        "QUEUE_SERVING_TLS_PORT",
    ] {
        let exited = base().without(name).run_to_exit();
        exited.assert_failed();
        assert!(exited.stderr.contains(name), "{name}: {exited:#?}");
    }
}

#[test]
fn empty_strings_are_accepted_for_required_string_variables() {
    // SM2: SERVING_CONFIGURATION="" and SERVING_LOGGING_CONFIG="" parse; the process starts.
    let mut qp = base()
        .env("SERVING_CONFIGURATION", "")
        .env("SERVING_LOGGING_CONFIG", "")
        .env("SERVING_LOGGING_LEVEL", "")
        .start();
    qp.assert_healthy();
}

#[test]
fn non_numeric_container_concurrency_names_variable_and_value() {
    refused(
        "CONTAINER_CONCURRENCY",
        "abc",
        &["CONTAINER_CONCURRENCY", "abc"],
    );
}

#[test]
fn container_concurrency_above_the_breaker_capacity_names_variable_and_value() {
    // 2^31: one more than the largest breaker capacity (Go's revisionMaxConcurrency).
    refused(
        "CONTAINER_CONCURRENCY",
        "2147483648",
        &["CONTAINER_CONCURRENCY", "2147483648"],
    );
}

#[test]
fn empty_int_is_an_error() {
    refused(
        "REVISION_TIMEOUT_SECONDS",
        "",
        &["REVISION_TIMEOUT_SECONDS"],
    );
}

#[test]
fn empty_bool_is_an_error() {
    refused("ENABLE_HTTP_FULL_DUPLEX", "", &["ENABLE_HTTP_FULL_DUPLEX"]);
}

#[test]
fn go_bool_spellings_are_accepted() {
    let mut qp = base()
        .env("ENABLE_HTTP_FULL_DUPLEX", "True")
        .env("ENABLE_HTTP2_AUTO_DETECTION", "0")
        .env("ENABLE_MULTI_CONTAINER_PROBES", "f")
        .start();
    qp.assert_healthy();
}

#[test]
fn invalid_observability_config_names_it() {
    let exited = base()
        .env("OBSERVABILITY_CONFIG", "{not json")
        .run_to_exit();
    exited.assert_failed();
    assert!(
        format!("{}{}", exited.stderr, exited.stdout).contains("OBSERVABILITY_CONFIG"),
        "{exited:#?}"
    );
}

#[test]
fn minimal_controller_observability_config_is_accepted() {
    let mut qp = base()
        .env(
            "OBSERVABILITY_CONFIG",
            r#"{"tracing":{},"metrics":{},"runtime":{},"requestMetrics":{},"EnableVarLogCollection":false}"#,
        )
        .start();
    qp.assert_healthy();
}

#[test]
fn invalid_readiness_probe_json_is_fatal() {
    let exited = base()
        .env("SERVING_READINESS_PROBE", "\"wrongProbeObject\"")
        .run_to_exit();
    exited.assert_failed();
}

#[test]
fn main_port_in_use_exits_1() {
    // §2 note: a listener failure logs and exits 1 without draining.
    let holder = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let exited = base()
        .env("QUEUE_SERVING_PORT", port)
        .env("QUEUE_ADMIN_PORT", free_port())
        .env("QUEUE_STATS_PORT", free_port())
        .env("QUEUE_SERVING_TLS_PORT", free_port())
        .run_exact_to_exit();
    exited.assert_failed();
    assert!(
        exited.stderr.contains(&port.to_string()),
        "the error names the port: {exited:#?}"
    );
    drop(holder);
}

#[test]
fn admin_port_in_use_exits_1() {
    let holder = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let exited = base()
        .env("QUEUE_ADMIN_PORT", port)
        .env("QUEUE_SERVING_PORT", free_port())
        .env("QUEUE_STATS_PORT", free_port())
        .env("QUEUE_SERVING_TLS_PORT", free_port())
        .run_exact_to_exit();
    exited.assert_failed();
    drop(holder);
}
