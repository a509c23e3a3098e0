//! Which of the headers the data plane acts on a header map holds, found in one pass over its
//! names.
//!
//! A `HeaderMap` lookup hashes the name; for the custom names Knative uses (`k-network-probe`,
//! `knative-serving-revision`, `x-forwarded-for`, …) that costs more than comparing a name of the
//! map against a short list, and a typical request carries far fewer headers than the ~40 lookups
//! the request path would otherwise make. The request path scans once per stage and looks up (or
//! removes) only what the scan found.

use http::header::{Entry, HeaderName, HOST};
use http::{HeaderMap, HeaderValue};

/// A set of the header names below; see the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Present(u32);

macro_rules! known_headers {
    ($($(#[$doc:meta])* $constant:ident = $bit:literal, $name:literal;)*) => {
        impl Present {
            $($(#[$doc])* pub const $constant: Present = Present(1 << $bit);)*
        }

        /// The tracked names, for [`NAME_TABLE`].
        const TRACKED: [(&str, u32); [$($bit),*].len()] = [$(($name, 1 << $bit)),*];

        /// The bit of `name` (0 for a name not tracked here) by comparing strings: what
        /// [`bit_of`] answers for names shorter than a word, and its reference in tests.
        #[inline]
        fn bit_of_str(name: &str) -> u32 {
            match name {
                $($name => 1 << $bit,)*
                _ => 0,
            }
        }
    };
}

/// Number of tracked names (bits of [`Present`]).
const TRACKED_COUNT: usize = TRACKED.len();

/// Eight bytes of `bytes` from `at`, as a little-endian word.
#[inline]
const fn word(bytes: &[u8], at: usize) -> u64 {
    let mut w = 0u64;
    let mut i = 0;
    while i < 8 {
        w |= (bytes[at + i] as u64) << (8 * i);
        i += 1;
    }
    w
}

/// Slots of [`NAME_TABLE`] (a power of two, above the number of names).
const SLOT_BITS: u32 = 6;

/// A tracked name of eight bytes or more, as words: bytes `0..8`, `len-8..len`, `8..16` and
/// `len-16..len-8` (the last two only for names over 16 bytes). Up to 32 bytes the four cover
/// every byte, so equal words and lengths are equal names.
#[derive(Clone, Copy)]
struct Slot {
    len: usize,
    words: [u64; 4],
    bit: u32,
}

/// The table [`bit_of`] reads: the tracked names of eight bytes or more, each in its own slot
/// of a multiplicative hash of its first and last words, and the multiplier that separates
/// them (found at compile time; the build fails if none of those tried does).
struct NameTable {
    multiplier: u64,
    slots: [Slot; 1 << SLOT_BITS],
}

#[inline]
const fn slot_index(first: u64, last: u64, len: usize, multiplier: u64) -> usize {
    ((first ^ last.rotate_left(29) ^ len as u64).wrapping_mul(multiplier) >> (64 - SLOT_BITS))
        as usize
}

const NAME_TABLE: NameTable = {
    const EMPTY: Slot = Slot {
        len: 0,
        words: [0; 4],
        bit: 0,
    };
    let mut multiplier: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut tries = 0;
    loop {
        assert!(tries < 1000, "no multiplier separates the tracked names");
        let mut slots = [EMPTY; 1 << SLOT_BITS];
        let mut clash = false;
        let mut i = 0;
        while i < TRACKED.len() && !clash {
            let (name, bit) = TRACKED[i];
            let b = name.as_bytes();
            let len = b.len();
            assert!(len <= 32, "a tracked name longer than 32 bytes");
            if len >= 8 {
                let (first, last) = (word(b, 0), word(b, len - 8));
                let (mid, mid_last) = if len > 16 {
                    (word(b, 8), word(b, len - 16))
                } else {
                    (0, 0)
                };
                let index = slot_index(first, last, len, multiplier);
                if slots[index].len != 0 {
                    clash = true;
                }
                slots[index] = Slot {
                    len,
                    words: [first, last, mid, mid_last],
                    bit,
                };
            }
            i += 1;
        }
        if !clash {
            break NameTable { multiplier, slots };
        }
        multiplier = multiplier.wrapping_add(0x6a09_e667_f3bc_c909) | 1;
        tries += 1;
    }
};

/// The bit of `name`, or 0 for a name not tracked here: a standard name's from its index
/// ([`STANDARD_BITS`]; `HeaderName::as_str` is an out-of-line call for one), a custom one's
/// from its bytes ([`bit_of_bytes`]).
#[inline]
fn bit_of(name: &HeaderName) -> u32 {
    match name.standard_index() {
        Some(index) => STANDARD_BITS[index as usize],
        None => bit_of_bytes(name.as_str().as_bytes()),
    }
}

/// The bits of the tracked names `http` has as standard names, by their index
/// (`HeaderName::standard_index`, a patch of ours), made at compile time.
const STANDARD_BITS: [u32; 256] = {
    let mut bits = [0; 256];
    let mut i = 0;
    while i < TRACKED.len() {
        let (name, bit) = TRACKED[i];
        let name = HeaderName::from_static(name);
        if let Some(index) = name.standard_index() {
            bits[index as usize] = bit;
        }
        // A `HeaderName`'s destructor cannot run in a `const`.
        std::mem::forget(name);
        i += 1;
    }
    bits
};

/// The bit of a name given as (lower-case) bytes: a name of eight bytes or more is compared,
/// a word at a time, with the one tracked name in its [`NAME_TABLE`] slot (a `match` over the
/// strings compiled to a switch on the length and then `memcmp` calls, five of them for a
/// 15-byte name such as `x-forwarded-for`).
#[inline]
fn bit_of_bytes(b: &[u8]) -> u32 {
    let len = b.len();
    if len < 8 {
        return std::str::from_utf8(b).map_or(0, bit_of_str);
    }
    let (first, last) = (load(b, 0), load(b, len - 8));
    let slot = &NAME_TABLE.slots[slot_index(first, last, len, NAME_TABLE.multiplier)];
    if slot.len == len
        && slot.words[0] == first
        && slot.words[1] == last
        && (len <= 16 || (slot.words[2] == load(b, 8) && slot.words[3] == load(b, len - 16)))
    {
        slot.bit
    } else {
        0
    }
}

/// [`word`] at run time (one unaligned load).
#[inline(always)]
fn load(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

known_headers! {
    /// `Connection`.
    CONNECTION = 0, "connection";
    /// `Proxy-Connection`.
    PROXY_CONNECTION = 1, "proxy-connection";
    /// `Keep-Alive`.
    KEEP_ALIVE = 2, "keep-alive";
    /// `Proxy-Authenticate`.
    PROXY_AUTHENTICATE = 3, "proxy-authenticate";
    /// `Proxy-Authorization`.
    PROXY_AUTHORIZATION = 4, "proxy-authorization";
    /// `TE`.
    TE = 5, "te";
    /// `Transfer-Encoding`.
    TRANSFER_ENCODING = 6, "transfer-encoding";
    /// `Upgrade`.
    UPGRADE = 7, "upgrade";
    /// `HTTP2-Settings`.
    HTTP2_SETTINGS = 8, "http2-settings";
    /// `Knative-Serving-Revision`.
    KNATIVE_SERVING_REVISION = 9, "knative-serving-revision";
    /// `Knative-Serving-Namespace`.
    KNATIVE_SERVING_NAMESPACE = 10, "knative-serving-namespace";
    /// `Forwarded`.
    FORWARDED = 11, "forwarded";
    /// `X-Forwarded-For`.
    X_FORWARDED_FOR = 12, "x-forwarded-for";
    /// `X-Forwarded-Proto`.
    X_FORWARDED_PROTO = 13, "x-forwarded-proto";
    /// `X-Forwarded-Host`.
    X_FORWARDED_HOST = 14, "x-forwarded-host";
    /// `User-Agent`.
    USER_AGENT = 15, "user-agent";
    /// `K-Network-Probe`.
    K_NETWORK_PROBE = 16, "k-network-probe";
    /// `K-Kubelet-Probe`.
    K_KUBELET_PROBE = 17, "k-kubelet-probe";
    /// `K-Proxy-Request`.
    K_PROXY_REQUEST = 18, "k-proxy-request";
    /// `K-Original-Host`.
    K_ORIGINAL_HOST = 19, "k-original-host";
    /// `K-Network-Hash`.
    K_NETWORK_HASH = 20, "k-network-hash";
}

impl Present {
    /// The hop-by-hop headers removed in both directions.
    pub const HOP_BY_HOP: Present = Present(
        Present::CONNECTION.0
            | Present::PROXY_CONNECTION.0
            | Present::KEEP_ALIVE.0
            | Present::PROXY_AUTHENTICATE.0
            | Present::PROXY_AUTHORIZATION.0
            | Present::TE.0
            | Present::TRANSFER_ENCODING.0
            | Present::UPGRADE.0,
    );
    /// The headers the forwarded shim reads.
    pub const FORWARDED_FAMILY: Present = Present(
        Present::FORWARDED.0
            | Present::X_FORWARDED_FOR.0
            | Present::X_FORWARDED_PROTO.0
            | Present::X_FORWARDED_HOST.0,
    );

    /// The tracked names `headers` holds.
    #[inline]
    pub fn scan(headers: &HeaderMap) -> Present {
        Present(headers.keys().fold(0, |bits, name| bits | bit_of(name)))
    }

    /// [`Present::scan`], and where `name` (one of the constants) stands among the map's names
    /// (`None` when absent), for [`entry_at`] and [`remove_at`].
    #[inline]
    pub fn scan_finding(headers: &HeaderMap, name: Present) -> (Present, Option<usize>) {
        let mut bits = 0;
        let mut at = None;
        for (index, key) in headers.keys().enumerate() {
            let bit = bit_of(key);
            if bit & name.0 != 0 {
                at = Some(index);
            }
            bits |= bit;
        }
        (Present(bits), at)
    }

    /// The bit of one name (empty for a name not tracked here), for a caller that walks the
    /// map itself (e.g. to pick up values in the same pass).
    #[inline]
    pub fn of(name: &HeaderName) -> Present {
        Present(bit_of(name))
    }

    /// Whether any name of `names` is present.
    #[inline]
    pub fn any(self, names: Present) -> bool {
        self.0 & names.0 != 0
    }

    /// Whether no tracked name is present.
    #[inline]
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// These names but those of `names` (e.g. once the caller removed them).
    #[inline]
    pub const fn without(self, names: Present) -> Present {
        Present(self.0 & !names.0)
    }

    /// `self | names`, usable in a `const`.
    #[inline]
    pub const fn union(self, names: Present) -> Present {
        Present(self.0 | names.0)
    }
}

/// The tracked names a map holds and the first value of each, found in one pass: a stage that
/// reads several of them (the queue-proxy's handler: the forwarded shim, the probe and proxied
/// checks) looks none of them up.
#[derive(Clone, Copy, Debug)]
pub struct Scan<'a> {
    present: Present,
    first: [Option<&'a HeaderValue>; TRACKED_COUNT],
    /// Where each name found stands among the map's names (`HeaderMap::entry_at`).
    at: [u16; TRACKED_COUNT],
}

impl<'a> Scan<'a> {
    /// Scans `headers` once.
    #[inline]
    pub fn of(headers: &'a HeaderMap) -> Self {
        let mut scan = Scan {
            present: Present(0),
            first: [None; TRACKED_COUNT],
            at: [0; TRACKED_COUNT],
        };
        // One item per name (a map holds at most 2^15), with its first value.
        for (index, (name, value)) in headers.first_values().enumerate() {
            let bit = bit_of(name);
            if bit != 0 {
                scan.present.0 |= bit;
                let slot = bit.trailing_zeros() as usize;
                scan.first[slot] = Some(value);
                scan.at[slot] = index as u16;
            }
        }
        scan
    }

    /// Where `name` (one of the [`Present`] constants) stood among the map's names when it was
    /// scanned, for [`remove_at`] and [`entry_at`]; `None` when it was not there.
    #[inline]
    pub fn index(&self, name: Present) -> Option<usize> {
        let slot = name.0.trailing_zeros() as usize;
        (self.present.any(name) && slot < TRACKED_COUNT).then(|| usize::from(self.at[slot]))
    }

    /// The tracked names found (what [`Present::scan`] gives).
    #[inline]
    pub fn present(&self) -> Present {
        self.present
    }

    /// The first value of `name` (one of the [`Present`] constants), as `HeaderMap::get`
    /// gives it.
    #[inline]
    pub fn first(&self, name: Present) -> Option<&'a HeaderValue> {
        self.first
            .get(name.0.trailing_zeros() as usize)
            .copied()
            .flatten()
    }
}

impl std::ops::BitOr for Present {
    type Output = Present;
    fn bitor(self, other: Present) -> Present {
        self.union(other)
    }
}

/// `index` if the map's `index`th name is still `name` (it is the one a scan found there,
/// unless the map lost a name since, moving others).
#[inline]
fn still_at(headers: &HeaderMap, index: Option<usize>, name: &HeaderName) -> Option<usize> {
    index.filter(|&index| headers.keys().nth(index) == Some(name))
}

/// `headers.entry(name)` for a name a scan found at `index` ([`Scan::index`]): taken by
/// position when the name is still there (not hashed, compared once), else by name.
#[inline]
pub fn entry_at<'m>(
    headers: &'m mut HeaderMap,
    index: Option<usize>,
    name: &HeaderName,
) -> Entry<'m, HeaderValue> {
    match still_at(headers, index, name) {
        Some(index) => Entry::Occupied(
            headers
                .entry_at(index)
                .expect("`still_at` found a name at `index`"),
        ),
        None => headers.entry(name),
    }
}

/// `headers.remove(name)` for a name a scan found at `index` (see [`entry_at`]): the same map
/// after, the last name moved into the removed one's place.
#[inline]
pub fn remove_at(
    headers: &mut HeaderMap,
    index: Option<usize>,
    name: &HeaderName,
) -> Option<HeaderValue> {
    match still_at(headers, index, name).and_then(|index| headers.entry_at(index)) {
        Some(entry) => Some(entry.remove()),
        None => headers.remove(name),
    }
}

/// `headers.contains_key(HOST)`, answered without hashing when `Host` is the first name: user
/// agents send it first (RFC 9110 §7.2), and a parsed map keeps its names in arrival order.
#[inline]
pub fn has_host(headers: &HeaderMap) -> bool {
    headers.keys().next() == Some(&HOST) || headers.contains_key(HOST)
}

/// `headers.insert(HOST, value)` (the `Host` values replaced where the first one stands, the
/// first returned), without hashing when `Host` is the first name and has one value.
#[inline]
pub fn replace_host(headers: &mut HeaderMap, value: HeaderValue) -> Option<HeaderValue> {
    let mut fields = headers.iter_mut();
    if let Some((name, first)) = fields.next() {
        if *name == HOST && fields.next().is_none_or(|(next, _)| *next != HOST) {
            return Some(std::mem::replace(first, value));
        }
    }
    headers.insert(HOST, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn finds_exactly_the_tracked_names_present() {
        let mut headers = HeaderMap::new();
        assert!(Present::scan(&headers).is_empty());
        headers.insert("x-other", HeaderValue::from_static("1"));
        headers.insert(http::header::HOST, HeaderValue::from_static("h"));
        assert!(Present::scan(&headers).is_empty());
        headers.append("TE", HeaderValue::from_static("trailers"));
        headers.insert("K-Network-Probe", HeaderValue::from_static("queue"));
        let present = Present::scan(&headers);
        assert!(present.any(Present::TE));
        assert!(present.any(Present::HOP_BY_HOP));
        assert!(present.any(Present::K_NETWORK_PROBE));
        assert!(!present.any(Present::CONNECTION | Present::FORWARDED_FAMILY));
        let rest = present.without(Present::TE | Present::CONNECTION);
        assert!(!rest.any(Present::TE) && rest.any(Present::K_NETWORK_PROBE));
    }

    /// `has_host` and `replace_host` agree with `contains_key` and `insert` (value returned,
    /// names and values in the same order after) wherever `Host` stands, however many times.
    #[test]
    fn host_shortcuts_agree_with_lookups() {
        let cases: &[&[(&str, &str)]] = &[
            &[],
            &[("host", "a")],
            &[("host", "a"), ("accept", "*/*")],
            &[("host", "a"), ("host", "b"), ("accept", "*/*")],
            &[("host", "a"), ("accept", "*/*"), ("host", "b")],
            &[("accept", "*/*"), ("host", "a")],
            &[("accept", "*/*"), ("x-a", "1"), ("host", "a"), ("x-b", "2")],
            &[("accept", "*/*"), ("x-host", "a")],
            &[("x-a", "1"), ("x-a", "2"), ("host", "a")],
        ];
        for pairs in cases {
            let map = || {
                let mut headers = HeaderMap::new();
                for (name, value) in *pairs {
                    headers.append(*name, HeaderValue::from_static(value));
                }
                headers
            };
            let (mut by_insert, mut by_replace) = (map(), map());
            assert_eq!(
                has_host(&by_replace),
                by_insert.contains_key(HOST),
                "{pairs:?}"
            );
            let new = HeaderValue::from_static("10.0.0.1:8012");
            assert_eq!(
                replace_host(&mut by_replace, new.clone()),
                by_insert.insert(HOST, new),
                "{pairs:?}"
            );
            let fields = |h: &HeaderMap| {
                h.iter()
                    .map(|(n, v)| (n.clone(), v.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(fields(&by_replace), fields(&by_insert), "{pairs:?}");
        }
    }

    /// The word comparison answers as the string `match` does, for the tracked names, names of
    /// the same length and words differing only in bytes the first and last words do not hold
    /// (names over 16 bytes), standard names and names of every length.
    #[test]
    fn word_compare_agrees_with_string_match() {
        let mut names: Vec<String> = TRACKED.iter().map(|(n, _)| n.to_string()).collect();
        for (name, _) in TRACKED {
            for at in 0..name.len() {
                for byte in [b'a', b'z', b'-', b'0'] {
                    let mut b = name.as_bytes().to_vec();
                    b[at] = byte;
                    names.push(String::from_utf8(b).unwrap());
                }
            }
            names.push(format!("{name}x"));
            names.push(name[1..].to_owned());
            names.push(name[..name.len() - 1].to_owned());
        }
        for len in 1..40 {
            names.push("x".repeat(len));
            names.push("k-".repeat(len).chars().take(len).collect());
        }
        // Every standard name of `http` 1.5, and custom names seen in practice.
        let others = concat!(
            "accept accept-charset accept-encoding accept-language accept-ranges ",
            "access-control-allow-credentials access-control-allow-headers ",
            "access-control-allow-methods access-control-allow-origin ",
            "access-control-expose-headers access-control-max-age ",
            "access-control-request-headers access-control-request-method age allow alt-svc ",
            "authorization cache-control cache-status cdn-cache-control connection ",
            "content-disposition content-encoding content-language content-length ",
            "content-location content-range content-security-policy ",
            "content-security-policy-report-only content-type cookie dnt date etag expect ",
            "expires forwarded from host if-match if-modified-since if-none-match if-range ",
            "if-unmodified-since last-modified link location max-forwards origin pragma ",
            "proxy-authenticate proxy-authorization pulic-key-pins ",
            "pulic-key-pins-report-only range referer referrer-policy refresh retry-after ",
            "sec-wesocket-accept sec-wesocket-extensions sec-wesocket-key ",
            "sec-wesocket-protocol sec-wesocket-version server set-cookie ",
            "strict-transport-security te trailer transfer-encoding user-agent upgrade ",
            "upgrade-insecure-requests vary via warning www-authenticate ",
            "x-content-type-options x-dns-prefetch-control x-frame-options x-xss-protection ",
            "traceparent x-request-id x-forwarded-port k-passthrough-lb knative-serving-tag ",
            "knative-serving-default-route ",
        );
        names.extend(others.split_whitespace().map(str::to_owned));
        for name in names {
            let Ok(parsed) = HeaderName::from_bytes(name.as_bytes()) else {
                continue;
            };
            assert_eq!(bit_of(&parsed), bit_of_str(parsed.as_str()), "{name:?}");
        }
    }

    /// `STANDARD_BITS` holds the tracked names `http` has as standard ones (else `bit_of` would
    /// miss them: the word compare is for custom names).
    #[test]
    fn standard_names_are_classified_by_index() {
        let standard: Vec<&str> = TRACKED
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| HeaderName::from_static(name).standard_index().is_some())
            .collect();
        assert!(standard.contains(&"te") && standard.contains(&"user-agent"));
        for name in standard {
            let parsed = HeaderName::from_static(name);
            assert_eq!(bit_of(&parsed), bit_of_str(name), "{name}");
            assert_ne!(bit_of(&parsed), 0, "{name}");
        }
        assert_eq!(bit_of(&HOST), 0);
    }

    /// `Scan` finds the names `Present::scan` finds and the values `HeaderMap::get` gives.
    #[test]
    fn scan_gives_first_values() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("host", "h"),
            ("x-forwarded-for", "1.1.1.1"),
            ("k-proxy-request", "activator"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-other", "1"),
            ("user-agent", "ua"),
            ("te", "trailers"),
            ("knative-serving-namespace", "ns"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        let scan = Scan::of(&headers);
        assert_eq!(scan.present(), Present::scan(&headers));
        for (name, bit) in TRACKED {
            let bit = Present(bit);
            assert_eq!(
                scan.present().any(bit),
                headers.contains_key(name),
                "{name}"
            );
            assert_eq!(scan.first(bit), headers.get(name), "{name}");
        }
        assert!(TRACKED
            .iter()
            .all(|(_, bit)| (bit.trailing_zeros() as usize) < TRACKED_COUNT));
    }

    /// Names in `pairs`' order (repeats append; any case).
    fn map_of(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn fields(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        headers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }

    const ODD_CASES: &[&[(&str, &str)]] = &[
        &[],
        &[("x-forwarded-for", "1.1.1.1")],
        &[
            ("Host", "h"),
            ("X-Forwarded-For", ""),
            ("k-original-host", "o"),
            ("x-forwarded-for", "2.2.2.2"),
            ("K-Original-Host", ""),
            ("user-agent", "ua"),
        ],
        &[
            ("x-a", "1"),
            ("x-b", "2"),
            ("x-a", "3"),
            ("k-original-host", ""),
            ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
        ],
        &[
            ("k-proxy-request", "activator"),
            ("x-c", "1"),
            ("x-forwarded-for", " 1.1.1.1 "),
            ("x-d", "2"),
        ],
    ];

    /// `Scan::index` and `scan_finding` give where `keys()` has the name; `remove_at` and
    /// `entry_at` do what `remove` and `entry` do, with the scan's position or a stale one.
    #[test]
    fn positions_agree_with_lookups() {
        for pairs in ODD_CASES {
            let headers = map_of(pairs);
            let scan = Scan::of(&headers);
            for (name, bit) in TRACKED {
                let position = headers.keys().position(|k| k == name);
                assert_eq!(scan.index(Present(bit)), position, "{name} {pairs:?}");
                let (present, at) = Present::scan_finding(&headers, Present(bit));
                assert_eq!(present, Present::scan(&headers));
                assert_eq!(at, position, "{name} {pairs:?}");
            }
            for name in [
                "x-forwarded-for",
                "k-original-host",
                "x-a",
                "host",
                "x-none",
            ] {
                let name = HeaderName::from_static(name);
                let position = headers.keys().position(|k| *k == name);
                let wrong = position.map(|p| (p + 1) % headers.keys_len().max(1));
                for index in [position, None, wrong, Some(99)] {
                    let (mut by_position, mut by_name) = (headers.clone(), headers.clone());
                    assert_eq!(
                        remove_at(&mut by_position, index, &name),
                        by_name.remove(&name),
                        "{name} at {index:?} in {pairs:?}"
                    );
                    assert_eq!(fields(&by_position), fields(&by_name), "{name} {pairs:?}");
                    let (mut by_position, mut by_name) = (headers.clone(), headers.clone());
                    let new = HeaderValue::from_static("n");
                    match (
                        entry_at(&mut by_position, index, &name),
                        by_name.entry(&name),
                    ) {
                        (Entry::Occupied(mut a), Entry::Occupied(mut b)) => {
                            assert_eq!(a.iter().collect::<Vec<_>>(), b.iter().collect::<Vec<_>>());
                            a.insert(new.clone());
                            b.insert(new);
                        }
                        (Entry::Vacant(a), Entry::Vacant(b)) => {
                            a.insert(new.clone());
                            b.insert(new);
                        }
                        _ => panic!("{name} at {index:?}: entries differ in {pairs:?}"),
                    }
                    assert_eq!(fields(&by_position), fields(&by_name), "{name} {pairs:?}");
                }
            }
        }
    }

    #[test]
    fn every_tracked_name_has_its_own_bit() {
        let names = [
            "connection",
            "proxy-connection",
            "keep-alive",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "transfer-encoding",
            "upgrade",
            "http2-settings",
            "knative-serving-revision",
            "knative-serving-namespace",
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "user-agent",
            "k-network-probe",
            "k-kubelet-probe",
            "k-proxy-request",
            "k-original-host",
            "k-network-hash",
        ];
        let mut seen = 0u32;
        for name in names {
            let bit = bit_of(&HeaderName::from_static(name));
            assert_eq!(bit.count_ones(), 1, "{name}");
            assert_eq!(seen & bit, 0, "{name} shares a bit");
            seen |= bit;
        }
        assert_eq!(seen.count_ones() as usize, names.len());
    }
}
