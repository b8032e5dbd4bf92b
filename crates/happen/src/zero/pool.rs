//! The buffer pool: zero events and writers take their buffers here and
//! give them back when dropped, so that after warm-up none is allocated.

use std::sync::Mutex;

/// Buffers kept at most (beyond that, returned ones are freed).
const KEEP: usize = 4096;
/// A buffer grown past this is freed rather than kept.
const MAX_KEPT_CAPACITY: usize = 1 << 20;
/// The capacity a new buffer starts with.
const FIRST_CAPACITY: usize = 512;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty buffer, from the pool when it has one.
pub(crate) fn take() -> Vec<u8> {
    let kept = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
    kept.unwrap_or_else(|| Vec::with_capacity(FIRST_CAPACITY))
}

/// Gives `buffer` back for reuse.
pub(crate) fn give(mut buffer: Vec<u8>) {
    if buffer.capacity() == 0 || buffer.capacity() > MAX_KEPT_CAPACITY {
        return;
    }
    buffer.clear();
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < KEEP {
        pool.push(buffer);
    }
}
