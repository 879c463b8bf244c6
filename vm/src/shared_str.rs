//! `Str`, the runtime's string: shared, immutable, one thin pointer to a single allocation
//! holding a reference count, the length and the bytes; or, for a string of up to seven bytes,
//! the bytes themselves in place of the pointer.
//!
//! `Rc<str>` is one allocation but a fat pointer (a `Value` would grow to three words);
//! `Rc<String>` is thin but two allocations per string, which made allocation and freeing most of
//! the time of string-heavy loops. This is both thin and one allocation, at the price of the
//! unsafe code below, which is kept to this file. Short strings (words split from a sentence,
//! numbers made into text, map keys) need no allocation at all: a header is 8-aligned, so a
//! pointer's lowest bit is clear, and a set lowest bit marks the inline form.

use std::alloc::Layout;
use std::cell::Cell;
use std::ptr::NonNull;

#[repr(C)]
struct Header {
    refs: Cell<usize>,
    len: usize,
}

/// A shared, immutable string. Not `Send`: like `Rc`, it lives on the scheduler's thread.
///
/// The word is a pointer to a `Header`, or (lowest bit set) an inline string: the low byte
/// holds `len << 1 | 1` and the other bytes of the word, in memory order, the text.
#[repr(transparent)]
pub struct Str(NonNull<Header>);

/// The longest string held inline: a word less its tag byte.
const INLINE_MAX: usize = std::mem::size_of::<usize>() - 1;
/// Where an inline string's tag byte (the word's low byte) and its text sit in the word's memory.
const TAG_AT: usize = if cfg!(target_endian = "little") {
    0
} else {
    INLINE_MAX
};
const TEXT_AT: usize = if cfg!(target_endian = "little") { 1 } else { 0 };

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
        if len <= INLINE_MAX {
            return Str::inline(len, parts);
        }
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

    /// `concat` for a string that fits in the word (`len <= INLINE_MAX`).
    #[inline(always)]
    fn inline<'a>(len: usize, parts: impl IntoIterator<Item = &'a str>) -> Str {
        let mut word = [0u8; std::mem::size_of::<usize>()];
        let mut written = 0;
        for part in parts {
            // As on the heap: a part that does not fit in what is left is not copied.
            if part.len() > len - written {
                break;
            }
            // In pieces of 4, 2 and 1 bytes (a part here has at most 7): fixed-size copies are
            // moves between registers, where a copy of a variable length calls `memcpy`.
            let mut rest = part.as_bytes();
            let mut at = TEXT_AT + written;
            for piece in [4, 2, 1] {
                if rest.len() >= piece {
                    word[at..at + piece].copy_from_slice(&rest[..piece]);
                    at += piece;
                    rest = &rest[piece..];
                }
            }
            written += part.len();
        }
        // At most 7 (`INLINE_MAX`), so the shift stays within the byte.
        word[TAG_AT] = ((written as u8) << 1) | 1;
        let bits = usize::from_ne_bytes(word);
        // The tag bit makes the word non-zero; a pointer without provenance, never dereferenced.
        Str(NonNull::without_provenance(
            std::num::NonZeroUsize::new(bits).unwrap_or(std::num::NonZeroUsize::MIN),
        ))
    }

    #[inline(always)]
    fn is_inline(&self) -> bool {
        self.0.addr().get() & 1 == 1
    }

    #[inline]
    pub fn as_str(&self) -> &str {
        if self.is_inline() {
            let len = (self.0.addr().get() & 0xff) >> 1;
            // SAFETY: an inline string's text is the `len` bytes at `TEXT_AT` in the word's own
            // memory, which `self` borrows; they were copied whole from `&str`s.
            return unsafe {
                let word = (&raw const self.0).cast::<u8>();
                std::str::from_utf8_unchecked(std::slice::from_raw_parts(word.add(TEXT_AT), len))
            };
        }
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
        if self.is_inline() {
            return Str(self.0);
        }
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
        if self.is_inline() {
            return;
        }
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
    /// Short strings (most words, map keys, numbers as text) are made right here, without the
    /// call into `concat`: each word `split` makes takes this path.
    #[inline]
    fn from(s: &str) -> Str {
        if s.len() <= INLINE_MAX {
            return Str::inline(s.len(), [s]);
        }
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
    /// A string is inline exactly when it is short (`concat` decides by length alone), so two
    /// strings of which one is inline are equal only if their words are.
    #[inline]
    fn eq(&self, other: &Str) -> bool {
        self.0 == other.0
            || (!self.is_inline() && !other.is_inline() && self.as_str() == other.as_str())
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
    fn short_strings_are_held_inline_and_read_back_whole() {
        let texts = [
            "", "a", "on", "the", "mats", "é12", "abcdef", "abcdefg", "abcdefgh",
        ];
        for text in texts {
            let s = Str::from(text);
            assert_eq!(s.is_inline(), text.len() <= INLINE_MAX, "{text:?}");
            let copy = s.clone();
            drop(s);
            assert_eq!(&*copy, text);
            assert_eq!(copy.len(), text.len());
        }
        // Built from parts, across the boundary, and a part that does not fit.
        assert_eq!(&*Str::concat(7, ["abc", "defg"]), "abcdefg");
        assert_eq!(&*Str::concat(8, ["abcd", "efgh"]), "abcdefgh");
        assert_eq!(&*Str::concat(5, ["abc", "defg"]), "abc");
        assert!(Str::concat(5, ["abc", "defg"]).is_inline());
        assert_eq!(Str::from("inline"), Str::concat(6, ["in", "line"]));
        assert!(Str::from("abc") < Str::from("abcdefghij"));
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
