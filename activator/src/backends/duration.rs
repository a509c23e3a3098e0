//! Go's `time.ParseDuration` syntax, for `PROBE_TIMEOUT` / `PROBE_FREQUENCY` (spec §1.1).

use std::time::Duration;

/// Why a duration string was rejected (messages follow Go's).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not of the form `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+` (or `0`), or out of range.
    #[error("time: invalid duration {0:?}")]
    Invalid(String),
    /// A number without unit (other than a lone `0`).
    #[error("time: missing unit in duration {0:?}")]
    MissingUnit(String),
    /// A unit other than `ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`.
    #[error("time: unknown unit {unit:?} in duration {input:?}")]
    UnknownUnit {
        /// The unit.
        unit: String,
        /// The whole input.
        input: String,
    },
    /// Valid in Go, but a negative duration has no meaning here.
    #[error("negative duration {0:?}")]
    Negative(String),
}

/// Largest duration Go can represent (`1<<63 − 1` ns).
const MAX_NANOS: u128 = i64::MAX as u128;

fn unit_nanos(unit: &str) -> Option<u64> {
    Some(match unit {
        "ns" => 1,
        // "µs" is U+00B5 (micro sign), "μs" U+03BC (Greek mu); Go accepts both.
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// Parses a Go duration string: `300ms`, `1s`, `1.5s`, `2m`, `1h30m`, `250us`, `250µs`, `10ns`,
/// `.5s`, `+1s`, `0`. Negative durations (`-1s`, valid in Go) are rejected, except `-0`.
pub fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    let invalid = || DurationError::Invalid(input.to_owned());
    let mut s = input;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        negative = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        if !s.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
            return Err(invalid());
        }
        // Integer part.
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, rest) = s.split_at(int_len);
        s = rest;
        let mut int: u128 = 0;
        for digit in int_digits.bytes() {
            int = int * 10 + u128::from(digit - b'0');
            if int > MAX_NANOS {
                return Err(invalid());
            }
        }
        // Fraction: digits beyond what fits are ignored (as in Go).
        let mut frac: u128 = 0;
        let mut scale: u128 = 1;
        let mut frac_len = 0;
        if let Some(rest) = s.strip_prefix('.') {
            frac_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            let (frac_digits, rest) = rest.split_at(frac_len);
            s = rest;
            for digit in frac_digits.bytes() {
                if scale > MAX_NANOS {
                    break;
                }
                frac = frac * 10 + u128::from(digit - b'0');
                scale *= 10;
            }
        }
        if int_len == 0 && frac_len == 0 {
            return Err(invalid());
        }
        // Unit: everything up to the next digit or '.'.
        let unit_len = s
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(DurationError::MissingUnit(input.to_owned()));
        }
        let (unit, rest) = s.split_at(unit_len);
        s = rest;
        let unit_ns = unit_nanos(unit).ok_or_else(|| DurationError::UnknownUnit {
            unit: unit.to_owned(),
            input: input.to_owned(),
        })?;
        let unit_ns = u128::from(unit_ns);
        total += int * unit_ns + frac * unit_ns / scale;
        if total > MAX_NANOS {
            return Err(invalid());
        }
    }
    if negative && total > 0 {
        return Err(DurationError::Negative(input.to_owned()));
    }
    let nanos = u64::try_from(total).map_err(|_| invalid())?;
    Ok(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Duration {
        match parse_go_duration(text) {
            Ok(d) => d,
            Err(e) => panic!("{text:?}: {e}"),
        }
    }

    #[test]
    fn valid_durations() {
        let ms = Duration::from_millis;
        assert_eq!(ok("300ms"), ms(300));
        assert_eq!(ok("200ms"), ms(200));
        assert_eq!(ok("1s"), Duration::from_secs(1));
        assert_eq!(ok("1.5s"), ms(1500));
        assert_eq!(ok(".5s"), ms(500));
        assert_eq!(ok("1.s"), Duration::from_secs(1));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1h0m0.25s"), Duration::from_secs(3600) + ms(250));
        assert_eq!(ok("250us"), Duration::from_micros(250));
        assert_eq!(ok("250µs"), Duration::from_micros(250));
        assert_eq!(ok("250μs"), Duration::from_micros(250));
        assert_eq!(ok("10ns"), Duration::from_nanos(10));
        assert_eq!(ok("1.000000001s"), Duration::from_nanos(1_000_000_001));
        assert_eq!(
            ok("0.3333333333333333333h"),
            Duration::from_nanos(1_199_999_999_999)
        );
        assert_eq!(ok("+5s"), Duration::from_secs(5));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("-0"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("1m1m"), Duration::from_secs(120));
        assert_eq!(
            ok("2562047h47m16.854775807s"),
            Duration::from_nanos(i64::MAX as u64)
        );
    }

    #[test]
    fn invalid_durations() {
        let err = |t: &str| parse_go_duration(t).unwrap_err();
        assert_eq!(err(""), DurationError::Invalid(String::new()));
        assert_eq!(err("abc"), DurationError::Invalid("abc".into()));
        assert_eq!(err("."), DurationError::Invalid(".".into()));
        assert_eq!(err(".s"), DurationError::Invalid(".s".into()));
        assert_eq!(err("-"), DurationError::Invalid("-".into()));
        assert_eq!(err("1"), DurationError::MissingUnit("1".into()));
        assert_eq!(err("1s2"), DurationError::MissingUnit("1s2".into()));
        assert_eq!(
            err("1sec"),
            DurationError::UnknownUnit {
                unit: "sec".into(),
                input: "1sec".into()
            }
        );
        assert!(matches!(err("1 s"), DurationError::UnknownUnit { .. }));
        assert_eq!(err("-1s"), DurationError::Negative("-1s".into()));
        assert_eq!(
            err("2562047h47m16.854775808s"),
            DurationError::Invalid("2562047h47m16.854775808s".into())
        );
        assert!(matches!(
            err("99999999999999999999999h"),
            DurationError::Invalid(_)
        ));
        assert_eq!(err("x").to_string(), "time: invalid duration \"x\"");
        assert_eq!(err("5").to_string(), "time: missing unit in duration \"5\"");
        assert_eq!(
            err("5d").to_string(),
            "time: unknown unit \"d\" in duration \"5d\""
        );
    }
}
