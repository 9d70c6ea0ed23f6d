//! Test builds only: the global allocator counts the bytes each thread holds, so that a test
//! can measure what a piece of code keeps (`held_by_this_thread` before and after).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    /// Bytes allocated minus bytes freed by this thread (a block freed by another thread than
    /// the one that made it skews both; tests measure single-threaded code).
    static HELD: Cell<isize> = const { Cell::new(0) };
}

struct Counting;

fn account(delta: isize) {
    // `try_with`: the thread's storage may be gone while it exits.
    let _ = HELD.try_with(|held| held.set(held.get() + delta));
}

// SAFETY: every call is passed to the system allocator unchanged; the counting only reads the
// sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        account(layout.size() as isize);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        account(layout.size() as isize);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(-(layout.size() as isize));
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        account(new_size as isize - layout.size() as isize);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// The bytes this thread has allocated and not freed so far.
pub fn held_by_this_thread() -> isize {
    HELD.with(Cell::get)
}
