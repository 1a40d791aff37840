//! Output buffers for the allocating API.
//!
//! A fresh buffer of tens of MiB costs a page fault per 4 KiB when first written, which on
//! these machines caps an allocating call at a fraction of the copy bandwidth. On Linux, large
//! buffers are marked for transparent huge pages (`madvise(MADV_HUGEPAGE)`) before they are
//! touched: one fault per 2 MiB instead.

use rayon::prelude::*;

/// Buffers below this many bytes are allocated plainly: too small for huge pages to matter.
const HUGE_MIN_BYTES: usize = 4 << 20;

/// A vector of `n` copies of `T::default()`, its pages eligible for transparent huge pages
/// when it is large.
pub(crate) fn filled_vec<T: Copy + Default + Send + Sync>(n: usize) -> Vec<T> {
    if n.saturating_mul(std::mem::size_of::<T>()) < HUGE_MIN_BYTES {
        return vec![T::default(); n];
    }
    let mut v: Vec<T> = Vec::with_capacity(n);
    let spare = &mut v.spare_capacity_mut()[..n];
    advise_huge_pages(spare);
    // First touch on every thread of the pool, so page faults (and zeroing) run in parallel.
    spare.par_chunks_mut(1 << 18).for_each(|chunk| {
        for slot in chunk {
            slot.write(T::default());
        }
    });
    // SAFETY: the loop above initialized all n elements of the capacity.
    unsafe { v.set_len(n) };
    v
}

#[cfg(target_os = "linux")]
fn advise_huge_pages<T>(region: &mut [std::mem::MaybeUninit<T>]) {
    const HUGE: usize = 2 << 20;
    let start = region.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(region);
    // Only whole 2 MiB pages inside the region: madvise needs page-aligned ranges.
    let (lo, hi) = (start.next_multiple_of(HUGE), end - end % HUGE);
    if lo < hi {
        // SAFETY: [lo, hi) lies inside `region`, memory this process owns (the unused
        // capacity of a Vec, mapped by the allocator); MADV_HUGEPAGE only changes how the
        // kernel backs those pages, never their contents or validity. A failure (THP disabled)
        // is harmless and ignored.
        unsafe {
            libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages<T>(_region: &mut [std::mem::MaybeUninit<T>]) {}
