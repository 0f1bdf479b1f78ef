//! BPE and SentencePiece tokenizers built from a GGUF vocabulary, agreeing token for token with
//! llama.cpp's `llama_tokenize`, `llama_token_to_piece` and `llama_detokenize`.
//!
//! Supported: byte-level BPE (`tokenizer.ggml.model = gpt2`) with the pre-tokenizers llama.cpp
//! calls `default`, `gpt-2`, `llama-bpe` (Llama 3), `qwen2`, `smollm`/`starcoder` and their
//! aliases, and SentencePiece-style BPE (`llama`, e.g. Gemma 3) with byte fallback. Special tokens
//! are split out of the text first, as llama.cpp's `tokenizer_st_partition` does.

mod bpe;
mod decode;
mod error;
mod load;
mod partition;
mod pretok;
mod spm;
mod stl_order;
mod strings;
mod unicode;
mod unicode_data;

use std::collections::HashSet;

pub use decode::StreamDecoder;
pub use error::TokenizerError;
pub use orchard_core::TokenId;

use partition::SpecialMatcher;
use strings::Strings;

/// Which algorithm turns text into ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerKind {
    /// Byte-level BPE; `pre` is the pre-tokenizer name from `tokenizer.ggml.pre`.
    Bpe { pre: String },
    /// SentencePiece (score-driven merges, `▁` for spaces, `<0xXX>` byte fallback).
    Spm,
}

/// llama.cpp's `llama_token_attr` bits.
pub(crate) mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
    pub const LSTRIP: u16 = 1 << 7;
    pub const RSTRIP: u16 = 1 << 8;
}

/// Special token ids as llama.cpp resolves them (metadata, defaults, then text heuristics).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SpecialIds {
    pub bos: Option<TokenId>,
    pub eos: Option<TokenId>,
    pub eot: Option<TokenId>,
    pub eom: Option<TokenId>,
    pub unk: Option<TokenId>,
    pub sep: Option<TokenId>,
    pub pad: Option<TokenId>,
    pub mask: Option<TokenId>,
    pub fim_pre: Option<TokenId>,
    pub fim_suf: Option<TokenId>,
    pub fim_mid: Option<TokenId>,
    pub fim_pad: Option<TokenId>,
    pub fim_rep: Option<TokenId>,
    pub fim_sep: Option<TokenId>,
}

pub(crate) enum Model {
    Bpe(Box<bpe::BpeModel>),
    Spm(Box<spm::SpmModel>),
}

/// A vocabulary plus everything needed to tokenize and detokenize with it. Immutable after
/// loading, so one instance can serve every thread.
pub struct Tokenizer {
    /// Ids `0..n_vocab` are the tokens; BPE appends merge halves that are not tokens after them.
    pub(crate) strings: Strings,
    pub(crate) n_vocab: usize,
    pub(crate) scores: Vec<f32>,
    pub(crate) attrs: Vec<u16>,
    pub(crate) model: Model,
    pub(crate) pre: String,
    pub(crate) special: SpecialIds,
    pub(crate) add_bos: bool,
    pub(crate) add_eos: bool,
    pub(crate) add_space_prefix: bool,
    pub(crate) clean_spaces: bool,
    pub(crate) eog: HashSet<TokenId>,
    pub(crate) matcher: SpecialMatcher,
    /// `token_to_piece(id, special = true)` of every token, concatenated (llama.cpp's cache).
    pub(crate) pieces: Vec<u8>,
    pub(crate) piece_ends: Vec<usize>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind())
            .field("n_vocab", &self.n_vocab)
            .field("bos", &self.special.bos)
            .field("eos", &self.special.eos)
            .field("eot", &self.special.eot)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(file: &orchard_gguf::GgufFile) -> Result<Tokenizer, TokenizerError> {
        Self::from_metadata(file.metadata())
    }

    /// Builds the tokenizer from GGUF metadata (also for vocabularies assembled in memory).
    pub fn from_metadata(md: &orchard_gguf::Metadata) -> Result<Tokenizer, TokenizerError> {
        load::load(md)
    }

    /// Token ids of `text`, as `llama_tokenize(vocab, text, add_special, parse_special)`:
    /// `add_special` adds BOS/EOS where the vocabulary asks for them, `parse_special` lets the
    /// text of control tokens (e.g. `<|im_start|>`) stand for them.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<TokenId> {
        let fragments = self.matcher.partition(self, text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        match &self.model {
            Model::Bpe(m) => m.encode(self, text, &fragments, add_special, &mut out),
            Model::Spm(m) => m.encode(self, text, &fragments, add_special, &mut out),
        }
        out
    }

    /// Text of `ids` as llama.cpp's `llama_detokenize` with `remove_special = skip_special`
    /// and `unparse_special = !skip_special`; invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[TokenId], skip_special: bool) -> String {
        String::from_utf8_lossy(&self.detokenize(ids, skip_special, !skip_special)).into_owned()
    }

    /// Exactly `llama_detokenize(vocab, ids, remove_special, unparse_special)`, as bytes.
    pub fn detokenize(
        &self,
        ids: &[TokenId],
        remove_special: bool,
        unparse_special: bool,
    ) -> Vec<u8> {
        decode::detokenize(self, ids, remove_special, unparse_special)
    }

    /// Bytes of one token as `llama_token_to_piece(vocab, id, buf, len, 0, special)`; may be
    /// part of a UTF-8 sequence. Control/unknown tokens give nothing unless `special`; ids out
    /// of range give nothing.
    pub fn token_to_piece(&self, id: TokenId, special: bool) -> Vec<u8> {
        let mut out = Vec::new();
        decode::append_piece(self, id, special, false, &mut out);
        out
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    pub fn bos(&self) -> Option<TokenId> {
        self.special.bos
    }

    pub fn eos(&self) -> Option<TokenId> {
        self.special.eos
    }

    /// End-of-turn token, from metadata or found by text the way llama.cpp does.
    pub fn eot(&self) -> Option<TokenId> {
        self.special.eot
    }

    pub fn unk(&self) -> Option<TokenId> {
        self.special.unk
    }

    pub fn pad(&self) -> Option<TokenId> {
        self.special.pad
    }

    /// Whether `encode(.., add_special = true, ..)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode(.., add_special = true, ..)` ends with EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether generation stops at `id` (llama.cpp's `special_eog_ids`).
    pub fn is_eog(&self, id: TokenId) -> bool {
        self.eog.contains(&id)
    }

    /// The end-of-generation set, sorted.
    pub fn eog_ids(&self) -> Vec<TokenId> {
        let mut v: Vec<TokenId> = self.eog.iter().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn is_control(&self, id: TokenId) -> bool {
        self.attr(id) & attr::CONTROL != 0
    }

    /// The token's text as stored in the vocabulary (`Ġ`/`▁` spellings included).
    pub fn token_text(&self, id: TokenId) -> Option<&str> {
        ((id as usize) < self.n_vocab).then(|| self.strings.get(id))
    }

    /// The token whose vocabulary text is exactly `text` (the last one, if several are).
    pub fn token_id(&self, text: &str) -> Option<TokenId> {
        self.lookup(text.as_bytes())
    }

    pub fn kind(&self) -> TokenizerKind {
        match self.model {
            Model::Bpe(_) => TokenizerKind::Bpe {
                pre: self.pre.clone(),
            },
            Model::Spm(_) => TokenizerKind::Spm,
        }
    }

    #[inline]
    pub(crate) fn attr(&self, id: TokenId) -> u16 {
        self.attrs.get(id as usize).copied().unwrap_or(0)
    }

    /// llama.cpp's `text_to_token`: tokens only, never the extra BPE merge strings.
    #[inline]
    pub(crate) fn lookup(&self, text: &[u8]) -> Option<TokenId> {
        self.strings
            .find(text)
            .filter(|&id| (id as usize) < self.n_vocab)
    }

    #[inline]
    pub(crate) fn piece(&self, id: TokenId) -> &[u8] {
        let i = id as usize;
        let start = if i == 0 { 0 } else { self.piece_ends[i - 1] };
        &self.pieces[start..self.piece_ends[i]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizer>();
        assert_send_sync::<StreamDecoder>();
    }
}
