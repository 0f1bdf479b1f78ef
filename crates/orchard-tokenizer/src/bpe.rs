//! Byte-level BPE as llama.cpp's `llm_tokenizer_bpe_session`: pre-tokenize into words, spell
//! each word in GPT-2's byte alphabet, then repeatedly merge the adjacent pair with the lowest
//! merge rank (leftmost first on ties) until none applies.
//!
//! llama.cpp looks merges up by the two strings; here every string that can take part in a
//! merge gets an id at load time (tokens keep theirs, merge halves that are not tokens get ids
//! after the vocabulary), so a merge is one hash lookup on a pair of ids and the merged symbol's
//! id is known in advance.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use hashbrown::HashMap;

use crate::partition::Fragment;
use crate::pretok::{self, Splitter};
use crate::unicode::BYTE_TO_CPT;
use crate::{Strings, TokenId, Tokenizer};

const NONE: u32 = u32::MAX;

pub(crate) struct BpeModel {
    splitter: Splitter,
    ignore_merges: bool,
    /// (left id << 32 | right id) -> (rank, id of the merged string or NONE).
    merges: HashMap<u64, (u32, u32)>,
    /// UTF-8 of the byte-alphabet character standing for each byte.
    byte_chars: [([u8; 2], u8); 256],
    /// Id of each byte's alphabet character as a string (NONE if it is nowhere).
    byte_sym: [u32; 256],
    /// Token whose text is the single byte `b` (only ASCII bytes can have one).
    single_byte_token: [u32; 256],
}

impl BpeModel {
    pub fn new(
        strings: &mut Strings,
        n_vocab: usize,
        merges: &[&str],
        splitter: Splitter,
        ignore_merges: bool,
    ) -> BpeModel {
        // First give every merge half an id, then resolve the merged strings: a merged string
        // may only become known as the half of a later merge.
        let mut pairs = Vec::with_capacity(merges.len());
        for m in merges {
            // llama.cpp splits at the first space after the first byte; a line without one
            // becomes the pair ("", "") which can never match a symbol.
            let found = m.as_bytes().iter().skip(1).position(|&b| b == b' ');
            let Some(pos) = found.map(|p| p + 1) else {
                pairs.push(None);
                continue;
            };
            let (a, b) = (&m[..pos], &m[pos + 1..]);
            pairs.push(Some((strings.intern(a), strings.intern(b))));
        }
        let mut table: HashMap<u64, (u32, u32)> = HashMap::with_capacity(merges.len());
        let mut buf = String::new();
        for (rank, pair) in pairs.into_iter().enumerate() {
            let Some((a, b)) = pair else { continue };
            let key = ((a as u64) << 32) | b as u64;
            if table.contains_key(&key) {
                // `bpe_ranks.emplace` keeps the first rank of a repeated pair.
                continue;
            }
            buf.clear();
            buf.push_str(strings.get(a));
            buf.push_str(strings.get(b));
            let merged = strings.find(buf.as_bytes()).unwrap_or(NONE);
            table.insert(key, (rank as u32, merged));
        }

        let mut byte_chars = [([0u8; 2], 0u8); 256];
        let mut byte_sym = [NONE; 256];
        let mut single_byte_token = [NONE; 256];
        for b in 0..256usize {
            let c = char::from_u32(BYTE_TO_CPT[b]).unwrap_or('\u{FFFD}');
            let mut enc = [0u8; 4];
            let s = c.encode_utf8(&mut enc);
            let len = s.len();
            byte_chars[b].0[..len].copy_from_slice(&enc[..len]);
            byte_chars[b].1 = len as u8;
            byte_sym[b] = strings.find(&enc[..len]).unwrap_or(NONE);
            if b < 128 {
                single_byte_token[b] = strings
                    .find(&[b as u8])
                    .filter(|&id| (id as usize) < n_vocab)
                    .unwrap_or(NONE);
            }
        }
        BpeModel {
            splitter,
            ignore_merges,
            merges: table,
            byte_chars,
            byte_sym,
            single_byte_token,
        }
    }

    pub fn encode(
        &self,
        tok: &Tokenizer,
        text: &str,
        fragments: &[Fragment],
        add_special: bool,
        out: &mut Vec<TokenId>,
    ) {
        if add_special && tok.add_bos {
            out.extend(tok.special.bos);
        }
        let mut scratch = pretok::Scratch::default();
        let mut words = Vec::new();
        let mut work = Work::default();
        for frag in fragments {
            match *frag {
                Fragment::Token(id) => out.push(id),
                Fragment::Text(a, b) => {
                    let piece = &text[a..b];
                    words.clear();
                    pretok::split(self.splitter, piece, &mut scratch, &mut words);
                    for &(wa, wb) in &words {
                        self.encode_word(tok, &piece.as_bytes()[wa..wb], &mut work, out);
                    }
                }
            }
        }
        if add_special && tok.add_eos {
            out.extend(tok.special.eos);
        }
    }

    fn encode_word(&self, tok: &Tokenizer, word: &[u8], w: &mut Work, out: &mut Vec<TokenId>) {
        w.enc.clear();
        w.syms.clear();
        w.heap.clear();
        for &b in word {
            let (c, len) = &self.byte_chars[b as usize];
            let start = w.enc.len() as u32;
            w.enc.extend_from_slice(&c[..*len as usize]);
            w.syms.push(Sym {
                start,
                len: *len as u32,
                prev: (w.syms.len() as u32).wrapping_sub(1),
                next: w.syms.len() as u32 + 1,
                id: self.byte_sym[b as usize],
            });
        }
        if w.syms.is_empty() {
            return;
        }
        if self.ignore_merges {
            if let Some(id) = tok.lookup(&w.enc) {
                out.push(id);
                return;
            }
        }
        let last = w.syms.len() - 1;
        w.syms[last].next = NONE;

        for i in 1..w.syms.len() as u32 {
            self.push_bigram(w, i - 1, i);
        }
        while let Some(Reverse((_, left, right, size))) = w.heap.pop() {
            let (l, r) = (&w.syms[left as usize], &w.syms[right as usize]);
            // Outdated: one side was merged away or grew since this pair was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != size {
                continue;
            }
            let key = ((l.id as u64) << 32) | r.id as u64;
            let merged = self.merges.get(&key).map_or(NONE, |&(_, m)| m);
            let r_next = r.next;
            let l = &mut w.syms[left as usize];
            l.len = size;
            l.id = merged;
            l.next = r_next;
            w.syms[right as usize].len = 0;
            if r_next != NONE {
                w.syms[r_next as usize].prev = left;
            }
            let l_prev = w.syms[left as usize].prev;
            if l_prev != NONE {
                self.push_bigram(w, l_prev, left);
            }
            if r_next != NONE {
                self.push_bigram(w, left, r_next);
            }
        }

        let mut i = 0u32;
        while i != NONE {
            let s = &w.syms[i as usize];
            if s.id != NONE && (s.id as usize) < tok.n_vocab {
                out.push(s.id);
            } else {
                // Not a token: llama.cpp emits the tokens of its single bytes that exist.
                let bytes = &w.enc[s.start as usize..(s.start + s.len) as usize];
                for &b in bytes {
                    let t = self.single_byte_token[b as usize];
                    if t != NONE {
                        out.push(t);
                    }
                }
            }
            i = s.next;
        }
    }

    #[inline]
    fn push_bigram(&self, w: &mut Work, left: u32, right: u32) {
        let (l, r) = (&w.syms[left as usize], &w.syms[right as usize]);
        if l.id == NONE || r.id == NONE {
            return;
        }
        if let Some(&(rank, _)) = self.merges.get(&(((l.id as u64) << 32) | r.id as u64)) {
            w.heap.push(Reverse((rank, left, right, l.len + r.len)));
        }
    }
}

#[derive(Clone, Copy)]
struct Sym {
    start: u32,
    /// Bytes of the alphabet spelling; 0 once merged into its left neighbour.
    len: u32,
    prev: u32,
    next: u32,
    /// Id of the symbol's string, NONE if it is neither a token nor a merge half.
    id: u32,
}

/// Buffers reused across the words of one `encode` call.
#[derive(Default)]
struct Work {
    enc: Vec<u8>,
    syms: Vec<Sym>,
    /// Min-heap on (rank, left): the lowest rank first, the leftmost among equal ranks.
    heap: BinaryHeap<Reverse<(u32, u32, u32, u32)>>,
}
