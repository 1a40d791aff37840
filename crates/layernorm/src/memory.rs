//! Memory helpers beside the kernels.

use crate::{arch, Element};

/// `dst.copy_from_slice(src)` with non-temporal stores where the CPU has them (x86-64), a plain
/// copy elsewhere: the copy that leaves the caches alone, and the memory ceiling that
/// `layernorm bench` quotes beside `memcpy` (which on the machines here uses plain stores and
/// so pays a read-for-ownership of every destination line).
///
/// ```
/// let src = vec![1.5f32; 1000];
/// let mut dst = vec![0.0f32; 1000];
/// layernorm::copy_streaming(&src, &mut dst);
/// assert_eq!(src, dst);
/// ```
///
/// # Panics
/// If the lengths differ.
pub fn copy_streaming<T: Element>(src: &[T], dst: &mut [T]) {
    arch::stream_copy(src, dst)
}
