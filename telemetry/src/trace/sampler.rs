//! Samplers and how the configuration picks one (queue-proxy §7.3), following Knative's
//! `sampleFor` and, when `OTEL_TRACES_SAMPLER` is set, the Go SDK's environment handling.

use std::fmt;

use super::context::{SpanContext, TraceId};
use super::Protocol;
use knative_common::env::Env;

/// The root decision of a sampler: for spans without a parent, or always for non-parent-based
/// samplers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RootSampler {
    /// Sample everything.
    AlwaysOn,
    /// Sample nothing.
    AlwaysOff,
    /// Sample the fraction of traces whose id falls below the bound (Go's `TraceIDRatioBased`).
    Ratio(f64),
}

/// Decides whether a new span is sampled (recorded and exported).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    /// Apply the root decision to every span, ignoring the parent.
    Root(RootSampler),
    /// Follow the parent's sampled flag when there is a parent; else the root decision.
    ParentBased(RootSampler),
}

impl Sampler {
    /// Go's `AlwaysSample()`.
    pub const ALWAYS_ON: Sampler = Sampler::Root(RootSampler::AlwaysOn);
    /// Go's `NeverSample()`.
    pub const ALWAYS_OFF: Sampler = Sampler::Root(RootSampler::AlwaysOff);

    /// The decision for a span of trace `trace_id` under `parent`.
    #[inline]
    pub fn should_sample(&self, parent: Option<&SpanContext>, trace_id: TraceId) -> bool {
        match self {
            Sampler::Root(root) => root.decide(trace_id),
            Sampler::ParentBased(root) => match parent {
                Some(parent) => parent.sampled,
                None => root.decide(trace_id),
            },
        }
    }
}

impl RootSampler {
    /// Go's `TraceIDRatioBased(fraction)`: ≥ 1 samples everything, ≤ 0 nothing.
    pub fn ratio(fraction: f64) -> RootSampler {
        if fraction >= 1.0 {
            RootSampler::AlwaysOn
        } else if fraction > 0.0 {
            RootSampler::Ratio(fraction)
        } else {
            // ≤ 0 and NaN.
            RootSampler::AlwaysOff
        }
    }

    #[inline]
    fn decide(&self, trace_id: TraceId) -> bool {
        match *self {
            RootSampler::AlwaysOn => true,
            RootSampler::AlwaysOff => false,
            RootSampler::Ratio(fraction) => {
                // Go: uint64(fraction * (1 << 63)) against the last 8 bytes shifted right by one.
                let bound = (fraction * (1u64 << 63) as f64) as u64;
                let mut low = [0u8; 8];
                low.copy_from_slice(&trace_id.0[8..]);
                (u64::from_be_bytes(low) >> 1) < bound
            }
        }
    }
}

impl fmt::Display for RootSampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootSampler::AlwaysOn => f.write_str("AlwaysOnSampler"),
            RootSampler::AlwaysOff => f.write_str("AlwaysOffSampler"),
            RootSampler::Ratio(r) => write!(f, "TraceIDRatioBased{{{r}}}"),
        }
    }
}

impl fmt::Display for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sampler::Root(root) => root.fmt(f),
            Sampler::ParentBased(root) => write!(f, "ParentBased{{root:{root}}}"),
        }
    }
}

/// `OTEL_TRACES_SAMPLER_ARG` does not parse as a number (fatal, as upstream).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unable to parse sample rate override OTEL_TRACES_SAMPLER_ARG={0:?}")]
pub struct SamplerArgError(pub String);

/// Go's `strconv.ParseFloat(s, 64)` for the forms that matter here (decimal, exponent, `inf`,
/// `nan`, optional sign).
fn parse_go_float(text: &str) -> Option<f64> {
    if text.is_empty() || text.contains('_') {
        return None;
    }
    text.parse::<f64>().ok()
}

/// The sampler the queue-proxy (and activator) use, from the configured protocol and sampling
/// rate plus the environment:
///
/// 1. `OTEL_TRACES_SAMPLER` non-empty → the SDK's environment handling ([`sampler_from_env`]);
/// 2. protocol `stdout` → always on;
/// 3. `rate` = `sampling_rate`, replaced by `OTEL_TRACES_SAMPLER_ARG` when that is non-empty (a
///    value that does not parse is an error); `rate ≥ 1` → always on;
/// 4. the *configured* `sampling_rate ≤ 0` → always off (never sampled, parent or not);
/// 5. otherwise parent-based trace-id ratio with the *configured* `sampling_rate` (the override
///    only takes part in the `≥ 1` test — Knative's quirk).
pub fn select_sampler(
    protocol: Protocol,
    sampling_rate: f64,
    env: &dyn Env,
) -> Result<Sampler, SamplerArgError> {
    if let Some(name) = env.var("OTEL_TRACES_SAMPLER").filter(|v| !v.is_empty()) {
        return Ok(sampler_from_env(&name, env.var("OTEL_TRACES_SAMPLER_ARG")));
    }
    if protocol == Protocol::Stdout {
        return Ok(Sampler::ALWAYS_ON);
    }
    let mut rate = sampling_rate;
    if let Some(arg) = env.var("OTEL_TRACES_SAMPLER_ARG").filter(|v| !v.is_empty()) {
        rate = parse_go_float(&arg).ok_or(SamplerArgError(arg))?;
    }
    if rate >= 1.0 {
        return Ok(Sampler::ALWAYS_ON);
    }
    if sampling_rate <= 0.0 || sampling_rate.is_nan() {
        return Ok(Sampler::ALWAYS_OFF);
    }
    Ok(Sampler::ParentBased(RootSampler::ratio(sampling_rate)))
}

/// The Go SDK's `OTEL_TRACES_SAMPLER` handling: `always_on`, `always_off`, `traceidratio`,
/// `parentbased_always_on`, `parentbased_always_off`, `parentbased_traceidratio` (name trimmed and
/// case-insensitive). The ratio comes from `OTEL_TRACES_SAMPLER_ARG` (trimmed): absent → 1; not a
/// number, negative or above 1 → 1 (with a warning). Any other name → the SDK default,
/// parent-based always-on (with a warning).
pub fn sampler_from_env(name: &str, arg: Option<String>) -> Sampler {
    let ratio = || -> RootSampler {
        let Some(arg) = arg.as_deref().map(str::trim) else {
            return RootSampler::AlwaysOn;
        };
        match parse_go_float(arg) {
            Some(v) if (0.0..=1.0).contains(&v) => RootSampler::ratio(v),
            Some(v) if v.is_nan() => RootSampler::AlwaysOff,
            _ => {
                tracing::warn!(
                    value = arg,
                    "invalid OTEL_TRACES_SAMPLER_ARG; using a sampling ratio of 1"
                );
                RootSampler::AlwaysOn
            }
        }
    };
    match name.trim().to_ascii_lowercase().as_str() {
        "always_on" => Sampler::ALWAYS_ON,
        "always_off" => Sampler::ALWAYS_OFF,
        "traceidratio" => Sampler::Root(ratio()),
        "parentbased_always_on" => Sampler::ParentBased(RootSampler::AlwaysOn),
        "parentbased_always_off" => Sampler::ParentBased(RootSampler::AlwaysOff),
        "parentbased_traceidratio" => Sampler::ParentBased(ratio()),
        other => {
            tracing::warn!(
                sampler = other,
                "unsupported OTEL_TRACES_SAMPLER; using parentbased_always_on"
            );
            Sampler::ParentBased(RootSampler::AlwaysOn)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::context::SpanId;
    use std::collections::HashMap;

    fn env(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    fn select(protocol: Protocol, rate: f64, e: &[(&'static str, &'static str)]) -> Sampler {
        select_sampler(protocol, rate, &env(e)).unwrap()
    }

    fn parent(sampled: bool) -> SpanContext {
        SpanContext {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            sampled,
            remote: true,
            trace_state: None,
        }
    }

    #[test]
    fn knative_rules() {
        use Protocol::*;
        // stdout → always.
        assert_eq!(select(Stdout, 0.0, &[]), Sampler::ALWAYS_ON);
        // rate ≥ 1 → always (not parent-based: an unsampled parent is overridden).
        assert_eq!(select(Grpc, 1.0, &[]), Sampler::ALWAYS_ON);
        assert_eq!(select(HttpProtobuf, 7.0, &[]), Sampler::ALWAYS_ON);
        // configured rate ≤ 0 → never (a sampled parent is overridden too).
        assert_eq!(select(Grpc, 0.0, &[]), Sampler::ALWAYS_OFF);
        assert_eq!(select(Grpc, -1.0, &[]), Sampler::ALWAYS_OFF);
        // Otherwise parent-based ratio.
        assert_eq!(
            select(Grpc, 0.25, &[]),
            Sampler::ParentBased(RootSampler::Ratio(0.25))
        );
        // The override only matters for the ≥ 1 check.
        assert_eq!(
            select(Grpc, 0.25, &[("OTEL_TRACES_SAMPLER_ARG", "1")]),
            Sampler::ALWAYS_ON
        );
        assert_eq!(
            select(Grpc, 0.0, &[("OTEL_TRACES_SAMPLER_ARG", "1.5")]),
            Sampler::ALWAYS_ON
        );
        assert_eq!(
            select(Grpc, 0.25, &[("OTEL_TRACES_SAMPLER_ARG", "0.9")]),
            Sampler::ParentBased(RootSampler::Ratio(0.25))
        );
        assert_eq!(
            select(Grpc, 0.0, &[("OTEL_TRACES_SAMPLER_ARG", "0.5")]),
            Sampler::ALWAYS_OFF
        );
        // An empty override is no override.
        assert_eq!(
            select(Grpc, 0.5, &[("OTEL_TRACES_SAMPLER_ARG", "")]),
            Sampler::ParentBased(RootSampler::Ratio(0.5))
        );
        // A bad override is fatal.
        assert_eq!(
            select_sampler(Grpc, 0.5, &env(&[("OTEL_TRACES_SAMPLER_ARG", "half")])),
            Err(SamplerArgError("half".into()))
        );
        // stdout wins over the override.
        assert_eq!(
            select(Stdout, 0.0, &[("OTEL_TRACES_SAMPLER_ARG", "junk")]),
            Sampler::ALWAYS_ON
        );
    }

    #[test]
    fn sdk_env_rules() {
        let s = |name: &'static str, arg: Option<&'static str>| {
            let mut e = vec![("OTEL_TRACES_SAMPLER", name)];
            if let Some(a) = arg {
                e.push(("OTEL_TRACES_SAMPLER_ARG", a));
            }
            // The env sampler wins over stdout and the configured rate.
            select(Protocol::Stdout, 1.0, &e)
        };
        assert_eq!(s("always_off", None), Sampler::ALWAYS_OFF);
        assert_eq!(s(" Always_On ", None), Sampler::ALWAYS_ON);
        assert_eq!(s("traceidratio", None), Sampler::ALWAYS_ON);
        assert_eq!(
            s("traceidratio", Some(" 0.1 ")),
            Sampler::Root(RootSampler::Ratio(0.1))
        );
        assert_eq!(s("traceidratio", Some("2")), Sampler::ALWAYS_ON);
        assert_eq!(s("traceidratio", Some("-1")), Sampler::ALWAYS_ON);
        assert_eq!(s("traceidratio", Some("x")), Sampler::ALWAYS_ON);
        assert_eq!(s("traceidratio", Some("")), Sampler::ALWAYS_ON);
        assert_eq!(
            s("parentbased_traceidratio", Some("0.5")),
            Sampler::ParentBased(RootSampler::Ratio(0.5))
        );
        assert_eq!(
            s("parentbased_always_off", None),
            Sampler::ParentBased(RootSampler::AlwaysOff)
        );
        assert_eq!(
            s("jaeger_remote", None),
            Sampler::ParentBased(RootSampler::AlwaysOn)
        );
        // Empty OTEL_TRACES_SAMPLER is ignored: Knative's rules apply (and a bad ARG is fatal).
        assert!(select_sampler(
            Protocol::Grpc,
            0.5,
            &env(&[
                ("OTEL_TRACES_SAMPLER", ""),
                ("OTEL_TRACES_SAMPLER_ARG", "x")
            ])
        )
        .is_err());
    }

    #[test]
    fn decisions() {
        let on = parent(true);
        let off = parent(false);
        let id = TraceId::random();
        assert!(Sampler::ALWAYS_ON.should_sample(Some(&off), id));
        assert!(!Sampler::ALWAYS_OFF.should_sample(Some(&on), id));
        let pb = Sampler::ParentBased(RootSampler::AlwaysOff);
        assert!(pb.should_sample(Some(&on), id));
        assert!(!pb.should_sample(Some(&off), id));
        assert!(!pb.should_sample(None, id));
        let pb = Sampler::ParentBased(RootSampler::AlwaysOn);
        assert!(!pb.should_sample(Some(&off), id));
        assert!(pb.should_sample(None, id));
    }

    #[test]
    fn ratio_matches_go_bound() {
        let r = Sampler::Root(RootSampler::ratio(0.5));
        let mut id = [0u8; 16];
        id[0] = 1;
        // Lower 8 bytes 0x7fff… >> 1 = 0x3fff… < 0x4000… → sampled.
        id[8..].copy_from_slice(&0x7fff_ffff_ffff_fffeu64.to_be_bytes());
        assert!(r.should_sample(None, TraceId(id)));
        id[8..].copy_from_slice(&0x8000_0000_0000_0000u64.to_be_bytes());
        assert!(!r.should_sample(None, TraceId(id)));
        // Statistically about right.
        let r = Sampler::Root(RootSampler::ratio(0.25));
        let n = (0..20_000)
            .filter(|_| r.should_sample(None, TraceId::random()))
            .count();
        assert!((4_000..6_000).contains(&n), "{n}");
        assert_eq!(RootSampler::ratio(f64::NAN), RootSampler::AlwaysOff);
        assert_eq!(RootSampler::ratio(1.0), RootSampler::AlwaysOn);
    }
}
