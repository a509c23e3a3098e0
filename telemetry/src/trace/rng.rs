//! A fast per-thread pseudo-random generator for trace and span ids (wyrand), seeded from the
//! standard library's randomly keyed hasher. Ids need uniqueness, not secrecy.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let addr = &hasher as *const _ as usize;
    hasher.write_usize(addr);
    hasher.finish()
}

/// The next 64 random bits of this thread's generator.
#[inline]
pub fn next_u64() -> u64 {
    STATE.with(|state| {
        let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn threads_get_different_streams() {
        let here: Vec<u64> = (0..4).map(|_| super::next_u64()).collect();
        let there = std::thread::spawn(|| (0..4).map(|_| super::next_u64()).collect::<Vec<_>>())
            .join()
            .unwrap();
        assert_ne!(here, there);
        assert_ne!(here[0], here[1]);
    }
}
