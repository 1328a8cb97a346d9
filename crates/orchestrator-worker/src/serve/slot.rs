//! The serving loop's slots, and which of them are about to free: a test
//! whose run is over (collection and teardown left) lets the loop lease
//! the next task for its slot, so that lease is not in the next test's path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use tokio::sync::{Notify, OwnedSemaphorePermit};

/// How many slots are in their test's cleanup, and a wake-up for the loop
/// when one enters it.
#[derive(Debug, Default)]
pub(super) struct Ending {
    count: AtomicUsize,
    entered: Notify,
}

impl Ending {
    /// Slots whose test is collecting or tearing down.
    pub(super) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once a slot entered cleanup since the last call (or at
    /// once if one did while nobody waited).
    pub(super) async fn entered(&self) {
        self.entered.notified().await;
    }
}

const RUNNING: u8 = 0;
const CLEANING: u8 = 1;
const FREED: u8 = 2;

/// What the phase observer of one test holds: it marks the slot as about
/// to free. A mark after the slot is freed does nothing.
#[derive(Debug)]
pub(super) struct SlotEnd {
    state: AtomicU8,
    ending: Arc<Ending>,
}

impl SlotEnd {
    /// The test's run is over; collection and teardown are left.
    pub(super) fn cleaning(&self) {
        if self
            .state
            .compare_exchange(RUNNING, CLEANING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.ending.count.fetch_add(1, Ordering::AcqRel);
            self.ending.entered.notify_one();
        }
    }
}

/// One test's hold on a slot of the serving loop. Dropping it frees the
/// slot.
#[derive(Debug)]
pub(crate) struct Slot {
    end: Arc<SlotEnd>,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    pub(super) fn new(permit: OwnedSemaphorePermit, ending: &Arc<Ending>) -> Self {
        Self {
            end: Arc::new(SlotEnd {
                state: AtomicU8::new(RUNNING),
                ending: Arc::clone(ending),
            }),
            _permit: permit,
        }
    }

    /// For the phase observer.
    pub(super) fn end(&self) -> Arc<SlotEnd> {
        Arc::clone(&self.end)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.end.state.swap(FREED, Ordering::AcqRel) == CLEANING {
            self.end.ending.count.fetch_sub(1, Ordering::AcqRel);
        }
        // The permit goes back after this: the loop never sees the slot
        // free and still counted as ending.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slot_counts_as_ending_from_its_cleanup_until_it_is_freed() {
        let permits = Arc::new(tokio::sync::Semaphore::new(2));
        let ending = Arc::new(Ending::default());
        let slot = Slot::new(Arc::clone(&permits).try_acquire_owned().unwrap(), &ending);
        let end = slot.end();
        assert_eq!(ending.count(), 0);
        end.cleaning();
        end.cleaning();
        assert_eq!(ending.count(), 1, "marked once");
        ending.entered().await;
        drop(slot);
        assert_eq!(ending.count(), 0);
        assert_eq!(permits.available_permits(), 2);
        end.cleaning();
        assert_eq!(
            ending.count(),
            0,
            "a mark after the slot is freed does nothing"
        );
    }
}
