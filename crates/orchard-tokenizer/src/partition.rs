//! Splitting special tokens out of a text before tokenizing the rest, as llama.cpp's
//! `tokenizer_st_partition`: special tokens are tried one at a time, longest text first, each
//! cutting every remaining text fragment at all of its occurrences. Control and unknown tokens
//! take part only with `parse_special`; user-defined tokens always do (Gemma's runs of spaces
//! and newlines, HTML tags, ...). Tokens with the LSTRIP/RSTRIP attribute swallow the
//! whitespace beside them.
//!
//! Trying thousands of special tokens against every text would be slow, and only the tokens
//! that occur somewhere in the text can cut anything, so an Aho-Corasick pass first finds those;
//! the exact one-token-at-a-time procedure then runs over them alone.

use aho_corasick::AhoCorasick;

use crate::attr::{CONTROL, LSTRIP, RSTRIP, UNKNOWN};
use crate::{Strings, TokenId, Tokenizer};

/// A piece of the input: raw text (byte range) still to tokenize, or a special token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment {
    Text(usize, usize),
    Token(TokenId),
}

pub(crate) struct SpecialMatcher {
    /// Special tokens in the order llama.cpp tries them (text length, descending).
    specials: Vec<TokenId>,
    /// Patterns are the texts of `specials`, in the same order.
    ac: Option<AhoCorasick>,
}

impl SpecialMatcher {
    pub fn new(strings: &Strings, specials: Vec<TokenId>) -> SpecialMatcher {
        let ac = if specials.is_empty() {
            None
        } else {
            // Building only fails past size limits far above any vocabulary's special tokens;
            // without the prefilter every special token is simply tried.
            AhoCorasick::new(specials.iter().map(|&id| strings.get(id))).ok()
        };
        SpecialMatcher { specials, ac }
    }

    pub fn partition(&self, tok: &Tokenizer, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(0, text.len()));

        let usable = |i: usize| {
            let a = tok.attr(self.specials[i]);
            parse_special || a & (CONTROL | UNKNOWN) == 0
        };
        let mut present: Vec<usize> = match &self.ac {
            Some(ac) => {
                let mut seen = vec![false; self.specials.len()];
                for m in ac.find_overlapping_iter(text) {
                    seen[m.pattern().as_usize()] = true;
                }
                (0..self.specials.len())
                    .filter(|&i| seen[i] && usable(i))
                    .collect()
            }
            None => (0..self.specials.len()).filter(|&i| usable(i)).collect(),
        };
        present.sort_unstable();

        let mut next = Vec::new();
        for i in present {
            let id = self.specials[i];
            let needle = tok.strings.get(id);
            let a = tok.attr(id);
            next.clear();
            for &f in &frags {
                match f {
                    Fragment::Token(_) => next.push(f),
                    Fragment::Text(start, end) => cut(
                        text,
                        start,
                        end,
                        needle,
                        id,
                        a & LSTRIP != 0,
                        a & RSTRIP != 0,
                        &mut next,
                    ),
                }
            }
            std::mem::swap(&mut frags, &mut next);
        }
        frags
    }
}

/// C's `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

/// Cuts `text[start..end]` at every occurrence of `needle`, left to right.
#[allow(clippy::too_many_arguments)]
fn cut(
    text: &str,
    start: usize,
    end: usize,
    needle: &str,
    id: TokenId,
    lstrip: bool,
    rstrip: bool,
    out: &mut Vec<Fragment>,
) {
    let bytes = text.as_bytes();
    let mut base = start;
    while let Some(rel) = text[base..end].find(needle) {
        let m = base + rel;
        let mut left_end = m;
        if lstrip {
            while left_end > base && is_c_space(bytes[left_end - 1]) {
                left_end -= 1;
            }
        }
        if left_end > base {
            out.push(Fragment::Text(base, left_end));
        }
        out.push(Fragment::Token(id));
        base = m + needle.len();
        if rstrip {
            while base < end && is_c_space(bytes[base]) {
                base += 1;
            }
        }
    }
    if base < end {
        out.push(Fragment::Text(base, end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_splits_every_occurrence_and_strips() {
        let text = "a <x> b<x><x>";
        let mut out = Vec::new();
        cut(text, 0, text.len(), "<x>", 7, false, false, &mut out);
        assert_eq!(
            out,
            vec![
                Fragment::Text(0, 2),
                Fragment::Token(7),
                Fragment::Text(5, 7),
                Fragment::Token(7),
                Fragment::Token(7),
            ]
        );
        out.clear();
        cut(text, 0, text.len(), "<x>", 7, true, true, &mut out);
        assert_eq!(
            out,
            vec![
                Fragment::Text(0, 1),
                Fragment::Token(7),
                Fragment::Text(6, 7),
                Fragment::Token(7),
                Fragment::Token(7),
            ]
        );
    }
}
