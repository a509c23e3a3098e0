//! Load-balancing policies over a revision's assigned trackers, which are sorted by dest
//! (spec §4). Each pick returns the tracker with what was taken on it, or `None`.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use super::tracker::{PodTracker, SlotKind, TrackerSlot};

/// The policy of one revision, chosen by its container concurrency.
#[derive(Debug)]
pub(crate) enum Policy {
    /// cc 1–3: the first tracker (in dest order) with a free slot (§4.1).
    FirstAvailable,
    /// cc ≥ 4: round robin from a per-revision cursor (§4.2).
    RoundRobin(Mutex<usize>),
    /// cc = 0: the less loaded of two random trackers, by p2c weight (§4.3).
    PowerOfTwoChoices,
}

impl Policy {
    /// The policy for container concurrency `cc`.
    pub(crate) fn for_cc(cc: u32) -> Self {
        match cc {
            0 => Policy::PowerOfTwoChoices,
            1..=3 => Policy::FirstAvailable,
            _ => Policy::RoundRobin(Mutex::new(0)),
        }
    }

    /// Picks a tracker, taking a slot (cc > 0) or a weight (cc = 0) on it. `None` when no tracker
    /// has room, including when `targets` is empty.
    #[inline]
    pub(crate) fn pick(&self, targets: &[Arc<PodTracker>]) -> Option<TrackerSlot> {
        match self {
            Policy::FirstAvailable => first_available(targets),
            Policy::RoundRobin(cursor) => round_robin(cursor, targets),
            Policy::PowerOfTwoChoices => power_of_two_choices(targets),
        }
    }
}

fn reserved(tracker: &Arc<PodTracker>) -> TrackerSlot {
    TrackerSlot::new(tracker.clone(), SlotKind::Reserved)
}

fn first_available(targets: &[Arc<PodTracker>]) -> Option<TrackerSlot> {
    targets.iter().find(|t| t.try_reserve()).map(reserved)
}

fn round_robin(cursor: &Mutex<usize>, targets: &[Arc<PodTracker>]) -> Option<TrackerSlot> {
    let mut cursor = cursor.lock().unwrap_or_else(PoisonError::into_inner);
    let len = targets.len();
    if *cursor >= len {
        *cursor = 0;
    }
    for i in 0..len {
        let position = (*cursor + i) % len;
        if let Some(tracker) = targets.get(position) {
            if tracker.try_reserve() {
                *cursor = position + 1;
                return Some(reserved(tracker));
            }
        }
    }
    None
}

fn power_of_two_choices(targets: &[Arc<PodTracker>]) -> Option<TrackerSlot> {
    let (first, second) = match targets.len() {
        0 => return None,
        1 => (0, 0),
        2 => (0, 1),
        len => {
            let first = random_below(len);
            let mut second = random_below(len - 1);
            if second >= first {
                second += 1;
            }
            (first, second)
        }
    };
    let (pick, alt) = (targets.get(first)?, targets.get(second)?);
    let (pick_weight, alt_weight) = (pick.weight(), alt.weight());
    let chosen = if pick_weight > alt_weight || (pick_weight == alt_weight && random() & 1 == 0) {
        alt
    } else {
        pick
    };
    chosen.increase_weight();
    Some(TrackerSlot::new(chosen.clone(), SlotKind::Weighted))
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

/// A per-thread random seed (std's `RandomState` keys are random per thread), never zero.
fn seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0x9e37_79b9_7f4a_7c15);
    hasher.finish() | 1
}

/// xorshift64* — plenty for load balancing; not for anything security related.
fn random() -> u64 {
    RNG.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// Uniform-enough integer in `0..n` (`n ≥ 1`).
fn random_below(n: usize) -> usize {
    (random() % n.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trackers(n: usize, cc: u32) -> Vec<Arc<PodTracker>> {
        (0..n)
            .map(|i| Arc::new(PodTracker::new(&i.to_string(), cc)))
            .collect()
    }

    fn dest(slot: &Option<TrackerSlot>) -> Option<&str> {
        slot.as_ref().map(|s| s.tracker().dest())
    }

    /// §11 item 45.
    #[test]
    fn item45_power_of_two_choices() {
        let p2c = Policy::for_cc(0);
        assert!(matches!(p2c, Policy::PowerOfTwoChoices));

        // 1 tracker: weight goes up per pick, down per release.
        let one = trackers(1, 0);
        let a = p2c.pick(&one).expect("pick");
        assert_eq!(a.tracker().weight(), 1);
        let b = p2c.pick(&one).expect("pick");
        assert_eq!(one[0].weight(), 2);
        drop(a);
        assert_eq!(one[0].weight(), 1);
        drop(b);
        assert_eq!(one[0].weight(), 0);

        // 2 trackers: the second pick takes the other one; after its release it is picked again.
        let two = trackers(2, 0);
        let first = p2c.pick(&two).expect("pick");
        let second = p2c.pick(&two).expect("pick");
        assert_ne!(first.tracker().dest(), second.tracker().dest());
        let other = second.tracker().dest().to_string();
        drop(second);
        let third = p2c.pick(&two).expect("pick");
        assert_eq!(third.tracker().dest(), other);
        drop((first, third));

        // 3 trackers: with one busy, the next pick always lands on an idle one.
        let three = trackers(3, 0);
        let a = p2c.pick(&three).expect("pick");
        assert_eq!(a.tracker().weight(), 1);
        let b = p2c.pick(&three).expect("pick");
        assert_eq!(b.tracker().weight(), 1);
        drop(b);
        let c = p2c.pick(&three).expect("pick");
        assert_eq!(c.tracker().weight(), 1);
        drop((a, c));
        assert!(three.iter().all(|t| t.weight() == 0));

        // 100 picks over 2 equal trackers hit both.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let s = p2c.pick(&two).expect("pick");
            seen.insert(s.tracker().dest().to_string());
        }
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn power_of_two_choices_on_an_empty_list_is_none() {
        assert!(Policy::for_cc(0).pick(&[]).is_none());
    }

    #[test]
    fn power_of_two_choices_spreads_over_many_trackers() {
        let many = trackers(10, 0);
        let held: Vec<_> = (0..10)
            .map(|_| Policy::PowerOfTwoChoices.pick(&many).expect("pick"))
            .collect();
        assert!(many.iter().all(|t| t.weight() <= 3));
        drop(held);
        assert!(many.iter().all(|t| t.weight() == 0));
    }

    /// §11 item 46.
    #[test]
    fn item46_first_available() {
        let fa = Policy::for_cc(1);
        assert!(matches!(fa, Policy::FirstAvailable));
        let one = trackers(1, 1);
        let held = fa.pick(&one);
        assert_eq!(dest(&held), Some("0"));
        assert!(fa.pick(&one).is_none());

        let two = trackers(2, 1);
        let a = fa.pick(&two);
        let b = fa.pick(&two);
        assert_eq!((dest(&a), dest(&b)), (Some("0"), Some("1")));
        assert!(fa.pick(&[]).is_none());
    }

    /// §11 item 47.
    #[test]
    fn item47_round_robin() {
        // cc = 1.
        let rr = Policy::for_cc(4);
        assert!(matches!(rr, Policy::RoundRobin(_)));
        let ts = trackers(3, 1);
        let p0 = rr.pick(&ts);
        let p1 = rr.pick(&ts);
        assert_eq!((dest(&p0), dest(&p1)), (Some("0"), Some("1")));
        assert!(rr.pick(&ts[..1]).is_none(), "its only slot is busy");
        let p2 = rr.pick(&ts);
        assert_eq!(dest(&p2), Some("2"));
        assert!(rr.pick(&ts).is_none());
        drop(p2);
        let again = rr.pick(&ts);
        assert_eq!(dest(&again), Some("2"));

        // cc = 2.
        let rr = Policy::RoundRobin(Mutex::new(0));
        let ts = trackers(3, 2);
        let picks: Vec<_> = [3, 3, 1, 3, 3, 3]
            .iter()
            .map(|&n| rr.pick(&ts[..n]))
            .collect();
        let got: Vec<_> = picks.iter().map(dest).collect();
        let want = ["0", "1", "0", "1", "2", "2"].map(Some);
        assert_eq!(got, want);
        assert!(rr.pick(&[]).is_none());
    }

    #[test]
    fn random_below_stays_in_range() {
        for n in 1..50 {
            for _ in 0..20 {
                assert!(random_below(n) < n);
            }
        }
        assert_eq!(random_below(0), 0);
    }
}
