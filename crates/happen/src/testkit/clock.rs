//! Deterministic ids and timestamps for tests: a seeded id source and a
//! clock that reads tokio's (pausable) clock from a fixed start, installed
//! on one thread.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::id::Id;

/// 2026-01-01T00:00:00Z, where a deterministic clock starts.
pub(crate) const EPOCH_MS: u64 = 1_767_225_600_000;

/// Whether any thread ever installed a deterministic source: until then the
/// runtime's id and clock reads skip the thread-local lookup.
static ANYWHERE: AtomicBool = AtomicBool::new(false);

struct Source {
    seed: u64,
    made: u64,
    start: tokio::time::Instant,
    last_ms: u64,
}

thread_local! {
    static SOURCE: RefCell<Option<Source>> = const { RefCell::new(None) };
}

/// splitmix64: a well-mixed 64-bit value from a counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn millis(source: &Source) -> u64 {
    EPOCH_MS + u64::try_from(source.start.elapsed().as_millis()).unwrap_or(u64::MAX / 2)
}

/// The deterministic time of this thread, if one is installed.
pub(crate) fn now_millis() -> Option<u64> {
    if !ANYWHERE.load(Ordering::Relaxed) {
        return None;
    }
    SOURCE.with(|s| s.borrow().as_ref().map(millis))
}

/// The next deterministic id of this thread and its time, if a source is
/// installed: time-ordered like every UUID v7 Happen makes, the time from
/// the clock, the sequence and the random bits from the seed and a count.
pub(crate) fn next_id() -> Option<(Id, u64)> {
    if !ANYWHERE.load(Ordering::Relaxed) {
        return None;
    }
    SOURCE.with(|s| {
        let mut slot = s.borrow_mut();
        let source = slot.as_mut()?;
        // Never earlier than the last id, so ids sort in the order made.
        let ms = millis(source).max(source.last_ms);
        source.last_ms = ms;
        source.made += 1;
        let count = source.made & ((1 << 22) - 1);
        let random = mix(source.seed ^ source.made);
        let high = (ms & 0xffff_ffff_ffff) << 16 | 0x7000 | (count >> 10);
        let low = (0b10 << 62) | (count & 0x3ff) << 52 | (random >> 12);
        let bytes = (u128::from(high) << 64 | u128::from(low)).to_be_bytes();
        Some((crate::uuid7::text_of(&bytes), ms))
    })
}

/// A deterministic random number (jitter, ...), if a source is installed.
pub(crate) fn random() -> Option<u64> {
    if !ANYWHERE.load(Ordering::Relaxed) {
        return None;
    }
    SOURCE.with(|s| {
        let mut slot = s.borrow_mut();
        let source = slot.as_mut()?;
        source.made += 1;
        Some(mix(source.seed.rotate_left(17) ^ source.made))
    })
}

/// Installs a deterministic id source and clock on this thread until the
/// guard is dropped; see [`crate::testkit::deterministic`].
pub(crate) fn install(seed: u64) -> Option<u64> {
    ANYWHERE.store(true, Ordering::Relaxed);
    SOURCE.with(|s| {
        s.borrow_mut()
            .replace(Source {
                seed,
                made: 0,
                start: tokio::time::Instant::now(),
                last_ms: 0,
            })
            .map(|old| old.seed)
    })
}

/// Removes this thread's source (back to real ids and time).
pub(crate) fn remove() {
    SOURCE.with(|s| s.borrow_mut().take());
}
