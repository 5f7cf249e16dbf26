//! The emulator's memory budget: the most all its entities hold together (`--max-memory`).

use std::sync::atomic::{AtomicU64, Ordering};

use super::QuotaExceeded;

/// What one stored message costs beyond its bytes as sent: its decoded header, annotations,
/// ids and the entity's indexes of it (about 500 bytes, measured on 64-bit targets).
pub(crate) const ENTRY_OVERHEAD: u64 = 512;

/// The bytes the emulator's messages take, and the most they may. Shared by every entity.
#[derive(Debug)]
pub(crate) struct Memory {
    limit: u64,
    used: AtomicU64,
}

impl Memory {
    pub(crate) fn new(limit: u64) -> Self {
        Self { limit, used: AtomicU64::new(0) }
    }

    /// No limit (entities made alone, in tests and fuzzing).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn unlimited() -> Self {
        Self::new(u64::MAX)
    }

    /// What storing `messages` of `bytes` in all costs.
    pub(crate) fn cost(messages: usize, bytes: u64) -> u64 {
        bytes.saturating_add(ENTRY_OVERHEAD.saturating_mul(messages as u64))
    }

    /// Takes `n` bytes of the budget, or refuses them all if they do not fit.
    pub(crate) fn try_charge(&self, n: u64) -> Result<(), QuotaExceeded> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .map(drop)
            .map_err(|used| QuotaExceeded::Memory { used, limit: self.limit, wanted: n })
    }

    /// Takes `n` bytes even past the limit: what must never be refused (a dead-lettered message).
    pub(crate) fn charge(&self, n: u64) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    /// Gives back `n` bytes.
    pub(crate) fn release(&self, n: u64) {
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| Some(used.saturating_sub(n)));
    }

    /// The bytes taken now.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_past_the_limit_is_refused_whole_and_a_release_makes_room() {
        let m = Memory::new(1000);
        m.try_charge(600).unwrap();
        let e = m.try_charge(500).unwrap_err();
        assert!(e.to_string().contains("--max-memory"), "{e}");
        assert_eq!(m.used(), 600, "a refused charge takes nothing");
        m.release(600);
        m.try_charge(1000).unwrap();
        m.charge(10);
        assert_eq!(m.used(), 1010, "dead-lettering is never refused");
        m.release(5000);
        assert_eq!(m.used(), 0);
    }
}
