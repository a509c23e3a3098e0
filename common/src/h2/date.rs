//! The `Date` field of HTTP/2 responses (hyper's server adds one when the service set none, as
//! Go's does), formatted once per second per thread.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;

thread_local! {
    static CACHED: RefCell<(u64, HeaderValue)> =
        const { RefCell::new((0, HeaderValue::from_static(""))) };
}

/// The current time as an HTTP date.
pub(crate) fn now() -> HeaderValue {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            let text = httpdate::fmt_http_date(now);
            cached.1 = HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""));
            cached.0 = secs;
        }
        cached.1.clone()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn date_is_an_http_date() {
        let value = super::now();
        let text = value.to_str().unwrap();
        assert!(httpdate::parse_http_date(text).is_ok(), "{text}");
        assert!(text.ends_with(" GMT"));
    }
}
