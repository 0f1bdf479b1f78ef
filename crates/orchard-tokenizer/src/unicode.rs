//! Code point classification and GPT-2 byte<->char mapping exactly as llama.cpp's `unicode.cpp`
//! does them: the pre-tokenizers must agree with llama.cpp on every code point, so the flags come
//! from llama.cpp's own table (see `scripts/gen_unicode_data.py`), not from a Unicode crate.

use crate::unicode_data::{LOWER_TO_ASCII, RUN_FLAGS, RUN_STARTS};

// Bits of llama.cpp's `unicode_cpt_flags`.
pub(crate) const UNDEFINED: u16 = 0x0001;
pub(crate) const NUMBER: u16 = 0x0002;
pub(crate) const LETTER: u16 = 0x0004;
pub(crate) const PUNCTUATION: u16 = 0x0020;
pub(crate) const MASK_CATEGORIES: u16 = 0x00FF;
pub(crate) const WHITESPACE: u16 = 0x0100;

/// Flags of a code point, as `unicode_cpt_flags_from_cpt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Flags(pub u16);

impl Flags {
    #[inline]
    pub fn is_number(self) -> bool {
        self.0 & NUMBER != 0
    }
    #[inline]
    pub fn is_letter(self) -> bool {
        self.0 & LETTER != 0
    }
    #[inline]
    pub fn is_whitespace(self) -> bool {
        self.0 & WHITESPACE != 0
    }
    /// llama.cpp's `as_uint() != 0`: false only for "no code point" (outside the current chunk).
    #[inline]
    pub fn any(self) -> bool {
        self.0 != 0
    }
    #[inline]
    pub fn category(self) -> u16 {
        self.0 & MASK_CATEGORIES
    }
}

const fn ascii_table() -> [u16; 128] {
    let mut out = [0u16; 128];
    let mut run = 0;
    let mut c = 0;
    while c < 128 {
        while run + 1 < RUN_STARTS.len() && RUN_STARTS[run + 1] <= c as u32 {
            run += 1;
        }
        out[c] = RUN_FLAGS[run];
        c += 1;
    }
    out
}

static ASCII_FLAGS: [u16; 128] = ascii_table();

/// Flags of `cpt` (UNDEFINED past the last code point, as llama.cpp).
#[inline]
pub(crate) fn flags(cpt: u32) -> Flags {
    if cpt < 128 {
        return Flags(ASCII_FLAGS[cpt as usize]);
    }
    if cpt >= 0x110000 {
        return Flags(UNDEFINED);
    }
    let run = RUN_STARTS.partition_point(|&s| s <= cpt) - 1;
    Flags(RUN_FLAGS[run])
}

/// `unicode_tolower`, restricted to what callers compare against: ASCII results.
/// Returns the code point unchanged when its lowercase form is not ASCII.
#[inline]
pub(crate) fn to_lower_ascii(cpt: u32) -> u32 {
    match LOWER_TO_ASCII.binary_search_by_key(&cpt, |&(from, _)| from) {
        Ok(i) => LOWER_TO_ASCII[i].1 as u32,
        Err(_) => cpt,
    }
}

/// Whether a byte maps to itself in GPT-2's byte-level alphabet.
const fn byte_is_printable(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// GPT-2 byte-level alphabet: the code point standing for each byte.
const fn byte_to_cpt_table() -> [u32; 256] {
    let mut out = [0u32; 256];
    let mut n = 0;
    let mut b = 0;
    while b < 256 {
        if byte_is_printable(b as u8) {
            out[b] = b as u32;
        } else {
            out[b] = 256 + n;
            n += 1;
        }
        b += 1;
    }
    out
}

pub(crate) static BYTE_TO_CPT: [u32; 256] = byte_to_cpt_table();

const fn nonprintable_bytes() -> [u8; 68] {
    let mut out = [0u8; 68];
    let mut n = 0;
    let mut b = 0;
    while b < 256 {
        if !byte_is_printable(b as u8) {
            out[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    out
}

/// The bytes that took code points 256.. in the byte-level alphabet, in that order.
static NONPRINTABLE: [u8; 68] = nonprintable_bytes();

/// Inverse of [`BYTE_TO_CPT`] (`unicode_utf8_to_byte`); `None` for code points outside it.
#[inline]
pub(crate) fn cpt_to_byte(cpt: u32) -> Option<u8> {
    if cpt < 256 {
        let b = cpt as u8;
        return byte_is_printable(b).then_some(b);
    }
    NONPRINTABLE.get((cpt - 256) as usize).copied()
}

/// Decodes UTF-8 into code points with the byte offset where each starts; the text is a `str`,
/// so llama.cpp's replacement of invalid sequences never triggers.
pub(crate) fn cpts_with_offsets(text: &str, cpts: &mut Vec<u32>, offsets: &mut Vec<usize>) {
    cpts.clear();
    offsets.clear();
    for (i, c) in text.char_indices() {
        cpts.push(c as u32);
        offsets.push(i);
    }
    offsets.push(text.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_classes_match_llama_table() {
        assert!(flags('a' as u32).is_letter());
        assert!(flags('Z' as u32).is_letter());
        assert!(flags('7' as u32).is_number());
        assert!(flags(' ' as u32).is_whitespace());
        assert!(flags('\n' as u32).is_whitespace());
        assert_eq!(flags('!' as u32).category(), PUNCTUATION);
        assert!(!flags('$' as u32).is_letter());
        // Non-ASCII: letters, numbers, whitespace from llama.cpp's table.
        assert!(flags('é' as u32).is_letter());
        assert!(flags('你' as u32).is_letter());
        assert!(flags('٣' as u32).is_number());
        assert!(flags(0x3000).is_whitespace());
        assert!(flags(0x85).is_whitespace());
        assert!(!flags(0x200B).is_whitespace());
        assert_eq!(flags(0x110000), Flags(UNDEFINED));
    }

    #[test]
    fn lowercase_to_ascii() {
        assert_eq!(to_lower_ascii('S' as u32), 's' as u32);
        assert_eq!(to_lower_ascii('s' as u32), 's' as u32);
        assert_eq!(to_lower_ascii(0x212A), 'k' as u32);
        assert_eq!(to_lower_ascii('É' as u32), 'É' as u32);
    }

    #[test]
    fn byte_alphabet_round_trips() {
        assert_eq!(BYTE_TO_CPT[b' ' as usize], 0x120); // 'Ġ'
        assert_eq!(BYTE_TO_CPT[b'\n' as usize], 0x10A); // 'Ċ'
        assert_eq!(BYTE_TO_CPT[b'a' as usize], 'a' as u32);
        for b in 0..=255u8 {
            assert_eq!(cpt_to_byte(BYTE_TO_CPT[b as usize]), Some(b));
        }
        assert_eq!(cpt_to_byte(0x20), None);
        assert_eq!(cpt_to_byte(256 + 68), None);
    }
}
