//! The route-tag label (spec §3.6, layer 6): which traffic tag routed a request here, computed
//! from `Knative-Serving-Tag` and `Knative-Serving-Default-Route`. Both headers are left as they
//! are; only the label is derived.

use std::borrow::Cow;

use http::{HeaderMap, HeaderValue};
use knative_common::headers::{KNATIVE_SERVING_DEFAULT_ROUTE, KNATIVE_SERVING_TAG};

/// Label value when neither header is set: tag-based routing is off.
pub const DISABLED: &str = "kn:disabled";
/// Label value when only `Knative-Serving-Default-Route` is set.
pub const DEFAULT: &str = "kn:default";
/// Label value when a tag is set but the request came through the default route.
pub const UNDEFINED: &str = "kn:undefined";

/// The `kn.route.tag` attribute (Prometheus label `kn_route_tag`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RouteTag<'a> {
    /// `kn:disabled`.
    Disabled,
    /// `kn:default`.
    Default,
    /// `kn:undefined`.
    Undefined,
    /// The value of `Knative-Serving-Tag`.
    Tag(Cow<'a, str>),
}

impl RouteTag<'_> {
    /// The label value.
    #[inline]
    pub fn as_str(&self) -> &str {
        match self {
            RouteTag::Disabled => DISABLED,
            RouteTag::Default => DEFAULT,
            RouteTag::Undefined => UNDEFINED,
            RouteTag::Tag(tag) => tag,
        }
    }

    /// A copy that does not borrow from the request.
    pub fn into_owned(self) -> RouteTag<'static> {
        match self {
            RouteTag::Disabled => RouteTag::Disabled,
            RouteTag::Default => RouteTag::Default,
            RouteTag::Undefined => RouteTag::Undefined,
            RouteTag::Tag(tag) => RouteTag::Tag(Cow::Owned(tag.into_owned())),
        }
    }
}

/// The route tag of a request with these headers (first values, as Go's `Header.Get`).
///
/// | tag       | default-route           | label          |
/// |-----------|-------------------------|----------------|
/// | empty     | empty                   | `kn:disabled`  |
/// | empty     | non-empty               | `kn:default`   |
/// | non-empty | `true`                  | `kn:undefined` |
/// | non-empty | anything else / empty   | the tag        |
///
/// A tag that is not valid UTF-8 is kept with replacement characters (label values are text).
#[inline]
pub fn route_tag(headers: &HeaderMap) -> RouteTag<'_> {
    route_tag_of(
        headers.get(&KNATIVE_SERVING_TAG),
        headers.get(&KNATIVE_SERVING_DEFAULT_ROUTE),
    )
}

/// [`route_tag`] from the first values of `Knative-Serving-Tag` and
/// `Knative-Serving-Default-Route`, for a caller that found them itself.
#[inline]
pub fn route_tag_of<'a>(
    tag: Option<&'a HeaderValue>,
    default_route: Option<&'a HeaderValue>,
) -> RouteTag<'a> {
    let tag = tag.map_or(&b""[..], HeaderValue::as_bytes);
    let default_route = default_route.map_or(&b""[..], HeaderValue::as_bytes);
    if tag.is_empty() {
        return if default_route.is_empty() {
            RouteTag::Disabled
        } else {
            RouteTag::Default
        };
    }
    if default_route == b"true" {
        return RouteTag::Undefined;
    }
    RouteTag::Tag(String::from_utf8_lossy(tag))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn r1_tag_only_is_the_tag() {
        let h = headers(&[("Knative-Serving-Tag", "test-tag")]);
        assert_eq!(route_tag(&h), RouteTag::Tag("test-tag".into()));
        assert_eq!(route_tag(&h).as_str(), "test-tag");
    }

    #[test]
    fn r2_default_route_only_is_default() {
        let h = headers(&[("Knative-Serving-Default-Route", "true")]);
        assert_eq!(route_tag(&h).as_str(), "kn:default");
        // Any non-empty value counts.
        let h = headers(&[("Knative-Serving-Default-Route", "false")]);
        assert_eq!(route_tag(&h), RouteTag::Default);
    }

    #[test]
    fn r3_tag_and_default_route_is_undefined() {
        let h = headers(&[
            ("Knative-Serving-Tag", "test-tag"),
            ("Knative-Serving-Default-Route", "true"),
        ]);
        assert_eq!(route_tag(&h).as_str(), "kn:undefined");
        // Only exactly `true` makes it undefined.
        let h = headers(&[
            ("Knative-Serving-Tag", "test-tag"),
            ("Knative-Serving-Default-Route", "True"),
        ]);
        assert_eq!(route_tag(&h).as_str(), "test-tag");
    }

    #[test]
    fn r4_neither_is_disabled() {
        assert_eq!(route_tag(&HeaderMap::new()).as_str(), "kn:disabled");
        let h = headers(&[("Knative-Serving-Tag", "")]);
        assert_eq!(route_tag(&h), RouteTag::Disabled);
    }

    #[test]
    fn first_value_counts_and_utf8_is_kept() {
        let mut h = headers(&[("Knative-Serving-Tag", "a"), ("Knative-Serving-Tag", "b")]);
        assert_eq!(route_tag(&h).as_str(), "a");
        h.insert(
            "Knative-Serving-Tag",
            HeaderValue::from_bytes("café".as_bytes()).unwrap(),
        );
        assert_eq!(route_tag(&h).as_str(), "café");
        assert_eq!(route_tag(&h).into_owned().as_str(), "café");
    }
}
