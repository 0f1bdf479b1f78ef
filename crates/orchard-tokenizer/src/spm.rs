//! SentencePiece tokenization as llama.cpp's `llm_tokenizer_spm_session`: spaces become `▁`,
//! the text starts as one symbol per character, and the adjacent pair whose concatenation is the
//! highest-scoring token is merged first (leftmost on ties) until no pair forms a token. A
//! symbol left that is not a token is spelled with `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::partition::Fragment;
use crate::{Strings, TokenId, Tokenizer};

const NONE: u32 = u32::MAX;
const ESCAPED_SPACE: &str = "\u{2581}";

pub(crate) struct SpmModel {
    /// Token for each byte: `<0xXX>`, else the byte itself as a token, else none.
    byte_tokens: [u32; 256],
}

impl SpmModel {
    pub fn new(strings: &Strings) -> SpmModel {
        let mut byte_tokens = [NONE; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            let hex = format!("<0x{b:02X}>");
            *slot = strings
                .find(hex.as_bytes())
                .or_else(|| strings.find(&[b as u8]))
                .unwrap_or(NONE);
        }
        SpmModel { byte_tokens }
    }

    pub fn encode(
        &self,
        tok: &Tokenizer,
        text: &str,
        fragments: &[Fragment],
        add_special: bool,
        out: &mut Vec<TokenId>,
    ) {
        // A space is prefixed to text at the start and after every special token.
        let mut prev_special = true;
        if add_special && tok.add_bos {
            out.extend(tok.special.bos);
        }
        let mut work = Work::default();
        for frag in fragments {
            match *frag {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(a, b) => {
                    work.text.clear();
                    if tok.add_space_prefix && prev_special {
                        work.text.push_str(ESCAPED_SPACE);
                    }
                    for c in text[a..b].chars() {
                        if c == ' ' {
                            work.text.push_str(ESCAPED_SPACE);
                        } else {
                            work.text.push(c);
                        }
                    }
                    self.tokenize(tok, &mut work, out);
                    prev_special = false;
                }
            }
        }
        if add_special && tok.add_eos {
            out.extend(tok.special.eos);
        }
    }

    fn tokenize(&self, tok: &Tokenizer, w: &mut Work, out: &mut Vec<TokenId>) {
        w.syms.clear();
        w.heap.clear();
        for (i, c) in w.text.char_indices() {
            let k = w.syms.len() as u32;
            w.syms.push(Sym {
                start: i as u32,
                len: c.len_utf8() as u32,
                prev: k.wrapping_sub(1),
                next: k + 1,
            });
        }
        let Some(last) = w.syms.last_mut() else {
            return;
        };
        last.next = NONE;

        for i in 1..w.syms.len() as u32 {
            try_add_bigram(tok, w, i - 1, i);
        }
        while let Some(bigram) = w.heap.pop() {
            let (l, r) = (w.syms[bigram.left as usize], w.syms[bigram.right as usize]);
            // Outdated: one side was merged away or grew since this pair was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != bigram.size {
                continue;
            }
            let left = &mut w.syms[bigram.left as usize];
            left.len = bigram.size;
            left.next = r.next;
            w.syms[bigram.right as usize].len = 0;
            if r.next != NONE {
                w.syms[r.next as usize].prev = bigram.left;
            }
            try_add_bigram(tok, w, l.prev, bigram.left);
            try_add_bigram(tok, w, bigram.left, r.next);
        }

        let mut i = 0u32;
        while i != NONE {
            let s = w.syms[i as usize];
            let bytes = &w.text.as_bytes()[s.start as usize..(s.start + s.len) as usize];
            match tok.lookup(bytes) {
                Some(id) => out.push(id),
                None => {
                    for &b in bytes {
                        match self.byte_tokens[b as usize] {
                            NONE => out.extend(tok.special.unk),
                            t => out.push(t),
                        }
                    }
                }
            }
            i = s.next;
        }
    }
}

/// Queues the pair if its concatenation is a token. (llama.cpp also records the pair for
/// re-segmenting symbols that are not tokens; merged symbols always are tokens and single
/// characters are never such a pair, so that path only ever falls through to bytes.)
fn try_add_bigram(tok: &Tokenizer, w: &mut Work, left: u32, right: u32) {
    if left == NONE || right == NONE {
        return;
    }
    let (l, r) = (w.syms[left as usize], w.syms[right as usize]);
    let size = l.len + r.len;
    let text = &w.text.as_bytes()[l.start as usize..(l.start + size) as usize];
    if let Some(id) = tok.lookup(text) {
        w.heap.push(Bigram {
            score: tok.scores[id as usize],
            left,
            right,
            size,
        });
    }
}

#[derive(Clone, Copy)]
struct Sym {
    start: u32,
    /// Bytes covered; 0 once merged into its left neighbour.
    len: u32,
    prev: u32,
    next: u32,
}

struct Bigram {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
}

impl Ord for Bigram {
    /// Max-heap order of llama.cpp's comparator: higher score first, then the leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        match self.score.partial_cmp(&other.score) {
            Some(Ordering::Equal) | None => other.left.cmp(&self.left),
            Some(o) => o,
        }
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

#[derive(Default)]
struct Work {
    text: String,
    syms: Vec<Sym>,
    heap: BinaryHeap<Bigram>,
}
