//! Formatted lines on their way to the writer: one buffer a worker
//! thread, which the worker appends a line to at the end of each request
//! and the writer's thread swaps for an empty one every tick.
//!
//! Formatting where the request ends, rather than in the writer, finds
//! the entry still in the worker's cache and frees its copies on the
//! thread that made them: handing entries to the writer through a queue
//! cost about 500 instructions a line more (callgrind), most of them the
//! writer's thread freeing what a worker had allocated. Each buffer has a
//! lock, which its worker finds free but for the moment of the writer's
//! swap (two workers share one only when there are more threads than
//! buffers).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::format::Memo;

/// Buffers, at most: threads beyond share them.
const SLOTS: usize = 64;

/// What one thread's lines wait in.
#[derive(Debug, Default)]
pub(super) struct Slot {
    /// Whole lines only: a line is appended at once, under the lock.
    pub(super) buf: Vec<u8>,
    /// What formatting remembers between this buffer's lines.
    pub(super) memo: Memo,
}

/// Every thread's buffer.
#[derive(Debug)]
pub(super) struct Lines {
    slots: Box<[Mutex<Slot>]>,
    /// A buffer holding this much takes no more lines until the writer
    /// has taken it: what waits stays bounded whatever the sink does.
    cap: usize,
    /// Set when the writer has stopped: later lines are lost, and counted.
    closed: AtomicBool,
}

impl Lines {
    pub(super) fn new(cap: usize) -> Lines {
        Lines {
            slots: (0..SLOTS).map(|_| Mutex::default()).collect(),
            cap,
            closed: AtomicBool::new(false),
        }
    }

    /// This thread's buffer to append a line to, or `None` when it is full
    /// or the writer has stopped (the line is then dropped).
    pub(super) fn slot(&self) -> Option<MutexGuard<'_, Slot>> {
        let slot = lock(&self.slots[this_thread()]);
        (slot.buf.len() < self.cap && !self.closed.load(Ordering::Relaxed)).then_some(slot)
    }

    /// Swaps slot `i`'s lines, if any, for `empty` (cleared, its capacity
    /// kept, so a busy worker's buffer does not grow again each tick).
    pub(super) fn take(&self, i: usize, empty: &mut Vec<u8>) {
        let mut slot = lock(&self.slots[i]);
        if !slot.buf.is_empty() {
            std::mem::swap(&mut slot.buf, empty);
        }
    }

    /// The bytes a buffer takes lines up to.
    pub(super) fn bound(&self) -> usize {
        self.cap
    }

    pub(super) fn slots(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

/// A worker that panicked while appending left at worst a torn last line;
/// the lines before it are still worth writing.
fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This thread's buffer: threads are given buffers in turn as they first
/// log.
fn this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: Cell<Option<usize>> = const { Cell::new(None) };
    }
    SLOT.with(|slot| {
        slot.get().unwrap_or_else(|| {
            let i = NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS;
            slot.set(Some(i));
            i
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_buffer_takes_nothing_until_taken() {
        let lines = Lines::new(8);
        let mut slot = lines.slot().unwrap();
        slot.buf.extend_from_slice(b"12345678\n");
        drop(slot);
        assert!(lines.slot().is_none(), "over the cap");
        let mine = this_thread();
        let mut taken = Vec::new();
        lines.take(mine, &mut taken);
        assert_eq!(taken, b"12345678\n");
        assert!(lines.slot().unwrap().buf.is_empty());
        lines.close();
        assert!(lines.slot().is_none(), "after the writer stopped");
    }

    #[test]
    fn threads_get_their_own_buffers() {
        let mine = this_thread();
        let other = std::thread::spawn(this_thread).join().unwrap();
        assert_ne!(mine, other);
        assert_eq!(this_thread(), mine);
    }
}
