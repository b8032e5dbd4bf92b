//! The buffer pool: zero events and writers take their buffers here and
//! give them back when dropped, so that after warm-up none is allocated.
//!
//! Each thread keeps its own buffers (no lock on the hot path); a buffer
//! given back on another thread than the one it came from joins that
//! thread's pool.

use std::cell::RefCell;

/// Buffers a thread keeps at most (beyond that, returned ones are freed).
const KEEP: usize = 4096;
/// A buffer grown past this is freed rather than kept.
const MAX_KEPT_CAPACITY: usize = 1 << 20;
/// The capacity a new buffer starts with.
const FIRST_CAPACITY: usize = 512;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer, from the pool when it has one.
pub(crate) fn take() -> Vec<u8> {
    let kept = POOL
        .try_with(|pool| pool.try_borrow_mut().ok().and_then(|mut p| p.pop()))
        .ok()
        .flatten();
    kept.unwrap_or_else(|| Vec::with_capacity(FIRST_CAPACITY))
}

/// Gives `buffer` back for reuse.
pub(crate) fn give(mut buffer: Vec<u8>) {
    if buffer.capacity() == 0 || buffer.capacity() > MAX_KEPT_CAPACITY {
        return;
    }
    buffer.clear();
    // During thread teardown the pool may be gone: the buffer is freed.
    let _ = POOL.try_with(|pool| {
        if let Ok(mut pool) = pool.try_borrow_mut()
            && pool.len() < KEEP
        {
            pool.push(buffer);
        }
    });
}
