//! Heap allocations counted by a global allocator, on the measuring thread only. A test binary
//! installs it with `#[global_allocator] static GLOBAL: Counting = Counting;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting what the measuring thread allocates.
pub struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Only the measuring thread counts, so nothing else running in the binary interferes.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call forwards to the system allocator unchanged; counting touches no heap.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
    }
}

/// Keys each measurement cycles through.
pub const KEYS: u64 = 256;
/// Several rounds over the keys.
pub const HITS: u64 = 64 * KEYS;

/// Allocations per call of `call` over warm keys, measured on this thread only.
pub fn per_hit(mut call: impl FnMut(u64)) -> f64 {
    for id in 0..KEYS {
        call(id); // fill
    }
    for id in 0..KEYS {
        call(id); // and let any lazily built per-thread state settle
    }
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.with(|counting| counting.set(true));
    for n in 0..HITS {
        call(n % KEYS);
    }
    COUNTING.with(|counting| counting.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) as f64 / HITS as f64
}

/// Exactly `whole` allocations per hit: the memory store keeps no housekeeping of its own that
/// a hit could run (moka's, which one sampled read in 32 ran, allowed a fraction above).
pub fn exactly(count: f64, whole: f64) -> bool {
    count == whole
}
