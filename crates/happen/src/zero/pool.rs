//! The buffer pool: zero events and writers take their buffers here and
//! give them back when dropped, so that after warm-up none is allocated.
//!
//! Each thread keeps its own buffers (no lock on the hot path); a buffer
//! given back on another thread than the one it came from joins that
//! thread's pool. A writer's two working buffers (its field directory and
//! string table, emptied when it is sent) are kept as a pair in a slot of
//! their own for the thread's next writer, which takes them in one move;
//! only its third buffer, which becomes the event, goes through the pool.
//!
//! When events are written on one thread and dropped on another, the
//! writer's pool runs dry and the handler's fills up. A small shared pool
//! behind a lock joins them: a thread whose pool is full puts what it is
//! given back there, and a thread whose pool is empty takes from there
//! before allocating. Both are the paths that would otherwise free or
//! allocate, so a thread that writes and drops its own events never
//! touches the lock. (Not waiting for a contended lock, and allocating or
//! freeing instead, kept about one event in a hundred allocating.)

use std::cell::{Cell, RefCell};
use std::sync::Mutex;

/// Buffers a thread keeps at most (beyond that, returned ones are freed).
const KEEP: usize = 4096;
/// A buffer grown past this is freed rather than kept.
const MAX_KEPT_CAPACITY: usize = 1 << 20;
/// The capacity a new buffer starts with.
const FIRST_CAPACITY: usize = 512;
/// Buffers the shared pool keeps at most.
const SHARED_KEEP: usize = 1024;

/// Buffers given back on threads whose own pool was full, for threads
/// whose own pool is empty.
static SHARED: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    /// The working buffers the thread's last writer gave back.
    static SCRATCH: Cell<Option<[Vec<u8>; 2]>> = const { Cell::new(None) };
}

/// A writer's two working buffers: the pair the thread's last writer gave
/// back, else two from the pool.
pub(crate) fn take_scratch() -> [Vec<u8>; 2] {
    match SCRATCH.try_with(Cell::take) {
        Ok(Some(pair)) => pair,
        _ => take_n(),
    }
}

/// Gives a writer's working buffers back, emptied, for the thread's next
/// writer (the pair kept before goes to the pool).
pub(crate) fn give_scratch(mut pair: [Vec<u8>; 2]) {
    if pair
        .iter()
        .any(|buffer| buffer.capacity() == 0 || buffer.capacity() > MAX_KEPT_CAPACITY)
    {
        give_n(pair);
        return;
    }
    for buffer in &mut pair {
        buffer.clear();
    }
    if let Ok(Some(previous)) = SCRATCH.try_with(|slot| slot.replace(Some(pair))) {
        give_n(previous);
    }
}

/// `N` empty buffers, from the pool as far as it has them.
pub(crate) fn take_n<const N: usize>() -> [Vec<u8>; N] {
    let mut buffers: [Vec<u8>; N] = std::array::from_fn(|_| Vec::new());
    // During thread teardown the pool may be gone: fresh buffers then.
    let _ = POOL.try_with(|pool| {
        if let Ok(mut pool) = pool.try_borrow_mut() {
            for buffer in &mut buffers {
                match pool.pop() {
                    Some(kept) => *buffer = kept,
                    None => break,
                }
            }
        }
    });
    for buffer in &mut buffers {
        if buffer.capacity() == 0 {
            *buffer = fresh();
        }
    }
    buffers
}

/// A buffer from the shared pool if it has one, else a new one.
#[cold]
fn fresh() -> Vec<u8> {
    if let Ok(mut shared) = SHARED.lock()
        && let Some(kept) = shared.pop()
    {
        return kept;
    }
    Vec::with_capacity(FIRST_CAPACITY)
}

/// Keeps `buffer` (emptied) in the shared pool if it has room; else it is
/// freed.
#[cold]
fn to_shared(mut buffer: Vec<u8>) {
    if let Ok(mut shared) = SHARED.lock()
        && shared.len() < SHARED_KEEP
    {
        buffer.clear();
        shared.push(buffer);
    }
}

/// An empty buffer, from the pool when it has one.
pub(crate) fn take() -> Vec<u8> {
    let [buffer] = take_n();
    buffer
}

/// Gives `buffers` back for reuse (an empty one, never allocated, is
/// skipped).
pub(crate) fn give_n<const N: usize>(buffers: [Vec<u8>; N]) {
    let kept = |buffer: &Vec<u8>| buffer.capacity() != 0 && buffer.capacity() <= MAX_KEPT_CAPACITY;
    if !buffers.iter().any(kept) {
        return;
    }
    let _ = POOL.try_with(|pool| {
        if let Ok(mut pool) = pool.try_borrow_mut() {
            for mut buffer in buffers {
                if !kept(&buffer) {
                    continue;
                }
                if pool.len() < KEEP {
                    buffer.clear();
                    pool.push(buffer);
                } else {
                    to_shared(buffer);
                }
            }
        }
    });
}

/// Gives `buffer` back for reuse.
pub(crate) fn give(buffer: Vec<u8>) {
    give_n([buffer]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_given_back_are_taken_again_empty() {
        let [mut a, b, c] = take_n::<3>();
        a.extend_from_slice(b"kept");
        let kept = [a.as_ptr(), b.as_ptr(), c.as_ptr()];
        give_n([a, b, c]);
        let again = take_n::<3>();
        for buffer in &again {
            assert!(buffer.is_empty());
            assert!(
                kept.contains(&buffer.as_ptr()),
                "a fresh buffer where a kept one waited"
            );
        }
        give_n(again);
    }

    #[test]
    fn a_writers_working_pair_is_taken_again_empty() {
        let [mut fields, strings] = take_scratch();
        fields.extend_from_slice(b"kept");
        let kept = [fields.as_ptr(), strings.as_ptr()];
        give_scratch([fields, strings]);
        let again = take_scratch();
        assert!(again.iter().all(Vec::is_empty));
        assert_eq!([again[0].as_ptr(), again[1].as_ptr()], kept);
        // A second pair given back while one is kept: the kept one goes to
        // the pool, the new one is kept.
        let other = take_scratch();
        give_scratch(again);
        let before = POOL.with(|pool| pool.borrow().len());
        give_scratch(other);
        assert_eq!(POOL.with(|pool| pool.borrow().len()), before + 2);
    }

    #[test]
    fn an_oversized_or_unallocated_buffer_is_not_kept() {
        let before = POOL.with(|pool| pool.borrow().len());
        give_n([Vec::new(), Vec::with_capacity(MAX_KEPT_CAPACITY + 1)]);
        assert_eq!(POOL.with(|pool| pool.borrow().len()), before);
    }
}
