//! Per-status-code series without a lock on the common path: the usual codes have a fixed slot
//! (one atomic load once created); any other code goes to a small locked list.

use std::sync::{OnceLock, RwLock};

/// Status codes with a fixed slot.
const COMMON: [u16; 28] = [
    200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 410,
    413, 422, 429, 499, 500, 501, 502, 503, 504,
];

#[inline]
fn common_slot(status: u16) -> Option<usize> {
    Some(match status {
        200 => 0,
        201 => 1,
        202 => 2,
        204 => 3,
        206 => 4,
        301 => 5,
        302 => 6,
        303 => 7,
        304 => 8,
        307 => 9,
        308 => 10,
        400 => 11,
        401 => 12,
        403 => 13,
        404 => 14,
        405 => 15,
        408 => 16,
        409 => 17,
        410 => 18,
        413 => 19,
        422 => 20,
        429 => 21,
        499 => 22,
        500 => 23,
        501 => 24,
        502 => 25,
        503 => 26,
        504 => 27,
        _ => return None,
    })
}

/// One `T` per status code, created on first use.
pub(crate) struct StatusTable<T> {
    common: [OnceLock<T>; COMMON.len()],
    other: RwLock<Vec<(u16, T)>>,
}

impl<T> std::fmt::Debug for StatusTable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatusTable")
    }
}

impl<T> Default for StatusTable<T> {
    fn default() -> Self {
        StatusTable {
            common: std::array::from_fn(|_| OnceLock::new()),
            other: RwLock::new(Vec::new()),
        }
    }
}

impl<T> StatusTable<T> {
    /// Runs `f` on the entry for `status`, creating it with `init` first if needed.
    #[inline]
    pub(crate) fn with<R>(
        &self,
        status: u16,
        init: impl FnOnce() -> T,
        f: impl FnOnce(&T) -> R,
    ) -> R {
        if let Some(slot) = common_slot(status) {
            return f(self.common[slot].get_or_init(init));
        }
        {
            let other = self.other.read().unwrap_or_else(|e| e.into_inner());
            if let Some((_, entry)) = other.iter().find(|(s, _)| *s == status) {
                return f(entry);
            }
        }
        let mut other = self.other.write().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = other.iter().position(|(s, _)| *s == status) {
            return f(&other[at].1);
        }
        other.push((status, init()));
        let last = other.len() - 1;
        f(&other[last].1)
    }

    /// Visits every entry in ascending status order (status codes are three digits, so this is
    /// also the order of their label values).
    pub(crate) fn for_each<E>(&self, mut f: impl FnMut(u16, &T) -> Result<(), E>) -> Result<(), E> {
        let other = self.other.read().unwrap_or_else(|e| e.into_inner());
        let mut entries: Vec<(u16, &T)> = COMMON
            .iter()
            .zip(&self.common)
            .filter_map(|(status, slot)| slot.get().map(|entry| (*status, entry)))
            .chain(other.iter().map(|(status, entry)| (*status, entry)))
            .collect();
        entries.sort_by_key(|(status, _)| *status);
        for (status, entry) in entries {
            f(status, entry)?;
        }
        Ok(())
    }

    /// Whether no entry exists yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.common.iter().all(|slot| slot.get().is_none())
            && self
                .other
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_distinct_and_complete() {
        for (i, status) in COMMON.iter().enumerate() {
            assert_eq!(common_slot(*status), Some(i));
        }
        assert_eq!(common_slot(418), None);
    }

    #[test]
    fn entries_are_created_once_and_visited_in_order() {
        let table: StatusTable<std::cell::Cell<u32>> = StatusTable::default();
        assert!(table.is_empty());
        for status in [503, 200, 418, 200, 418, 100] {
            table.with(status, Default::default, |c| c.set(c.get() + 1));
        }
        let mut seen = Vec::new();
        table
            .for_each::<()>(|status, c| {
                seen.push((status, c.get()));
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, vec![(100, 1), (200, 2), (418, 2), (503, 1)]);
    }
}
