//! Behaviour the two reference models do not exercise, on small vocabularies built in memory:
//! Llama 3's whole-word lookup and BOS, SentencePiece's space prefix and its removal, byte
//! fallback, RSTRIP special tokens, and the errors for what we do not support.

use orchard_gguf::{Metadata, Value};
use orchard_tokenizer::{Tokenizer, TokenizerError, TokenizerKind};

fn strs(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect())
}

fn bpe_metadata(pre: &str) -> Metadata {
    let mut md = Metadata::new();
    md.insert("tokenizer.ggml.model", Value::String("gpt2".into()));
    md.insert("tokenizer.ggml.pre", Value::String(pre.into()));
    md.insert(
        "tokenizer.ggml.tokens",
        strs(&[
            "<|end|>", "h", "e", "l", "o", "he", "hel", "lo", "hello", "Ġ", "Ġhello", "a", "b",
        ]),
    );
    md.insert(
        "tokenizer.ggml.token_type",
        Value::Array(
            [3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
                .iter()
                .map(|&t| Value::I32(t))
                .collect(),
        ),
    );
    md.insert("tokenizer.ggml.merges", strs(&["h e", "he l", "l o"]));
    md.insert("tokenizer.ggml.bos_token_id", Value::U32(0));
    md.insert("tokenizer.ggml.eos_token_id", Value::U32(0));
    md
}

#[test]
fn gpt2_pre_merges_by_rank() {
    let tok = Tokenizer::from_metadata(&bpe_metadata("gpt-2")).unwrap();
    assert_eq!(
        tok.kind(),
        TokenizerKind::Bpe {
            pre: "gpt-2".into()
        }
    );
    // h e l l o -> he l l o -> hel l o -> hel lo; "hello" is never reached by merges.
    assert_eq!(tok.encode("hello", true, false), vec![6, 7]);
    assert!(!tok.add_bos());
    // " hello" has no merge for Ġ+h: the pieces stay apart.
    assert_eq!(tok.encode(" hello", false, false), vec![9, 6, 7]);
    assert_eq!(tok.decode(&[9, 6, 7], true), " hello");
}

#[test]
fn llama_bpe_looks_up_whole_words_and_adds_bos() {
    let tok = Tokenizer::from_metadata(&bpe_metadata("llama-bpe")).unwrap();
    assert!(tok.add_bos());
    assert_eq!(tok.encode("hello", true, false), vec![0, 8]);
    assert_eq!(tok.encode(" hello", false, false), vec![10]);
    // The vocabulary's own add_bos_token overrides the pre-tokenizer's default.
    let mut md = bpe_metadata("llama-bpe");
    md.insert("tokenizer.ggml.add_bos_token", Value::Bool(false));
    let tok = Tokenizer::from_metadata(&md).unwrap();
    assert_eq!(tok.encode("hello", true, false), vec![8]);
}

#[test]
fn characters_without_tokens_fall_back_to_ascii_byte_tokens() {
    let tok = Tokenizer::from_metadata(&bpe_metadata("gpt-2")).unwrap();
    // "z" is no token: llama.cpp drops it (its single byte is no token either); "a", "b" stay.
    assert_eq!(tok.encode("azb", false, false), vec![11, 12]);
}

#[test]
fn rstrip_special_tokens_swallow_following_whitespace() {
    let mut md = bpe_metadata("gpt-2");
    md.insert("general.name", Value::String("Phi-3 mini".into()));
    let tok = Tokenizer::from_metadata(&md).unwrap();
    assert_eq!(tok.encode("a<|end|>  \n b", false, true), vec![11, 0, 12]);
    // Without the name, the whitespace stays (as a Ġ piece; "\n" has no token here).
    let tok = Tokenizer::from_metadata(&bpe_metadata("gpt-2")).unwrap();
    assert_eq!(tok.encode("a<|end|> b", false, true), vec![11, 0, 9, 12]);
    // "<|end|>" is on llama.cpp's end-of-generation list.
    assert!(tok.is_eog(0));
}

fn spm_metadata() -> Metadata {
    let mut md = Metadata::new();
    md.insert("tokenizer.ggml.model", Value::String("llama".into()));
    let tokens = [
        "<unk>", "<s>", "</s>", "▁", "h", "i", "▁h", "hi", "▁hi", "<0x21>", "<0xC3>", "<0xA9>",
    ];
    md.insert("tokenizer.ggml.tokens", strs(&tokens));
    md.insert(
        "tokenizer.ggml.scores",
        Value::Array(
            [
                0.0, 0.0, 0.0, -1.0, -2.0, -2.0, -3.0, -1.5, -0.5, 0.0, 0.0, 0.0,
            ]
            .iter()
            .map(|&s| Value::F32(s))
            .collect(),
        ),
    );
    md.insert(
        "tokenizer.ggml.token_type",
        Value::Array(
            [2, 3, 3, 1, 1, 1, 1, 1, 1, 6, 6, 6]
                .iter()
                .map(|&t| Value::I32(t))
                .collect(),
        ),
    );
    md
}

#[test]
fn spm_prefixes_a_space_and_merges_by_score() {
    let tok = Tokenizer::from_metadata(&spm_metadata()).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::Spm);
    // Defaults for SentencePiece: BOS 1, EOS 2, BOS added, space prefixed.
    assert_eq!((tok.bos(), tok.eos()), (Some(1), Some(2)));
    // "▁hi": "hi" (-1.5) beats "▁h" (-3); then "▁" + "hi" forms "▁hi".
    assert_eq!(tok.encode("hi", true, false), vec![1, 8]);
    // Byte fallback for characters that are no token.
    assert_eq!(tok.encode("hi!é", false, false), vec![8, 9, 10, 11]);
    // A leading space is removed again when decoding, except right after a removed BOS
    // (llama_detokenize's rule).
    assert_eq!(tok.decode(&[8], true), "hi");
    assert_eq!(tok.decode(&[1, 8], true), " hi");
    assert_eq!(tok.decode(&[8, 9, 10, 11], false), "hi!é");
}

#[test]
fn spm_without_space_prefix() {
    let mut md = spm_metadata();
    md.insert("tokenizer.ggml.add_space_prefix", Value::Bool(false));
    let tok = Tokenizer::from_metadata(&md).unwrap();
    assert_eq!(tok.encode("hi", false, false), vec![7]);
    assert_eq!(tok.decode(&[7], true), "hi");
    // A character that is neither a token nor has a byte token becomes <unk>.
    assert_eq!(tok.encode("h\u{1}", false, false), vec![4, 0]);
}

#[test]
fn unsupported_and_broken_vocabularies_are_errors() {
    let mut md = Metadata::new();
    assert!(matches!(
        Tokenizer::from_metadata(&md),
        Err(TokenizerError::MissingKey { key }) if key == "tokenizer.ggml.model"
    ));
    md.insert("tokenizer.ggml.model", Value::String("bert".into()));
    assert!(matches!(
        Tokenizer::from_metadata(&md),
        Err(TokenizerError::UnsupportedModel { model }) if model == "bert"
    ));
    assert!(matches!(
        Tokenizer::from_metadata(&bpe_metadata("tekken")),
        Err(TokenizerError::UnsupportedPre { pre }) if pre == "tekken"
    ));
    let mut md = bpe_metadata("gpt-2");
    md.insert("tokenizer.ggml.merges", Value::U32(3));
    assert!(matches!(
        Tokenizer::from_metadata(&md),
        Err(TokenizerError::Gguf(_))
    ));
    let mut md = spm_metadata();
    md.insert("tokenizer.ggml.scores", Value::Array(vec![Value::F32(0.0)]));
    assert!(matches!(
        Tokenizer::from_metadata(&md),
        Err(TokenizerError::TooShort {
            found: 1,
            needed: 12,
            ..
        })
    ));
    let mut md = spm_metadata();
    md.insert("tokenizer.ggml.tokens", Value::Array(vec![Value::U32(1)]));
    assert!(matches!(
        Tokenizer::from_metadata(&md),
        Err(TokenizerError::WrongType { .. })
    ));
}
