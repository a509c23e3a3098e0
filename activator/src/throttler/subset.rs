//! Pod subsetting across activators (spec §3.8, §3.9): which of the revision's pods this activator
//! routes to, given its index among the revision's activators.

/// Position of `ip` in the lexicographically (byte-wise) sorted `sorted_ips`, or −1 if absent.
pub(crate) fn infer_index<S: AsRef<str>>(sorted_ips: &[S], ip: &str) -> i32 {
    sorted_ips
        .binary_search_by(|candidate| candidate.as_ref().cmp(ip))
        .ok()
        .and_then(|i| i32::try_from(i).ok())
        .unwrap_or(-1)
}

/// `(begin, end, remnants)` of this activator's contiguous share of `num_trackers` sorted pods
/// (Go `pickIndices`). With more activators than pods every activator gets the single pod
/// `self_index mod num_trackers`. `num_activators` must be ≥ 1 (0 is treated as 1).
pub(crate) fn pick_indices(
    num_trackers: usize,
    self_index: usize,
    num_activators: usize,
) -> (usize, usize, usize) {
    let num_activators = num_activators.max(1);
    if num_activators > num_trackers {
        let begin = self_index.checked_rem(num_trackers).unwrap_or(0);
        return (begin, begin + 1, 0);
    }
    let per_activator = num_trackers / num_activators;
    let begin = self_index.saturating_mul(per_activator);
    (
        begin,
        begin.saturating_add(per_activator),
        num_trackers % num_activators,
    )
}

/// This activator's subset of `sorted` (trackers sorted by dest, Go `assignSlice`):
/// - unknown index (−1), fewer than 2 trackers, or a single activator → all of them;
/// - otherwise the contiguous share from [`pick_indices`], plus — when the pods do not divide
///   evenly and `self_index < remnants` — the leftover pod at `len − remnants + self_index`.
///
/// Defensive: 0 activators, or an index not below the count (both impossible through
/// [`super::RevisionThrottler::update_activators`]), also yield all trackers.
pub(crate) fn assign_slice<T: Clone>(sorted: &[T], self_index: i32, num_activators: u32) -> Vec<T> {
    let (Ok(index), Ok(count)) = (usize::try_from(self_index), usize::try_from(num_activators))
    else {
        return sorted.to_vec();
    };
    if sorted.len() <= 1 || count <= 1 || index >= count {
        return sorted.to_vec();
    }
    let (begin, end, remnants) = pick_indices(sorted.len(), index, count);
    let mut assigned = sorted
        .get(begin..end)
        .map(<[T]>::to_vec)
        .unwrap_or_default();
    if remnants > 0 && index < remnants {
        if let Some(extra) = sorted.get(sorted.len() - remnants + index) {
            assigned.push(extra.clone());
        }
    }
    assigned
}

#[cfg(test)]
mod tests {
    use super::*;

    /// §11 item 42.
    #[test]
    fn item42_infer_index() {
        const ME: &str = "10.10.10.3";
        let empty: [&str; 0] = [];
        assert_eq!(infer_index(&empty, ME), -1);
        assert_eq!(infer_index(&["11.11.11.11", "11.11.11.12"], ME), -1);
        assert_eq!(infer_index(&["10.10.10.3", "11.11.11.11"], ME), 0);
        assert_eq!(
            infer_index(
                &["10.10.10.1", "10.10.10.2", "10.10.10.3", "11.11.11.11"],
                ME
            ),
            2
        );
        assert_eq!(
            infer_index(&["10.10.10.1", "10.10.10.2", "10.10.10.3"], ME),
            2
        );
    }

    /// §11 item 43.
    #[test]
    fn item43_pick_indices() {
        let cases = [
            ((1, 1, 0), (0, 1, 0)),
            ((1, 2, 0), (0, 1, 0)),
            ((1, 2, 1), (0, 1, 0)),
            ((2, 3, 1), (1, 2, 0)),
            ((2, 3, 2), (0, 1, 0)),
            ((3, 3, 2), (2, 3, 0)),
            ((10, 3, 0), (0, 3, 1)),
            ((10, 3, 1), (3, 6, 1)),
            ((10, 3, 2), (6, 9, 1)),
            ((150, 5, 0), (0, 30, 0)),
            ((150, 5, 1), (30, 60, 0)),
            ((150, 5, 4), (120, 150, 0)),
        ];
        for ((pods, acts, idx), want) in cases {
            assert_eq!(
                pick_indices(pods, idx, acts),
                want,
                "pods {pods}, activators {acts}, index {idx}"
            );
        }
    }

    fn pods(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("p{i}")).collect()
    }

    /// §11 item 44 (the breaker-capacity part lives in `revision.rs`, where trackers exist).
    #[test]
    fn item44_assign_slice() {
        let three = vec!["1", "2", "3"];
        let none: Vec<&str> = Vec::new();
        assert!(assign_slice(&none, 0, 1).is_empty());
        assert_eq!(assign_slice(&three, 1, 1), three);
        assert_eq!(assign_slice(&three, -1, 1), three);
        assert_eq!(assign_slice(&three, 1, 3), vec!["2"]);
        assert_eq!(assign_slice(&three[..1], 1, 3), vec!["1"]);
        assert_eq!(assign_slice(&three, 1, 2), vec!["2"]);
    }

    /// Every example of spec §3.9.
    #[test]
    fn spec_3_9_examples() {
        let p = |ids: &[usize]| ids.iter().map(|i| format!("p{i}")).collect::<Vec<_>>();
        assert_eq!(assign_slice(&pods(3), 0, 2), p(&[0, 2]));
        assert_eq!(assign_slice(&pods(3), 1, 2), p(&[1]));
        assert_eq!(assign_slice(&pods(5), 0, 2), p(&[0, 1, 4]));
        assert_eq!(assign_slice(&pods(5), 1, 2), p(&[2, 3]));
        assert_eq!(assign_slice(&pods(6), 0, 4), p(&[0, 4]));
        assert_eq!(assign_slice(&pods(6), 1, 4), p(&[1, 5]));
        assert_eq!(assign_slice(&pods(6), 2, 4), p(&[2]));
        assert_eq!(assign_slice(&pods(6), 3, 4), p(&[3]));
        assert_eq!(assign_slice(&pods(10), 0, 3), p(&[0, 1, 2, 9]));
        assert_eq!(assign_slice(&pods(10), 1, 3), p(&[3, 4, 5]));
        assert_eq!(assign_slice(&pods(10), 2, 3), p(&[6, 7, 8]));
        assert_eq!(assign_slice(&pods(2), 1, 3), p(&[1]));
        assert_eq!(assign_slice(&pods(2), 2, 3), p(&[0]));
    }

    #[test]
    fn every_pod_is_assigned_when_activators_do_not_exceed_pods() {
        for n_pods in 1..20 {
            for n_act in 1..=n_pods {
                let mut all: Vec<String> = (0..n_act)
                    .flat_map(|i| assign_slice(&pods(n_pods), i as i32, n_act as u32))
                    .collect();
                all.sort();
                let mut want = pods(n_pods);
                want.sort();
                assert_eq!(all, want, "{n_pods} pods / {n_act} activators");
            }
        }
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        assert_eq!(pick_indices(0, 0, 0), (0, 1, 0));
        assert_eq!(pick_indices(0, 5, 3), (0, 1, 0));
        assert_eq!(assign_slice(&pods(4), 0, 0), pods(4));
        assert_eq!(assign_slice(&pods(4), 7, 3), pods(4));
        assert_eq!(
            assign_slice(&pods(4), i32::MAX, u32::MAX),
            vec!["p3".to_string()]
        );
        assert_eq!(assign_slice(&pods(4), 3, u32::MAX), vec!["p3".to_string()]);
    }
}
