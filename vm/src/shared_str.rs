//! `Str`, the runtime's string: shared, immutable, one thin pointer to a single allocation
//! holding a reference count, the length and the bytes.
//!
//! `Rc<str>` is one allocation but a fat pointer (a `Value` would grow to three words);
//! `Rc<String>` is thin but two allocations per string, which made allocation and freeing most of
//! the time of string-heavy loops. This is both thin and one allocation, at the price of the
//! unsafe code below, which is kept to this file.

use std::alloc::Layout;
use std::cell::Cell;
use std::ptr::NonNull;

#[repr(C)]
struct Header {
    refs: Cell<usize>,
    len: usize,
}

/// A shared, immutable string. Not `Send`: like `Rc`, it lives on the scheduler's thread.
pub struct Str(NonNull<Header>);

/// Where the bytes start, after the header.
const BYTES_OFFSET: usize = std::mem::size_of::<Header>();

fn layout(len: usize) -> Layout {
    // The header's size is a multiple of its alignment, so the bytes follow it directly.
    const _: () = assert!(BYTES_OFFSET.is_multiple_of(std::mem::align_of::<Header>()));
    match Layout::from_size_align(
        BYTES_OFFSET.saturating_add(len),
        std::mem::align_of::<Header>(),
    ) {
        Ok(layout) => layout,
        // Only a length near `isize::MAX`, which no allocation can have.
        Err(_) => std::alloc::handle_alloc_error(Layout::new::<Header>()),
    }
}

impl Str {
    /// A new string with the bytes of `parts` one after another; `len` is their total length.
    pub fn concat<'a>(len: usize, parts: impl IntoIterator<Item = &'a str>) -> Str {
        let layout = layout(len);
        // SAFETY: the layout's size is at least the header's, so non-zero.
        let raw = unsafe { std::alloc::alloc(layout) }.cast::<Header>();
        let Some(header) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        let mut written = 0;
        // SAFETY: the allocation holds a header and `len` bytes; each part is copied only if it
        // fits in what is left, so nothing is written past the end, and `len` is set to what
        // was written, all of it copied from `&str`s (valid UTF-8 end to end).
        unsafe {
            let bytes = raw.cast::<u8>().add(BYTES_OFFSET);
            for part in parts {
                if part.len() > len - written {
                    break;
                }
                std::ptr::copy_nonoverlapping(part.as_ptr(), bytes.add(written), part.len());
                written += part.len();
            }
            raw.write(Header {
                refs: Cell::new(1),
                len: written,
            });
        }
        if written != len {
            // A caller's `len` was too large. The drop path frees by the length in the header,
            // so copy what was written into a string of its own size and free this one here.
            // SAFETY: the first `written` bytes were copied from `&str`s; the allocation was
            // made with `layout` and nothing else points to it; the header needs no drop.
            unsafe {
                let bytes = raw.cast::<u8>().add(BYTES_OFFSET);
                let text =
                    std::str::from_utf8_unchecked(std::slice::from_raw_parts(bytes, written));
                let copy = Str::from(text);
                std::alloc::dealloc(raw.cast::<u8>(), layout);
                return copy;
            }
        }
        Str(header)
    }

    #[inline]
    pub fn as_str(&self) -> &str {
        // SAFETY: the pointer is live while `self` is (counted reference); the header records
        // how many bytes follow it, all copied from `&str`s.
        unsafe {
            let len = self.0.as_ref().len;
            let bytes = self.0.as_ptr().cast::<u8>().add(BYTES_OFFSET);
            std::str::from_utf8_unchecked(std::slice::from_raw_parts(bytes, len))
        }
    }
}

impl Clone for Str {
    #[inline]
    fn clone(&self) -> Str {
        // SAFETY: live while `self` is.
        let refs = unsafe { &self.0.as_ref().refs };
        // As `Rc`: a count that would overflow means leaked clones in a loop; stop.
        let Some(next) = refs.get().checked_add(1) else {
            std::process::abort()
        };
        refs.set(next);
        Str(self.0)
    }
}

impl Drop for Str {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: live until the last reference drops, which frees it with the layout it was
        // allocated with (the header's length is the allocation's).
        unsafe {
            let header = self.0.as_ref();
            let refs = header.refs.get() - 1;
            header.refs.set(refs);
            if refs == 0 {
                let layout = layout(header.len);
                std::alloc::dealloc(self.0.as_ptr().cast::<u8>(), layout);
            }
        }
    }
}

impl From<&str> for Str {
    fn from(s: &str) -> Str {
        Str::concat(s.len(), [s])
    }
}

impl From<String> for Str {
    fn from(s: String) -> Str {
        Str::from(s.as_str())
    }
}

impl Default for Str {
    fn default() -> Str {
        Str::from("")
    }
}

impl std::ops::Deref for Str {
    type Target = str;

    #[inline]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for Str {
    #[inline]
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Str {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Str {
    #[inline]
    fn eq(&self, other: &Str) -> bool {
        self.0 == other.0 || self.as_str() == other.as_str()
    }
}

impl Eq for Str {}

impl PartialOrd for Str {
    fn partial_cmp(&self, other: &Str) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Str {
    fn cmp(&self, other: &Str) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// Hashes as the `str` it holds, so maps keyed by `Str` are looked up by `&str`.
impl std::hash::Hash for Str {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl std::fmt::Display for Str {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl std::fmt::Debug for Str {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl serde::Serialize for Str {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn holds_its_text_through_clones_and_drops() {
        let a = Str::from("héllo");
        let b = a.clone();
        drop(a);
        assert_eq!(&*b, "héllo");
        assert_eq!(Str::default().len(), 0);
        assert_eq!(&*Str::from(String::from("x")), "x");
        assert_eq!(&*Str::concat(6, ["ab", "", "cdef"]), "abcdef");
    }

    #[test]
    fn a_length_too_large_keeps_what_was_written() {
        assert_eq!(&*Str::concat(10, ["ab", "cd"]), "abcd");
        // A part that does not fit in what is left is not copied.
        assert_eq!(&*Str::concat(3, ["ab", "cd"]), "ab");
    }

    #[test]
    fn compares_and_hashes_as_its_text() {
        let mut map = HashMap::new();
        map.insert(Str::from("key"), 1);
        assert_eq!(map.get("key"), Some(&1));
        assert!(Str::from("a") < Str::from("b"));
        assert_eq!(Str::from("same"), Str::from("same"));
        assert_eq!(format!("{:?}", Str::from("q\"")), "\"q\\\"\"");
    }
}
