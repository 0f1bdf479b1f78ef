//! Ids back to text: `llama_token_to_piece`, `llama_detokenize` (with its leading-space and
//! clean-up rules) and a streaming decoder that only hands out complete UTF-8.

use crate::attr::{CONTROL, UNKNOWN};
use crate::{TokenId, Tokenizer};

/// Appends the piece of `id`; `lstrip` drops one leading space (llama.cpp's `lstrip = 1`).
pub(crate) fn append_piece(
    tok: &Tokenizer,
    id: TokenId,
    special: bool,
    lstrip: bool,
    out: &mut Vec<u8>,
) {
    if id as usize >= tok.n_vocab {
        return;
    }
    if !special && tok.attr(id) & (UNKNOWN | CONTROL) != 0 {
        return;
    }
    let mut p = tok.piece(id);
    if lstrip && p.first() == Some(&b' ') {
        p = &p[1..];
    }
    out.extend_from_slice(p);
}

pub(crate) fn detokenize(
    tok: &Tokenizer,
    mut ids: &[TokenId],
    remove_special: bool,
    unparse_special: bool,
) -> Vec<u8> {
    // SentencePiece prefixed a space when tokenizing; the first piece loses one again, except
    // after a BOS that is being removed (llama.cpp's rule).
    let mut remove_space = tok.add_space_prefix;
    if remove_special && tok.add_bos && !ids.is_empty() && Some(ids[0]) == tok.special.bos {
        remove_space = false;
        ids = &ids[1..];
    }
    if remove_special && tok.add_eos && ids.last().is_some_and(|&l| Some(l) == tok.special.eos) {
        ids = &ids[..ids.len() - 1];
    }
    let mut out = Vec::with_capacity(ids.len() * 4);
    for &id in ids {
        append_piece(tok, id, unparse_special, remove_space, &mut out);
        remove_space = false;
    }
    if tok.clean_spaces {
        clean_up_spaces(&mut out);
    }
    out
}

/// llama.cpp's `clean_up_tokenization_spaces`: three in-place passes over the bytes, replayed
/// literally (including the NUL the second pass writes where a removed space was).
fn clean_up_spaces(t: &mut Vec<u8>) {
    // " ?", " !", " .", " ,": drop the space.
    let total1 = t.len();
    let mut total = usize::from(total1 > 0);
    for i in 1..total1 {
        let x = t[i];
        if t[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        t[total] = x;
        total += 1;
    }
    // " ' ": drop both spaces around a lone apostrophe.
    let total2 = total;
    total = usize::from(total2 > 0);
    let mut i = 1;
    while i < total2 {
        let x = t[i];
        if x == b'\'' && i + 1 < total2 && t[i - 1] == b' ' && t[i + 1] == b' ' {
            total -= 1;
            i += 1;
            t[i] = 0;
        }
        t[total] = x;
        total += 1;
        i += 1;
    }
    // " 's", " 'm", " 're", " 've": drop the space.
    let total3 = total;
    total = usize::from(total3 > 0);
    for i in 1..total3 {
        let x = t[i];
        if t[i - 1] == b' ' && x == b'\'' && i + 1 < total3 {
            let x1 = t[i + 1];
            if x1 == b's' || x1 == b'm' {
                total -= 1;
            } else if x1 != b't' && x1 != b'd' && i + 2 < total3 {
                let x2 = t[i + 2];
                if (x1 == b'r' || x1 == b'v') && x2 == b'e' {
                    total -= 1;
                }
            }
        }
        t[total] = x;
        total += 1;
    }
    t.truncate(total);
}

/// Turns ids into text one at a time for streaming: each [`StreamDecoder::push`] returns the
/// text completed by that token, holding back the bytes of a character split across tokens
/// (emoji and CJK often are) until it is whole. Pieces are `llama_token_to_piece` with
/// `special = !skip_special`, as llama-server streams them.
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    special: bool,
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn new(skip_special: bool) -> Self {
        StreamDecoder {
            special: !skip_special,
            pending: Vec::new(),
        }
    }

    /// The newly completed text after `id`; bytes that cannot start a valid character become
    /// U+FFFD, an unfinished character at the end waits for the next token.
    pub fn push(&mut self, tok: &Tokenizer, id: TokenId) -> String {
        append_piece(tok, id, self.special, false, &mut self.pending);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // Safety net free: `valid_up_to` bytes are valid UTF-8 by definition.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        // Incomplete character at the end: keep it for later.
                        None => {
                            rest = after;
                            break;
                        }
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = &after[n..];
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let drop = self.pending.len() - keep;
        self.pending.drain(..drop);
        out
    }

    /// Whatever is still held back (an unfinished character), lossily; resets the decoder.
    pub fn flush(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(s: &[u8]) -> Vec<u8> {
        let mut v = s.to_vec();
        clean_up_spaces(&mut v);
        v
    }

    #[test]
    fn clean_up_matches_llama_rules() {
        assert_eq!(clean(b"Hello , world ! ok ?"), b"Hello, world! ok?");
        assert_eq!(clean(b"a ' b"), b"a'b");
        assert_eq!(
            clean(b"it 's I 'm we 're they 've"),
            b"it's I'm we're they've"
        );
        assert_eq!(clean(b"don 't we 'll I 'd"), b"don 't we 'll I 'd");
        assert_eq!(clean(b""), b"");
        assert_eq!(clean(b" ."), b".");
    }
}
