//! (patch) Header names parsed recently on this thread, so that a name seen again is cloned
//! instead of being lowercased, matched against the standard names and (for a name that is not
//! one of them) copied into a new allocation.
//!
//! A proxy sees the same field names in message after message (`knative-serving-revision`,
//! `x-forwarded-for`, `content-type`, ...). `HeaderName::from_bytes` costs about 100 instructions
//! for a standard name and about 200 plus an allocation (and a free when the message is dropped)
//! for a custom one; a hit here is an index computation, a comparison of the bytes and a clone
//! (a copy for a standard name, a reference-count increment for a custom one).
//!
//! The cache is keyed by the exact bytes received, and each entry was made by
//! `HeaderName::from_bytes` from exactly those bytes, so a hit gives the very name a miss would
//! have made. It is direct-mapped and bounded ([`SETS`] × [`WAYS`] names of at most [`MAX_LEN`] bytes
//! per thread): names an attacker varies only evict each other, and longer names are not
//! cached. Nothing here is per connection.

use std::cell::RefCell;

use http::header::{HeaderName, InvalidHeaderName};

/// Sets of the cache; each holds [`WAYS`] names.
const SETS: usize = 32;

/// Names per set: a name evicts the one of its set used least recently.
const WAYS: usize = 2;

/// The longest name cached, in bytes.
const MAX_LEN: usize = 40;

struct Slot {
    len: usize,
    wire: [u8; MAX_LEN],
    name: Option<HeaderName>,
}

struct Set {
    slots: [Slot; WAYS],
    /// The way to replace next (the one not hit last).
    victim: usize,
}

const EMPTY_SLOT: Slot = Slot {
    len: 0,
    wire: [0; MAX_LEN],
    name: None,
};

const EMPTY_SET: Set = Set {
    slots: [EMPTY_SLOT; WAYS],
    victim: 0,
};

thread_local! {
    static CACHE: RefCell<[Set; SETS]> = const { RefCell::new([EMPTY_SET; SETS]) };
}

/// Eight bytes of `bytes` from `at`, as one word.
#[inline(always)]
fn word(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

/// A name's first and last eight bytes as words (a name shorter than eight bytes: its bytes,
/// zero-padded, in both). They pick its set and are compared first.
#[derive(Clone, Copy)]
struct Key {
    first: u64,
    last: u64,
}

impl Key {
    #[inline(always)]
    fn of(raw: &[u8]) -> Key {
        let len = raw.len();
        if len >= 8 {
            Key {
                first: word(raw, 0),
                last: word(raw, len - 8),
            }
        } else {
            let mut short = 0u64;
            for (i, &b) in raw.iter().enumerate() {
                short |= u64::from(b) << (8 * i);
            }
            Key {
                first: short,
                last: short,
            }
        }
    }

    /// The set: a multiplicative hash of the words and the length.
    #[inline(always)]
    fn set(self, len: usize) -> usize {
        const K: u64 = 0x9E37_79B9_7F4A_7C15;
        let mix = (self.first ^ self.last.wrapping_mul(K) ^ len as u64).wrapping_mul(K);
        (mix >> (64 - SETS.trailing_zeros())) as usize
    }
}

impl Slot {
    /// Whether this slot holds `raw` (`key` is `raw`'s). The words at 0, 8, 16 and 24 and the
    /// last eight bytes cover a name of up to 40 bytes; `wire` is zero-padded, as a short name's
    /// key is.
    #[inline(always)]
    fn holds(&self, raw: &[u8], key: Key) -> bool {
        let len = raw.len();
        if self.len != len || self.name.is_none() {
            return false;
        }
        if len < 8 {
            return word(&self.wire, 0) == key.first;
        }
        word(&self.wire, 0) == key.first
            && word(&self.wire, len - 8) == key.last
            && (len <= 16
                || (word(&self.wire, 8) == word(raw, 8)
                    && (len <= 24
                        || (word(&self.wire, 16) == word(raw, 16)
                            && (len <= 32 || word(&self.wire, 24) == word(raw, 24))))))
    }
}

/// `HeaderName::from_bytes(raw)`, from the cache when `raw` is in it.
#[inline]
pub(super) fn header_name(raw: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    if raw.is_empty() || raw.len() > MAX_LEN {
        return HeaderName::from_bytes(raw);
    }
    let key = Key::of(raw);
    let index = key.set(raw.len());
    let cached = CACHE.try_with(|cache| {
        let Ok(mut cache) = cache.try_borrow_mut() else {
            return None;
        };
        let set = &mut cache[index];
        let way = set.slots.iter().position(|slot| slot.holds(raw, key))?;
        set.victim = (way + 1) % WAYS;
        set.slots[way].name.clone()
    });
    if let Ok(Some(name)) = cached {
        return Ok(name);
    }
    let name = HeaderName::from_bytes(raw)?;
    let _ = CACHE.try_with(|cache| {
        if let Ok(mut cache) = cache.try_borrow_mut() {
            let set = &mut cache[index];
            let way = set.victim;
            set.victim = (way + 1) % WAYS;
            let slot = &mut set.slots[way];
            slot.len = raw.len();
            slot.wire = [0; MAX_LEN];
            slot.wire[..raw.len()].copy_from_slice(raw);
            slot.name = Some(name.clone());
        }
    });
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(raw: &[u8]) -> Option<HeaderName> {
        let key = Key::of(raw);
        CACHE.with(|cache| {
            let cache = cache.borrow();
            let set = &cache[key.set(raw.len())];
            let slot = set.slots.iter().find(|slot| slot.holds(raw, key))?;
            slot.name.clone()
        })
    }

    #[test]
    fn gives_what_from_bytes_gives() {
        let names: &[&[u8]] = &[
            b"Content-Type",
            b"content-type",
            b"CONTENT-TYPE",
            b"Knative-Serving-Revision",
            b"knative-serving-revision",
            b"Knative-Serving-Namespace",
            b"X-Forwarded-For",
            b"x-forwarded-proto",
            b"Host",
            b"a",
            b"K-Proxy-Request",
        ];
        for _ in 0..3 {
            for raw in names {
                assert_eq!(
                    header_name(raw).unwrap(),
                    HeaderName::from_bytes(raw).unwrap(),
                    "{:?}",
                    std::str::from_utf8(raw)
                );
            }
        }
    }

    #[test]
    fn a_name_seen_again_comes_from_the_cache() {
        let raw = b"Knative-Serving-Namespace";
        let first = header_name(raw).unwrap();
        assert_eq!(cached(raw), Some(first.clone()));
        let second = header_name(raw).unwrap();
        assert_eq!(first, second);
        assert_eq!(second.as_str(), "knative-serving-namespace");
    }

    #[test]
    fn the_key_is_the_exact_bytes() {
        // Another spelling of a cached name is a miss, and gives the same (lowercase) name.
        let lower = header_name(b"x-request-id").unwrap();
        assert_eq!(cached(b"X-Request-Id"), None);
        let title = header_name(b"X-Request-Id").unwrap();
        assert_eq!(lower, title);
    }

    #[test]
    fn invalid_and_long_names_are_not_cached() {
        assert!(header_name(b"bad name").is_err());
        assert_eq!(cached(b"bad name"), None);
        assert!(header_name(b"").is_err());
        let long = [b'x'; MAX_LEN + 1];
        let name = header_name(&long).unwrap();
        assert_eq!(name.as_str().len(), MAX_LEN + 1);
        let longest = [b'y'; MAX_LEN];
        header_name(&longest).unwrap();
        assert!(cached(&longest).is_some());
    }

    #[test]
    fn every_length_and_position_is_compared() {
        // A slot holding a name, and the same name changed in one byte, for every length and
        // position: the slot holds the first and not the second.
        for len in 1..=MAX_LEN {
            let base: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let mut slot = EMPTY_SLOT;
            slot.len = len;
            slot.wire[..len].copy_from_slice(&base);
            slot.name = Some(HeaderName::from_bytes(&base).unwrap());
            assert!(slot.holds(&base, Key::of(&base)), "len {len}");
            for at in 0..len {
                let mut other = base.clone();
                other[at] = if other[at] == b'z' { b'y' } else { b'z' };
                assert!(!slot.holds(&other, Key::of(&other)), "len {len} at {at}");
                assert_eq!(header_name(&other).unwrap().as_str().as_bytes(), &other[..]);
            }
            let longer = [&base[..], b"a"].concat();
            assert!(!slot.holds(&longer, Key::of(&longer)));
        }
    }

    #[test]
    fn a_set_keeps_its_two_most_recent_names() {
        // Three names of one set: the third evicts the one used least recently.
        let first = b"x-aaaa".to_vec();
        let mut same_set = Vec::new();
        for c in b'a'..=b'z' {
            for d in b'a'..=b'z' {
                let candidate = vec![b'x', b'-', c, d, d, c];
                if candidate != first
                    && Key::of(&candidate).set(candidate.len()) == Key::of(&first).set(first.len())
                {
                    same_set.push(candidate);
                }
            }
        }
        let (second, third) = (&same_set[0], &same_set[1]);
        for raw in [&first, second, &first, third] {
            assert_eq!(header_name(raw).unwrap().as_str().as_bytes(), &raw[..]);
        }
        assert!(cached(&first).is_some(), "hit just before the third came");
        assert!(cached(third).is_some());
        assert_eq!(cached(second), None);
        for raw in [&first, second, third] {
            assert_eq!(header_name(raw).unwrap().as_str().as_bytes(), &raw[..]);
        }
    }

    #[test]
    fn the_names_of_a_proxied_exchange_fit() {
        let names: &[&[u8]] = &[
            b"Host",
            b"User-Agent",
            b"Accept",
            b"Knative-Serving-Namespace",
            b"Knative-Serving-Revision",
            b"X-Forwarded-For",
            b"K-Proxy-Request",
            b"K-Original-Host",
            b"content-length",
            b"content-type",
            b"date",
        ];
        for raw in names {
            header_name(raw).unwrap();
        }
        for raw in names {
            assert!(cached(raw).is_some(), "{:?}", std::str::from_utf8(raw));
        }
    }
}
