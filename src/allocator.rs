//! The global allocator of the `sglc` binary and its benchmarks: mimalloc, reached through
//! its plain entry points where the alignment allows.
//!
//! The VM allocates many small, short-lived objects (strings, lists, values, states,
//! requests); mimalloc's thread-local free lists serve them at a fraction of glibc malloc's
//! cost (`sglc bench vm`). The `mimalloc` crate's allocator calls `mi_malloc_aligned` for
//! every allocation, which was twice the instructions of `mi_malloc` and a twentieth of a
//! string-scoring loop (`sglc bench jit`); `mi_malloc` returns memory aligned as `malloc`
//! does, so it serves every alignment up to that.

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// mimalloc, for `#[global_allocator]`. Hosts that embed the library choose their own.
pub struct Allocator;

/// The alignment every `mi_malloc` block of at least this size has (`MI_MAX_ALIGN_SIZE`;
/// smaller blocks are aligned to their size class, which `align <= size` covers).
const MALLOC_ALIGN: usize = 16;

fn plain(layout: &Layout) -> bool {
    layout.align() <= MALLOC_ALIGN && layout.align() <= layout.size()
}

// SAFETY: every block comes from mimalloc with at least the layout's size and alignment
// (`plain` layouts by mimalloc's guarantee, others from its aligned entry points), and is
// freed or resized by mimalloc.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain calls into mimalloc.
        unsafe {
            if plain(&layout) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain calls into mimalloc.
        unsafe {
            if plain(&layout) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator; the new block keeps the alignment.
        unsafe {
            if layout.align() <= MALLOC_ALIGN && layout.align() <= new_size {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_the_alignment_asked_for_through_a_realloc() {
        for (size, align) in [
            (1, 1),
            (8, 8),
            (12, 4),
            (16, 16),
            (24, 8),
            (8, 64),
            (100, 128),
        ] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: a non-zero layout; the block is written within its size, then freed.
            unsafe {
                let block = Allocator.alloc(layout);
                assert!(
                    !block.is_null() && (block as usize).is_multiple_of(align),
                    "{size}/{align}"
                );
                block.write_bytes(7, size);
                let grown = Allocator.realloc(block, layout, size * 5);
                assert!(
                    (grown as usize).is_multiple_of(align),
                    "{size}/{align} grown"
                );
                assert_eq!(*grown, 7);
                Allocator.dealloc(grown, Layout::from_size_align(size * 5, align).unwrap());
                let zeroed = Allocator.alloc_zeroed(layout);
                assert!((zeroed as usize).is_multiple_of(align) && *zeroed == 0);
                Allocator.dealloc(zeroed, layout);
            }
        }
    }
}
